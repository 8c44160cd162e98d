"""dopant.passes."""
