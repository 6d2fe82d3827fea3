"""Loading a spec: the file, its imports, the standard blocks, -D overrides, then elaboration."""

from __future__ import annotations

import gc
import hashlib
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from cnncomp.frontend.cnn import ast
from cnncomp.frontend.cnn.elaborate import Definitions, Elaborator, Scope
from cnncomp.frontend.cnn.parser import deep_recursion, parse, parse_file
from cnncomp.frontend.cnn.symbols import input_symbols
from cnncomp.errors import CnnError, Loc
from cnncomp.inputs import describe_kind, file_kind
from cnncomp.ir.graph import LayerGraph
from cnncomp.ir.weights import check_weights_size
from cnncomp.ops.registry import get_op

STDLIB_PATH = Path(__file__).with_name("stdlib.cnn")


@lru_cache(maxsize=1)
def standard_blocks() -> dict[str, ast.BlockDef]:
    program = parse_file(STDLIB_PATH)
    return {s.name: s for s in program.stmts if isinstance(s, ast.BlockDef)}


def load_spec(path: str | Path, overrides: dict[str, str] | None = None) -> LayerGraph:
    """Parse and elaborate a .cnn file into a LayerGraph."""
    with _no_gc_pauses():  # parsing, too, makes many objects and no cycles (50,000 statements: 2x faster)
        program = parse_file(path)
    return elaborate_program(program, overrides)


def load_text(text: str, file: str = "<spec>", overrides: dict[str, str] | None = None) -> LayerGraph:
    """Parse and elaborate .cnn source text."""
    with _no_gc_pauses():
        program = parse(text, file)
    return elaborate_program(program, overrides)


def elaborate_program(program: ast.Program, overrides: dict[str, str] | None = None) -> LayerGraph:
    try:
        with deep_recursion(), _no_gc_pauses():
            return _elaborate(program, overrides)
    except RecursionError:
        raise CnnError("the spec nests expressions or blocks too deeply", Loc(program.file, 1, 1)) from None


def collect_definitions(program: ast.Program, overrides: dict[str, str] | None = None) -> Definitions:
    """The blocks (standard ones, imported ones, the spec's own) and `let` constants a spec can use."""
    defs = Definitions(blocks=dict(standard_blocks()))
    _collect(program, defs, overrides or {}, set(), stack=[_key(program.file)], top=True)
    return defs


def _elaborate(program: ast.Program, overrides: dict[str, str] | None) -> LayerGraph:
    stmts = program.stmts
    if not stmts or not isinstance(stmts[0], ast.Network):
        loc = stmts[0].loc if stmts else Loc(program.file, 1, 1)
        raise CnnError("a spec starts with `network NAME`", loc)
    for s in stmts[1:]:
        if isinstance(s, ast.Network):
            raise CnnError("`network` may appear only once, as the first statement", s.loc)
    graph = LayerGraph(stmts[0].name)
    defs = collect_definitions(program, overrides)
    symbols = input_symbols(program, defs.lets)
    pins = {k: v for k, v in (overrides or {}).items() if k in symbols and k not in defs.lets}
    unused = set(overrides or {}) - set(defs.lets) - set(pins)
    if unused:
        name = sorted(unused)[0]
        known = ", ".join(sorted(defs.lets)) or "none"
        sizes = f"; its symbolic sizes: {', '.join(symbols)}" if symbols else ""
        raise CnnError(f"-D {name}: the spec has no top-level `let {name}` (its constants: {known}){sizes}")
    elab = Elaborator(defs, graph, pins)
    elab.run_top(program, defs.lets, defs.let_locs)
    if not graph.inputs:
        raise CnnError("the spec has no `input`", stmts[0].loc)
    if not any(isinstance(s, ast.Output) for s in stmts):
        last = stmts[-1]
        raise CnnError("the spec has no `output` statement", last.loc)
    check_weights_size(graph)  # here, so that `check` refuses what compile could not allocate
    own_lets = _own_lets(program)
    graph.meta.update(file=program.file, spec_hash=_spec_hash(program.file), overrides=dict(overrides or {}),
                      lets={k: v for k, v in defs.lets.items() if k in own_lets})
    return graph


@contextmanager
def _no_gc_pauses():
    """Parsing and elaboration make many long-lived objects and no cycles worth collecting: full
    collections in the middle of them would make their time grow faster than the spec."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _own_lets(program: ast.Program) -> set[str]:
    return {s.name for s in program.stmts if isinstance(s, ast.Let)}


def _collect(program: ast.Program, defs: Definitions, overrides: dict, imported: set, stack: list,
             top: bool) -> None:
    """Gather blocks and let constants from a program and, first, from its imports."""
    own_blocks: dict[str, ast.BlockDef] = {}
    own_lets = _own_lets(program)  # once: per `let` it made loading quadratic in the lets
    values = Elaborator(defs, LayerGraph())
    for s in program.stmts:
        if isinstance(s, ast.Import):
            path = (Path(program.file).parent / s.path)
            key = _key(str(path))
            if key in stack:
                cycle = " -> ".join(Path(k).name for k in stack[stack.index(key):] + [key])
                raise CnnError(f"import cycle: {cycle}", s.loc)
            if key in imported:
                continue
            if path.is_dir():
                raise CnnError(f"import \"{s.path}\": {path} is a folder, not a .cnn spec", s.loc)
            if not path.is_file():
                raise CnnError(f"import \"{s.path}\": no such file {path}", s.loc)
            if path.suffix != ".cnn" or file_kind(path) not in ("cnn", None):
                raise CnnError(f"import \"{s.path}\": {path} is {describe_kind(path)}, not a .cnn spec "
                               "(only .cnn files can be imported)", s.loc)
            imported.add(key)
            try:
                child = parse_file(path)
            except CnnError as err:
                raise CnnError(err.message, err.loc or s.loc, notes=(f"imported at {s.loc}",)) from None
            _collect(child, defs, overrides, imported, stack + [key], top=False)
        elif isinstance(s, ast.BlockDef):
            if s.name in own_blocks:
                first = own_blocks[s.name].loc
                raise CnnError(f"block '{s.name}' is defined twice (first at {first.line}:{first.col})", s.loc)
            if get_op(s.name) is not None:
                raise CnnError(f"block '{s.name}' has the name of a layer; choose another name", s.loc)
            _check_block_body(s)
            own_blocks[s.name] = s
            defs.blocks[s.name] = s
        elif isinstance(s, ast.Let):
            if s.name in defs.lets and s.name in own_lets:
                first = defs.let_locs[s.name]
                if first.file == s.loc.file:
                    raise CnnError(f"name '{s.name}' is bound twice (first bound at {first.line}:{first.col})", s.loc)
            if s.name in overrides:
                defs.lets[s.name] = _override_value(s.name, overrides[s.name], defs)
            else:
                defs.lets[s.name] = values.eval(s.value, Scope(names={}, locs={}, lets=defs.lets))
            defs.let_locs[s.name] = s.loc
        elif not top and isinstance(s, (ast.Assign, ast.Return)):
            continue


_STATEMENT_WORDS = {ast.Network: "network", ast.Import: "import", ast.Let: "let", ast.Input: "input",
                    ast.Output: "output", ast.BlockDef: "block"}


def _check_block_body(block: ast.BlockDef) -> None:
    """A block binds names and ends with one `return`; nothing may follow it."""
    for i, stmt in enumerate(block.body):
        if type(stmt) in _STATEMENT_WORDS:
            raise CnnError(f"'{_STATEMENT_WORDS[type(stmt)]}' is not allowed inside a block", stmt.loc)
        if isinstance(stmt, ast.Return) and i != len(block.body) - 1:
            raise CnnError(f"block '{block.name}': statements after 'return' are never run", block.body[i + 1].loc)


def _override_value(name: str, text: str, defs: Definitions):
    """The value of `-D NAME=TEXT`: TEXT must be one expression on one line (nothing else rides
    along into the spec or into the comments of generated code)."""
    file = f"-D {name}"
    if not isinstance(text, str):  # the API's defines={"width": 32}: a Python value, written as the language does
        text = ("true" if text else "false") if isinstance(text, bool) else str(text)
    shown = text.encode("unicode_escape").decode("ascii")
    if not all(ch.isprintable() for ch in text):
        raise CnnError(f"-D {name}={shown}: a value is one expression on one line (it holds a line break "
                       "or another control character)")
    try:
        program = parse(f"let {name} = {text}\n", file)
    except CnnError as err:
        raise CnnError(f"-D {name}={shown}: not a value ({err.message})") from None
    if len(program.stmts) != 1 or not isinstance(program.stmts[0], ast.Let):
        raise CnnError(f"-D {name}={shown}: a value is one expression, not statements")
    elab = Elaborator(defs, LayerGraph())
    return elab.eval(program.stmts[0].value, Scope(names={}, locs={}, lets=defs.lets))


def _key(path: str) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return path


def _spec_hash(file: str) -> str:
    try:
        return hashlib.sha256(Path(file).read_bytes()).hexdigest()
    except OSError:
        from cnncomp.errors import SOURCES

        return hashlib.sha256("\n".join(SOURCES.texts.get(file, [])).encode()).hexdigest()
