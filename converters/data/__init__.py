"""Datasets: named sets and their files (IDX, CIFAR-10), loaded and split for a run."""
