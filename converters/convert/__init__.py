"""`edgekit convert`: per-format exporters, conversion of one model, the manifest record and validation."""
