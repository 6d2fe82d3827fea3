"""Per-op translation for --emit torch, through the op registry.

Each layer stage is written by its op's PyTorch-source facet, `Op.torch_source(s)` (in
cnncomp/ops/), so that a new op needs only that method in its class (and, when it calls one,
its helper section in cnncomp/ops/torch_prelude.py). `s` is a `LayerSource`: the stage's input
and arguments, and the ways a layer can be written:

- `s.module()`: a layer with weights. A torch module built in __init__ by the prelude factory of
  the op's name (`self.conv1 = conv(x_shape, 64, k=3)`, which returns a module with an
  `out_shape`) and called in forward (`self.conv1(x)`); tensor arguments (deform_conv's offsets)
  go to both, as a shape and as a tensor.
- `s.function(fn, *args, shape=None)`: a call in forward, `fn(x, *args)`.
- `s.expression(code, shape=None)`: any forward expression.
- `s.infix(symbol, shape)`: the operands of a merge joined by a Python operator.
- `s.unchanged()`: the input itself.

`shape` is the __init__ expression of the output shape (None: the input's). The arguments:
`s.arg(name, mode)` (code as written, None when not given), `s.number(name)` (a number written
as a literal), `s.args(names)` (positional arguments of a torch function, defaults filled in),
`s.written()` (as written: for a prelude helper with the op's signature), `s.keywords(names)`
(for a shape helper), and `s.helper(name)` (a prelude section the code calls; returns its name).
"""

from __future__ import annotations

from cnncomp.emit.torch.names import Stmt, Var
from cnncomp.emit.torch.prelude import PRELUDE
from cnncomp.emit.torch.unsupported import NoTranslation, NotSupported
from cnncomp.emit.torch.values import (
    BINOP_PREC,
    P_ATOM,
    TVal,
    literal,
    number_literal,
    paren,
)
from cnncomp.errors import Loc
from cnncomp.ops.registry import Op, get_op


class LayerSource:
    """One layer stage (or merge) being written, as an op's torch_source facet sees it."""

    def __init__(self, gen, op: Op, args: list, operands: list[TVal], st: Stmt, target: Var | None,
                 path: tuple | None, loc: Loc | None):
        self.op = op
        self.operands = operands
        self._gen, self._st, self._target, self._path, self._loc = gen, st, target, path, loc
        args = list(args)
        self._tensor_args = []  # (argument, required): an optional tensor (deform_conv's mask) goes by name
        for param in op.params:
            if param.kind != "tensor":
                continue
            arg = next((a for a in args if a.name == param.name), None)
            if arg is None and param.default is None:
                continue
            if arg is None:
                positional = [a for a in args if a.name is None]
                if not positional:
                    raise NotSupported(f"--emit torch: {op.name} needs its {param.name}", loc)
                arg = positional[0]
            args = [a for a in args if a is not arg]
            self._tensor_args.append((arg, param.default is not None))
        self._args = args
        self._bound = gen.bind_args([p.name for p in op.params if p.kind != "tensor"], args, op.name)

    # ---- the input and the arguments ----------------------------------------------------------

    @property
    def x(self) -> str:
        """The input tensor in forward."""
        return self.operands[0].fwd

    @property
    def shape(self) -> str:
        """The input's shape in __init__."""
        return self.operands[0].shape

    def atom(self) -> str:
        """The input tensor as the operand of an index or attribute (`(a + b)[:, 1:3]`)."""
        v = self.operands[0]
        return paren((v.fwd, v.prec), P_ATOM)

    def given(self, name: str) -> bool:
        """Whether the spec gives the argument (by position or name)."""
        return name in self._bound

    def arg(self, name: str, mode: str = "fwd") -> str | None:
        """An argument as Python in forward (mode fwd) or __init__ (mode init); None if not given."""
        e = self._bound.get(name)
        return None if e is None else self._gen.vcode(e, mode)[0]

    def number(self, name: str):
        """An argument written as a number literal, else None."""
        e = self._bound.get(name)
        return None if e is None else number_literal(e)

    def args(self, names: list[str], write_defaults: bool = False) -> list[str]:
        """Arguments for positional parameters of a torch function, in forward: defaulted ones in
        the middle written as their default, trailing ones left out (unless write_defaults)."""
        values = [self._bound.get(n) for n in names]
        while values and values[-1] is None and not write_defaults:
            values.pop()
        defaults = {p.name: p.default for p in self.op.params}
        return [self._gen.vcode(e, "fwd")[0] if e is not None else literal(defaults[n]) for n, e in zip(names, values)]

    def written(self, mode: str = "fwd") -> list[str]:
        """The arguments as written in the spec (keywords with their names)."""
        return self._gen.written_args(self._args, mode)

    def keywords(self, names: list[str]) -> list[str]:
        """`name=code` in __init__ for those of the names that are given."""
        return [f"{k}={self._gen.vcode(self._bound[k], 'init')[0]}" for k in names if k in self._bound]

    def helper(self, name: str) -> str:
        """A prelude section the generated file must hold; its name."""
        if name not in PRELUDE:
            raise LookupError(f"{self.op.name}: torch_source uses '{name}', which has no section in "
                              "cnncomp/ops/torch_prelude.py")
        self._gen.em.helpers.add(name)
        return name

    # ---- ways to write the layer ----------------------------------------------------------------

    def unchanged(self) -> TVal:
        """The input itself (identity)."""
        return self.operands[0]

    def function(self, fn: str, *args: str, shape: str | None = None) -> TVal:
        """`fn(x, *args)` in forward (fn: `F.relu`, or a helper from s.helper)."""
        return self.expression(f"{fn}({', '.join([self.x, *args])})", shape)

    def infix(self, symbol: str, shape: str) -> TVal:
        """The operands joined by a Python operator (`+`, `*`), parenthesized as needed."""
        prec = BINOP_PREC[symbol.strip()]
        code = f" {symbol} ".join(paren((o.fwd, o.prec), prec + (i > 0)) for i, o in enumerate(self.operands))
        return self.expression(code, shape, prec)

    def expression(self, code: str, shape: str | None = None, prec: int = P_ATOM) -> TVal:
        """A forward expression; its shape, when it is not the input's, goes into a shape variable."""
        out_shape = self.shape
        if shape is not None:
            var = self._target or self._gen.temp(self._st)
            self._gen.init.line(f"{var.shape} = {shape}")
            out_shape = var.shape
        depth = max(o.depth for o in self.operands) + 1
        # a layer call ends the line of nested calls; a merge's operator may go on
        return TVal(code, out_shape, prec, depth, ends_line=not self.op.variadic)

    def module(self) -> TVal:
        """A layer with weights: `self.PATH = OP(x_shape, ...)` in __init__, `self.PATH(x)` in forward."""
        gen, v = self._gen, self.operands[0]
        if self._path is None:
            raise NotSupported(f"--emit torch: {self.op.name} cannot be a module here", self._loc)
        gen.ensure_containers(self._path)
        target_init = gen.path_code(self._path, "init")
        target_fwd = gen.path_code(self._path, "fwd")
        factory = self.helper(self.op.name)
        tensors = [(gen.lower(a.value, self._st), required) for a, required in self._tensor_args]
        # the factory sizes the layer from the required tensors' shapes; forward takes every tensor
        call = ", ".join([v.shape] + [t.shape for t, required in tensors if required]
                         + gen.written_args(self._args, "init"))
        gen.init.line(f"{target_init} = {factory}({call})")
        return TVal(f"{target_fwd}({', '.join([v.fwd] + [t.fwd for t, _ in tensors])})", f"{target_init}.out_shape",
                    P_ATOM, v.depth + 1)

    def no_translation(self) -> TVal:
        """Op's default: stop with an error located at the layer (see unsupported.NoTranslation)."""
        raise NoTranslation(f"--emit torch: the layer '{self.op.name}' has no translation to PyTorch source", self._loc)


class LayerTranslation:
    """Layer stages and merges through their op's torch_source facet (a mixin of ClassGen)."""

    def layer(self, op: Op, stage, path: tuple, v: TVal, st: Stmt, target: Var | None) -> TVal:
        return op.torch_source(LayerSource(self, op, stage.args, [v], st, target, path, stage.loc))

    def merge(self, name: str, operands: list[TVal], named: list, st: Stmt, target: Var | None) -> TVal:
        """add, mul or concat of tensors (`x + y`, `concat(a, b)`, `x -> concat(y)`): named are its
        keyword arguments."""
        op = get_op(name)
        loc = named[0].loc if named else None
        return op.torch_source(LayerSource(self, op, named, operands, st, target, None, loc))
