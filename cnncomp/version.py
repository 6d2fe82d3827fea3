"""The cnncomp version (a utility module, so that any layer, an emitter's metadata for one, can read it)."""

__version__ = "0.1.0"
