"""The private helpers of `convert-qnn-to-accel`: lowering conv and vector-unit layers to
instructions, requantization parameters, the DRAM map and the token schedule."""
