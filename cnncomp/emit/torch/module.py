"""Module assembly for --emit torch: the whole generated file.

Its docstring (the spec's header comment, what the file needs and how weights load), the
imports the code uses, the spec's constants (`let`), one class per block the spec calls
(callees first, classgen.py), the network's class, then the prelude helpers it uses
(prelude.py).
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from cnncomp.emit.torch.classgen import ClassGen
from cnncomp.emit.torch.comments import Comments, one_line, statement_comments
from cnncomp.emit.torch.names import (
    IMPORT_NAMES,
    PY_BUILTINS,
    camel,
    module_attributes,
    network_class_name,
)
from cnncomp.emit.torch.prelude import (
    PRELUDE,
    PRELUDE_NAMES,
    TOP_HELPERS,
    helper_closure,
)
from cnncomp.emit.torch.values import is_literal, literal
from cnncomp.emit.torch.writer import doc_escape, wrap_doc
from cnncomp.frontend.cnn import ast
from cnncomp.frontend.cnn.loader import collect_definitions
from cnncomp.ir.graph import LayerGraph


class ModuleEmitter:
    """Writes the whole file: constants, one class per block used, the network class, the helpers."""

    def __init__(self, program: ast.Program, graph: LayerGraph, overrides: dict | None):
        self.program = program
        self.graph = graph
        self.overrides = dict(overrides or {})
        self.defs = collect_definitions(program, self.overrides)
        self.helpers: set[str] = set()
        self.module_attrs = module_attributes()
        self.used_lets: set[str] = set()
        # module-level names: imports, helpers, constants, classes
        self.taken = set(IMPORT_NAMES) | PRELUDE_NAMES | PY_BUILTINS | set(keyword.kwlist)
        self.let_names: dict[str, str] = {}
        for name in self.defs.lets:
            self.let_names[name] = self._module_name(name)
        self.blocks = self._used_blocks()
        self.class_names: dict[str, str] = {}
        for name in self.blocks:
            base = camel(name)
            candidate = base if base not in self.taken else base + "Block"
            k = 2
            while candidate in self.taken:
                candidate, k = f"{base}Block{k}", k + 1
            self.class_names[name] = candidate
            self.taken.add(candidate)
        self.network_class = network_class_name(graph.name, self.taken)
        self.taken.add(self.network_class)
        self.uses_bn = any(layer.op == "bn" for layer in graph.layers())

    def _module_name(self, name: str) -> str:
        candidate = name
        while candidate in self.taken:
            candidate += "_"
        self.taken.add(candidate)
        return candidate

    # ---- which blocks ------------------------------------------------------------------------

    def _used_blocks(self) -> list[str]:
        """Blocks the spec calls (in any branch), callees before callers."""
        order: list[str] = []
        seen: set[str] = set()

        def visit_calls(node):
            stack = [node]
            while stack:
                n = stack.pop()
                if isinstance(n, list):
                    stack.extend(reversed(n))
                elif isinstance(n, ast.LayerStage) and n.func in self.defs.blocks:
                    visit_block(n.func)
                    stack.extend(reversed(n.args))
                elif hasattr(n, "__dataclass_fields__") and not isinstance(n, ast.BlockDef):
                    stack.extend(reversed([getattr(n, f) for f in n.__dataclass_fields__ if f != "loc"]))

        def visit_block(name: str):
            if name in seen:
                return
            seen.add(name)
            visit_calls(self.defs.blocks[name].body)
            order.append(name)

        visit_calls([s for s in self.program.stmts if isinstance(s, (ast.Assign, ast.Output))])
        return order

    # ---- the file ----------------------------------------------------------------------------

    def emit(self) -> str:
        classes = [ClassGen(self, self.defs.blocks[name]).render() for name in self.blocks]
        classes.append(ClassGen(self, None).render())
        constants = self._constants()
        # what module-level code and class definitions need comes first, the other helpers last
        parts = [PRELUDE[name].source for name in TOP_HELPERS if name in self.helpers]
        parts += [constants] if constants else []
        parts += classes
        helpers = self._helper_sources()
        if helpers:
            parts.append("# ---- the .cnn layers used above, in plain PyTorch " + "-" * 40 + "\n\n\n"
                         + "\n\n\n".join(helpers))
        body = "\n\n\n".join(parts)
        return "\n\n\n".join([self._docstring(), self._imports(body), body]) + "\n"

    def _helper_sources(self) -> list[str]:
        return [PRELUDE[name].source for name in helper_closure(self.helpers) if name not in TOP_HELPERS]

    def _docstring(self) -> str:
        file = self.program.file
        comments = Comments(file)
        first = self.program.stmts[0].loc.line if self.program.stmts else 1
        header = comments.between(1, first - 1)
        where = Path(file).name if not file.startswith("<") else file
        defines = " ".join(one_line(f"-D {k}={v}") for k, v in self.overrides.items())
        lines = [f"{self.graph.name} in PyTorch, generated by cnncomp (--emit torch) from {where}"
                 + (f" with {defines}" if defines else "") + "."]
        if header:
            lines += [""] + header
        weights = [f"{layer.name}.{s}" for layer in self.graph.layers() for s in layer.weights]
        example = ", ".join(f"`{w}`" for w in ([weights[0], weights[-1]] if len(weights) > 1 else weights))
        builds = f"Needs only torch. `{self.network_class}()` builds the network."
        lines += ["", (f"{builds} Its state_dict() keys are the spec's weight names ({example}), so cnncomp's "
                       "weights load with load_state_dict(strict=True).") if weights else
                  f"{builds} It has no weights."]
        if self.uses_bn:
            lines.append("Batch norms are nn.BatchNorm: in train() mode they use batch statistics, and they "
                         "also hold num_batches_tracked (a state dict without it loads: the count starts at 0).")
        text = "\n".join(wrap_doc(lines))
        return '"""' + doc_escape(text) + '\n"""'

    @staticmethod
    def _imports(body: str) -> str:
        """The imports the code uses (isort's order, as ruff wants it)."""
        lines = ["import math", ""] if re.search(r"\bmath\.", body) else []
        lines += ["import torch"] if re.search(r"(?<![.\w])torch\.", body) else []
        lines += ["import torch.nn.functional as F"] if re.search(r"(?<![.\w])F\.", body) else []
        lines += ["from torch import nn"]
        return "\n".join(lines)

    def _constants(self) -> str:
        own = [s for s in self.program.stmts if isinstance(s, ast.Let)]
        own_names = {s.name for s in own}
        if not own and not self.used_lets:
            return ""
        comments = Comments(self.program.file)
        stmt_comments = statement_comments(self.program.stmts, comments, 0, split=True)
        index = {id(s): i for i, s in enumerate(self.program.stmts)}
        codes = {}  # first, so that the lets they read are marked used
        for stmt in own:
            if stmt.name not in self.overrides and not is_literal(stmt.value):
                codes[stmt.name] = ClassGen(self, None, only_values=True).vcode(stmt.value, "global")[0]
        lines = ["# ---- the spec's constants (`let`) " + "-" * 60]
        for name, value in self.defs.lets.items():
            if name not in own_names and name not in self.used_lets:
                continue
            stmt = next((s for s in own if s.name == name), None)
            leading, trailing = stmt_comments[index[id(stmt)]] if stmt is not None else ([], [])
            lines += [f"# {text}" if text else "#" for text in leading]
            code = codes.get(name) or literal(value)
            if name in self.overrides:
                trailing = [one_line(f"-D {name}={self.overrides[name]}")] + trailing
            lines.append(f"{self.let_names[name]} = {code}" + (f"  # {'; '.join(trailing)}" if trailing else ""))
        return "\n".join(lines)

