"""Private helpers of `codesign.scores`: channel gates in a torch model, the gate-space
derivatives the data methods need, and the parameter magnitudes of a structure."""
