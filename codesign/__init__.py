"""dopant.codesign."""
