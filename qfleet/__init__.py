"""qfleet: distributed Deep Q-Network training on Ray."""

__version__ = "0.1.0"
