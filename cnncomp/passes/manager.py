"""Pass infrastructure: the pass registry, optimization levels, the pipeline runner.

A pass is a function `(ctx: PassContext, **options) -> int` that rewrites
`ctx.graph` (and `ctx.weights`) in place and returns how many rewrites it made.
It declares whether it is exact (the result must pass the fp32 numeric check)
or approximate (it reports its measured error and savings). The manager runs a
pipeline, reruns it until nothing changes, lints the graph after each pass when
asked, and names the failing pass and the passes before it when one breaks.

A pass declares when it registers which passes it must run before or after;
the order of a level's pipeline is derived from those constraints (`pass_order`,
a topological sort), and a cycle, or a pass that could never run, fails as soon
as the passes are loaded (`all_passes`), not when a level leaves one out.

Every pass run goes through one step runner (`PassRunner.run_step`), whose
instruments are lint after each pass, an `after_each` hook (`--verify-each`)
and a `PassRecord` per run (`--stats`). The -O3 search (search.py) commits the
rewrites it keeps through the same runner, so the instruments see them too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from cnncomp.errors import CnnError, UsageError
from cnncomp.ir.cost import graph_cost  # noqa: F401  (re-exported for the passes)
from cnncomp.ir.graph import LayerGraph
from cnncomp.ops.dims import is_static
from cnncomp.progress import progress


@dataclass
class PassContext:
    """What a pass works on: the graph, its weights (name -> array), and a log of what it did or refused."""

    graph: LayerGraph
    weights: dict[str, np.ndarray]
    log: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fp16_warnings: list[str] = field(default_factory=list)  # shown when the target is float16
    budget: Any = None  # the -O3 search's budget.BudgetReport: its errors on the search and held-out samples

    def refuse(self, pass_name: str, layer: str, reason: str) -> None:
        self.log.append(f"{pass_name}: skipped {layer}: {reason}")

    def note(self, pass_name: str, message: str) -> None:
        self.log.append(f"{pass_name}: {message}")


@dataclass(frozen=True)
class PassInfo:
    name: str
    fn: Callable[..., int]
    exact: bool
    level: int  # the lowest -O level that runs it (0 = only when named)
    options: dict[str, Callable[[str], Any]]  # option -> its type, or a converter such as `fraction`
    doc: str
    before: tuple[str, ...] = ()  # passes this one must run before, in a level's pipeline
    after: tuple[str, ...] = ()  # passes this one must run after


PASSES: dict[str, PassInfo] = {}
LEVELS = (0, 1, 2)  # a pass's level: -O3 runs the -O2 pipeline, then the search (search.py)


def register_pass(name: str, exact: bool, level: int = 0, options: dict[str, Callable[[str], Any]] | None = None,
                  before: tuple[str, ...] = (), after: tuple[str, ...] = ()):
    """Decorator: register a pass under `name` (see the module docstring); `before` and `after` name the passes
    it must run before or after when a level runs them (the order is derived from them: pass_order)."""

    def wrap(fn):
        if name in PASSES:
            raise ValueError(f"pass '{name}' registered twice")
        PASSES[name] = PassInfo(name, fn, exact, level, dict(options or {}), (fn.__doc__ or "").strip(),
                                tuple(before), tuple(after))
        return fn

    return wrap


class PassOrderError(ValueError):
    """The passes' declared order cannot hold: a cycle, or a pass that could never run."""


def pass_order(passes: dict[str, PassInfo]) -> list[str]:
    """Every pass, in an order that keeps each one's `before`/`after` constraints (ties: by name, so the order
    never depends on import order). Raises PassOrderError on a cycle, or on a pass that could never run: one
    whose level no -O runs, or whose constraints name a pass that does not exist (a typo would leave it
    unordered)."""
    import networkx as nx

    problems = []
    order = nx.DiGraph()
    order.add_nodes_from(passes)
    for info in passes.values():
        if info.level not in LEVELS:
            problems.append(f"'{info.name}' is registered at level {info.level}, which no -O level runs "
                            f"(levels: {', '.join(map(str, LEVELS))}; -O3 adds only the search's rewrites)")
        for other in info.before + info.after:
            if other not in passes:
                problems.append(f"'{info.name}' is ordered against '{other}', which is not a registered pass")
        order.add_edges_from((info.name, other) for other in info.before if other in passes)
        order.add_edges_from((other, info.name) for other in info.after if other in passes)
    if problems:
        raise PassOrderError("pass order: " + "; ".join(problems))
    try:
        return list(nx.lexicographical_topological_sort(order))
    except nx.NetworkXUnfeasible:
        cycle = [edge[0] for edge in nx.find_cycle(order)]
        raise PassOrderError("pass order: the before/after constraints form a cycle: "
                             + " -> ".join(cycle + cycle[:1])) from None


_ORDER: list[str] = []


def all_passes() -> dict[str, PassInfo]:
    """The registry, every pass module imported, its order checked (a PassOrderError on the first call)."""
    from cnncomp.passes.approx import bottleneck, depthwise  # noqa: F401
    from cnncomp.passes.exact import (  # noqa: F401
        dce, drop_identity, equalize, fold_bn, fold_pad, fold_scale_shift, merge_pointwise,
    )

    if len(_ORDER) != len(PASSES):
        _ORDER[:] = pass_order(PASSES)
    return PASSES


@dataclass
class PassStep:
    """One pass to run, with its options: `bottleneck(ratio=0.5)`."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.options.items())})"


def level_pipeline(level: int) -> list[PassStep]:
    """The passes that -O<level> runs, in their declared order (pass_order). -O3 adds the approximate rewrites
    (budgeted separately)."""
    passes = all_passes()
    return [PassStep(n) for n in _ORDER if passes[n].level and passes[n].level <= level]


_STEP = re.compile(r"\s*([A-Za-z][\w-]*)\s*(?:\(([^()]*)\))?\s*(?:,|$)")


def parse_pass_list(text: str) -> list[PassStep]:
    """Parse `fold-bn,bottleneck(ratio=0.5),depthwise(m=4)`; unknown names and options are usage errors."""
    steps, pos = [], 0
    text = text.strip()
    passes = all_passes()
    while pos < len(text):
        m = _STEP.match(text, pos)
        if not m or m.end() == pos:
            raise UsageError(f"--passes: cannot read '{text[pos:]}'; expected NAME or NAME(key=value, ...)")
        name, arg_text = m.group(1), m.group(2)
        if name not in passes:
            raise UsageError(f"--passes: unknown pass '{name}'; known: {', '.join(sorted(passes))}")
        options = {}
        for item in filter(None, (a.strip() for a in (arg_text or "").split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or key not in passes[name].options:
                known = ", ".join(passes[name].options) or "none"
                raise UsageError(f"--passes: {name} has no option '{item}' (options: {known})")
            options[key] = _convert(name, key, value.strip(), passes[name].options[key])
        steps.append(PassStep(name, options))
        pos = m.end()
    return steps


def fraction(text: str) -> float:
    """A pass option in (0, 1] (a share of channels or of energy); anything else is a ValueError."""
    value = float(text)
    if not 0 < value <= 1:  # NaN fails this too
        raise ValueError(text)
    return value


fraction.describes = "a number in (0, 1]"


def _convert(pass_name: str, key: str, value: str, kind):
    """An option's text as its declared kind: a type (int, float, tuple of ints a:b) or a converter like
    `fraction`, which raises ValueError for a value out of its range."""
    try:
        if kind is tuple:
            return tuple(int(v) for v in value.strip("()").split(":")) if value else ()
        return kind(value)
    except ValueError:
        wanted = getattr(kind, "describes", kind.__name__)
        raise UsageError(f"--passes: {pass_name}({key}=...) needs {wanted}, got '{value}'") from None


@dataclass
class PassRecord:
    """What one pass did: rewrites made, params and MACs before and after."""

    step: str
    round: int
    rewrites: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int


class PassRunner:
    """Runs pass steps on one context under the manager's instruments: lint after each pass (when asked),
    `after_each(step, ctx)` (--verify-each) and a PassRecord per run (--stats)."""

    def __init__(self, ctx: PassContext, lint: bool = False,
                 after_each: Callable[[PassStep, PassContext], None] | None = None):
        self.ctx = ctx
        self.lint = lint
        self.after_each = after_each
        self.records: list[PassRecord] = []
        self.done: list[str] = []
        self.passes = all_passes()

    def run_step(self, step: PassStep, round_: int = 1, label: str | None = None) -> int:
        """Run one pass; `label` is how the graph's list of applied passes names it (default: the step)."""
        ctx, info = self.ctx, self.passes[step.name]
        before = graph_cost(ctx.graph)
        try:
            count = info.fn(ctx, **step.options)
            if self.lint:
                ctx.graph.lint()
        except CnnError:
            raise
        except Exception as e:  # a broken pass: name it and what ran before it
            prior = ", ".join(self.done) or "none"
            raise CnnError(f"pass '{step}' failed: {type(e).__name__}: {e} (passes before it: {prior})") from e
        after = graph_cost(ctx.graph)
        self.records.append(PassRecord(str(step), round_, count, before[0], after[0], before[1], after[1]))
        self.done.append(str(step))
        applied = ctx.graph.meta.setdefault("passes", [])
        if count and (label or str(step)) not in applied:
            applied.append(label or str(step))
        if count and not info.exact:
            ctx.graph.meta["approximate"] = True
        if self.after_each is not None:  # after the meta, so a check judges an approximate graph as one
            self.after_each(step, ctx)
        return count

    def run_steps(self, steps: list[PassStep], fixed_point: bool = True, max_rounds: int = 10) -> None:
        """Run the steps in order, repeating the whole list until no pass changes anything
        (only when every step is exact: an approximate pass would approximate again)."""
        for round_ in range(1, max_rounds + 1):
            changed = sum(self.run_step(step, round_) for step in progress(steps, label=f"passes (round {round_})"))
            if not fixed_point or not changed or not all(self.passes[s.name].exact for s in steps):
                break


def run_pipeline(ctx: PassContext, steps: list[PassStep], fixed_point: bool = True, lint: bool = False,
                 after_each: Callable[[PassStep, PassContext], None] | None = None,
                 max_rounds: int = 10) -> list[PassRecord]:
    """Run the steps in order, repeating the whole list until no pass changes anything."""
    runner = PassRunner(ctx, lint, after_each)
    runner.run_steps(steps, fixed_point, max_rounds)
    return runner.records


def _count(value) -> str:
    """A count with thousands separators, or as the language writes it where sizes are symbolic (652*H*W)."""
    return f"{value:,}" if is_static(value) else str(value)


def format_stats(records: list[PassRecord]) -> str:
    """The --stats table: per pass run, rewrites and params/MACs before and after."""
    rows = [("pass", "round", "rewrites", "params before", "params after", "MACs before", "MACs after")]
    for r in records:
        rows.append((r.step, str(r.round), str(r.rewrites), *map(_count, (r.params_before, r.params_after,
                                                                          r.macs_before, r.macs_after))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in rows)
