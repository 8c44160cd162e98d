"""Private helpers of `codesign.sensitivity`: hooks on the layers' inputs and Hessian traces."""
