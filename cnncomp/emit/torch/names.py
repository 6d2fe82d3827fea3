"""Name allocation for --emit torch: Python names for the spec's names, the class names, and
the attributes forward() reads.

A spec name keeps its name where Python allows it; otherwise (a keyword, a name the generated
code needs, a clash) it gets a suffix. `Naming` is the part of a class generator
(classgen.ClassGen) that holds the scopes and the names taken in one class.
"""

from __future__ import annotations

import itertools
import keyword
import re
from dataclasses import dataclass

from cnncomp.emit.torch.unsupported import NotSupported
from cnncomp.frontend.cnn import ast

# Names the imports of a generated file define.
IMPORT_NAMES = {"math", "torch", "nn", "F"}
# Python names generated code uses that spec names must not shadow.
PY_BUILTINS = {"range", "tuple", "len", "min", "max", "str", "super", "isinstance", "int", "float", "list", "sum",
               "self", "print", "type", "object", "bool", "dict", "set", "slice", "abs", "round", "all", "any",
               "zip", "enumerate", "reversed", "map", "filter", "iter", "next", "id", "hash", "getattr", "setattr",
               "hasattr", "ValueError", "TypeError", "Exception", "None", "True", "False"}


@dataclass
class Binding:
    kind: str  # tensor, value, loop
    py: str  # the Python local: a tensor's forward variable, or the value
    shape: str = ""  # a tensor's __init__ shape variable


@dataclass
class Var:
    py: str
    shape: str


@dataclass
class Stmt:
    """Naming state of one statement: stage paths are its path plus the counter."""

    path: tuple
    counter: object = 0
    base: str = "t"  # name for temporaries


def module_attributes() -> set[str]:
    """Names a submodule cannot take as an attribute: nn.Module's own (and `out_shape`)."""
    try:
        import torch
    except ImportError:  # the source can be written without torch; a few common names then
        return {"training", "forward", "eval", "train", "to", "type", "float", "half", "double", "cuda", "cpu",
                "apply", "parameters", "buffers", "modules", "children", "state_dict", "out_shape"}
    return set(dir(torch.nn.Module())) | {"out_shape"}


def network_class_name(name: str, taken: set[str]) -> str:
    """The class of the network: its name in CamelCase (`resnet50` -> `Resnet50`)."""
    base = camel(name)
    candidate = base
    while candidate in taken:
        candidate += "Net"
    return candidate


def camel(name: str) -> str:
    parts = [p for p in re.split(r"_+", name) if p]
    out = ""
    for p in parts:
        if out and out[-1].isdigit() and p[0].isdigit():
            out += "_"
        out += p[0].upper() + p[1:]
    if not out or not out[0].isalpha():
        out = "N" + out
    return out


def walk(node):
    """Every AST node in a node or a list of them."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, list):
            stack.extend(n)
        elif hasattr(n, "__dataclass_fields__"):
            yield n
            stack.extend(getattr(n, f) for f in n.__dataclass_fields__ if f != "loc")


def block_param_names(emitter, block: ast.BlockDef) -> dict[str, str]:
    """Python names of a block's parameters (spec names unless they clash with module-level names)."""
    names = {}
    taken = set(emitter.taken) - set(emitter.let_names.values())
    for p in block.params:
        candidate = p.name
        while candidate in taken or keyword.iskeyword(candidate) or candidate in ("x_shape", "self"):
            candidate += "_"
        taken.add(candidate)
        names[p.name] = candidate
    return names


class Naming:
    """The scopes and taken names of one class (a mixin of ClassGen)."""

    def _spec_names(self, body) -> set[str]:
        names = set()
        for s in body:
            if isinstance(s, (ast.Assign, ast.Input)):
                names.add(s.name)
        for node in walk(body):
            if isinstance(node, ast.RepeatStage) and node.var:
                names.add(node.var)
        if self.block is not None:
            names |= {p.name for p in self.block.params}
        return names

    def _static_children(self, body) -> set[str]:
        """First parts of the layer paths of this class that are known before it runs."""
        out = set()
        for s in body:
            if isinstance(s, ast.Assign) and any(isinstance(n, ast.LayerStage) for n in walk(s.value)):
                out.add(s.name)
        for node in walk(body):
            if isinstance(node, ast.LayerStage) and node.alias is not None:
                first = node.alias.text.split(".")[0]
                if "{" not in first:
                    out.add(first)
        return out

    def alloc(self, base: str, tensor: bool = False, own: bool = True) -> str:
        """A fresh Python local near `base` (for a tensor, `NAME_shape` must be free too). Derived
        names (own=False: temporaries) never take a name the spec uses."""
        if not base.isidentifier():
            base = "v_" + re.sub(r"\W", "_", base)
        # candidates made one at a time: most names are free at the first, and a list of all
        # 10,000 per name would make a long spec's emission quadratic in practice
        for candidate in itertools.chain((base, f"{base}_"), (f"{base}_{k}" for k in range(2, 10_000))):
            names = [candidate, f"{candidate}_shape"] if tensor else [candidate]
            if any(keyword.iskeyword(n) or n in self.em.taken or n in self.used_py for n in names):
                continue
            if any(n in self.spec_names for n in names[1:]) or \
                    (candidate in self.spec_names and (not own or candidate != base)):
                continue
            self.used_py.update(names)
            return candidate
        raise NotSupported(f"--emit torch: no free Python name for '{base}'")

    def bind(self, name: str, kind: str, base: str | None = None) -> Binding:
        py = self.alloc(base or name, tensor=kind == "tensor")
        b = Binding(kind, py, f"{py}_shape" if kind == "tensor" else "")
        self.scopes[-1][name] = b
        return b

    def temp(self, st: Stmt) -> Var:
        n = self.temp_count.get(st.base, 0) + 1
        self.temp_count[st.base] = n
        py = self.alloc(f"{st.base}_{n}", tensor=True, own=False)
        return Var(py, f"{py}_shape")

    def lookup(self, name: str) -> Binding | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    def attr(self, b: Binding) -> str:
        """The attribute that stores a value for forward()."""
        if b.py not in self.stored:
            candidate = b.py
            while candidate in self.attrs_taken or candidate in self.stored.values():
                candidate += "_"
            self.stored[b.py] = candidate
        return self.stored[b.py]

