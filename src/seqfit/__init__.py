"""seqfit: train recurrent sequence models on data and models larger than memory."""

__version__ = "0.1.0"
__all__ = ["__version__"]
