"""Text to AST: the lark grammar, the line-continuation postlexer, located syntax errors."""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from cnncomp.frontend.cnn import ast
from cnncomp.errors import SOURCES, CnnError, Loc
from cnncomp.fileio import note_input
from cnncomp.inputs import refuse_kind

GRAMMAR_PATH = Path(__file__).with_name("grammar.lark")

# A newline after one of these continues the statement on the next line.
_CONTINUES_AFTER = {"->", "+", "-", "*", "/", "//", "%", "==", "!=", "<", "<=", ">", ">=",
                    "and", "or", "not", "=", ",", "if", "then", "else", ":", "where"}
# A line that starts with one of these continues the previous one.
_CONTINUES_BEFORE = {"->", "then", "else", "where"}
_OPENERS = {"(": ")", "[": "]", "{": "}"}
# Bounds that keep the recursive AST transform and evaluator within Python's stack.
MAX_STATEMENT_TOKENS = 2000
MAX_NESTING = 100
_CLOSERS = {v: k for k, v in _OPENERS.items()}


class ContinuationLines:
    """Postlexer: drops the newlines that do not end a statement, checks brackets."""

    always_accept = ("_NL",)

    def __init__(self) -> None:
        self.file = "<spec>"
        self.open_brackets: list[Token] = []  # read after a syntax error, to name an unclosed one

    def process(self, stream):
        open_brackets: list[Token] = []
        self.open_brackets = open_brackets
        pending_newline: Token | None = None
        previous: Token | None = None
        statement_start: Token | None = None
        statement_tokens = 0
        for tok in stream:
            if tok.type == "_NL":
                inside_parens = open_brackets and open_brackets[-1].value in "(["
                trailing_op = previous is not None and _is_symbol(previous, _CONTINUES_AFTER)
                if previous is not None and not inside_parens and not trailing_op and pending_newline is None:
                    pending_newline = tok
                continue
            if pending_newline is not None:
                if not _is_symbol(tok, _CONTINUES_BEFORE):
                    yield pending_newline
                    statement_start, statement_tokens = None, 0
                pending_newline = None
            statement_start = statement_start or tok
            statement_tokens += 1
            if statement_tokens > MAX_STATEMENT_TOKENS:
                raise CnnError(f"statement is longer than {MAX_STATEMENT_TOKENS} tokens; split it",
                               _loc(self.file, statement_start))
            if tok.type != "STRING":
                if tok.value in _OPENERS:
                    open_brackets.append(tok)
                    if len(open_brackets) > MAX_NESTING:
                        raise CnnError(f"brackets nest deeper than {MAX_NESTING}", _loc(self.file, tok))
                elif tok.value in _CLOSERS:
                    if not open_brackets or open_brackets[-1].value != _CLOSERS[tok.value]:
                        raise CnnError(f"unmatched '{tok.value}'", _loc(self.file, tok))
                    open_brackets.pop()
            yield tok
            previous = tok
        if open_brackets:
            opener = open_brackets[-1]
            raise CnnError(f"'{opener.value}' is never closed: expected '{_OPENERS[opener.value]}'",
                           _loc(self.file, opener))
        if previous is not None:
            yield Token.new_borrow_pos("_NL", "\n", previous)


def _is_symbol(tok: Token, symbols: set[str]) -> bool:
    return tok.type != "STRING" and tok.value in symbols


def _loc(file: str, tok) -> Loc:
    return Loc(file, getattr(tok, "line", 0) or 0, getattr(tok, "column", 0) or 0)


@lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark(GRAMMAR_PATH.read_text(), parser="lalr", lexer="basic", postlex=ContinuationLines(),
                propagate_positions=True, start="start", maybe_placeholders=True)


_TERMINAL_NAMES = {
    "NAME": "a name", "DOTTED_NAME": "a dotted name", "INT": "an integer", "FLOAT": "a number",
    "STRING": "a string", "_NL": "end of line", "$END": "end of file", "_ARROW": "'->'",
    "COMPARE": "a comparison", "PLUS": "'+'", "MINUS": "'-'", "MUL_OP": "'*', '/', '//' or '%'",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'",
    "COMMA": "','", "EQUAL": "'='", "COLON": "':'",
}


_EXPRESSION_START = {"INT", "FLOAT", "STRING", "NAME", "LPAR", "MINUS", "TRUE", "FALSE", "IF", "IN", "NOT"}


def _describe_expected(expected: set[str]) -> str:
    names = []
    if len(expected & _EXPRESSION_START) >= 3:
        expected = expected - _EXPRESSION_START
        names.append("an expression")
    for term in sorted(expected):
        if term in _TERMINAL_NAMES:
            names.append(_TERMINAL_NAMES[term])
        elif term.isupper() and term.isalpha():
            names.append(f"'{term.lower()}'")
        else:
            names.append(term)
    names = names[:1] + sorted(set(names[1:]) - set(names[:1])) if names[:1] == ["an expression"] else sorted(set(names))
    if len(names) > 6:
        names = names[:6] + ["..."]
    return ", ".join(names)


def _describe_token(tok: Token) -> str:
    if tok.type == "_NL":
        return "end of line"
    if tok.type == "$END":
        return "end of file"
    return f"'{tok.value}'"


def parse(text: str, file: str = "<spec>") -> ast.Program:
    """Parse .cnn source text into a Program; raise CnnError with a location on bad syntax."""
    SOURCES.add(file, text)
    parser = _lark()
    parser.options.postlex.file = file  # type: ignore[union-attr]
    try:
        tree = parser.parse(text)
    except CnnError:
        raise
    except UnexpectedCharacters as e:
        char = text[e.pos_in_stream] if e.pos_in_stream < len(text) else "?"
        raise CnnError(f"unexpected character {char!r}", Loc(file, e.line, e.column)) from None
    except UnexpectedToken as e:
        tok = e.token
        unclosed = _unclosed_before(parser.options.postlex.open_brackets, tok)
        if unclosed is not None:
            raise CnnError(f"'{unclosed.value}' is never closed: expected '{_OPENERS[unclosed.value]}'",
                           Loc(file, unclosed.line, unclosed.column)) from None
        message = f"unexpected {_describe_token(tok)}; expected {_describe_expected(e.expected)}"
        line, col = tok.line or 0, tok.column or 0
        if tok.type == "$END":
            line, col = _end_position(text)
        raise CnnError(message, Loc(file, line, col)) from None
    except UnexpectedEOF as e:
        line, col = _end_position(text)
        raise CnnError(f"unexpected end of file; expected {_describe_expected(set(e.expected))}",
                       Loc(file, line, col)) from None
    except UnexpectedInput as e:  # pragma: no cover - lark's other subclasses
        raise CnnError(f"syntax error: {e}", Loc(file, e.line, e.column)) from None
    try:
        with deep_recursion():
            stmts = _ToAst(file).transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, CnnError):
            raise e.orig_exc from None
        raise
    except RecursionError:
        raise CnnError("the spec nests expressions too deeply", Loc(file, 1, 1)) from None
    return ast.Program(file=file, stmts=stmts)


@contextmanager
def deep_recursion(limit: int = 20000):
    """Room for the recursive transform and evaluator on long (bounded) statements."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def parse_file(path: str | Path) -> ast.Program:
    """Read and parse a .cnn file; a missing or non-UTF-8 file is a located error."""
    path = Path(path)
    name = str(path)
    note_input(path)
    if path.is_dir():
        raise CnnError(f"'{name}' is a folder, not a .cnn spec")
    refuse_kind(path, "a .cnn spec", ("cnn",))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CnnError(f"no such file: {name}") from None
    except OSError as e:
        raise CnnError(f"cannot read {name}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = len(raw[raw.rfind(b"\n", 0, e.start) + 1: e.start].decode("utf-8", errors="replace")) + 1
        SOURCES.add(name, raw.decode("utf-8", errors="replace"))  # so that the error quotes the line
        raise CnnError(f"file is not valid UTF-8 (byte 0x{raw[e.start]:02x})", Loc(name, line, col)) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return parse(text, name)


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"


def _unclosed_before(open_brackets: list[Token], tok: Token) -> Token | None:
    """An open ( or [ on an earlier line than the unexpected token: the likely real mistake."""
    for opener in reversed(open_brackets):
        if opener.value in "([" and (tok.line is None or opener.line < tok.line):
            return opener
    return None


def _end_position(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    return len(lines), len(lines[-1]) + 1


def _flatten_statements(items) -> list:
    """Statements in order; a `parts_assign` stands for several."""
    out = []
    for s in items:
        if isinstance(s, list):
            out += s
        elif s is not None:
            out.append(s)
    return out


def split_assignments(names: list[tuple[str, Loc]], value, loc: Loc) -> list[ast.Assign]:
    """`a, b = t -> split(sizes)` as `a = t -> split(sizes, part=0)` and `b = t -> split(sizes, part=1)`: one
    layer per part, each named after its statement. The tensor split must be a name (or `in`), so that
    nothing before the split is computed twice."""
    seen = set()
    for name, nloc in names:
        if name in seen:
            raise CnnError(f"name '{name}' is bound twice in one statement", nloc)
        seen.add(name)
    if not (isinstance(value, ast.Pipeline) and len(value.stages) == 1 and isinstance(value.stages[0], ast.LayerStage)
            and value.stages[0].func == "split" and isinstance(value.head, (ast.Name, ast.In))):
        raise CnnError(f"{len(names)} names are bound only by a split of a named tensor: `{', '.join(n for n, _ in names)}"
                       " = t -> split(sizes)` (bind the tensor to split first, `t = ...`)", loc)
    stage = value.stages[0]
    if stage.alias is not None:
        raise CnnError("a split that binds several names takes no `as`: each part is named after its name",
                       stage.alias.loc)
    if any(a.name == "part" for a in stage.args):
        raise CnnError("split: part= chooses one part; a split that binds several names makes every part",
                       stage.loc)
    out = []
    for k, (name, nloc) in enumerate(names):
        part = ast.LayerStage("split", stage.args + [ast.Arg("part", ast.Num(k, stage.loc), stage.loc)], None,
                              stage.loc, parts_bound=len(names))
        out.append(ast.Assign(name, ast.Pipeline(value.head, [part], value.loc), nloc))
    return out


class _ToAst(Transformer):
    """Lark tree to AST dataclasses; one method per grammar rule or alias."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _loc(self, meta_or_tok) -> Loc:
        return Loc(self.file, getattr(meta_or_tok, "line", 0) or 0, getattr(meta_or_tok, "column", 0) or 0)

    def start(self, items):
        return _flatten_statements(items)

    @v_args(meta=True)
    def network(self, meta, items):
        return ast.Network(str(items[0]), self._loc(meta))

    @v_args(meta=True)
    def import_(self, meta, items):
        return ast.Import(str(items[0])[1:-1], self._loc(meta))

    @v_args(meta=True)
    def let(self, meta, items):
        return ast.Let(str(items[0]), items[1], self._loc(items[0]))

    @v_args(meta=True)
    def input(self, meta, items):
        name, dtype, dims, where = items
        return ast.Input(str(name), str(dtype) if dtype is not None else None, dims, self._loc(name), where or [])

    def where(self, items):
        return list(items)

    def dims(self, items):
        return list(items)

    @v_args(meta=True)
    def output(self, meta, items):
        return ast.Output(list(items), self._loc(meta))

    def name_ref(self, items):
        return ast.Name(str(items[0]), self._loc(items[0]))

    @v_args(meta=True)
    def block(self, meta, items):
        name, params, body = items
        return ast.BlockDef(str(name), params or [], body, self._loc(name), self.file)

    def body(self, items):
        return _flatten_statements(items)

    def params(self, items):
        return list(items)

    @v_args(meta=True)
    def param(self, meta, items):
        return ast.Param(str(items[0]), items[1], self._loc(items[0]))

    @v_args(meta=True)
    def assign(self, meta, items):
        return ast.Assign(str(items[0]), items[1], self._loc(items[0]))

    @v_args(meta=True)
    def parts_assign(self, meta, items):
        *names, value = items
        return split_assignments([(str(n), self._loc(n)) for n in names], value, self._loc(names[0]))

    @v_args(meta=True)
    def return_(self, meta, items):
        return ast.Return(items[0], self._loc(meta))

    @v_args(meta=True)
    def ifexpr(self, meta, items):
        return ast.IfExpr(items[0], items[1], items[2], self._loc(meta))

    @v_args(meta=True)
    def pipe(self, meta, items):
        head, *stages = items
        return ast.Pipeline(head, stages, _expr_loc(head) or self._loc(meta))

    @v_args(meta=True)
    def layer_stage(self, meta, items):
        name, args, alias = items
        return ast.LayerStage(str(name), args or [], alias, self._loc(name))

    @v_args(meta=True)
    def repeat_stage(self, meta, items):
        count, var, *body = items
        return ast.RepeatStage(count, str(var) if var is not None else None, body, self._loc(meta))

    def stage_name(self, items):
        tok = items[0]
        if tok.type == "STRING":
            return ast.StageName(tok.value[1:-1], True, self._loc(tok))
        return ast.StageName(str(tok), False, self._loc(tok))

    @v_args(meta=True)
    def or_(self, meta, items):
        return ast.BinOp("or", items[0], items[1], self._loc(meta))

    @v_args(meta=True)
    def and_(self, meta, items):
        return ast.BinOp("and", items[0], items[1], self._loc(meta))

    @v_args(meta=True)
    def not_(self, meta, items):
        return ast.UnaryOp("not", items[0], self._loc(meta))

    def compare(self, items):
        left, op, right = items
        return ast.BinOp(str(op), left, right, self._loc(op))

    def binop(self, items):
        left, op, right = items
        return ast.BinOp(str(op), left, right, self._loc(op))

    @v_args(meta=True)
    def neg(self, meta, items):
        return ast.UnaryOp("-", items[1], self._loc(meta))

    def int_(self, items):
        try:
            value = int(items[0])
        except ValueError:  # over Python's limit on digits in an int conversion
            raise CnnError(f"integer literal of {len(items[0])} digits is too long", self._loc(items[0])) from None
        return ast.Num(value, self._loc(items[0]))

    def float_(self, items):
        value = float(items[0])
        if math.isinf(value):
            raise CnnError(f"number {_shorten(str(items[0]))} is too large: it overflows to infinity",
                           self._loc(items[0]))
        return ast.Num(value, self._loc(items[0]))

    def string(self, items):
        return ast.Str(items[0][1:-1], self._loc(items[0]))

    @v_args(meta=True)
    def true(self, meta, items):
        return ast.Bool(True, self._loc(meta))

    @v_args(meta=True)
    def false(self, meta, items):
        return ast.Bool(False, self._loc(meta))

    def name(self, items):
        return ast.Name(str(items[0]), self._loc(items[0]))

    @v_args(meta=True)
    def in_(self, meta, items):
        return ast.In(self._loc(meta))

    def call(self, items):
        name, args = items
        return ast.Call(str(name), args, self._loc(name))

    @v_args(meta=True)
    def tuple_(self, meta, items):
        return ast.TupleExpr([i for i in items if i is not None], self._loc(meta))

    def call_args(self, items):
        return [a for a in items if a is not None]

    @v_args(meta=True)
    def arg(self, meta, items):
        return ast.Arg(None, items[0], _expr_loc(items[0]) or self._loc(meta))

    @v_args(meta=True)
    def kwarg(self, meta, items):
        return ast.Arg(str(items[0]), items[1], self._loc(items[0]))


def _expr_loc(expr) -> Loc | None:
    return getattr(expr, "loc", None)
