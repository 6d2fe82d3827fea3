"""The errors of the translation. NotSupported: a construct of the spec it does not cover;
`emit_torch` catches it and translates the network again as one class without blocks (see
emit.py). NoTranslation: an op without a torch_source facet, which no fallback can help."""

from __future__ import annotations

from cnncomp.errors import CnnError


class NotSupported(CnnError):
    """A spec construct --emit torch cannot translate."""


class NoTranslation(CnnError):
    """A layer whose op has no PyTorch-source translation (Op.torch_source)."""
