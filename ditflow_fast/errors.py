"""Errors raised across layers, in a module that imports nothing, so that any layer can raise them
without importing another layer's package (whose ``__init__`` would run first)."""


class ModelError(ValueError):
    """A model that cannot be loaded, or cannot take the asked size."""
