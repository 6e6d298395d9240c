"""Latency tables and selection: the table model, the Pareto front (`edgekit select`), the significance test."""
