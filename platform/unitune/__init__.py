"""unitune: hyperparameter search for vision-language retrieval with the unified loss."""

__version__ = "0.1.0"
