"""dopant.backend."""
