"""Private helpers of `codesign.progressive`: the schedule's grammar (`schedule`), the checks of
options and data (`inputs`), batch norms folded into a torch model (`fold`), one stage's network
started where the last one ended (`carry`), the per-stage records and the result (`records`)
and finished stages on disk (`saved`)."""
