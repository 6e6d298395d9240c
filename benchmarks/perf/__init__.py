"""The project's own measurements (overheads, soak, repeatability, throughput); no product module imports them."""
