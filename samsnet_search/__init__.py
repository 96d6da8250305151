"""samsnet-search: distributed hyperparameter search for Sams-Net."""

__version__ = "0.1.0"
