"""dopant.codesign.training: hooks for the user's own training loop.

`HardwareMetrics` (`metrics`) measures the current model on the modeled accelerator at the end of
an epoch (cycles, FPS, utilization, energy, DRAM bytes) and logs it to a CSV file and TensorBoard.
"""
