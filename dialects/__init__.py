"""dopant.dialects."""
