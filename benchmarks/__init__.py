"""On-device benchmark harness, load generator, policy comparison and reports."""
