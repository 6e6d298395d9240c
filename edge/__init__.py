"""Device side of edgekit: runtimes, latency tables, selection and the daemon (never TensorFlow)."""
