"""The one error of the translation: a construct it does not cover. `emit_torch` catches it and
translates the network again as one class without blocks (see emit.py)."""

from __future__ import annotations

from cnncomp.errors import CnnError


class NotSupported(CnnError):
    """A spec construct --emit torch cannot translate."""
