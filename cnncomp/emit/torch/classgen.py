"""Class assembly for --emit torch: one nn.Module class, the translation of a block definition
(or of the network's statements), with its docstring, `__init__` and `forward`.

`ClassGen` combines the roles of its mixins, one module each: names (names.Naming), value
expressions (values.ValuePrinter), layer paths (paths.LayerPaths), statements
(lowering.StatementLowering) and layers through the op registry (layers.LayerTranslation).
"""

from __future__ import annotations

import re
from pathlib import Path

from cnncomp.emit.torch.comments import Comments, last_line, statement_comments
from cnncomp.emit.torch.layers import LayerTranslation
from cnncomp.emit.torch.lowering import StatementLowering
from cnncomp.emit.torch.names import Binding, Naming, block_param_names
from cnncomp.emit.torch.paths import LayerPaths
from cnncomp.emit.torch.values import ValuePrinter, py_string
from cnncomp.emit.torch.writer import Block, Writer, fmt_shape, indent_doc
from cnncomp.errors import CnnError
from cnncomp.frontend.cnn import ast


class ClassGen(LayerTranslation, StatementLowering, LayerPaths, ValuePrinter, Naming):
    """One class: a block definition's translation, or the network's (block None)."""

    def __init__(self, emitter, block: ast.BlockDef | None, only_values: bool = False):
        self.em = emitter
        self.block = block
        self.init = Writer()
        self.fwd = Writer()
        self.scopes: list[dict[str, Binding]] = [{}]
        self.used_py: set[str] = set()
        self.stored: dict[str, str] = {}  # py local -> attribute
        self.attrs_taken: set[str] = set(emitter.module_attrs)
        self.item_on_self = False
        self.container_uses: dict[str, tuple[list, int]] = {}
        self.temp_count: dict[str, int] = {}
        self.spec_names: set[str] = set()
        if only_values:
            return
        body = block.body if block is not None else emitter.program.stmts
        self.spec_names = self._spec_names(body)
        self.attrs_taken |= self._static_children(body)

    def render(self) -> str:
        if self.block is not None:
            return self.render_block()
        return self.render_network()

    def render_block(self) -> str:
        block = self.block
        comments = Comments(block.file)
        params = block_param_names(self.em, block)
        signature = []
        after_default = False
        for p in block.params:
            py = params[p.name]
            self.used_py.add(py)
            self.scopes[0][p.name] = Binding("value", py)
            if p.default is not None:
                signature.append(f"{py}={self.vcode(p.default, 'global')[0]}")
                after_default = True
            elif after_default:  # a required parameter after one with a default: checked below
                signature.append(f"{py}=None")
                self.init.line(f"if {py} is None:")
                self.init.line(f"    raise TypeError(\"missing argument '{py}'\")")
            else:
                signature.append(py)
        in_py = self.alloc("x", tensor=True)
        self.scopes[0]["in"] = Binding("tensor", in_py, f"{in_py}_shape")
        stmt_comments = statement_comments(block.body, comments, block.loc.line)
        self.run_body(block.body, stmt_comments)
        # block docstring: its leading comment, then where it comes from
        program_stmts = self._file_stmts(block.file)
        lead = []
        if program_stmts is not None:
            index = next((i for i, s in enumerate(program_stmts) if s is block or (
                isinstance(s, ast.BlockDef) and s.name == block.name and s.loc == block.loc)), None)
            if index is not None:
                previous = 0 if index == 0 else self._stmt_end(program_stmts[index - 1], comments)
                lead = comments.between(previous + 1, block.loc.line - 1) + comments.between(block.loc.line,
                                                                                               block.loc.line)
        sig_text = ", ".join(p.name + ("" if p.default is None else "=" + spec_text(p.default, comments))
                             for p in block.params)
        where = f"{Path(block.file).name}:{block.loc.line}" if not block.file.startswith("<") else block.file
        doc = lead + ([""] if lead else []) + [
            f"The block `{block.name}({sig_text})` ({where}), for inputs of shape `{in_py}_shape`."]
        base = "Modules" if self.item_on_self else "nn.Module"
        if self.item_on_self:
            self.em.helpers.add("Modules")
        head = [f"class {self.em.class_names[block.name]}({base}):", indent_doc(doc, 4), "",
                f"    def __init__(self, {', '.join([f'{in_py}_shape'] + signature)}):",
                "        super().__init__()"]
        return "\n".join(head + self._bodies(f"    def forward(self, {in_py}):"))

    def _file_stmts(self, file: str):
        if file == self.em.program.file:
            return self.em.program.stmts
        from cnncomp.frontend.cnn.parser import parse_file

        try:
            return parse_file(file).stmts
        except CnnError:
            return None

    @staticmethod
    def _stmt_end(stmt, comments: Comments) -> int:
        if isinstance(stmt, ast.BlockDef):
            return comments.closing_line(max(last_line(stmt.body), stmt.loc.line))
        return last_line(stmt)

    def drop_dead_shapes(self) -> None:
        """Remove the straight-line `NAME_shape = ...` lines of __init__ that nothing reads (shape
        rules are pure: the shape of a network's last layers is not needed)."""
        shapes = {n for n in self.used_py if n.endswith("_shape")}
        used: set[str] = set()
        items = self.init.root.items
        for index in range(len(items) - 1, -1, -1):
            item = items[index]
            if isinstance(item, Block):
                # names read, not attributes: `m.out_shape` does not read a variable `out_shape`
                used |= set(re.findall(r"(?<![.\w])\w+", "\n".join(item.render(0))))
                continue
            target, eq, _ = item.partition(" = ")
            if eq and target in shapes and target not in used:
                del items[index]
                continue
            used |= set(re.findall(r"(?<![.\w])\w+", item))

    def _bodies(self, forward_header: str) -> list[str]:
        self.place_containers()
        self.drop_dead_shapes()
        stores = [f"self.{attr} = {py}" for py, attr in self.stored.items()]
        init = self.init.root.render(8)
        if stores:
            last_is_shape = init and init[-1].strip().startswith("self.out_shape")
            tail = [init.pop()] if last_is_shape else []
            init += ["        " + s for s in stores] + tail
        fwd = self.fwd.root.render(8)
        return init + ["", forward_header] + fwd

    def render_network(self) -> str:
        em = self.em
        program = em.program
        comments = Comments(program.file)
        stmt_comments = statement_comments(program.stmts, comments, 0)
        inputs = [s for s in program.stmts if isinstance(s, ast.Input)]
        kwargs = []
        doc = []
        for s in inputs:
            b = self.bind(s.name, "tensor")
            dims = []
            for d in s.dims:
                if isinstance(d, ast.Name) and d.id not in em.defs.lets:
                    dims.append(py_string(d.id))
                else:
                    dims.append(self.vcode(d, "global")[0])
            kwargs.append(f"{b.shape}=({', '.join(dims)}{',' if len(dims) == 1 else ''})")
            for i, stmt in enumerate(program.stmts):
                if stmt is s and stmt_comments.get(i):
                    doc.append(f"{s.name}: " + " ".join(stmt_comments[i]))
        body = [s for s in program.stmts if isinstance(s, (ast.Assign, ast.Output))]
        body_comments = {}
        for i, stmt in enumerate(program.stmts):
            if isinstance(stmt, (ast.Assign, ast.Output)) and i in stmt_comments:
                body_comments[body.index(stmt)] = stmt_comments[i]
        self.run_body(body, body_comments)
        ins = ", ".join(f"{n} {'' if em.graph.layer(n).dtype == 'float32' else em.graph.layer(n).dtype}"
                        f"{fmt_shape(em.graph.layer(n).shape)}" for n in em.graph.inputs)
        outs = ", ".join(f"{n} {fmt_shape(em.graph.layer(layer).shape)}"
                         for n, layer in zip(em.graph.output_names, em.graph.outputs))
        text = [f"The network `{em.graph.name}`."] + ([""] + doc if doc else []) + [
            "", f"Inputs: {ins}.", f"Outputs: {outs}.",
            "The input shapes are arguments (symbolic dims by name): the layers are built for them."]
        base = "Modules" if self.item_on_self else "nn.Module"
        if self.item_on_self:
            em.helpers.add("Modules")
        in_names = ", ".join(self.lookup(s.name).py for s in inputs)
        head = [f"class {em.network_class}({base}):", indent_doc(text, 4), "",
                f"    def __init__(self, {', '.join(kwargs)}):", "        super().__init__()"]
        return "\n".join(head + self._bodies(f"    def forward(self, {in_names}):"))


def spec_text(e, comments: Comments) -> str:
    """The source text of a short expression (a parameter's default)."""
    if isinstance(e, ast.Num):
        return repr(e.value)
    if isinstance(e, ast.Bool):
        return "true" if e.value else "false"
    if isinstance(e, ast.Str):
        return f'"{e.value}"'
    if isinstance(e, ast.Name):
        return e.id
    line = comments.parts[e.loc.line - 1][0] if 0 < e.loc.line <= len(comments.parts) else ""
    text = line[max(e.loc.col - 1, 0):]
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            if depth == 0:
                return text[:i].strip()
            depth -= 1
        elif ch == "," and depth == 0:
            return text[:i].strip()
    return text.strip() or "..."

