"""Passes that need the machine's measurements (the latency table), so they live above the
compiler; `compiler.pipeline` finds them through the `dopant.passes` entry point group."""
