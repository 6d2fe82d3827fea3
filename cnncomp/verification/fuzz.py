"""Differential fuzzing of the whole compiler, in the spirit of NNSmith (Liu et al., ASPLOS 2023).

`generate` builds a random, valid, small LayerGraph over every registered op
(ranks 3 to 5, random kernels, strides, paddings, dilations and groups, merges
with broadcasting, batch norms and linears next to convs): the registry says
which arguments an op takes (`Op.params`) and whether a choice is valid
(`Op.normalize` and `Op.infer_shape` raise a CnnError when it is not), so an
op added to the registry is generated with no change here. Ops whose arguments
cannot be drawn from their kinds alone get a recipe (`TENSOR_RECIPES`) or are
listed in `NOT_GENERATED` with the reason.

The graph is printed as a spec (the .cnn writer's flat listing) and elaborated again, so a case is
its spec text plus a seed (weights by `init_weights`, with non-trivial batch
norm statistics; inputs by `make_inputs`). `check` then compiles it at -O0,
-O1 and -O2 and with each approximate rewrite at full rank (exact there), and
compares three ways: every model under ONNX Runtime against the float64
reference of the unoptimized graph, every optimized graph in the float64
reference against the same (a pass bug shows without float32 noise), and every
optimized model against the -O0 model. Any exception is a finding too.

The random choices come from a `Chooser`: `RandomChooser` for `tools/fuzz.py`
(reproducible by seed), `DrawChooser` for Hypothesis in the tests (which then
shrinks a failing graph).
"""

from __future__ import annotations

import math
import random
import traceback
from collections import Counter
from dataclasses import dataclass, field

from cnncomp.errors import CnnError
from cnncomp.ir.graph import Layer, LayerGraph
from cnncomp.ops.registry import REQUIRED, Op, all_ops, numel

MAX_ELEMENTS = 4096  # per sample, per tensor: cases stay fast
ATTEMPTS = 4  # argument draws for one op before another op is tried
OPS_TRIED = 3  # ops tried for one layer before it is left out
HEAVY = ("conv", "linear", "norm", "merge", "pool")

# Ops the generator cannot draw arguments for yet, with the reason (checked by the tests:
# every registered op is generated or listed here).
NOT_GENERATED: dict[str, str] = {}

# Arguments drawn from fixed values instead of their kind's, with the reason.
ARGUMENT_CHOICES: dict[tuple[str, str], tuple[tuple, str]] = {
    ("lppool", "norm"): ((1, 2, 3, 4), "|x|^norm underflows float32 for a large norm (|x|^27 < 1e-38 when "
                                       "|x| < 0.04): a precision limit of LpPool, not a compiler bug"),
    ("upsample", "rounding"): ((None, "round_prefer_floor", "round_prefer_ceil"),
                               "floor or ceil of a coordinate that is a whole number in exact arithmetic falls "
                               "either way in ONNX Runtime's float32 (it floors 7 * 0.5 - 0.5 to 2): an ambiguity "
                               "of Resize's rule at ties, not a compiler bug"),
}

# Configurations a case is compiled with: (label, opt level or pass list).
CONFIGS = (
    ("-O0", 0),
    ("-O1", 1),
    ("-O2", 2),
    ("bottleneck at full rank", "bottleneck(ratio=1.0, always=1)"),
    ("depthwise at full rank", "depthwise(m=4096, always=1)"),
    ("equalize", "fold-bn,equalize"),
)


# ---- random choices ------------------------------------------------------------------------

class RandomChooser:
    """Choices from a seeded random.Random (tools/fuzz.py)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options):
        return options[self.rng.randrange(len(options))]

    def boolean(self) -> bool:
        return self.rng.random() < 0.5


class DrawChooser:
    """Choices drawn by Hypothesis (`st.data()`), so that a failing case shrinks."""

    def __init__(self, data):
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))

    def choice(self, options):
        return options[self.data.draw(self.st.integers(0, len(options) - 1))]

    def boolean(self) -> bool:
        return self.data.draw(self.st.booleans())


# ---- arguments from parameter kinds ----------------------------------------------------------

def _small_ints(shape: tuple) -> list[int]:
    """Ints that make sense for most int arguments on this input: small numbers, channel divisors, axes."""
    rank = len(shape)
    values = {1, 2, 3, 4, 6, 8, 0, -1}
    c = shape[1] if rank > 1 and isinstance(shape[1], int) else 1
    values |= {d for d in range(1, c + 1) if c % d == 0}
    values |= set(range(-rank, rank))
    return sorted(values)


def _spatial(ch, rank: int, values: tuple):
    if ch.integer(0, 3) == 0:
        return tuple(ch.choice(values) for _ in range(rank))
    return ch.choice(values)


def draw_arg(ch, kind: str, param, shape: tuple):
    """A language value for one non-tensor argument of this kind (the op's checks decide if it fits)."""
    rank = max(len(shape) - 2, 1)
    if param.default is not REQUIRED and ch.integer(0, 2) == 0:
        return param.default
    if kind == "int":
        return ch.choice(_small_ints(shape))
    if kind in ("float", "number"):
        return ch.choice((0.0, 1e-3, 0.1, 0.25, 0.5, 1.0, 2.0, -0.5))
    if kind == "bool":
        return ch.boolean()
    if kind == "str":
        return ch.choice(param.choices) if param.choices else param.default
    if kind == "spatial":
        return _spatial(ch, rank, (1, 2, 3))
    if kind == "padding":
        pick = ch.integer(0, 4)
        if pick == 0:
            return "same"
        if pick == 1:  # asymmetric: begins then ends
            return tuple(ch.choice((0, 1, 2)) for _ in range(2 * rank))
        return _spatial(ch, rank, (0, 1, 2))
    if kind == "scale":
        return _spatial(ch, rank, (1, 2, 1.5, 0.5))
    if kind == "ints":
        return _draw_ints(ch, shape)
    return param.default


def _draw_ints(ch, shape: tuple) -> tuple:
    """Axes, a permutation or sizes: what an `ints` argument holds (reductions' axes, permute's dims,
    split's sizes); the op's checks refuse the ones that do not fit."""
    full = len(shape)
    if full < 2:
        return (1,)
    pick = ch.integer(0, 2)
    if pick == 0:  # a permutation that keeps the batch first
        rest, dims = list(range(1, full)), [0]
        while rest:
            dims.append(rest.pop(ch.integer(0, len(rest) - 1)))
        return tuple(dims)
    c = shape[1] if isinstance(shape[1], int) else 1
    if pick == 1 and c > 1:  # sizes that add up to the channels
        cut = ch.integer(1, c - 1)
        return (cut, c - cut)
    return tuple(sorted({ch.integer(1, full - 1) for _ in range(ch.integer(1, 2))}))


def _deform_offsets(ch, g: "Generator", x: str, args: dict) -> list[str] | None:
    """deform_conv's offsets: a conv of the same geometry from the same input, 2*og*prod(k) channels."""
    shape = g.shapes[x]
    rank = len(shape) - 2
    kernel = args["k"] if isinstance(args["k"], tuple) else (args["k"],) * rank
    out = 2 * args.get("offset_groups", 1) * math.prod(kernel)
    geometry = {k: args[k] for k in ("k", "s", "p", "d") if k in args}
    name = g.add("conv", {"out": out, **geometry}, [x])
    return [name] if name else None


# op name -> a function that adds the layers its tensor arguments read and returns their names
TENSOR_RECIPES = {"deform_conv": _deform_offsets}


def _away_from_zero(g: "Generator", inputs: list[str]) -> list[str] | None:
    """div's divisor clipped to [0.5, inf): a quotient by (nearly) zero is inf or NaN, and NaN's way through
    a max pool differs between runtimes (a finding about NaN, not about the compiler)."""
    divisor = g.add("clip", {"min": 0.5}, [inputs[1]])
    return [inputs[0], divisor] if divisor else None


# merge name -> a function that puts its operands in the op's domain (after _merge_partners drew them)
OPERAND_RECIPES = {"div": _away_from_zero}


# ---- the generator ---------------------------------------------------------------------------

@dataclass
class Generator:
    """A LayerGraph under construction: every tensor's shape, and which ops were tried and made."""

    ch: object
    graph: LayerGraph = field(default_factory=lambda: LayerGraph("fuzz"))
    shapes: dict[str, tuple] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)

    def add(self, op_name: str, args: dict, inputs: list[str]) -> str | None:
        """Add a layer if the op accepts these arguments on these inputs; its name, or None."""
        op = all_ops()[op_name]
        shapes = [self.shapes[i] for i in inputs]
        rank = len(shapes[0])
        if (op.spatial_only and not 3 <= rank <= 5) or rank < op.min_rank:
            return None
        from cnncomp.frontend.cnn.values import check_arg

        try:
            params = {p.name: p for p in op.params}
            # None is an optional argument left out (upsample's size): nothing to check
            checked = {k: v if v is None else check_arg(op_name, params[k], v)
                       for k, v in args.items() if params[k].kind != "tensor"}
            attrs, shape, weights = op.instantiate(checked, shapes)
        except CnnError:  # anything else escapes: an op must refuse bad arguments with a located error
            return None
        if any(not isinstance(d, int) or d < 1 for d in shape[1:]) or numel(shape) > MAX_ELEMENTS:
            return None
        written = {p.name: checked[p.name] for p in op.params if p.name in checked}
        name = f"l{len(self.graph) - len(self.graph.inputs)}"
        layer = Layer(name, op_name, attrs, shape, "float32", None, (), weights, written)
        self.graph.add_layer(layer, inputs)
        self.shapes[name] = shape
        self.made.append(op_name)
        return name

    def tensors(self) -> list[str]:
        return list(self.shapes)


def needs_recipe(op: Op) -> bool:
    """Whether the op has a required tensor argument, which only a recipe can make."""
    return any(p.kind == "tensor" and p.default is REQUIRED for p in op.params)


def generatable_ops() -> list[str]:
    """The registered ops the generator draws from, sorted."""
    return sorted(n for n, op in all_ops().items()
                  if n not in NOT_GENERATED and (n in TENSOR_RECIPES or not needs_recipe(op)))


def generate(ch, max_layers: int = 8) -> LayerGraph:
    """A random valid graph: one input of rank 3 to 5, up to `max_layers` layers, its sinks as outputs."""
    rank = ch.integer(3, 5)
    spatial_sizes = {3: (5, 16), 4: (3, 9), 5: (2, 5)}[rank]
    shape = ("N", ch.choice((1, 2, 3, 4, 6, 8))) + tuple(ch.integer(*spatial_sizes) for _ in range(rank - 2))
    g = Generator(ch)
    g.graph.add_layer(Layer("x", "input", {}, shape, "float32"))
    g.shapes["x"] = shape
    # layers with weights and merges are what the passes rewrite: drawn three times as often
    ops = [n for n in generatable_ops() for _ in range(3 if all_ops()[n].category in HEAVY else 1)]
    for _ in range(ch.integer(1, max_layers)):
        _add_some_layer(g, ops)
    sinks = [n for n in g.tensors() if n != "x" and not g.graph.users(n)] or [g.tensors()[-1]]
    if sinks == ["x"]:  # nothing was made: one point-wise layer keeps the case meaningful
        sinks = [g.add("relu", {}, ["x"])]
    g.graph.outputs = list(sinks)
    g.graph.output_names = [f"out{i}" for i in range(len(sinks))]
    return g.graph


def _add_some_layer(g: Generator, ops: list[str]) -> None:
    """Draw an op and arguments for it (ATTEMPTS times), or give up on it and draw another op.

    Half the time a layer is followed at once by one that makes a pattern a pass rewrites."""
    for _ in range(OPS_TRIED):
        op_name = g.ch.choice(ops)
        for _ in range(ATTEMPTS):
            made = _try_layer(g, op_name)
            if made:
                followers = _pattern_followers(all_ops()[op_name], ops)
                if followers and g.ch.boolean():
                    follower = g.ch.choice(followers)
                    any(_try_layer(g, follower, made) for _ in range(ATTEMPTS))
                return


def _pattern_followers(op: Op, ops: list[str]) -> list[str]:
    """Ops that, reading `op`'s output, make a pattern a pass rewrites: a norm after a layer bn folds
    into; a layer bn folds into after a norm; a window after a pad (fold-pad); a conv after a conv
    (merge-pointwise)."""
    def where(test) -> list[str]:
        return [n for n in ops if test(all_ops()[n])]

    if op.folds_bn:  # mostly a norm, sometimes the same kind of layer
        followers = where(lambda o: o.category == "norm") * 2
        return followers + where(lambda o: o.category == op.category and not o.variadic)
    if op.category == "norm":
        return where(lambda o: o.folds_bn_before)
    if op.name == "pad":
        return where(lambda o: o.sliding_window)
    return []


def _try_layer(g: Generator, op_name: str, source: str | None = None) -> str | None:
    """Add one `op_name` layer with drawn arguments (reading `source`, or a drawn tensor); its name."""
    ch, op = g.ch, all_ops()[op_name]
    if source is None:
        tensors = g.tensors()
        source = tensors[-1] if ch.integer(0, 3) else ch.choice(tensors)  # mostly chains, sometimes branches
    shape = g.shapes[source]
    args = {}
    for p in op.params:
        if (op_name, p.name) in ARGUMENT_CHOICES:
            args[p.name] = ch.choice(ARGUMENT_CHOICES[op_name, p.name][0])
        elif p.kind != "tensor":
            args[p.name] = draw_arg(ch, p.kind, p, shape)
            if args[p.name] is REQUIRED:
                return None  # a kind draw_arg does not know, with no default
    inputs = [source]
    if op.variadic:
        inputs += _merge_partners(g, op, source, args)
        if op_name in OPERAND_RECIPES:
            inputs = OPERAND_RECIPES[op_name](g, inputs)
            if inputs is None:
                return None
    elif op_name in TENSOR_RECIPES:
        extra = TENSOR_RECIPES[op_name](ch, g, source, args)
        if extra is None:
            return None
        inputs += extra
    return g.add(op_name, args, inputs)


def _merge_partners(g: Generator, op: Op, source: str, args: dict) -> list[str]:
    """One to two more tensors the merge can take with `source` (the same tensor again if none fits)."""
    ch, shape = g.ch, g.shapes[source]
    fits = []
    for name in g.tensors():
        try:
            op.instantiate(dict(args), [shape, g.shapes[name]])
        except CnnError:
            continue
        fits.append(name)
    return [ch.choice(fits or [source]) for _ in range(ch.integer(1, 2))]


def spec_text(graph: LayerGraph) -> str:
    """The .cnn text of a generated graph."""
    from cnncomp.emit.cnn.syntax import unparse
    from cnncomp.emit.cnn.writer import spec_program

    return unparse(spec_program(graph, f"<{graph.name}.cnn>", blocks=False))


# ---- the differential check ------------------------------------------------------------------

@dataclass
class Finding:
    """One disagreement or crash: which configuration, and what."""

    config: str
    what: str

    def __str__(self) -> str:
        return f"{self.config}: {self.what}"


def check(text: str, seed: int = 0, rewrote: Counter | None = None) -> list[Finding]:
    """Compile a spec at every configuration and compare ONNX Runtime, the float64 reference and -O0.

    `rewrote`, if given, counts per pass the configurations in which it changed the graph."""
    import torch

    from cnncomp.frontend.cnn.loader import load_text

    try:
        graph = load_text(text, "fuzz.cnn")
    except CnnError as err:
        return [Finding("elaborate the printed spec", str(err))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread start-up dominates (8x slower with the default)
    try:
        return _check_graph(graph, seed, rewrote if rewrote is not None else Counter())
    finally:
        torch.set_num_threads(threads)


def _check_graph(graph: LayerGraph, seed: int, rewrote: Counter) -> list[Finding]:
    import torch

    from cnncomp.ir.weights import init_weights
    from cnncomp.run.reference import run_reference
    from cnncomp.verification.harness import make_inputs

    weights = init_weights(graph, seed)
    inputs = make_inputs(graph, seed)
    expected = run_reference(graph, weights, inputs, dtype=torch.float64)
    findings: list[Finding] = []
    baseline = None
    for label, setting in CONFIGS:
        try:
            result = _compile_and_run(graph, weights, inputs, setting)
        except Exception as exc:  # noqa: BLE001 - every crash is a finding
            findings.append(Finding(label, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"))
            continue
        if result is None:
            continue  # nothing rewritten: the -O0 model already stands for it
        ort, ref64, passes = result
        rewrote.update(passes)
        findings += _disagreements(label, "ONNX Runtime vs the float64 reference", ort, expected)
        findings += _disagreements(label, "optimized graph in float64 vs the reference", ref64, expected)
        if baseline is None:
            baseline = ort
        else:
            findings += _disagreements(label, "ONNX Runtime vs the -O0 model", ort, baseline)
    return findings


def _compile_and_run(graph, weights, inputs, setting):
    """(ONNX Runtime outputs, float64 reference outputs, the passes that rewrote) of the optimized graph;
    None if no pass changed it."""
    import torch

    from cnncomp.emit.onnx import check_onnx, emit_onnx
    from cnncomp.passes import PassContext, level_pipeline, parse_pass_list, run_pipeline
    from cnncomp.run.reference import run_reference
    from cnncomp.run.session import Session

    ctx = PassContext(graph.copy(), dict(weights))
    steps = level_pipeline(setting) if isinstance(setting, int) else parse_pass_list(setting)
    records = run_pipeline(ctx, steps, lint=True)
    passes = {r.step.split("(")[0] for r in records if r.rewrites}
    if setting != 0 and not passes:
        return None
    model = emit_onnx(ctx.graph, ctx.weights)
    check_onnx(model)
    ort = Session(model, threads=1).run(inputs)
    ref64 = run_reference(ctx.graph, ctx.weights, inputs, dtype=torch.float64)
    return ort, ref64, passes


def _disagreements(label: str, what: str, got: dict, want: dict) -> list[Finding]:
    from cnncomp.verification.compare import compare

    out = []
    for name, ref in want.items():
        c = compare(got[name], ref, None, None)
        if not c.ok:
            out.append(Finding(label, f"{what}, output {name}: {c.describe()}"))
    return out


@dataclass
class CaseResult:
    """A generated case, what it contains and what the check found."""

    seed: int
    text: str
    ops: list[str]
    findings: list[Finding]
    rewrote: Counter = field(default_factory=Counter)  # pass -> configurations in which it changed the graph


def run_case(seed: int, max_layers: int = 8) -> CaseResult:
    """Generate the case of this seed and check it."""
    graph = generate(RandomChooser(seed), max_layers)
    text = spec_text(graph)
    ops = [layer.op for layer in graph.layers() if layer.op != "input"]
    rewrote: Counter = Counter()
    findings = check(text, seed, rewrote)
    return CaseResult(seed, text, ops, findings, rewrote)
