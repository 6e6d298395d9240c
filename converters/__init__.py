"""Workstation side of edgekit: data, family, train, convert (exporters), pack (bundles) and cluster (Ray)."""
