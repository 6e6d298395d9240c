"""Workstation side of edgekit: datasets, CNN families, training, conversion and bundles."""
