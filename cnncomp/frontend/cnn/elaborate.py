"""Elaboration: AST to LayerGraph. Evaluates constants, inlines blocks and repeats,
infers every shape and names every layer by the language's naming rules.

About 550 lines, over the ~500 guide: one walk over the AST whose cases share the
scope, naming and call-chain state of the Elaborator; its value rules already live
in values.py and the loading in loader.py."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from cnncomp.frontend.cnn import ast
from cnncomp.frontend.cnn.values import Tensor, arith, check_arg, is_int, show, type_name
from cnncomp.errors import CallSite, CnnError, Loc
from cnncomp.ir.graph import Layer, LayerGraph
from cnncomp.frontend.cnn.symbols import SymbolRule, pin_value, read_constraints
from cnncomp.ops.dims import is_static, symbolic
from cnncomp.ops.registry import REQUIRED, Op, get_op, numel

# Bounds on the work a spec can demand.
MAX_REPEAT = 10_000
MAX_LAYERS = 100_000
MAX_BLOCK_DEPTH = 64
MAX_TENSOR_ELEMENTS = 2**31  # per sample (batch 1)
MAX_DIM = 2**31 - 1

BUILTINS = ("channels", "spatial", "rank", "min", "max")
DTYPES = ("float32", "float16", "float64")


@dataclass
class Definitions:
    """What a spec can call and read besides its own statements: blocks and let constants."""

    blocks: dict[str, ast.BlockDef] = field(default_factory=dict)
    lets: dict[str, object] = field(default_factory=dict)
    let_locs: dict[str, Loc] = field(default_factory=dict)


@dataclass
class Scope:
    """Names visible to an expression, and where new layers go."""

    names: dict[str, object]
    locs: dict[str, Loc]
    lets: dict[str, object]
    in_tensor: Tensor | None = None
    prefix: str = ""
    chain: tuple[CallSite, ...] = ()
    in_block: bool = False

    def child(self, **changes) -> "Scope":
        values = dict(self.__dict__)
        values.update(changes)
        return Scope(**values)


@dataclass
class Statement:
    """Naming state while one statement is evaluated."""

    name: str  # the statement's full name: layers are named under it
    roots: set[int]  # ids of the expressions whose merge takes the statement's name
    counter: int = 0


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class Elaborator:
    """Turns one parsed program (with its imports' definitions) into a LayerGraph."""

    def __init__(self, defs: Definitions, graph: LayerGraph, pins: dict[str, str] | None = None):
        self.defs = defs
        self.graph = graph
        self.pin_texts = pins or {}  # -D values of input symbols, checked against their rules
        self.rules: dict[str, SymbolRule] = {}
        self.pins: dict[str, int] = {}
        self.sizes: dict[str, object] = {}  # symbol -> its SymDim (or pinned int), once an input declared it
        self.active_blocks: list[str] = []
        self.top_tensors: set[str] = set()  # for a clear error when a block reads one
        self.top_values: set[str] = set()

    # ---- errors ---------------------------------------------------------

    @staticmethod
    def fail(message: str, loc: Loc, scope: Scope | None = None) -> CnnError:
        return CnnError(message, loc, scope.chain if scope else ())

    # ---- statements -----------------------------------------------------

    def run_top(self, program: ast.Program, lets: dict, let_locs: dict) -> None:
        scope = Scope(names={}, locs={}, lets=lets)
        self.rules = read_constraints(program, lets, lambda e: self.eval(e, scope))
        self.pins = {name: pin_value(name, text, self.rules[name]) for name, text in self.pin_texts.items()}
        self.graph.meta["symbols"] = {n: r.to_json() for n, r in self.rules.items() if n not in self.pins}
        self.graph.meta["pinned"] = dict(self.pins)
        for stmt in program.stmts:
            if isinstance(stmt, ast.Input):
                self.add_input(stmt, scope)
                self.top_tensors.add(stmt.name)
            elif isinstance(stmt, ast.Assign):
                self.check_unbound(scope, stmt.name, stmt.loc)
                value = self.eval_statement(stmt.name, stmt.value, scope)
                self.bind(scope, stmt.name, value, stmt.loc)
                (self.top_tensors if isinstance(value, Tensor) else self.top_values).add(stmt.name)
            elif isinstance(stmt, ast.Output):
                self.add_outputs(stmt, scope)
            elif isinstance(stmt, ast.Return):
                raise self.fail("'return' is only allowed inside a block", stmt.loc)

    def bind(self, scope: Scope, name: str, value, loc: Loc) -> None:
        self.check_unbound(scope, name, loc)
        scope.names[name] = value
        scope.locs[name] = loc

    def check_unbound(self, scope: Scope, name: str, loc: Loc) -> None:
        """Each name is bound once (SSA): fail before evaluating a statement that rebinds one."""
        if name in scope.names or (not scope.in_block and name in scope.lets):
            first = scope.locs.get(name)
            where = f" (first bound at {first.line}:{first.col})" if first else ""
            raise self.fail(f"name '{name}' is bound twice{where}", loc, scope)
        if name == "in" or name in ("true", "false"):
            raise self.fail(f"'{name}' is a keyword", loc, scope)

    def add_input(self, stmt: ast.Input, scope: Scope) -> None:
        dtype = stmt.dtype or "float32"
        if dtype not in DTYPES:
            raise self.fail(f"unknown dtype '{dtype}'; expected one of {', '.join(DTYPES)}", stmt.loc)
        dims = []
        for d in stmt.dims:
            if isinstance(d, ast.Name) and d.id not in scope.lets:
                if d.id not in self.sizes:
                    rule = self.rules.get(d.id) or SymbolRule(d.id)
                    self.sizes[d.id] = self.pins.get(d.id) or symbolic(d.id, rule.modulus, rule.rest)
                dims.append(self.sizes[d.id])
                continue
            value = self.eval(d, scope)
            if not is_int(value):
                raise self.fail(f"a dim must be an int or a symbolic name, got {type_name(value)} ({show(value)})",
                                d.loc)
            if not 1 <= value <= MAX_DIM:
                raise self.fail(f"a dim must be positive, got {value}", d.loc)
            dims.append(value)
        if not 2 <= len(dims) <= 5:
            raise self.fail(f"input '{stmt.name}' has rank {len(dims)}; expected 2 ([N, F]) to 5 ([N, C, D, H, W])",
                            stmt.loc)
        if not is_int(dims[1]):
            raise self.fail(f"input '{stmt.name}': the channel dim must be static, got '{dims[1]}'", stmt.dims[1].loc)
        self.check_size(tuple(dims), stmt.name, stmt.loc, scope)
        self.graph.add_layer(Layer(stmt.name, "input", {}, tuple(dims), dtype, stmt.loc))
        self.bind(scope, stmt.name, Tensor(stmt.name, tuple(dims), dtype), stmt.loc)

    def add_outputs(self, stmt: ast.Output, scope: Scope) -> None:
        for name in stmt.names:
            if name.id not in scope.names:
                raise self.fail(f"output '{name.id}' is never bound" + self.suggest(name.id, scope), name.loc)
            value = scope.names[name.id]
            if not isinstance(value, Tensor):
                raise self.fail(f"output '{name.id}' must be a tensor, got {type_name(value)}", name.loc)
            if name.id in self.graph.output_names:
                raise self.fail(f"output '{name.id}' is listed twice", name.loc)
            self.graph.outputs.append(value.node)
            self.graph.output_names.append(name.id)

    def eval_statement(self, name: str | None, expr: ast.Expr, scope: Scope):
        stmt_name = join(scope.prefix, name) if name else scope.prefix
        roots: set[int] = set()
        stack = [expr]
        while stack:  # the expressions whose merge is the statement's own result
            e = stack.pop()
            roots.add(id(e))
            if isinstance(e, ast.IfExpr):
                stack += [e.then, e.orelse]
            elif isinstance(e, ast.Pipeline):
                stack.append(e.head)
        return self.eval(expr, scope, Statement(stmt_name, roots))

    # ---- expressions ----------------------------------------------------

    def eval(self, e: ast.Expr, scope: Scope, stmt: Statement | None = None):
        if stmt is None:
            stmt = Statement(scope.prefix or "expr", set())
        if isinstance(e, ast.Num | ast.Str | ast.Bool):
            return e.value
        if isinstance(e, ast.Name):
            return self.lookup(e, scope)
        if isinstance(e, ast.In):
            if scope.in_tensor is None:
                raise self.fail("'in' is only defined inside a block (the block's input tensor)", e.loc, scope)
            return scope.in_tensor
        if isinstance(e, ast.TupleExpr):
            return tuple(self.eval(i, scope, stmt) for i in e.items)
        if isinstance(e, ast.UnaryOp):
            v = self.eval(e.operand, scope, stmt)
            if e.op == "not":
                if not isinstance(v, bool):
                    raise self.fail(f"'not' needs a bool, got {type_name(v)} ({show(v)})", e.loc, scope)
                return not v
            if isinstance(v, Tensor) or isinstance(v, bool) or not isinstance(v, (int, float)):
                raise self.fail(f"unary '-' needs a number, got {type_name(v)}", e.loc, scope)
            return -v
        if isinstance(e, ast.BinOp):
            return self.eval_binop(e, scope, stmt)
        if isinstance(e, ast.IfExpr):
            cond = self.eval(e.cond, scope, stmt)
            if not isinstance(cond, bool):
                raise self.fail(f"the condition of 'if' must be a bool known at compile time, got {type_name(cond)}",
                                e.cond.loc, scope)
            return self.eval(e.then if cond else e.orelse, scope, stmt)
        if isinstance(e, ast.Call):
            return self.eval_call(e, scope, stmt)
        if isinstance(e, ast.Pipeline):
            value = self.eval(e.head, scope, stmt)
            if not isinstance(value, Tensor):
                raise self.fail(f"'->' feeds a tensor into a layer, but this is {type_name(value)} ({show(value)})",
                                e.head.loc, scope)
            for stage in e.stages:
                value = self.eval_stage(stage, value, scope, stmt)
            return value
        raise self.fail(f"cannot evaluate {type(e).__name__}", getattr(e, "loc", None), scope)

    def lookup(self, e: ast.Name, scope: Scope):
        if e.id in scope.names:
            return scope.names[e.id]
        if e.id in scope.lets:
            return scope.lets[e.id]
        if e.id in self.sizes:  # an input's symbolic size (or its -D pin), usable as a value
            return self.sizes[e.id]
        if e.id == "same":
            return "same"
        if scope.in_block and e.id in self.top_tensors:
            raise self.fail(f"'{e.id}' is a top-level tensor; a block sees only 'in', its parameters, its own "
                            "names and top-level let constants", e.loc, scope)
        if scope.in_block and e.id in self.top_values:
            raise self.fail(f"'{e.id}' is a top-level value bound with '='; a block sees top-level constants "
                            f"only: write `let {e.id} = ...`", e.loc, scope)
        if get_op(e.id) or e.id in self.defs.blocks:
            raise self.fail(f"'{e.id}' is a layer or block: use it as a stage, `x -> {e.id}`", e.loc, scope)
        raise self.fail(f"unknown name '{e.id}'" + self.suggest(e.id, scope), e.loc, scope)

    def suggest(self, name: str, scope: Scope) -> str:
        known = list(scope.names) + list(scope.lets)
        close = difflib.get_close_matches(name, known, n=1)
        return f"; did you mean '{close[0]}'?" if close else ""

    def eval_binop(self, e: ast.BinOp, scope: Scope, stmt: Statement):
        if e.op in ("and", "or"):
            left = self.eval(e.left, scope, stmt)
            if isinstance(left, bool) and ((e.op == "and" and not left) or (e.op == "or" and left)):
                return left
            right = self.eval(e.right, scope, stmt)
            return self.wrap(lambda: arith(e.op, left, right), e.loc, scope)
        if e.op in ("+", "*"):
            operands = self.flatten_chain(e)
            values = [self.eval(o, scope, stmt) for o in operands]
            tensors = [isinstance(v, Tensor) for v in values]
            if all(tensors):
                return self.add_merge("add" if e.op == "+" else "mul", {}, values, e, e.loc, scope, stmt)
            if any(tensors):
                raise self.fail(f"'{e.op}': a tensor and a number do not mix", e.loc, scope)
            result = values[0]
            for v in values[1:]:
                result = self.wrap(lambda r=result, v=v: arith(e.op, r, v), e.loc, scope)
            return result
        left, right = self.eval(e.left, scope, stmt), self.eval(e.right, scope, stmt)
        if isinstance(left, Tensor) or isinstance(right, Tensor):
            if isinstance(left, Tensor) and isinstance(right, Tensor):
                raise self.fail(f"'{e.op}' is not defined on tensors (only + and *)", e.loc, scope)
            raise self.fail(f"'{e.op}': a tensor and a number do not mix", e.loc, scope)
        return self.wrap(lambda: arith(e.op, left, right), e.loc, scope)

    @staticmethod
    def flatten_chain(e: ast.Expr, op: str | None = None) -> list[ast.Expr]:
        """`a + b + c` as one three-input merge; numbers fold the same way."""
        op = op or e.op
        if isinstance(e, ast.BinOp) and e.op == op:
            return Elaborator.flatten_chain(e.left, op) + Elaborator.flatten_chain(e.right, op)
        return [e]

    def wrap(self, fn, loc: Loc, scope: Scope):
        try:
            return fn()
        except CnnError as err:
            raise err.with_location(loc, scope.chain) from None

    def eval_call(self, e: ast.Call, scope: Scope, stmt: Statement):
        if e.func in BUILTINS and e.func not in self.defs.blocks:
            return self.eval_builtin(e, scope, stmt)
        op = get_op(e.func)
        if op is not None and op.variadic and e.func not in self.defs.blocks:
            positional, named = self.eval_args(e.args, scope, stmt)
            values = [v for v, _ in positional]
            if not values:
                raise self.fail(f"{e.func}: needs at least one tensor", e.loc, scope)
            return self.add_merge(e.func, named, values, e, e.loc, scope, stmt, op)
        if e.func in self.defs.blocks or get_op(e.func):
            raise self.fail(f"'{e.func}' is a layer or block: use it as a stage, `x -> {e.func}(...)`", e.loc, scope)
        raise self.fail(f"unknown function '{e.func}'" + self.suggest_callable(e.func), e.loc, scope)

    def suggest_callable(self, name: str) -> str:
        from cnncomp.ops.registry import all_ops

        known = list(all_ops()) + list(self.defs.blocks) + list(BUILTINS)
        close = difflib.get_close_matches(name, known, n=1)
        return f"; did you mean '{close[0]}'?" if close else ""

    def eval_args(self, args: list[ast.Arg], scope: Scope, stmt: Statement):
        positional, named = [], {}
        for a in args:
            value = self.eval(a.value, scope, stmt)
            if a.name is None:
                if named:
                    raise self.fail("a positional argument follows a named one", a.loc, scope)
                positional.append((value, a.loc))
            else:
                if a.name in named:
                    raise self.fail(f"argument '{a.name}' is given twice", a.loc, scope)
                named[a.name] = (value, a.loc)
        return positional, named

    def eval_builtin(self, e: ast.Call, scope: Scope, stmt: Statement):
        positional, named = self.eval_args(e.args, scope, stmt)
        if named:
            first = next(iter(named))
            raise self.fail(f"{e.func}() takes no named arguments, got '{first}'", named[first][1], scope)
        values = [v for v, _ in positional]
        if e.func in ("channels", "spatial", "rank"):
            if len(values) != 1 or not isinstance(values[0], Tensor):
                raise self.fail(f"{e.func}() takes one tensor", e.loc, scope)
            shape = values[0].shape
            if e.func == "rank":
                return len(shape)
            if e.func == "channels":
                return shape[1]
            return tuple(shape[2:])
        if not values:
            raise self.fail(f"{e.func}() needs at least one value", e.loc, scope)
        if len(values) == 1 and isinstance(values[0], tuple):
            values = list(values[0])
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise self.fail(f"{e.func}() takes numbers, got {type_name(v)}", e.loc, scope)
        return min(values) if e.func == "min" else max(values)

    # ---- stages ---------------------------------------------------------

    def eval_stage(self, stage, value: Tensor, scope: Scope, stmt: Statement) -> Tensor:
        if isinstance(stage, ast.RepeatStage):
            count = self.eval(stage.count, scope, stmt)
            if not is_int(count) or count < 0:
                raise self.fail(f"repeat count must be a non-negative int, got {show(count)}", stage.count.loc, scope)
            if count > MAX_REPEAT:
                raise self.fail(f"repeat count {count} is over the limit of {MAX_REPEAT}", stage.count.loc, scope)
            for i in range(count):
                inner = scope
                if stage.var is not None:
                    inner = scope.child(names={**scope.names, stage.var: i}, locs={**scope.locs, stage.var: stage.loc})
                for s in stage.body:
                    value = self.eval_stage(s, value, inner, stmt)
            return value
        name = self.stage_name(stage, scope, stmt)
        stmt.counter += 1
        if stage.func in self.defs.blocks:
            return self.call_block(self.defs.blocks[stage.func], stage, value, name, scope, stmt)
        op = get_op(stage.func)
        if op is None:
            raise self.fail(f"unknown layer or block '{stage.func}'" + self.suggest_callable(stage.func),
                            stage.loc, scope)
        positional, named = self.eval_args(stage.args, scope, stmt)
        if op.variadic:
            tensors = [value] + [v for v, _ in positional]
            for v, loc in positional:
                if not isinstance(v, Tensor):
                    raise self.fail(f"{op.name}: takes tensors, got {type_name(v)} ({show(v)})", loc, scope)
            return self.add_merge(op.name, named, tensors, None, stage.loc, scope, stmt, op, name=name)
        args, tensor_inputs = self.bind_op_args(op, positional, named, stage.loc, scope)
        if stage.parts_bound is not None:
            sizes = args["sizes"] if isinstance(args["sizes"], tuple) else (args["sizes"],)
            if len(sizes) != stage.parts_bound:
                raise self.fail(f"split: {stage.parts_bound} names for {len(sizes)} parts (sizes {show(sizes)})",
                                stage.loc, scope)
        return self.add_layer(op, args, [value] + tensor_inputs, name, stage.loc, scope)

    def stage_name(self, stage: ast.LayerStage, scope: Scope, stmt: Statement) -> str:
        if stage.alias is None:
            return f"{stmt.name}.{stmt.counter}"
        text = stage.alias.text
        if stage.alias.is_template:
            text = self.render_template(stage.alias, scope)
        return join(scope.prefix, text)

    def render_template(self, alias: ast.StageName, scope: Scope) -> str:
        from cnncomp.frontend.cnn.parser import parse

        out, rest = [], alias.text
        while "{" in rest:
            before, _, after = rest.partition("{")
            inner, closed, rest = after.partition("}")
            if not closed:
                raise self.fail("'{' in a layer name is never closed", alias.loc, scope)
            try:
                program = parse(f"let _ = {inner}\n", f"{alias.loc.file} (name template)")
                value = self.eval(program.stmts[0].value, scope)
            except CnnError as err:
                raise self.fail(f"in layer name \"{alias.text}\": {err.message}", alias.loc, scope) from None
            out += [before, value if isinstance(value, str) else show(value)]
        name = "".join(out) + rest
        if not name or any(not part or not all(c.isalnum() or c == "_" for c in part) for part in name.split(".")):
            raise self.fail(f"layer name \"{name}\" must be names and numbers joined by dots", alias.loc, scope)
        return name

    def bind_op_args(self, op: Op, positional, named, loc: Loc, scope: Scope):
        params = list(op.params)
        by_name = {p.name: p for p in params}
        if len(positional) > len(params):
            takes = f"takes at most {len(params)} positional arguments" if params else "takes no arguments"
            raise self.fail(f"{op.name}: {takes}, got {len(positional)}", positional[len(params)][1], scope)
        given: dict[str, tuple] = {}
        for p, (value, vloc) in zip(params, positional):
            given[p.name] = (value, vloc)
        for key, (value, vloc) in named.items():
            if key not in by_name:
                close = difflib.get_close_matches(key, list(by_name), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else \
                    (f"; it takes {', '.join(by_name)}" if by_name else "; it takes no arguments")
                raise self.fail(f"{op.name}: unknown argument '{key}'{hint}", vloc, scope)
            if key in given:
                raise self.fail(f"{op.name}: argument '{key}' is given twice", vloc, scope)
            given[key] = (value, vloc)
        args, tensors = {}, []
        for p in params:
            if p.name not in given:
                if p.default is REQUIRED:
                    raise self.fail(f"{op.name}: missing argument '{p.name}'", loc, scope)
                args[p.name] = p.default
                continue
            value, vloc = given[p.name]
            try:
                value = check_arg(op.name, p, value)
            except CnnError as err:
                raise err.with_location(vloc, scope.chain) from None
            if p.kind == "tensor":
                tensors.append(value)
            else:
                args[p.name] = value
        return args, tensors

    # ---- layers ---------------------------------------------------------

    def add_layer(self, op: Op, args: dict, inputs: list[Tensor], name: str, loc: Loc, scope: Scope,
                  written: dict | None = None) -> Tensor:
        shapes = [t.shape for t in inputs]
        rank = len(shapes[0])
        if op.spatial_only and not 3 <= rank <= 5:
            raise self.fail(f"{op.name}: needs an input [N, C, *spatial] of rank 3 to 5, got rank {rank} "
                            f"({inputs[0]})", loc, scope)
        if rank < op.min_rank:
            raise self.fail(f"{op.name}: needs an input of rank {op.min_rank} or more, got {inputs[0]}", loc, scope)
        dtypes = {t.dtype for t in inputs}
        if len(dtypes) > 1:
            raise self.fail(f"{op.name}: inputs have different dtypes {sorted(dtypes)}", loc, scope)
        try:
            attrs = op.normalize(args, shapes)
            shape = op.infer_shape(attrs, shapes)
            weights = op.weight_specs(attrs, shapes)
        except CnnError as err:
            raise err.with_location(loc, scope.chain) from None
        self.check_size(shape, name, loc, scope)
        if name in self.graph:
            first = self.graph.layer(name).loc
            where = f" (first at {first.line}:{first.col})" if first else ""
            raise self.fail(f"layer name '{name}' is used twice{where}; name one of them with `as`", loc, scope)
        if len(self.graph) >= MAX_LAYERS:
            raise self.fail(f"the network has more than {MAX_LAYERS} layers", loc, scope)
        layer = Layer(name, op.name, attrs, shape, dtypes.pop(), loc, scope.chain, weights,
                      written if written is not None else dict(args))
        self.graph.add_layer(layer, [t.node for t in inputs])
        return Tensor(name, shape, layer.dtype)

    def add_merge(self, op_name: str, named: dict, tensors: list, expr, loc: Loc, scope: Scope,
                  stmt: Statement, op: Op | None = None, name: str | None = None) -> Tensor:
        op = op or get_op(op_name)
        for t in tensors:
            if not isinstance(t, Tensor):
                raise self.fail(f"{op_name}: takes tensors, got {type_name(t)} ({show(t)})", loc, scope)
        args, _ = self.bind_op_args(op, [], named, loc, scope)
        if name is None:
            name = stmt.name if expr is not None and id(expr) in stmt.roots else None
            if name is None or name in self.graph:
                base = stmt.name
                k = 1
                while f"{base}_{op_name}{k}" in self.graph:
                    k += 1
                name = f"{base}_{op_name}{k}"
        return self.add_layer(op, args, tensors, name, loc, scope)

    def check_size(self, shape: tuple, name: str, loc: Loc, scope: Scope) -> None:
        for d in shape:
            if isinstance(d, int) and d > MAX_DIM:
                raise self.fail(f"'{name}' has a dim of {d}, over the limit of {MAX_DIM}", loc, scope)
        if is_static(numel(shape)) and numel(shape) > MAX_TENSOR_ELEMENTS:
            raise self.fail(f"'{name}' would have {numel(shape):,} elements per sample, over the limit of "
                            f"{MAX_TENSOR_ELEMENTS:,}", loc, scope)

    # ---- blocks ---------------------------------------------------------

    def call_block(self, block: ast.BlockDef, stage: ast.LayerStage, value: Tensor, name: str, scope: Scope,
                   stmt: Statement) -> Tensor:
        site = CallSite(block.name, stage.loc)
        if block.name in self.active_blocks:
            cycle = " -> ".join(self.active_blocks[self.active_blocks.index(block.name):] + [block.name])
            raise self.fail(f"recursion: block '{block.name}' calls itself ({cycle})", stage.loc, scope)
        if len(self.active_blocks) >= MAX_BLOCK_DEPTH:
            raise self.fail(f"blocks nest deeper than {MAX_BLOCK_DEPTH}", stage.loc, scope)
        positional, named = self.eval_args(stage.args, scope, stmt)
        params = {p.name: p for p in block.params}
        if len(positional) > len(block.params):
            raise self.fail(f"block '{block.name}' takes at most {len(block.params)} arguments, got "
                            f"{len(positional)}", stage.loc, scope)
        bound: dict[str, object] = {}
        for arg, vloc in positional + list(named.values()):
            if isinstance(arg, Tensor):
                raise self.fail(f"block '{block.name}': parameters are values, not tensors; a block takes one "
                                "tensor, `in`, through '->'", vloc, scope)
        for p, (v, _) in zip(block.params, positional):
            bound[p.name] = v
        for key, (v, vloc) in named.items():
            if key not in params:
                close = difflib.get_close_matches(key, list(params), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else \
                    f"; it takes {', '.join(params) or 'no arguments'}"
                raise self.fail(f"block '{block.name}': unknown argument '{key}'{hint}", vloc, scope)
            if key in bound:
                raise self.fail(f"block '{block.name}': argument '{key}' is given twice", vloc, scope)
            bound[key] = v
        chain = scope.chain + (site,)
        body_scope = Scope(names={}, locs={}, lets=self.defs.lets, in_tensor=value, prefix=name, chain=chain,
                           in_block=True)
        for p in block.params:
            if p.name not in bound:
                if p.default is None:
                    raise self.fail(f"block '{block.name}': missing argument '{p.name}'", stage.loc, scope)
                default_scope = Scope(names={}, locs={}, lets=self.defs.lets, chain=chain, in_block=True)
                bound[p.name] = self.eval(p.default, default_scope)
            body_scope.names[p.name] = bound[p.name]
            body_scope.locs[p.name] = p.loc
        self.active_blocks.append(block.name)
        try:
            return self.run_block_body(block, body_scope, stage.loc)
        finally:
            self.active_blocks.pop()

    def run_block_body(self, block: ast.BlockDef, scope: Scope, call_loc: Loc) -> Tensor:
        for stmt in block.body:
            if isinstance(stmt, ast.Assign):
                self.check_unbound(scope, stmt.name, stmt.loc)
                self.bind(scope, stmt.name, self.eval_statement(stmt.name, stmt.value, scope), stmt.loc)
            elif isinstance(stmt, ast.Return):
                result = self.eval_statement(None, stmt.value, scope)
                if not isinstance(result, Tensor):
                    raise self.fail(f"block '{block.name}' must return a tensor, got {type_name(result)}",
                                    stmt.loc, scope)
                return result
            else:
                kind = type(stmt).__name__.lower()
                raise self.fail(f"'{kind}' is not allowed inside a block", stmt.loc, scope)
        raise self.fail(f"block '{block.name}' has no 'return'", block.loc, scope)


