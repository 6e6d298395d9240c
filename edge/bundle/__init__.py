"""A device bundle on the board: the reader, safe archive extraction, the canary check and `edgekit verify`."""
