"""`edgekit evaluate` and `edgekit loadgen`: the same deadline workload served by each policy and an oracle."""
