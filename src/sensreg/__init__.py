"""sensreg: sparse neural networks by sensitivity-driven regularization."""

__version__ = "0.1.0"
