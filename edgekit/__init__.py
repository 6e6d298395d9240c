"""edgekit: deadline-aware CNN families from workstation to edge board; the `edgekit` command (`cli`) and `demo`."""

__version__ = "0.1.0"
