"""edgekit: deadline-aware CNN families from workstation to edge board."""

__version__ = "0.1.0"
