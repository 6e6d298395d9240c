"""`edgekit bench` and `edgekit report`: measuring every artifact on this device into a latency table."""
