"""The lowest floor: the errors dopant raises and atomic file writes. No xDSL, no torch, no
other dopant import, so every folder above can use them."""
