"""The package version (one place; ``augkd_edge.__version__`` re-exports it)."""

__version__ = "0.1.0"
