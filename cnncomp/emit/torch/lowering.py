"""Statement lowering for --emit torch: a block's statements become lines of __init__ (building
submodules, tracking every tensor by its shape) and of forward() (computing on tensors).

Assignments, `return`, `output`, pipelines, `if` and `repeat` are written here; each layer stage
goes to its op's translation (layers.py), each block call to the block's class.
`StatementLowering` is that part of a class generator (classgen.ClassGen).
"""

from __future__ import annotations

from cnncomp.emit.torch.counters import (
    ast_names,
    count_stages,
    count_sym,
    sym_add,
    sym_mul,
    sym_names,
)
from cnncomp.emit.torch.names import Binding, Stmt, Var, block_param_names
from cnncomp.emit.torch.unsupported import NotSupported
from cnncomp.emit.torch.values import P_ATOM, TVal
from cnncomp.frontend.cnn import ast
from cnncomp.ops.registry import get_op


def _last_reads(stmts: list) -> dict[str, int]:
    """For each name, the index of the last statement (an `output` aside) that reads it: one walk of
    the body, so that a long chain of statements is lowered in linear time."""
    last = {}
    for i, stmt in enumerate(stmts):
        if not isinstance(stmt, ast.Output):
            for name in ast_names(stmt):
                last[name] = i
    return last


class StatementLowering:
    """Statements and tensor expressions, written into __init__ and forward (a mixin of ClassGen)."""

    def comments_for(self, texts: list[str]) -> None:
        self.init.comments(texts)
        self.fwd.comments(texts)

    def run_body(self, stmts: list, comments: dict[int, list[str]]) -> None:
        last_read = _last_reads(stmts)
        for i, stmt in enumerate(stmts):
            texts = comments.get(i, [])
            if isinstance(stmt, ast.Assign):
                if self.is_tensor(stmt.value):
                    self.comments_for(texts)
                    st = Stmt(path=(("static", stmt.name),), base=stmt.name)
                    b = self.preview_binding(stmt.name)
                    var = Var(b.py, b.shape)
                    v = self.lower(stmt.value, st, var)
                    if last_read.get(stmt.name, -1) <= i:  # nothing later needs its shape
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
        if isinstance(e, ast.Call) and e.func not in self.em.defs.blocks and getattr(get_op(e.func), "variadic", False):
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
        return self.layer(op, stage, path, v, st, target), target

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

    def written_args(self, args: list, mode: str, rename: dict | None = None) -> list[str]:
        """Spec arguments as written (positional, then `name=` ones), keyword names renamed."""
        out = []
        for a in args:
            code = self.vcode(a.value, mode)[0]
            out.append(code if a.name is None else f"{(rename or {}).get(a.name, a.name)}={code}")
        return out

    def call_block(self, stage: ast.LayerStage, path: tuple, v: TVal, st: Stmt) -> TVal:
        block = self.em.defs.blocks[stage.func]
        self.ensure_containers(path)
        params = [p.name for p in block.params]
        self.bind_args(params, stage.args, f"block '{block.name}'")
        rename = block_param_names(self.em, block)
        target_init = self.path_code(path, "init")
        target_fwd = self.path_code(path, "fwd")
        call = ", ".join([v.shape] + self.written_args(stage.args, "init", rename=rename))
        self.init.line(f"{target_init} = {self.em.class_names[block.name]}({call})")
        return TVal(f"{target_fwd}({v.fwd})", f"{target_init}.out_shape", P_ATOM, v.depth + 1, ends_line=True)

