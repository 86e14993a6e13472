"""The package version, defined once: ``bil.__version__`` and the run metadata (result.json, checkpoints) read it."""

__version__ = "0.1.0"
