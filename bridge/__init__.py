"""ucbridge: a unified-communications and trunking interop bridge for public-safety dispatch."""

__version__ = "0.1.0"
