"""Latency tables: the model and its JSON field checks, the Pareto front (`edgekit select`), the significance test."""
