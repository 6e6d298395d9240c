"""The project's own measurements of itself (overheads, soak, repeatability, throughput); no product module
imports them."""
