"""The pieces of stage-by-stage PTQ with distillation (`dopant.codesign.ptqkd`): cutting the
fake-quant network into stages at module paths (`stages`), the float teacher's features at those
cuts (`teacher`), and one stage's training as a self-contained task (`train`)."""
