"""dopant.compiler."""
