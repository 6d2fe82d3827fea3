"""A registry of named entries (precisions, runtimes, targets), filled by a class decorator, as ops are.

    PRECISIONS = Registry("precision", Precision, facets=("name", "convert", ...), modules=(...))

    @PRECISIONS.register
    class Fp16(Precision): ...

`register` instantiates the class and refuses an unnamed entry, a name registered twice, or a class
that does not define one of `facets` itself; `all()` imports the `modules` that register more
entries (once) and returns the registry, a dict by name.
"""

from __future__ import annotations

import importlib


class Registry(dict):
    def __init__(self, kind: str, base: type, facets: tuple[str, ...] = (), modules: tuple[str, ...] = (),
                 reserved: tuple[str, ...] = ()):
        super().__init__()
        self.kind, self.base, self.facets, self.modules, self.reserved = kind, base, facets, modules, reserved

    def register(self, cls):
        """Class decorator: add an instance of `cls` under its name."""
        entry = cls()
        own = cls.__mro__[:cls.__mro__.index(self.base)]  # the classes from cls down to the base, excluded
        missing = [f for f in self.facets if not any(f in vars(k) for k in own)]
        if not entry.name or entry.name in self or entry.name in self.reserved or missing:
            raise ValueError(f"{self.kind} '{entry.name}': unnamed, registered twice, reserved, or without "
                             f"{missing}")
        self[entry.name] = entry
        return cls

    def all(self) -> "Registry":
        """Every entry, by name (the modules that register more imported)."""
        for module in self.modules:
            importlib.import_module(module)
        return self
