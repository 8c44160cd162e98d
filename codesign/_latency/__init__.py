"""The pieces of `dopant.codesign.LatencyTable`: the rows of a network (`rows`), the single-op
programs that time one row at chosen widths (`programs`) and the on-disk cache (`cache`)."""
