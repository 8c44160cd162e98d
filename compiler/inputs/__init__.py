"""What a user has, turned into what a model takes: float32 samples (N, *the model's sample
shape) and, for evaluation, int64 class labels (N,).

- From Python (`batches`): a numpy array or torch tensor of samples, or any iterable of
  batches (a torch DataLoader, a list, a generator), each a tensor, an array or an
  `(x, y, ...)` tuple, as NNCF's and torch.ao's calibration take them. Arrays are taken as the
  model's input values (converted to float32): preprocessing is the caller's.
- From the shell (`load_samples`, a SPEC): `sample`, `fashion-mnist`, a `.npy` (images), a
  `.npz` (images `x`, labels `y`), an image file or an image folder. uint8 images are scaled
  to [0, 1], then normalized per channel with the user's mean and std (`Preprocess`).

Both check the data against the model's sample shape (`model_sample_shape`, from the IR's
`@forward` argument) before any work, so an error names the data's shape and the model's, and
never the size of an internal batch.
"""

from dopant.compiler.inputs.batches import (
    Batch,
    batches,
    model_sample_shape,
    replayable,
    too_many_inputs,
)
from dopant.compiler.inputs.files import Preprocess, Samples, load_samples

__all__ = [
    "Batch",
    "Preprocess",
    "Samples",
    "batches",
    "load_samples",
    "model_sample_shape",
    "replayable",
    "too_many_inputs",
]
