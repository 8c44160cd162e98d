"""A progressive schedule: stages of bit widths and pruning targets, parsed from text and checked
against the target machine before any work.

    w8a8,w4a8,w4a4,w2a4             lower the weights first, then the activations (Zhuang et al.)
    w8a8,w8a8+macs=0.3,w4a4+macs=0.5   prune in steps (fraction of the dense MACs removed)

A stage is `wXaY`, `METRIC=FRACTION` or both joined by `+`. The widths are those of every conv and
linear layer (the first and last too, unless `first_last_bits` says otherwise); a stage without
widths keeps the previous stage's (the first stage's default is w8a8). A pruning target is
cumulative, as `prune` reads one: `macs=0.5` means half of the *dense* network's MACs removed
by the end of that stage, and it stays in force in later stages. Along a schedule the weight
width, the activation width and the pruning target may stay or move toward more compression,
never back: the next stage starts from the last one's network.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from dopant.backend.target import AccelConfig
from dopant.codesign.select import Target
from dopant.support.errors import InputError

_WIDTHS = re.compile(r"w(\d+)a(\d+)")
_GRAMMAR = (
    "write wXaY (e.g. w4a8), METRIC=FRACTION (e.g. macs=0.5: half the dense MACs removed) "
    "or both joined by '+' (w4a4+macs=0.5)"
)


@dataclass(frozen=True)
class Stage:
    """One stage: the widths of its layers and the pruning target in force (cumulative: the
    fraction of the dense network's metric removed by the end of this stage; None: dense)."""

    weight_bits: int
    act_bits: int
    prune: Target | None = None

    def __str__(self) -> str:
        widths = f"w{self.weight_bits}a{self.act_bits}"
        return widths if self.prune is None else f"{widths}+{self.prune}"


def _stage(text: str, index: int, before: Stage | None) -> Stage:
    """Stage `index` (1-based) written as `text`, after stage `before`."""
    where = f"stage {index} '{text}'"
    widths: tuple[int, int] | None = None
    target: Target | None = None
    for token in (t.strip().lower() for t in text.split("+")):
        match = _WIDTHS.fullmatch(token)
        if match and widths is None:
            widths = (int(match[1]), int(match[2]))
        elif "=" in token and target is None:
            try:
                target = Target.parse(token)
            except InputError as error:
                raise InputError(f"{where}: {error}") from None
        else:
            raise InputError(f"{where} is not understood: {_GRAMMAR}.")
    if widths is None:
        widths = (before.weight_bits, before.act_bits) if before else (8, 8)
    if target is None and before is not None:
        target = before.prune
    return Stage(widths[0], widths[1], target)


def _check_target(stage: Stage, where: str, config: AccelConfig, first_last_bits: int) -> None:
    """The machine fuses every width the stage asks for."""
    wanted = [("weight", stage.weight_bits, config.weight_bits)]
    wanted.append(("activation", stage.act_bits, config.act_bits))
    if first_last_bits:
        wanted.append(("weight", first_last_bits, config.weight_bits))
        wanted.append(("activation", first_last_bits, config.act_bits))
    for kind, bits, offered in wanted:
        if bits not in offered:
            raise InputError(
                f"{where} asks for {bits}-bit {kind}s, but the target '{config.name}' has "
                f"{', '.join(map(str, offered))}-bit {kind} lanes; use those widths or another "
                "target."
            )


def _check_order(stage: Stage, where: str, before: Stage, before_where: str) -> None:
    """Widths only go down and the pruning target only up."""
    for kind, now, then in (
        ("weight", stage.weight_bits, before.weight_bits),
        ("activation", stage.act_bits, before.act_bits),
    ):
        if now > then:
            raise InputError(
                f"{where} raises the {kind} width from {then} bits ({before_where}) to {now}; "
                "widths in a progressive schedule only go down (e.g. w8a8,w4a8,w4a4,w2a4)."
            )
    if before.prune is None or stage.prune is None:
        return
    if stage.prune.metric != before.prune.metric:
        raise InputError(
            f"{where} prunes by {stage.prune.what} but {before_where} by {before.prune.what}; "
            "use one metric in a schedule."
        )
    if stage.prune.fraction < before.prune.fraction:
        raise InputError(
            f"{where} removes less ({stage.prune}) than {before_where} ({before.prune}); a "
            "pruning target is the fraction of the dense network removed so far, and removed "
            "channels do not come back."
        )


def parse_schedule(
    schedule: str | Sequence[str | Stage], config: AccelConfig, *, first_last_bits: int = 0
) -> list[Stage]:
    """The stages of `schedule` ("w8a8,w4a4,w2a4", or a list of stage texts or Stages).

    InputError naming the stage for: a stage that does not parse, a width `config` does not
    fuse (listing the widths it has), a width that goes up, a pruning target that goes down or
    changes metric, and an empty schedule.
    """
    parts = schedule.split(",") if isinstance(schedule, str) else list(schedule)
    if not parts or all(isinstance(p, str) and not p.strip() for p in parts):
        raise InputError(f"the schedule is empty; {_GRAMMAR}, one stage per comma.")
    stages: list[Stage] = []
    for index, part in enumerate(parts, start=1):
        if isinstance(part, Stage):
            inherited = part.prune or (stages[-1].prune if stages else None)
            stage = replace(part, prune=inherited)  # the target stays in force, as in text
            text = str(stage)
        elif isinstance(part, str) and part.strip():
            text = part.strip()
            stage = _stage(text, index, stages[-1] if stages else None)
        else:
            raise InputError(f"stage {index} of the schedule is empty; {_GRAMMAR}.")
        where = f"stage {index} '{text}'"
        _check_target(stage, where, config, first_last_bits)
        if stages:
            _check_order(stage, where, stages[-1], f"stage {index - 1} '{stages[-1]}'")
        stages.append(stage)
    return stages
