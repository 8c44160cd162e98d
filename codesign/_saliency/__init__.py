"""Private helpers of `codesign.saliency`: channel gates in a torch model, the gate-space
derivatives the data methods need, and the parameter magnitudes of a structure."""
