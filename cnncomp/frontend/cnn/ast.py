"""Typed AST of the .cnn language; every node carries its source location."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from cnncomp.errors import Loc


# ---- expressions -----------------------------------------------------------

@dataclass
class Num:
    value: int | float
    loc: Loc


@dataclass
class Str:
    value: str
    loc: Loc


@dataclass
class Bool:
    value: bool
    loc: Loc


@dataclass
class Name:
    id: str
    loc: Loc


@dataclass
class In:
    """The block's input tensor, `in`."""

    loc: Loc


@dataclass
class TupleExpr:
    items: list["Expr"]
    loc: Loc


@dataclass
class BinOp:
    op: str  # + - * // / % == != < <= > >= and or
    left: "Expr"
    right: "Expr"
    loc: Loc


@dataclass
class UnaryOp:
    op: str  # - not
    operand: "Expr"
    loc: Loc


@dataclass
class IfExpr:
    cond: "Expr"
    then: "Expr"
    orelse: "Expr"
    loc: Loc


@dataclass
class Arg:
    """A call argument: positional when name is None."""

    name: str | None
    value: "Expr"
    loc: Loc


@dataclass
class Call:
    """A function, merge, layer or block call used as a value: `concat(a, b)`."""

    func: str
    args: list[Arg]
    loc: Loc


@dataclass
class LayerStage:
    """A pipeline stage calling a layer or block: `conv(64, k=3) as conv1`."""

    func: str
    args: list[Arg]
    alias: "StageName | None"
    loc: Loc
    # `a, b = t -> split(sizes)` is read as `a = t -> split(sizes, part=0)` and `b = t -> split(sizes, part=1)`;
    # each of those split stages keeps how many names the statement bound (checked against the sizes)
    parts_bound: int | None = None


@dataclass
class RepeatStage:
    """`repeat COUNT [as VAR] { stage -> stage ... }`."""

    count: "Expr"
    var: str | None
    body: list["Stage"]
    loc: Loc


@dataclass
class StageName:
    """A layer name given with `as`: dotted (`downsample.0`) or a string with `{expr}` parts."""

    text: str
    is_template: bool
    loc: Loc


@dataclass
class Pipeline:
    head: "Expr"
    stages: list["Stage"]
    loc: Loc


Stage = Union[LayerStage, RepeatStage]
Expr = Union[Num, Str, Bool, Name, In, TupleExpr, BinOp, UnaryOp, IfExpr, Call, Pipeline]


# ---- statements ------------------------------------------------------------

@dataclass
class Network:
    name: str
    loc: Loc


@dataclass
class Import:
    path: str
    loc: Loc


@dataclass
class Let:
    name: str
    value: Expr
    loc: Loc


@dataclass
class Input:
    name: str
    dtype: str | None
    dims: list[Expr]
    loc: Loc
    where: list[Expr] = field(default_factory=list)  # constraints on the symbols: `H % 32 == 0`, `H >= 64`


@dataclass
class Output:
    names: list[Name]
    loc: Loc


@dataclass
class Param:
    name: str
    default: Expr | None
    loc: Loc


@dataclass
class Assign:
    name: str
    value: Expr
    loc: Loc


@dataclass
class Return:
    value: Expr
    loc: Loc


@dataclass
class BlockDef:
    name: str
    params: list[Param]
    body: list["Stmt"]
    loc: Loc
    file: str = ""


Stmt = Union[Network, Import, Let, Input, Output, BlockDef, Assign, Return]


@dataclass
class Program:
    file: str
    stmts: list[Stmt] = field(default_factory=list)
