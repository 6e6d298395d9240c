"""On-device stage: bench (latency tables, reports), evaluate (loadgen, policies compared); perf: the project's own."""
