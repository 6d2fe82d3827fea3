"""--emit torch: readable PyTorch source for a spec, with no dependency on cnncomp.

The generated file holds one `nn.Module` class per block definition the spec
uses (standard blocks included) and one class for the network. Each class is
a translation of the block's statements, not of one elaborated instance:

- `__init__(self, x_shape, *params)` takes the block's parameters and the
  shape of its input, and builds the submodules in statement order, tracking
  every tensor by its shape (`y_shape`), so that `channels(in) * t`, `if
  stride != 1 or channels(in) != out` and repeats are plain Python. It ends
  with `self.out_shape`, the shape of what the block returns; the caller
  passes it on to the next layer.
- `forward(self, x)` evaluates the same statements on tensors. Conditions are
  evaluated again there (on `x.shape` and the parameters `__init__` stored),
  so a block called with and without a downsample branch is one class.

Submodules sit at the layer names, so `state_dict()` keys are exactly the
spec's weight names: `as conv1` is `self.conv1`, a dotted name or a numbered
stage goes through `Modules` containers (`self.downsample[0]`,
`self.features.denseblock1[f"denselayer{i + 1}"]`), and stage numbers follow
the elaborator's statement counter (cnncomp/frontend/cnn/elaborate.py), also across
repeats (`self.features[5 + 2 * i]`) and conditional stages. Layers with
weights are torch modules built by small factories (`conv(x_shape, 64, k=3)`
returns an nn.Conv2d with an `out_shape`); weight-free layers are calls in
forward (`F.relu`, `maxpool(y, k=3, s=2, p=1)`). Helpers that carry the exact
semantics of the op registry (asymmetric `same` padding, avgpool's
count_pad, minpool, lppool, kmaxpool, shuffle, deform_conv, ...) are emitted
into the file, only those the network uses.

Batch norm is nn.BatchNorm1d/2d/3d (a standard module, in train() mode it uses
batch statistics like any PyTorch model). It holds `num_batches_tracked`,
which cnncomp's weights do not have: the `bn` factory registers a
load_state_dict pre-hook that sets it to 0 when a state dict lacks it, so both
cnncomp's weights and torchvision-style state dicts load with strict=True.

Comments of the spec go with the code: the file's header comment opens the
module docstring, a block's leading comment becomes its class docstring, and
a statement's comments are written above its code in `__init__` and `forward`.

A graph that passes rewrote (fold-bn, ...) no longer follows its spec: it is
printed as a .cnn spec first (`emit_cnn`, every layer named with `as`) and
that spec is translated: one class, no blocks. The same happens, with a
notice, for the few constructs the translation does not cover (NotSupported):
a repeat whose number of stages depends on its own loop variable,
channels()/spatial()/rank() of an unnamed tensor expression, an `if` with a
tensor in one branch and a value in the other. Every emitted source is
checked before it is returned: built on the meta device, its state_dict keys
and shapes must be the graph's weights.

The generated module is float32 (cast it with .half() or .double()); it
computes what cnncomp's reference computes in eval() mode. In train() mode it
is an ordinary PyTorch model: batch norm uses batch statistics, dropout drops.
"""

from __future__ import annotations

import keyword
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cnncomp.emit.torch.support import (
    Comments,
    _ast_names,
    _last_line,
    _statement_comments,
    count_stages,
    count_sym,
    sym_add,
    sym_mul,
    sym_names,
)
from cnncomp.frontend.cnn import ast
from cnncomp.errors import CnnError, Loc
from cnncomp.ir.graph import LayerGraph
from cnncomp.ops.registry import get_op

# ---- the helpers a generated file may define (torch_prelude.py, read as text) ---------------------

_PRELUDE = (Path(__file__).parents[2] / "ops" / "torch_prelude.py").read_text(encoding="utf-8")


def _parse_prelude() -> dict[str, tuple[tuple[str, ...], str]]:
    sections: dict[str, tuple[tuple[str, ...], str]] = {}
    for chunk in re.split(r"^# @ ", _PRELUDE, flags=re.MULTILINE)[1:]:
        header, _, body = chunk.partition("\n")
        name, _, deps = header.partition(":")
        sections[name.strip()] = (tuple(d.strip() for d in deps.split(",") if d.strip()), body.strip("\n"))
    return sections


PRELUDE = _parse_prelude()

# Names the generated file defines besides the prelude sections' own names.
_PRELUDE_EXTRA_NAMES = {"PadFirst", "PaddedConv1d", "PaddedConv2d", "PaddedConv3d", "CONVS", "PADDED_CONVS",
                        "DeformConv2d", "count_from_zero", "CropAfter", "CroppedConvTranspose1d",
                        "CroppedConvTranspose2d", "CroppedConvTranspose3d", "CONV_TRANSPOSES",
                        "CROPPED_CONV_TRANSPOSES"}
_IMPORT_NAMES = {"math", "torch", "nn", "F"}
# Helpers written before the classes: `div` may be called by constants and parameter defaults,
# `Modules` is a base class.
_TOP_HELPERS = ("div", "Modules")
# Python names generated code uses that spec names must not shadow.
_PY_BUILTINS = {"range", "tuple", "len", "min", "max", "str", "super", "isinstance", "int", "float", "list", "sum",
                "self", "print", "type", "object", "bool", "dict", "set", "slice", "abs", "round", "all", "any",
                "zip", "enumerate", "reversed", "map", "filter", "iter", "next", "id", "hash", "getattr", "setattr",
                "hasattr", "ValueError", "TypeError", "Exception", "None", "True", "False"}

# Weight layers: built in __init__ by a factory of the same name.
_WEIGHT_OPS = {"conv", "conv_transpose", "deform_conv", "linear", "bn", "gn", "prelu"}
# Weight-free layers that keep their input's shape.
_SAME_SHAPE = {"relu", "sigmoid", "tanh", "silu", "gelu", "hardswish", "hardsigmoid", "elu", "relu6", "leaky_relu",
               "rrelu", "softmax", "log_softmax", "dropout", "identity", "shuffle", "selu", "mish"}
# Weight-free layers written as a call of torch.nn.functional or torch: op -> (function, its
# arguments after the tensor (the spec's parameters, in order; "*name" is passed by keyword), whether to
# write them when defaulted).
_TORCH_CALLS = {
    "relu": ("F.relu", [], False), "sigmoid": ("torch.sigmoid", [], False), "tanh": ("torch.tanh", [], False),
    "silu": ("F.silu", [], False), "gelu": ("F.gelu", ["*approximate"], False),
    "hardswish": ("F.hardswish", [], False), "selu": ("F.selu", [], False), "mish": ("F.mish", [], False),
    "pixel_shuffle": ("F.pixel_shuffle", ["r"], True), "pixel_unshuffle": ("F.pixel_unshuffle", ["r"], True),
    "hardsigmoid": ("F.hardsigmoid", [], False), "relu6": ("F.relu6", [], False),
    "elu": ("F.elu", ["alpha"], False), "leaky_relu": ("F.leaky_relu", ["a"], False),
    "rrelu": ("F.rrelu", ["lower", "upper"], False),  # training=False: the mean slope, as the reference
    "softmax": ("F.softmax", ["axis"], True), "log_softmax": ("F.log_softmax", ["axis"], True),
}
# Weight-free layers that are a prelude helper of the same name, called with the spec's arguments.
_HELPER_CALLS = {"maxpool", "avgpool", "minpool", "lppool", "gap", "gmp", "kmaxpool", "shuffle", "upsample", "pad"}
_POOLS = {"maxpool", "avgpool", "minpool", "lppool"}
_SHAPE_PARAMS = {"k", "s", "p", "d", "ceil"}  # shape_pool's parameters

# Python operator precedences (higher binds tighter).
P_COND, P_OR, P_AND, P_NOT, P_CMP, P_SUM, P_PROD, P_NEG, P_ATOM = 0, 1, 2, 3, 4, 7, 8, 9, 11
_BINOP_PREC = {"or": P_OR, "and": P_AND, "+": P_SUM, "-": P_SUM, "*": P_PROD, "//": P_PROD, "%": P_PROD,
               "==": P_CMP, "!=": P_CMP, "<": P_CMP, "<=": P_CMP, ">": P_CMP, ">=": P_CMP}
_LINE_WIDTH = 100


class NotSupported(CnnError):
    """A spec construct --emit torch cannot translate."""


def emit_torch(spec, overrides: dict[str, str] | None = None, *, notices: list[str] | None = None,
               format: bool = True, check: bool = True) -> str:
    """PyTorch source (needing only torch) for a spec path or a LayerGraph: one nn.Module per block used."""
    from cnncomp.frontend.cnn.loader import elaborate_program
    from cnncomp.frontend.cnn.parser import parse, parse_file

    notices = notices if notices is not None else []
    if isinstance(spec, LayerGraph):
        graph = spec
        program = _program_of(graph)
        overrides = graph.meta.get("overrides") or None
    else:
        program = parse_file(spec)
        graph = elaborate_program(program, overrides)
    why = None
    if program is None:
        passes = ", ".join(graph.meta.get("passes", []))
        why = (f"the passes rewrote the graph ({passes}): emitting it as one class without blocks; use -O0 "
               "for one class per block of the spec") if passes else \
            "the graph's spec is not available: emitting it as one class without blocks"
    else:
        try:
            emitter = _ModuleEmitter(program, graph, overrides)
            source = emitter.emit()
        except NotSupported as err:
            why = f"{err.message} ({err.loc}): emitting the network as one class without blocks"
    if why is not None:
        from cnncomp.ir.printer import emit_cnn

        notices.append(why)
        passes = ", ".join(graph.meta.get("passes", []))
        text = emit_cnn(graph, header=f"{graph.name}, layer by layer" + (f" after the passes ({passes})"
                                                                         if passes else ""))
        emitter = _ModuleEmitter(parse(text, f"<{graph.name} layer by layer>"), graph, None)
        source = emitter.emit()
    if format:
        source = format_source(source)
    if check:
        try:
            import torch  # noqa: F401
        except ImportError:
            notices.append("torch is not installed: the generated module was not checked")
        else:
            check_source(source, graph, emitter.network_class)
    return source


def _program_of(graph: LayerGraph) -> ast.Program | None:
    """The parsed spec of a graph that the passes left as elaborated, or None."""
    from cnncomp.frontend.cnn.loader import elaborate_program
    from cnncomp.frontend.cnn.parser import parse, parse_file
    from cnncomp.errors import SOURCES

    file = graph.meta.get("file")
    if graph.meta.get("passes") or not file:
        return None
    try:
        if Path(file).is_file():
            program = parse_file(file)
        elif file in SOURCES.texts:  # a spec given as text (load_text)
            program = parse("\n".join(SOURCES.texts[file]) + "\n", file)
        else:
            return None
        again = elaborate_program(program, graph.meta.get("overrides") or None)
    except CnnError:
        return None
    same = [(x.name, x.op, x.shape, tuple(x.weights)) for x in again.layers()] == \
           [(x.name, x.op, x.shape, tuple(x.weights)) for x in graph.layers()]
    return program if same and again.output_names == graph.output_names else None


def format_source(source: str) -> str:
    """The source through `ruff format` when ruff is installed (default settings), else as it is."""
    try:
        done = subprocess.run([sys.executable, "-m", "ruff", "format", "--isolated", "-"], input=source,
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return source
    return done.stdout if done.returncode == 0 and done.stdout else source


def check_source(source: str, graph: LayerGraph, class_name: str) -> None:
    """Build the emitted network on the meta device: its state_dict must hold exactly the graph's weights."""
    import torch

    from cnncomp.ir.weights import expected_weights

    namespace: dict = {"__name__": "cnncomp_emitted"}
    try:
        exec(compile(source, f"<{graph.name}.py>", "exec"), namespace)  # noqa: S102 - our own output
        with torch.device("meta"):
            net = namespace[class_name]()
    except Exception as exc:  # an emitter bug: say so with the cause
        raise CnnError(f"--emit torch: the generated module does not build ({type(exc).__name__}: {exc})") from exc
    got = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith(".num_batches_tracked")}
    want = {k: tuple(spec.shape) for k, spec in expected_weights(graph).items()}
    if got != want:
        missing = sorted(set(want) - set(got))[:5]
        extra = sorted(set(got) - set(want))[:5]
        wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])[:5]
        raise CnnError(f"--emit torch: the generated module's weights differ from the spec's (missing {missing}, "
                       f"unexpected {extra}, wrong shape {wrong})")


def network_class_name(name: str, taken: set[str]) -> str:
    """The class of the network: its name in CamelCase (`resnet50` -> `Resnet50`)."""
    base = _camel(name)
    candidate = base
    while candidate in taken:
        candidate += "Net"
    return candidate


def _camel(name: str) -> str:
    parts = [p for p in re.split(r"_+", name) if p]
    out = ""
    for p in parts:
        if out and out[-1].isdigit() and p[0].isdigit():
            out += "_"
        out += p[0].upper() + p[1:]
    if not out or not out[0].isalpha():
        out = "N" + out
    return out


# ---- code writing -------------------------------------------------------------------------------

@dataclass
class Block:
    """Lines of code, with nested blocks (`if`, `else`, `for`)."""

    header: str | None = None
    kind: str = "root"
    items: list = field(default_factory=list)
    created: set = field(default_factory=set)  # dynamic containers created in this block

    def render(self, indent: int) -> list[str]:
        out = []
        pad = " " * indent
        inner = indent
        if self.header is not None:
            out.append(pad + self.header)
            inner = indent + 4
        if not self.items and self.header is not None:
            out.append(" " * inner + "pass")
        for item in self.items:
            if isinstance(item, Block):
                out += item.render(inner)
            else:
                out.append((" " * inner + item) if item else "")
        return out


class Writer:
    """One method body being written."""

    def __init__(self):
        self.root = Block()
        self.stack = [self.root]

    def line(self, text: str) -> None:
        self.stack[-1].items.append(text)

    def comments(self, texts: list[str]) -> None:
        for t in texts:
            self.line(f"# {t}" if t else "#")

    def open(self, header: str, kind: str) -> None:
        block = Block(header, kind)
        self.stack[-1].items.append(block)
        self.stack.append(block)

    def close(self) -> None:
        self.stack.pop()

    def position(self) -> list[tuple[Block, int]]:
        """Where the next line goes: each open block with the index of its open child (or next line)."""
        chain = [(b, len(b.items) - 1) for b in self.stack[:-1]]
        return chain + [(self.stack[-1], len(self.stack[-1].items))]


# ---- values and tensors while a class is generated ------------------------------------------------

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
class TVal:
    """A tensor: its forward expression, its __init__ shape expression."""

    fwd: str
    shape: str
    prec: int = P_ATOM
    depth: int = 0  # calls nested in fwd since it was last a variable
    ends_line: bool = False  # the next stage starts a new line


@dataclass
class Stmt:
    """Naming state of one statement: stage paths are its path plus the counter."""

    path: tuple
    counter: object = 0
    base: str = "t"  # name for temporaries


def _py_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(value) -> str:
    """A compile-time value of the language as Python source."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _py_string(value)
    if isinstance(value, tuple):
        items = [_literal(v) for v in value]
        return "(" + items[0] + ",)" if len(items) == 1 else "(" + ", ".join(items) + ")"
    raise NotSupported(f"--emit torch: cannot write the value {value!r}")


def _paren(code: tuple[str, int], need: int) -> str:
    text, prec = code
    return f"({text})" if prec < need else text


def _is_literal(e) -> bool:
    if isinstance(e, (ast.Num, ast.Str, ast.Bool)):
        return True
    if isinstance(e, ast.UnaryOp) and e.op == "-":
        return isinstance(e.operand, ast.Num)
    if isinstance(e, ast.TupleExpr):
        return all(_is_literal(i) for i in e.items)
    return False


def _module_attributes() -> set[str]:
    """Names a submodule cannot take as an attribute: nn.Module's own (and `out_shape`)."""
    try:
        import torch
    except ImportError:  # the source can be written without torch; a few common names then
        return {"training", "forward", "eval", "train", "to", "type", "float", "half", "double", "cuda", "cpu",
                "apply", "parameters", "buffers", "modules", "children", "state_dict", "out_shape"}
    return set(dir(torch.nn.Module())) | {"out_shape"}


class _ModuleEmitter:
    """Writes the whole file: constants, one class per block used, the network class, the helpers."""

    def __init__(self, program: ast.Program, graph: LayerGraph, overrides: dict | None):
        from cnncomp.frontend.cnn.elaborate import Definitions
        from cnncomp.frontend.cnn.loader import _collect, _key, standard_blocks

        self.program = program
        self.graph = graph
        self.overrides = dict(overrides or {})
        self.defs = Definitions(blocks=dict(standard_blocks()))
        _collect(program, self.defs, self.overrides, set(), stack=[_key(program.file)], top=True)
        self.helpers: set[str] = set()
        self.module_attrs = _module_attributes()
        self.used_lets: set[str] = set()
        # module-level names: imports, helpers, constants, classes
        self.taken = set(_IMPORT_NAMES) | set(PRELUDE) | _PRELUDE_EXTRA_NAMES | _PY_BUILTINS | set(keyword.kwlist)
        self.let_names: dict[str, str] = {}
        for name in self.defs.lets:
            self.let_names[name] = self._module_name(name)
        self.blocks = self._used_blocks()
        self.class_names: dict[str, str] = {}
        for name in self.blocks:
            base = _camel(name)
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
        parts = [PRELUDE[name][1] for name in _TOP_HELPERS if name in self.helpers]
        parts += [constants] if constants else []
        parts += classes
        helpers = self._helper_sources()
        if helpers:
            parts.append("# ---- the .cnn layers used above, in plain PyTorch " + "-" * 40 + "\n\n\n"
                         + "\n\n\n".join(helpers))
        body = "\n\n\n".join(parts)
        return "\n\n\n".join([self._docstring(), self._imports(body), body]) + "\n"

    def _helper_closure(self) -> list[str]:
        done: list[str] = []

        def add(name: str):
            if name in done or name == "math":
                return
            for dep in PRELUDE[name][0]:
                add(dep)
            done.append(name)

        for name in sorted(self.helpers):
            add(name)
        order = list(PRELUDE)
        return sorted(done, key=order.index)

    def _helper_sources(self) -> list[str]:
        return [PRELUDE[name][1] for name in self._helper_closure() if name not in _TOP_HELPERS]

    def _docstring(self) -> str:
        file = self.program.file
        comments = Comments(file)
        first = self.program.stmts[0].loc.line if self.program.stmts else 1
        header = comments.between(1, first - 1)
        where = Path(file).name if not file.startswith("<") else file
        defines = " ".join(f"-D {k}={v}" for k, v in self.overrides.items())
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
        text = "\n".join(_wrap_doc(lines))
        return '"""' + _doc_escape(text) + '\n"""'

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
        stmt_comments = _statement_comments(self.program.stmts, comments, 0, split=True)
        index = {id(s): i for i, s in enumerate(self.program.stmts)}
        codes = {}  # first, so that the lets they read are marked used
        for stmt in own:
            if stmt.name not in self.overrides and not _is_literal(stmt.value):
                codes[stmt.name] = ClassGen(self, None, only_values=True).vcode(stmt.value, "global")[0]
        lines = ["# ---- the spec's constants (`let`) " + "-" * 60]
        for name, value in self.defs.lets.items():
            if name not in own_names and name not in self.used_lets:
                continue
            stmt = next((s for s in own if s.name == name), None)
            leading, trailing = stmt_comments[index[id(stmt)]] if stmt is not None else ([], [])
            lines += [f"# {text}" if text else "#" for text in leading]
            code = codes.get(name) or _literal(value)
            if name in self.overrides:
                trailing = [f"-D {name}={self.overrides[name]}"] + trailing
            lines.append(f"{self.let_names[name]} = {code}" + (f"  # {'; '.join(trailing)}" if trailing else ""))
        return "\n".join(lines)


def _wrap_doc(lines: list[str]) -> list[str]:
    import textwrap

    out = []
    for line in lines:
        if len(line) <= 88:
            out.append(line)
        else:
            out += textwrap.wrap(line, 88, break_long_words=False, break_on_hyphens=False)
    return out


def _doc_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


class ClassGen:
    """One class: a block definition's translation, or the network's (block None)."""

    def __init__(self, emitter: _ModuleEmitter, block: ast.BlockDef | None, only_values: bool = False):
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

    # ---- names ---------------------------------------------------------------------------------

    def _spec_names(self, body) -> set[str]:
        names = set()
        for s in body:
            if isinstance(s, (ast.Assign, ast.Input)):
                names.add(s.name)
        for node in _walk(body):
            if isinstance(node, ast.RepeatStage) and node.var:
                names.add(node.var)
        if self.block is not None:
            names |= {p.name for p in self.block.params}
        return names

    def _static_children(self, body) -> set[str]:
        """First parts of the layer paths of this class that are known before it runs."""
        out = set()
        for s in body:
            if isinstance(s, ast.Assign) and any(isinstance(n, ast.LayerStage) for n in _walk(s.value)):
                out.add(s.name)
        for node in _walk(body):
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
        for candidate in [base, f"{base}_"] + [f"{base}_{k}" for k in range(2, 10_000)]:
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

    # ---- values --------------------------------------------------------------------------------

    def vcode(self, e, mode: str) -> tuple[str, int]:
        """A value expression as Python: mode init (locals), fwd (stored on self) or global (constants only)."""
        if isinstance(e, ast.Num):
            return (repr(e.value), P_ATOM if e.value >= 0 else P_NEG)
        if isinstance(e, ast.Str):
            return (_py_string(e.value), P_ATOM)
        if isinstance(e, ast.Bool):
            return ("True" if e.value else "False", P_ATOM)
        if isinstance(e, ast.Name):
            return (self.name_code(e, mode), P_ATOM)
        if isinstance(e, ast.TupleExpr):
            items = [_paren(self.vcode(i, mode), P_COND + 1) for i in e.items]
            return ("(" + items[0] + ",)" if len(items) == 1 else "(" + ", ".join(items) + ")", P_ATOM)
        if isinstance(e, ast.UnaryOp):
            if e.op == "not":
                return ("not " + _paren(self.vcode(e.operand, mode), P_NOT), P_NOT)
            return ("-" + _paren(self.vcode(e.operand, mode), P_NEG), P_NEG)
        if isinstance(e, ast.BinOp):
            if e.op == "/":
                left, right = self.vcode(e.left, mode)[0], self.vcode(e.right, mode)[0]
                self.em.helpers.add("div")
                return (f"div({left}, {right})", P_ATOM)
            prec = _BINOP_PREC[e.op]
            left_need = prec + 1 if prec == P_CMP else prec
            left = _paren(self.vcode(e.left, mode), left_need)
            right = _paren(self.vcode(e.right, mode), prec + 1)
            return (f"{left} {e.op} {right}", prec)
        if isinstance(e, ast.IfExpr):
            cond = _paren(self.vcode(e.cond, mode), P_OR)
            then = _paren(self.vcode(e.then, mode), P_OR)
            orelse = _paren(self.vcode(e.orelse, mode), P_COND)
            return (f"{then} if {cond} else {orelse}", P_COND)
        if isinstance(e, ast.Call) and e.func in ("channels", "spatial", "rank", "min", "max") \
                and e.func not in self.em.defs.blocks:
            return self.builtin(e, mode)
        raise NotSupported(f"--emit torch: cannot translate this expression as a value ({type(e).__name__})",
                           getattr(e, "loc", None))

    def name_code(self, e: ast.Name, mode: str) -> str:
        b = self.lookup(e.id) if mode != "global" else None
        if b is not None:
            if b.kind == "tensor":
                raise NotSupported(f"--emit torch: '{e.id}' is a tensor, used as a value", e.loc)
            if mode == "fwd" and b.kind == "value":
                return f"self.{self.attr(b)}"
            return b.py
        if e.id in self.em.defs.lets:
            self.em.used_lets.add(e.id)
            return self.em.let_names[e.id]
        if e.id == "same":
            return '"same"'
        raise NotSupported(f"--emit torch: unknown name '{e.id}'", e.loc)

    def builtin(self, e: ast.Call, mode: str) -> tuple[str, int]:
        args = [a.value for a in e.args]
        if e.func in ("min", "max"):
            return (f"{e.func}({', '.join(_paren(self.vcode(a, mode), P_COND + 1) for a in args)})", P_ATOM)
        if len(args) != 1 or mode == "global":
            raise NotSupported(f"--emit torch: {e.func}() takes one tensor", e.loc)
        t = self.tensor_ref(args[0])
        if mode == "init":
            return {"channels": (f"{t.shape}[1]", P_ATOM), "spatial": (f"tuple({t.shape}[2:])", P_ATOM),
                    "rank": (f"len({t.shape})", P_ATOM)}[e.func]
        return {"channels": (f"{t.py}.shape[1]", P_ATOM), "spatial": (f"tuple({t.py}.shape[2:])", P_ATOM),
                "rank": (f"{t.py}.dim()", P_ATOM)}[e.func]

    def tensor_ref(self, e) -> Var:
        if isinstance(e, ast.In) and self.block is not None:
            b = self.lookup("in")
            return Var(b.py, b.shape)
        if isinstance(e, ast.Name):
            b = self.lookup(e.id)
            if b is not None and b.kind == "tensor":
                return Var(b.py, b.shape)
        raise NotSupported("--emit torch: channels(), spatial() and rank() take a tensor's name or `in`",
                           getattr(e, "loc", None))

    def is_tensor(self, e) -> bool:
        if isinstance(e, (ast.In, ast.Pipeline)):
            return True
        if isinstance(e, ast.Name):
            b = self.lookup(e.id)
            return b is not None and b.kind == "tensor"
        if isinstance(e, ast.BinOp) and e.op in ("+", "*"):
            return self.is_tensor(e.left) or self.is_tensor(e.right)
        if isinstance(e, ast.IfExpr):
            return self.is_tensor(e.then) or self.is_tensor(e.orelse)
        if isinstance(e, ast.Call):
            return e.func in ("concat", "add", "mul") and e.func not in self.em.defs.blocks
        return False

    # ---- counters and layer paths ----------------------------------------------------------------

    def sym_code(self, s, mode: str) -> tuple[str, int]:
        if isinstance(s, int):
            return (str(s), P_ATOM)
        kind = s[0]
        if kind == "var":
            return (s[1], P_ATOM)
        if kind == "expr":
            return self.vcode(s[1], mode)
        if kind == "sum":
            return (" + ".join(_paren(self.sym_code(t, mode), P_SUM + 1) for t in s[1]), P_SUM)
        if kind == "prod":
            return (" * ".join(_paren(self.sym_code(t, mode), P_PROD + 1) for t in s[1]), P_PROD)
        cond = _paren(self.vcode(s[1], mode), P_OR)
        then, orelse = _paren(self.sym_code(s[2], mode), P_OR), _paren(self.sym_code(s[3], mode), P_COND)
        return (f"{then} if {cond} else {orelse}", P_COND)

    def stage_path(self, stage: ast.LayerStage, st: Stmt) -> tuple:
        """The layer path of a stage, relative to this class: a tuple of parts."""
        if stage.alias is None:
            return st.path + (("sym", st.counter),)
        if not stage.alias.is_template:
            return tuple(("static", p) for p in stage.alias.text.split("."))
        return tuple(self.template_part(p, stage.alias.loc) for p in _split_dotted(stage.alias.text))

    def template_part(self, text: str, loc: Loc) -> tuple:
        from cnncomp.frontend.cnn.parser import parse

        if "{" not in text:
            return ("static", text)
        pieces: list = []
        rest = text
        while "{" in rest:
            before, _, after = rest.partition("{")
            inner, closed, rest = after.partition("}")
            if not closed:
                raise NotSupported("--emit torch: '{' in a layer name is never closed", loc)
            program = parse(f"let _ = {inner}\n", f"{loc.file} (name template)")
            pieces += [before, program.stmts[0].value]
        pieces.append(rest)
        return ("template", tuple(pieces))

    def part_code(self, part: tuple, mode: str, owner_is_self: bool) -> str:
        """`.name` or `[key]` for one part of a layer path."""
        kind, value = part
        if kind == "static":
            if value.isdigit() and str(int(value)) == value:
                self._item(owner_is_self)
                return f"[{value}]"
            if value.isidentifier() and not keyword.iskeyword(value) and value not in self.em.module_attrs \
                    and not (owner_is_self and value in self.stored.values()) and not value.startswith("_"):
                return f".{value}"
            self._item(owner_is_self)
            return f"[{_py_string(value)}]"
        self._item(owner_is_self)
        if kind == "sym":
            return f"[{self.sym_code(value, mode)[0]}]"
        if len(value) == 3 and value[0] == value[2] == "":  # "{i}": Modules keys go through str()
            return f"[{self.vcode(value[1], mode)[0]}]"
        texts, simple = [], True
        for piece in value:
            if isinstance(piece, str):
                texts.append(("lit", piece))
            else:
                code = self.vcode(piece, mode)[0]
                simple = simple and not any(c in code for c in "\"'{}\\")
                texts.append(("code", code))
        if simple:
            return "[f\"" + "".join(t.replace("{", "{{").replace("}", "}}") if k == "lit" else "{" + t + "}"
                                   for k, t in texts) + "\"]"
        return "[" + " + ".join(_py_string(t) if k == "lit" else f"str({t})" for k, t in texts if t) + "]"

    def _item(self, owner_is_self: bool) -> None:
        if owner_is_self:
            self.item_on_self = True
        self.em.helpers.add("Modules")

    def path_code(self, path: tuple, mode: str) -> str:
        return "self" + "".join(self.part_code(p, mode, i == 0) for i, p in enumerate(path))

    def ensure_containers(self, path: tuple) -> None:
        """Containers for every proper prefix of a layer path, created where all their uses can see them."""
        for n in range(1, len(path)):
            prefix = path[:n]
            code = self.path_code(prefix, "init")
            if all(kind == "static" for kind, _ in prefix):
                position = self.init.position()
                if code not in self.container_uses:
                    self.container_uses[code] = (position, n)
                else:
                    first, depth = self.container_uses[code]
                    common = []
                    for (b1, i1), (b2, i2) in zip(first, position):
                        if b1 is not b2:
                            break
                        common.append((b1, min(i1, i2)))
                    self.container_uses[code] = (common, depth)
            else:
                if any(code in b.created for b in self.init.stack):
                    continue
                self.init.stack[-1].created.add(code)
                self.init.line(f"{code} = Modules()")
            self.em.helpers.add("Modules")

    def place_containers(self) -> None:
        """Insert the creation of the static containers: before their first use, outside loops."""
        inserts = []
        for code, (chain, depth) in self.container_uses.items():
            keep = []
            for block, index in chain:
                if block.kind == "for":
                    break
                keep.append((block, index))
            block, index = keep[-1]
            if len(keep) < len(chain):  # hoisted out of a loop: before the loop's block
                index = keep[-1][1]
            inserts.append((block, index, depth, code))
        for block, index, depth, code in sorted(inserts, key=lambda t: (-t[1], -t[2])):
            block.items.insert(index, f"{code} = Modules()")

    # ---- statements ------------------------------------------------------------------------------

    def comments_for(self, texts: list[str]) -> None:
        self.init.comments(texts)
        self.fwd.comments(texts)

    def run_body(self, stmts: list, comments: dict[int, list[str]]) -> None:
        for i, stmt in enumerate(stmts):
            texts = comments.get(i, [])
            if isinstance(stmt, ast.Assign):
                if self.is_tensor(stmt.value):
                    self.comments_for(texts)
                    st = Stmt(path=(("static", stmt.name),), base=stmt.name)
                    b = self.preview_binding(stmt.name)
                    var = Var(b.py, b.shape)
                    v = self.lower(stmt.value, st, var)
                    later = [s for s in stmts[i + 1:] if not isinstance(s, ast.Output)]
                    if stmt.name not in _ast_names(later):  # nothing needs its shape
                        v = TVal(v.fwd, var.shape, v.prec, v.depth)
                    self.materialize(v, var)
                    self.scopes[0][stmt.name] = Binding("tensor", var.py, var.shape)
                else:
                    self.init.comments(texts)
                    code = self.vcode(stmt.value, "init")[0]
                    b = self.bind(stmt.name, "value")
                    self.init.line(f"{b.py} = {code}")
            elif isinstance(stmt, ast.Return):
                self.comments_for(texts)
                st = Stmt(path=(), base="result")
                var = self.result_var()
                v = self.lower(stmt.value, st, var)
                items = self.init.stack[-1].items
                if v.shape == var.shape and items and isinstance(items[-1], str) \
                        and items[-1].startswith(f"{var.shape} = "):  # `self.out_shape = ...` directly
                    v.shape = items.pop()[len(f"{var.shape} = "):]
                self.init.line(f"self.out_shape = {v.shape}")
                self.fwd.line(f"return {v.fwd}")
                return
            elif isinstance(stmt, ast.Output):
                self.fwd.comments(texts)
                outs = []
                for name in stmt.names:
                    b = self.lookup(name.id)
                    outs.append(b.py)
                self.fwd.line("return " + ", ".join(outs))

    def preview_binding(self, name: str) -> Binding:
        """Allocate the variables of a tensor statement (bound once it is evaluated: SSA)."""
        py = self.alloc(name, tensor=True)
        return Binding("tensor", py, f"{py}_shape")

    def result_var(self) -> Var:
        py = self.alloc("result", tensor=True, own=False)
        return Var(py, f"{py}_shape")

    # ---- tensor expressions ------------------------------------------------------------------------

    def materialize(self, v: TVal, var: Var) -> TVal:
        """Put a tensor into a variable (in forward) and its shape into the variable's shape (in __init__)."""
        if v.shape != var.shape:
            self.init.line(f"{var.shape} = {v.shape}")
        if v.fwd != var.py:
            self.fwd.line(f"{var.py} = {v.fwd}")
        return TVal(var.py, var.shape)

    def settle(self, v: TVal, st: Stmt, target: Var | None) -> tuple[TVal, Var | None]:
        """Before a stage: end the line of nested calls when it is long enough."""
        if v.depth and (v.ends_line or v.depth >= 3):
            target = target or self.temp(st)
            self.fwd.line(f"{target.py} = {v.fwd}")  # the shape stays an expression
            v = TVal(target.py, v.shape)
        return v, target

    def lower(self, e, st: Stmt, target: Var | None = None) -> TVal:
        if isinstance(e, ast.In) and self.block is not None:
            b = self.lookup("in")
            return TVal(b.py, b.shape)
        if isinstance(e, ast.Name):
            b = self.lookup(e.id)
            if b is None or b.kind != "tensor":
                raise NotSupported(f"--emit torch: '{e.id}' is not a tensor here", e.loc)
            return TVal(b.py, b.shape)
        if isinstance(e, ast.Pipeline):
            v = self.lower(e.head, st, target)
            for stage in e.stages:
                v, target = self.stage(stage, v, st, target)
            return v
        if isinstance(e, ast.BinOp) and e.op in ("+", "*"):
            from cnncomp.frontend.cnn.elaborate import Elaborator

            operands = [self.lower(o, st) for o in Elaborator.flatten_chain(e)]
            return self.merge("add" if e.op == "+" else "mul", operands, [], st, target)
        if isinstance(e, ast.Call) and e.func in ("concat", "add", "mul"):
            operands = [self.lower(a.value, st) for a in e.args if a.name is None]
            named = [a for a in e.args if a.name is not None]
            return self.merge(e.func, operands, named, st, target)
        if isinstance(e, ast.IfExpr):
            return self.lower_if(e, st, target)
        raise NotSupported(f"--emit torch: cannot translate this tensor expression ({type(e).__name__})",
                           getattr(e, "loc", None))

    def open_both(self, init_header: str, fwd_header: str, kind: str) -> None:
        self.init.open(init_header, kind)
        self.fwd.open(fwd_header, kind)

    def close_both(self) -> None:
        self.init.close()
        self.fwd.close()

    def lower_if(self, e: ast.IfExpr, st: Stmt, target: Var | None) -> TVal:
        if not self.is_tensor(e.then) or not self.is_tensor(e.orelse):
            raise NotSupported("--emit torch: an `if` whose branches are a tensor and a value", e.loc)
        var = target or self.temp(st)
        self.open_both(f"if {self.vcode(e.cond, 'init')[0]}:", f"if {self.vcode(e.cond, 'fwd')[0]}:", "if")
        start = st.counter
        self.materialize(self.lower(e.then, st, var), var)
        then_counter, st.counter = st.counter, start
        self.close_both()
        self.open_both("else:", "else:", "else")
        self.materialize(self.lower(e.orelse, st, var), var)
        else_counter = st.counter
        self.close_both()
        st.counter = then_counter if then_counter == else_counter else ("cond", e.cond, then_counter, else_counter)
        return TVal(var.py, var.shape)

    def merge(self, op: str, operands: list[TVal], named: list, st: Stmt, target: Var | None) -> TVal:
        shapes = [o.shape for o in operands]
        depth = max(o.depth for o in operands) + 1
        if op in ("add", "mul"):
            if named:
                raise NotSupported(f"--emit torch: {op} takes no named arguments", named[0].loc)
            prec = P_SUM if op == "add" else P_PROD
            sign = " + " if op == "add" else " * "
            fwd = sign.join(_paren((o.fwd, o.prec), prec + (i > 0)) for i, o in enumerate(operands))
            shape = f"shape_broadcast({', '.join(shapes)})"
            self.em.helpers.add("shape_broadcast")
            result = TVal(fwd, shape, prec, depth)
        else:
            axis_init = axis_fwd = None
            for a in named:
                if a.name != "axis":
                    raise NotSupported(f"--emit torch: concat: unknown argument '{a.name}'", a.loc)
                axis_init, axis_fwd = self.vcode(a.value, "init")[0], self.vcode(a.value, "fwd")[0]
            items = ", ".join(o.fwd for o in operands)
            fwd = f"torch.cat([{items}], {axis_fwd or 1})"
            shape = f"shape_concat([{', '.join(shapes)}]" + (f", {axis_init})" if axis_init else ")")
            self.em.helpers.add("shape_concat")
            result = TVal(fwd, shape, P_ATOM, depth)
        var = target or self.temp(st)
        self.init.line(f"{var.shape} = {result.shape}")
        result.shape = var.shape
        return result

    # ---- stages ----------------------------------------------------------------------------------

    def stage(self, stage, v: TVal, st: Stmt, target: Var | None) -> tuple[TVal, Var | None]:
        if isinstance(stage, ast.RepeatStage):
            return self.repeat(stage, v, st, target)
        v, target = self.settle(v, st, target)
        path = self.stage_path(stage, st)
        st.counter = sym_add(st.counter, 1)
        if stage.func in self.em.defs.blocks:
            return self.call_block(stage, path, v, st), target
        op = get_op(stage.func)
        if op is None:
            raise NotSupported(f"--emit torch: unknown layer '{stage.func}'", stage.loc)
        if op.variadic:
            operands = [v] + [self.lower(a.value, st) for a in stage.args if a.name is None]
            return self.merge(op.name, operands, [a for a in stage.args if a.name is not None], st, target), target
        if op.name in _WEIGHT_OPS:
            return self.weight_layer(op, stage, path, v, st), target
        return self.weight_free(op, stage, v, st, target), target

    def repeat(self, stage: ast.RepeatStage, v: TVal, st: Stmt, target: Var | None) -> tuple[TVal, Var | None]:
        var = target or self.temp(st)
        v = self.materialize(v, var)
        per_iter = count_stages(stage.body)
        count_init, count_fwd = self.vcode(stage.count, "init")[0], self.vcode(stage.count, "fwd")[0]
        self.scopes.append({})
        loop = self.bind(stage.var, "loop") if stage.var else Binding("loop", self.alloc("i"))
        if stage.var and sym_names(per_iter) & {stage.var}:
            raise NotSupported("--emit torch: a repeat whose number of stages depends on its loop variable",
                               stage.loc)
        start = st.counter
        st.counter = sym_add(start, sym_mul(("var", loop.py), per_iter))
        self.open_both(f"for {loop.py} in range({count_init}):", f"for {loop.py} in range({count_fwd}):", "for")
        for s in stage.body:
            v, var = self.stage(s, v, st, var)
        self.materialize(v, var)
        self.close_both()
        self.scopes.pop()
        self.used_py.discard(loop.py)  # free again after the loop
        st.counter = sym_add(start, sym_mul(count_sym(stage.count), per_iter))
        return TVal(var.py, var.shape), var

    def bind_args(self, params: list, args: list, what: str) -> dict:
        """Spec arguments by parameter name: name -> AST."""
        bound = {}
        for p, a in zip(params, [a for a in args if a.name is None]):
            bound[p] = a.value
        for a in args:
            if a.name is not None:
                bound[a.name] = a.value
        unknown = set(bound) - set(params)
        if unknown:
            raise NotSupported(f"--emit torch: {what}: unknown argument '{min(unknown)}'")
        return bound

    def written_args(self, args: list, mode: str, skip: str | None = None, rename: dict | None = None) -> list[str]:
        out = []
        for a in args:
            if skip is not None and a.name == skip:
                continue
            code = self.vcode(a.value, mode)[0]
            out.append(code if a.name is None else f"{(rename or {}).get(a.name, a.name)}={code}")
        return out

    def weight_layer(self, op, stage: ast.LayerStage, path: tuple, v: TVal, st: Stmt) -> TVal:
        self.ensure_containers(path)
        target_init = self.path_code(path, "init")
        target_fwd = self.path_code(path, "fwd")
        self.em.helpers.add(op.name)
        args = list(stage.args)
        extra_init, extra_fwd = "", ""
        if op.name == "deform_conv":
            params = [p.name for p in op.params]
            offsets_arg = next((a for a in args if a.name == "offsets"), None)
            if offsets_arg is None:
                positional = [a for a in args if a.name is None]
                if not positional:
                    raise NotSupported("--emit torch: deform_conv needs its offsets", stage.loc)
                offsets_arg = positional[0]
            offsets = self.lower(offsets_arg.value, st)
            mask_arg = next((a for a in args if a.name == "mask"), None)
            args = [a for a in args if a is not offsets_arg and a is not mask_arg]
            self.bind_args([p for p in params[1:] if p != "mask"], args, op.name)
            extra_init, extra_fwd = f", {offsets.shape}", f", {offsets.fwd}"
            if mask_arg is not None:
                extra_fwd += f", {self.lower(mask_arg.value, st).fwd}"
        else:
            self.bind_args([p.name for p in op.params], args, op.name)
        call = ", ".join([v.shape + extra_init] + self.written_args(args, "init"))
        self.init.line(f"{target_init} = {op.name}({call})")
        return TVal(f"{target_fwd}({v.fwd}{extra_fwd})", f"{target_init}.out_shape", P_ATOM, v.depth + 1)

    def call_block(self, stage: ast.LayerStage, path: tuple, v: TVal, st: Stmt) -> TVal:
        block = self.em.defs.blocks[stage.func]
        self.ensure_containers(path)
        params = [p.name for p in block.params]
        self.bind_args(params, stage.args, f"block '{block.name}'")
        rename = ClassGen(self.em, block, only_values=True).param_names(block)
        target_init = self.path_code(path, "init")
        target_fwd = self.path_code(path, "fwd")
        call = ", ".join([v.shape] + self.written_args(stage.args, "init", rename=rename))
        self.init.line(f"{target_init} = {self.em.class_names[block.name]}({call})")
        return TVal(f"{target_fwd}({v.fwd})", f"{target_init}.out_shape", P_ATOM, v.depth + 1, ends_line=True)

    def weight_free(self, op, stage: ast.LayerStage, v: TVal, st: Stmt, target: Var | None) -> TVal:
        params = [p.name for p in op.params]
        bound = self.bind_args(params, stage.args, op.name)
        name = op.name
        x = v.fwd
        if name == "identity":
            return v
        if name in _TORCH_CALLS:
            fn, names, always = _TORCH_CALLS[name]
            values = [bound.get(n.lstrip("*")) for n in names]
            while values and values[-1] is None and not always:
                values.pop()
            defaults = {p.name: p.default for p in op.params}
            codes = [("" if n[0] != "*" else n[1:] + "=")
                     + (self.vcode(val, "fwd")[0] if val is not None else _literal(defaults[n.lstrip("*")]))
                     for n, val in zip(names, values)]
            fwd = f"{fn}({', '.join([x] + codes)})"
        elif name == "dropout":
            p = self.vcode(bound["p"], "fwd")[0] if "p" in bound else "0.5"
            fwd = f"F.dropout({x}, {p}, self.training)"
        elif name == "flatten" and (bound.get("axis") is None or _num(bound["axis"]) == 1):
            fwd = f"torch.flatten({x}, 1)"
        elif name == "slice":
            start, end = self.vcode(bound["start"], "fwd")[0], self.vcode(bound["end"], "fwd")[0]
            axis = bound.get("axis")
            lit = _num(axis) if axis is not None else 1
            if isinstance(lit, int) and lit >= 0:
                fwd = f"{_paren((x, v.prec), P_ATOM)}[{':, ' * lit}{start}:{end}]"
            else:
                axis_code = self.vcode(axis, "fwd")[0]
                fwd = f"{_paren((x, v.prec), P_ATOM)}.narrow({axis_code}, {start}, {end} - {start})"
        elif name in PRELUDE:
            self.em.helpers.add(name)
            fwd = f"{name}({', '.join([x] + self.written_args(stage.args, 'fwd'))})"
        else:
            raise NotSupported(f"--emit torch: the layer '{name}' has no translation", stage.loc)
        shape = v.shape
        if name not in _SAME_SHAPE:
            shape_code = self.shape_code(name, bound, v.shape)
            var = target or self.temp(st)
            self.init.line(f"{var.shape} = {shape_code}")
            shape = var.shape
        return TVal(fwd, shape, P_ATOM, v.depth + 1, ends_line=True)

    def shape_code(self, name: str, bound: dict, shape: str) -> str:
        def kw(keys):
            return [f"{k}={self.vcode(bound[k], 'init')[0]}" for k in keys if k in bound]

        if name in _POOLS:
            self.em.helpers.add("shape_pool")
            k = self.vcode(bound["k"], "init")[0]
            return f"shape_pool({', '.join([shape, k] + kw(['s', 'p', 'd', 'ceil']))})"
        if name in ("gap", "gmp"):
            self.em.helpers.add("shape_global_pool")
            return f"shape_global_pool({shape})"
        if name == "kmaxpool":
            return f"{shape}[:-1] + ({self.vcode(bound['k'], 'init')[0]},)"
        if name == "flatten":
            self.em.helpers.add("shape_flatten")
            return f"shape_flatten({', '.join([shape] + kw(['axis']))})"
        if name == "slice":
            self.em.helpers.add("shape_slice")
            return f"shape_slice({', '.join([shape] + kw(['start', 'end', 'axis']))})"
        if name == "pad":
            self.em.helpers.add("shape_pad")
            return f"shape_pad({', '.join([shape] + kw(['p']))})"
        if name == "upsample":
            self.em.helpers.add("shape_upsample")
            return f"shape_upsample({', '.join([shape] + kw(['scale', 'size']))})"
        if name in ("pixel_shuffle", "pixel_unshuffle"):
            self.em.helpers.add(f"shape_{name}")
            return f"shape_{name}({shape}, {self.vcode(bound['r'], 'init')[0]})"
        raise NotSupported(f"--emit torch: no shape rule for '{name}'")

    # ---- the class -------------------------------------------------------------------------------

    def param_names(self, block: ast.BlockDef | None = None) -> dict[str, str]:
        """Python names of the block's parameters (spec names unless they clash)."""
        names = {}
        taken = set(self.em.taken) - set(self.em.let_names.values())
        for p in (block or self.block).params:
            candidate = p.name
            while candidate in taken or keyword.iskeyword(candidate) or candidate in ("x_shape", "self"):
                candidate += "_"
            taken.add(candidate)
            names[p.name] = candidate
        return names

    def render(self) -> str:
        if self.block is not None:
            return self.render_block()
        return self.render_network()

    def render_block(self) -> str:
        block = self.block
        comments = Comments(block.file)
        params = self.param_names()
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
        stmt_comments = _statement_comments(block.body, comments, block.loc.line)
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
        sig_text = ", ".join(p.name + ("" if p.default is None else "=" + _spec_text(p.default, comments))
                             for p in block.params)
        where = f"{Path(block.file).name}:{block.loc.line}" if not block.file.startswith("<") else block.file
        doc = lead + ([""] if lead else []) + [
            f"The block `{block.name}({sig_text})` ({where}), for inputs of shape `{in_py}_shape`."]
        base = "Modules" if self.item_on_self else "nn.Module"
        if self.item_on_self:
            self.em.helpers.add("Modules")
        head = [f"class {self.em.class_names[block.name]}({base}):", _indent_doc(doc, 4), "",
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
            return comments.closing_line(max(_last_line(stmt.body), stmt.loc.line))
        return _last_line(stmt)

    def drop_dead_shapes(self) -> None:
        """Remove the straight-line `NAME_shape = ...` lines of __init__ that nothing reads (shape
        rules are pure: the shape of a network's last layers is not needed)."""
        shapes = {n for n in self.used_py if n.endswith("_shape")}
        used: set[str] = set()
        items = self.init.root.items
        for index in range(len(items) - 1, -1, -1):
            item = items[index]
            # names read, not attributes: `m.out_shape` does not read a variable `out_shape`
            if isinstance(item, Block):
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
        stmt_comments = _statement_comments(program.stmts, comments, 0)
        inputs = [s for s in program.stmts if isinstance(s, ast.Input)]
        kwargs = []
        doc = []
        for s in inputs:
            b = self.bind(s.name, "tensor")
            dims = []
            for d in s.dims:
                if isinstance(d, ast.Name) and d.id not in em.defs.lets:
                    dims.append(_py_string(d.id))
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
                        f"{_fmt_shape(em.graph.layer(n).shape)}" for n in em.graph.inputs)
        outs = ", ".join(f"{n} {_fmt_shape(em.graph.layer(layer).shape)}"
                         for n, layer in zip(em.graph.output_names, em.graph.outputs))
        text = [f"The network `{em.graph.name}`."] + ([""] + doc if doc else []) + [
            "", f"Inputs: {ins}.", f"Outputs: {outs}.",
            "The input shapes are arguments (symbolic dims by name): the layers are built for them."]
        base = "Modules" if self.item_on_self else "nn.Module"
        if self.item_on_self:
            em.helpers.add("Modules")
        in_names = ", ".join(self.lookup(s.name).py for s in inputs)
        head = [f"class {em.network_class}({base}):", _indent_doc(text, 4), "",
                f"    def __init__(self, {', '.join(kwargs)}):", "        super().__init__()"]
        return "\n".join(head + self._bodies(f"    def forward(self, {in_names}):"))


def _num(e):
    if isinstance(e, ast.Num):
        return e.value
    if isinstance(e, ast.UnaryOp) and e.op == "-" and isinstance(e.operand, ast.Num):
        return -e.operand.value
    return None


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _indent_doc(lines: list[str], indent: int) -> str:
    pad = " " * indent
    lines = _wrap_doc(lines)
    if len(lines) == 1:
        return f'{pad}"""{_doc_escape(lines[0])}"""'
    body = "\n".join((pad + _doc_escape(line)) if line else "" for line in lines[1:])
    return f'{pad}"""{_doc_escape(lines[0])}\n{body}\n{pad}"""'


def _spec_text(e, comments: Comments) -> str:
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


def _split_dotted(text: str) -> list[str]:
    """A template name split at the dots outside `{...}`."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "." and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def _walk(node):
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, list):
            stack.extend(n)
        elif hasattr(n, "__dataclass_fields__"):
            yield n
            stack.extend(getattr(n, f) for f in n.__dataclass_fields__ if f != "loc")
