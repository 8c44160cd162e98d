"""dopant.runtime."""
