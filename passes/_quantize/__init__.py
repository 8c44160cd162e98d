"""The private helpers of the `quantize` pass: its plan (bits per layer and activation), its
numerics (scales, weights, biases) and the rewrite to an integer body."""
