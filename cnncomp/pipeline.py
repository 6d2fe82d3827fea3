"""The whole job, as functions that the Python API and the command line share.

    load -> weights -> optimize (the passes; -O3's search) -> emit -> precision -> check -> write / deploy

Each stage is one function here, and the jobs at the bottom (`compile_job`,
`verify_job`, `deploy_job`, `draw_job`, `infer`, `write_seeded_weights`) chain them. A job
runs one job description (`cnncomp.job.Job`: source, optimize, precision, check, output),
which the CLI and the API build from the same declaration of the options.
Messages for the user (warnings and notes) go to a `log` function that takes one
line ending in a newline (the CLI passes sys.stderr.write); results come back as
dataclasses that the callers print.

Plugging in: a precision is a registered class (precision/convert.py), a runtime one in
run/runtime.py, a target one in deployment/targets.py; an option is one declaration in job.py;
an emitter is one branch of `emit_text`.

Why one module of about 620 lines: it is the job's table of contents, read top to
bottom in the order the stages run; each stage is a short function over the layers
below, and splitting it would scatter the one place that shows how they connect.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnncomp.deployment.targets import Written
from cnncomp.errors import CnnError, UsageError
from cnncomp.ir.graph import LayerGraph
from cnncomp.job import EMITTERS, Job  # noqa: F401  (EMITTERS: the --emit choices, declared with the options)
from cnncomp.log import Log, silent
from cnncomp.precision.convert import (  # noqa: F401  (the converters are part of the job's public face)
    PRECISIONS, Converted, PrecisionRequest, conversion_for_timing, convert_precision, precision_of,
)
from cnncomp.verification.meters import OutputErrorMeter  # noqa: F401  (-O3's meter, wired in `optimize`)


# ---- load and weights --------------------------------------------------------------------------------


def load(spec, defines: dict[str, str] | None = None, shape: dict | None = None) -> LayerGraph:
    """Parse and elaborate a .cnn spec into a LayerGraph (every shape known, every layer named); a graph
    that is already loaded passes through. With `shape` ({"x": (1, 3, 512, 512)}), the spec's symbolic
    sizes are pinned to those of the shape."""
    if isinstance(spec, LayerGraph):
        return spec
    from cnncomp.frontend.cnn.loader import load_spec

    graph = load_spec(spec, defines)
    if shape:
        from cnncomp.frontend.cnn.symbols import pins_for_shapes

        graph = load_spec(spec, {**(defines or {}), **pins_for_shapes(graph, shape)})
    return graph


def weights_for(graph: LayerGraph, weights=None, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights from a file (safetensors or a PyTorch checkpoint), a dict, or seeded initialization."""
    from cnncomp.ir.weights import check_weights, init_weights, load_weights

    if weights is None:
        return init_weights(graph, seed)
    if isinstance(weights, (str, Path)):
        return load_weights(weights, graph)
    return check_weights(dict(weights), graph, "the weights dict")


# ---- optimize ----------------------------------------------------------------------------------------


@dataclass
class Compiled:
    """A spec after the passes: the reference graph and weights, the optimized ones, and what the passes did."""

    ref_graph: LayerGraph
    ref_weights: dict[str, np.ndarray]
    graph: LayerGraph
    weights: dict[str, np.ndarray]
    records: list = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fp16_warnings: list[str] = field(default_factory=list)
    budget: object = None  # -O3: passes.budget.BudgetReport, its errors on the search and held-out samples


def resolve_steps(opt_level: int = 1, passes=None):
    """The pass steps for -O<level>, or for an explicit list (text, a list of texts, or of PassSteps)."""
    from cnncomp.passes import PassStep, level_pipeline, parse_pass_list

    if passes is not None:
        if isinstance(passes, str):
            return parse_pass_list(passes)
        if all(isinstance(p, PassStep) for p in passes):
            return list(passes)
        return parse_pass_list(",".join(passes))
    if not 0 <= opt_level <= 3:
        raise UsageError(f"optimization level must be 0 to 3, got {opt_level}")
    return level_pipeline(min(opt_level, 2))




def output_error_meter(ref_graph: LayerGraph, ref_weights: dict, feeds: dict, jobs: int = 1) -> OutputErrorMeter:
    """The -O3 search's measure (verification/meters.py), all in float32; `jobs` processes measure a layer's
    trials at once."""
    return OutputErrorMeter(ref_graph, ref_weights, feeds, jobs, reference_dtype="float32")


def o3_samples(graph: LayerGraph, calibration: dict | None, seed: int) -> tuple[dict, dict, list[str]]:
    """(search samples, held-out samples, warnings) for -O3: the calibration inputs split as int8 splits them
    (passes/budget.py), or seeded uniform inputs, two to search on and two others (another seed) to check."""
    from cnncomp.passes.budget import split_held_out

    if calibration is None:
        from cnncomp.verification.harness import make_inputs

        return make_inputs(graph, seed, batch=2), make_inputs(graph, seed + HELD_OUT_SEED, batch=2), []
    from cnncomp.inputs import bind_inputs
    from cnncomp.precision.calibration import fixed_batch

    search, held, warnings = split_held_out(bind_inputs(calibration, graph.inputs, "--calibration"),
                                            fixed_batch(graph) or 1)
    return search, held, [f"-O3: {w}" for w in warnings]


HELD_OUT_SEED = 7919  # seeded held-out inputs: another seed than the search's


def _count(feeds: dict) -> int:
    return len(next(iter(feeds.values()))) if feeds else 0


def optimize(spec, defines=None, weights=None, seed: int = 0, opt_level: int = 1, passes=None, *,
             lint: bool = False, after_each=None, **options) -> Compiled:
    """Load a spec and run its passes through the pass manager: -O<level> (-O3 adds the per-layer search of
    approximate rewrites under `max_error`), or a list. `options` are compile's (job.py), e.g. max_error,
    calibration, jobs, autotune, runtime, precision (what --autotune times in; also `timing_precision`)."""
    from cnncomp.job import job_from_keywords

    if "timing_precision" in options:
        options["precision"] = options.pop("timing_precision")
    job = job_from_keywords("compile", spec, {"defines": defines, "weights": weights, "seed": seed,
                                              "opt_level": opt_level, "passes": passes, **options})
    return optimize_job(job, lint=lint, after_each=after_each)


def optimize_job(job: Job, graph: LayerGraph | None = None, weights=None, lint: bool = False,
                 after_each=None) -> Compiled:
    """The job's passes on its spec (or on `graph`, already loaded, with `weights`, already read): -O<level> or
    the --passes list; -O3's search measures on the job's calibration arrays (or seeded inputs) within
    --max-error times the precision's share, a layer's settings in --jobs processes, and with --autotune keeps
    a rewrite only where the runtime runs it faster, timed in the job's precision."""
    from cnncomp.ir.weights import nonfinite_weights
    from cnncomp.passes import PassContext, PassRunner

    o, source = job.optimize, job.source
    calibration = job.o3_calibration()  # read (and refused when unreadable) before any work, whatever the level
    ref_graph = graph if graph is not None else load(job.spec, source.defines)
    ref_weights = weights if weights is not None else weights_for(ref_graph, source.weights, source.seed)
    steps = resolve_steps(o.opt_level, o.passes)
    ctx = PassContext(ref_graph.copy(), dict(ref_weights))
    ctx.warnings += [f"weights not finite: {w}" for w in nonfinite_weights(ref_weights)]
    ctx.graph.meta["passes"] = []
    runner = PassRunner(ctx, lint=lint, after_each=after_each)
    runner.run_steps(steps)
    if o.opt_level >= 3 and o.passes is None:
        from cnncomp.passes.search import apply_within_budget

        precision = precision_of(job.precision_name)
        feeds, held_out, warnings = o3_samples(ref_graph, calibration, source.seed)
        ctx.warnings += warnings
        speedup = None
        if o.autotune:
            from cnncomp.run.timing import rewrite_speedup

            convert, runtime = precision.for_timing(), job.check.get("runtime", "cpu")

            def speedup(old, new, layer):
                return rewrite_speedup(old, new, layer, runtime, convert=convert)

        apply_within_budget(runner, output_error_meter(ref_graph, ref_weights, feeds, o.jobs),
                            o.max_error * precision.o3_budget_share, speedup,
                            held_out=OutputErrorMeter(ref_graph, ref_weights, held_out))  # float64 reference
        if ctx.budget is not None:
            ctx.budget.search_samples, ctx.budget.held_out_samples = _count(feeds), _count(held_out)
    return Compiled(ref_graph, ref_weights, ctx.graph, ctx.weights, runner.records, ctx.log, ctx.warnings,
                    ctx.fp16_warnings, ctx.budget)


# ---- emit --------------------------------------------------------------------------------------------


def emit_model(compiled: Compiled, opset: int = 17, notices: list[str] | None = None):
    """The optimized graph as an ONNX ModelProto (checked with the full checker)."""
    from cnncomp.emit.onnx import check_onnx, emit_onnx

    model = emit_onnx(compiled.graph, compiled.weights, opset=opset, notices=notices)
    check_onnx(model)
    return model


def emit_text(compiled: Compiled, emit: str, log: Log = silent) -> str:
    """The optimized graph as text: a .cnn spec (`cnn`), Graphviz DOT (`dot`) or PyTorch source (`torch`)."""
    title = f"{compiled.graph.name} after passes: {', '.join(compiled.graph.meta.get('passes', [])) or 'none'}"
    if emit == "cnn":
        from cnncomp.emit.cnn import write_cnn

        return write_cnn(compiled.graph, header=title)
    if emit == "dot":
        from cnncomp.emit.dot import to_dot

        return to_dot(compiled.graph, title=title)
    if emit == "torch":
        from cnncomp.emit.torch.emit import emit_torch

        notices: list[str] = []
        text = emit_torch(compiled.graph, notices=notices)
        for n in notices:
            log(f"note: {n}\n")
        return text
    raise UsageError(f"unknown emitter '{emit}'; known: {', '.join(EMITTERS)}")


# ---- check -------------------------------------------------------------------------------------------


@dataclass
class CheckOptions:
    """How a numeric check runs and what it accepts, as the job states it (`check_options(job)`)."""

    provider: str = "cpu"
    seed: int = 0
    val_range: tuple[float, float] = (-1.0, 1.0)
    batch: int = 2
    atol: float | dict[str, float] | None = None
    rtol: float | dict[str, float] | None = None
    max_error: float | None = None
    session_options: dict = field(default_factory=dict)  # the runtime's own options (run/runtime.py), by name
    per_layer: bool = False
    shapes: list = field(default_factory=list)  # --shape: input shapes ({"x": (1, 3, 512, 512)}) to check at too
    sizes: list = field(default_factory=list)  # the symbols' values checked besides the first inputs' (verify sets)

    def validate(self, graph: LayerGraph) -> None:
        """Usage errors: a tolerance that is negative or NaN or names no output of `graph` (the values alone
        were checked where the job was built)."""
        for flag, given in (("--atol", self.atol), ("--rtol", self.rtol)):
            values = given if isinstance(given, dict) else {"": given} if given is not None else {}
            for name, value in values.items():
                if name and name not in graph.output_names:
                    raise UsageError(f"{flag} {name}=...: the network has no output '{name}' "
                                     f"(its outputs: {', '.join(graph.output_names)})")
                if not value >= 0:  # NaN fails this too
                    raise UsageError(f"{flag} takes a number 0 or more, got {value:g}")


def check_options(job: Job) -> CheckOptions:
    """The check's settings, read from the job."""
    from cnncomp.run.runtime import runtime_options

    c = job.check
    settings = {o.name: c[o.name] for o in runtime_options() if o.name in c}
    return CheckOptions(c.get("runtime", "cpu"), job.source.seed, c.get("val_range", (-1.0, 1.0)), c.get("batch", 2),
                        c.get("atol"), c.get("rtol"), job.optimize.max_error, settings, c.get("per_layer", False),
                        list(c.get("shape") or []))


@dataclass
class Checked:
    """A check's report, the inputs it ran on, and the model's outputs."""

    report: object  # verification.harness.VerifyReport
    feeds: dict
    outputs: dict


def check_inputs(graph: LayerGraph, options: CheckOptions) -> dict[str, np.ndarray]:
    """Seeded uniform inputs in options.val_range; a symbolic batch dim takes options.batch."""
    from cnncomp.verification.harness import make_inputs

    return make_inputs(graph, options.seed, options.val_range, options.batch)


def check(compiled: Compiled, converted: Converted, options: CheckOptions) -> Checked:
    """Run the converted model under ONNX Runtime against the float64 reference of the unoptimized graph,
    judged as its precision's registry entry says (tolerances, or the --max-error budget)."""
    from cnncomp.verification.harness import verify

    precision = precision_of(converted.precision)
    report, feeds, outputs = verify(
        compiled.ref_graph, compiled.ref_weights, converted.model, converted.graph, provider=options.provider,
        inputs=converted.inputs, seed=options.seed, val_range=options.val_range, batch=options.batch,
        atol=options.atol, rtol=options.rtol, per_layer=options.per_layer, precision=converted.precision,
        runtime_settings=options.session_options, max_error=options.max_error, tolerances=precision.tolerances,
        judged_by_budget=precision.judged_by_budget, sizes=options.sizes, judge=converted.judge)
    report.notes += converted.notes
    if options.per_layer:
        report.notes += precision.check_notes(report, compiled, converted.details)
    if converted.details is not None and hasattr(converted.details, "to_json"):
        report.details = converted.details.to_json()
    return Checked(report, feeds, outputs)


class PassChecker:
    """--verify-each: the pass manager's after-each hook that emits the graph after every pass run (the -O3
    search's rewrites included) and checks it against the reference; it remembers the first that broke."""

    def __init__(self, ref_graph: LayerGraph, ref_weights: dict, inputs: dict, options: CheckOptions):
        self.ref_graph, self.ref_weights, self.inputs, self.options = ref_graph, ref_weights, inputs, options
        self.checked: list[str] = []
        self.approximate: list[str] = []
        self.broken: str | None = None

    def __call__(self, step, ctx) -> None:
        if self.broken:
            return
        from cnncomp.emit.onnx import emit_onnx
        from cnncomp.passes import all_passes
        from cnncomp.verification.harness import verify

        o = self.options
        report, _, _ = verify(self.ref_graph, self.ref_weights, emit_onnx(ctx.graph, ctx.weights), ctx.graph,
                              inputs=self.inputs, provider=o.provider, seed=o.seed, val_range=o.val_range,
                              batch=o.batch, atol=o.atol, rtol=o.rtol, max_error=o.max_error,
                              runtime_settings=o.session_options, sizes=o.sizes)
        self.checked.append(str(step))
        if not all_passes()[step.name].exact:
            self.approximate.append(str(step))
        if not report.ok:
            self.broken = str(step)

    def notes(self) -> list[str]:
        if self.broken:
            return [f"the first pass that broke agreement: {self.broken}"]
        line = f"verify-each: checked after each of {len(self.checked)} pass runs, all agree"
        if self.approximate:
            line += f"; approximate rewrites checked: {', '.join(self.approximate)}"
        return [line]


# ---- write -------------------------------------------------------------------------------------------


def write_model(model, output, target: str = "onnx", precision: str = "fp32", log: Log = silent,
                **settings) -> Written:
    """Write the model as `target` (deployment/targets.py: an ONNX file, a TensorRT engine with `profile`, ...);
    what the precision changes there (TensorRT flags, a strict load check) comes from its registry entry."""
    from cnncomp.deployment.targets import targets

    if target not in targets():
        raise UsageError(f"unknown target '{target}'; known: {', '.join(targets())}")
    return targets()[target].write(model, output, precision_of(precision), log, **settings)


# ---- the jobs ----------------------------------------------------------------------------------------


def _warn(compiled: Compiled, precision: str, log: Log) -> None:
    for w in compiled.warnings + precision_of(precision).pass_warnings(compiled):
        log(f"warning: {w}\n")
    if compiled.budget is not None:
        log(f"note: {compiled.budget.summary()}\n")


def _request(job: Job, compiled: Compiled, **fields) -> PrecisionRequest:
    """What the precision converter gets: the job's settings by name, and the compiled reference."""
    return PrecisionRequest(settings=job.values, compiled=compiled, **fields)


def compile_problem(job: Job) -> str | None:
    """Why these compile options cannot go together, or None."""
    from cnncomp.deployment.targets import targets

    emit, precision, target = job.output.emit, job.precision_name, job.output.target
    if targets()[target].from_onnx and emit != "onnx":
        return f"--target {target} builds from the ONNX model; it cannot go with --emit {emit}"
    if precision_of(precision).converts_model and emit != "onnx":
        return f"--precision {precision} converts the ONNX model; it cannot go with --emit {emit}"
    return None


@dataclass
class CompileResult:
    """What compile did: the passes' result, the model (None for a text emitter) or text, the check's report
    (None without one), and the file written (None when nothing was asked or the check failed)."""

    compiled: Compiled
    model: object = None
    text: str | None = None
    report: object = None
    written: Written | None = None
    details: object = None  # the precision converter's report (int8: the sensitivity table)

    def stats(self, precision: str) -> str | None:
        """The precision's part of --stats (int8: the per-layer sensitivity table), or None."""
        return precision_of(precision).stats(self.details)


def compile_job(job: Job, log: Log = silent) -> CompileResult:
    """`cnncomp compile`: optimize, emit, convert the precision, check (with --verify), write the output
    (an ONNX file, a TensorRT engine or text) unless the check failed."""
    problem = compile_problem(job)
    if problem:
        raise UsageError(problem)
    out, precision, verify = job.output, job.precision_name, job.check.verify
    options = check_options(job)
    ref_graph = load(job.spec, job.source.defines)
    if verify:
        options.validate(ref_graph)
    compiled = optimize_job(job, ref_graph)
    _warn(compiled, precision, log)
    if out.emit != "onnx":
        from cnncomp.fileio import write_text

        text = emit_text(compiled, out.emit, log)
        if out.output is not None:
            write_text(out.output, text)
        written = Written(str(out.output), out.emit) if out.output is not None else None
        return CompileResult(compiled, text=text, written=written)
    notices: list[str] = []
    model = emit_model(compiled, job.optimize.opset, notices)
    for n in notices:
        log(f"note: {n}\n")
    from cnncomp.deployment.targets import targets

    target = targets()[out.target]
    request = _request(job, compiled, inputs=check_inputs(compiled.ref_graph, options) if verify else None,
                       probe_provider=options.provider if verify else None, atol=options.atol, rtol=options.rtol,
                       tensorrt=target.tensorrt)
    converted = convert_precision(model, compiled.graph, precision, request, log)
    settings = target.settings(converted.model, out)  # e.g. the TensorRT profile, checked before the check runs
    result = CompileResult(compiled, converted.model, details=converted.details)
    if verify:
        from cnncomp.verification.harness import sizes_to_check

        options.sizes = sizes_to_check(compiled.ref_graph, options.shapes, batch=options.batch)
        result.report = check(compiled, converted, options).report
        if not result.report.ok:
            return result
    if out.output is not None:
        result.written = write_model(converted.model, out.output, out.target, converted.precision, log, **settings)
    return result


@dataclass
class VerifyResult:
    """What verify found: the report, the inputs it ran on, the model's outputs, and the passes' result."""

    report: object
    feeds: dict
    outputs: dict
    compiled: Compiled
    details: object = None  # the precision converter's report (int8: the sensitivity table)


def verify_job(job: Job, log: Log = silent, inputs: dict | None = None) -> VerifyResult:
    """`cnncomp verify`: compile in memory and compare ONNX Runtime with the reference (per layer with
    --per-layer; after every pass, the -O3 rewrites included, with --verify-each) on `inputs`, the
    --load-inputs file or seeded inputs; save the inputs and outputs when asked."""
    from cnncomp.fileio import save_arrays

    c = job.check
    options = check_options(job)
    ref_graph = load(job.spec, job.source.defines)
    options.validate(ref_graph)
    if inputs is None and c.load_inputs:
        from cnncomp.inputs import load_arrays

        inputs = load_arrays(c.load_inputs, "--load-inputs")
    feeds = inputs if inputs is not None else check_inputs(ref_graph, options)
    from cnncomp.verification.harness import sizes_to_check

    options.sizes = sizes_to_check(ref_graph, options.shapes, defaults=inputs is None, batch=options.batch)
    checker, weights = None, None
    if c.verify_each:
        weights = weights_for(ref_graph, job.source.weights, job.source.seed)
        checker = PassChecker(ref_graph, weights, feeds, options)
    compiled = optimize_job(job, ref_graph, weights, after_each=checker)
    model = emit_model(compiled, job.optimize.opset)
    request = _request(job, compiled, inputs=feeds, probe_provider=options.provider, atol=options.atol,
                       rtol=options.rtol, inputs_given=inputs is not None)
    converted = convert_precision(model, compiled.graph, job.precision_name, request, log)
    checked = check(compiled, converted, options)
    if checker is not None:
        checked.report.notes += checker.notes()
        if checker.broken:
            checked.report.ok = False
    if c.save_inputs:
        save_arrays(c.save_inputs, checked.feeds)
    if c.save_outputs:
        save_arrays(c.save_outputs, checked.outputs)
    return VerifyResult(checked.report, checked.feeds, checked.outputs, compiled, converted.details)


@dataclass
class Deployed:
    """A Triton model folder written: where, its config, and the precision of its model."""

    folder: Path
    config: object  # deployment.triton.TritonConfig
    precision: str


def deploy_job(job: Job, log: Log = silent) -> Deployed:
    """`cnncomp deploy`: compile and write a Triton model repository, REPO/<name>/config.pbtxt and
    REPO/<name>/1/model.onnx, atomically."""
    from cnncomp.deployment.triton import triton_config
    from cnncomp.run.session import Session

    out, precision = job.output, job.precision_name
    if out.tensorrt and out.kind == "cpu":
        raise UsageError("--tensorrt needs GPU instances (TensorRT runs only on NVIDIA GPUs); drop --kind cpu")
    compiled = optimize_job(job)
    _warn(compiled, precision, log)
    notices: list[str] = []
    model = emit_model(compiled, job.optimize.opset, notices)
    for n in notices:
        log(f"note: {n}\n")

    def config_of(model):
        return triton_config(model, compiled.graph, out.max_batch, out.instances, out.kind, out.tensorrt, precision,
                             out.name, job.check.runtime)

    config_of(model)  # the batch dims and names are checked on the float32 model, before anything is converted
    # CPU instances (or Triton's choice on a CPU-only server) run on ONNX Runtime's CPU provider: keep in
    # float32 what it has no float16 kernel for
    request = _request(job, compiled, probe_provider=None if out.kind == "gpu" else "cpu", tensorrt=out.tensorrt)
    converted = convert_precision(model, compiled.graph, precision, request, log)
    model, precision = converted.model, converted.precision  # int8 not faster than float32: fp32 (Int8.convert)
    if out.tensorrt:
        from cnncomp.deployment.tensorrt import check_tensorrt_compatible

        for problem in check_tensorrt_compatible(model):
            log(f"warning: TensorRT: {problem} (Triton's ONNX Runtime backend then runs those nodes without "
                "TensorRT)\n")
    Session(model, "cpu", quiet=True)  # ONNX Runtime (CPU) must load what Triton's backend will load
    config = config_of(model)
    written = write_model(model, out.triton, "triton", precision, log, config=config)
    return Deployed(Path(written.path), config, precision)


@dataclass
class Serving:
    """A local Triton server running over a repository: its endpoints (HTTP, gRPC, metrics), its models,
    what it serves (the repository, or the spec deployed to a temporary one) and the server itself."""

    endpoints: dict[str, str]
    models: list[str]
    source: Path
    server: object  # deployment.serve.TritonServer: running(), model_metadata(name), log(), stop()


@contextlib.contextmanager
def serve_job(job: Job, log: Log = silent):
    """`cnncomp serve`: start Triton on 127.0.0.1 over a repository (a spec is deployed to a temporary one
    first, with its -D and --max-batch), wait until every model is ready, and yield a Serving; leaving the
    context stops the server and every process it started and removes the temporary repository."""
    from cnncomp.deployment.serve import Ports, TritonServer
    from cnncomp.job import build_job

    source = Path(job.spec)
    is_spec = source.is_file()
    out = job.output
    if not is_spec and (job.source.defines or out.max_batch is not None):
        raise UsageError("-D and --max-batch go with a spec; a repository is served as it is")
    with contextlib.ExitStack() as stack:
        repo = source
        if is_spec:
            repo = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cnncomp-repo-")))
            given = {"defines": job.source.defines, "triton": str(repo)}
            if out.max_batch is not None:
                given["max_batch"] = out.max_batch
            deployed = deploy_job(build_job("deploy", source, given), log)
            log(f"deployed {source} to {deployed.folder} ({deployed.config.name}, max_batch_size "
                f"{deployed.config.max_batch_size})\n")
        server = TritonServer(repo, Ports(out.http_port, out.grpc_port, out.metrics_port), out.tritonserver)
        stack.callback(server.cleanup)
        server.start(timeout=out.timeout)
        yield Serving(server.endpoints(), list(server.models), source, server)


def infer(model, inputs, provider: str = "cpu", defines=None, weights=None, seed: int = 0,
          shaped: bool = False) -> dict[str, np.ndarray]:
    """`cnncomp run`: the outputs of an ONNX model (a path or ModelProto) or of a .cnn spec (compiled in
    memory at -O1) on `inputs` (a dict, or a .npy/.npz path; with `shaped`, {input name or None: shape}
    of seeded uniform inputs), under the runtime `provider` names (float32 under OpenVINO too: its
    precision hint is set to f32). A spec's symbolic sizes are checked against its constraints first."""
    from cnncomp.inputs import read_inputs
    from cnncomp.run.runtime import open_session

    graph = None
    if isinstance(model, (str, Path)) and str(model).endswith(".cnn"):
        compiled = optimize(model, defines, weights, seed)
        graph, model = compiled.ref_graph, emit_model(compiled)
    session = open_session(str(model) if isinstance(model, Path) else model, provider)
    if shaped:
        inputs = _seeded_inputs(session, inputs, seed)
    feeds = inputs if isinstance(inputs, dict) else read_inputs(inputs, session.input_names, "--input")
    if graph is not None:
        from cnncomp.run.reference import input_sizes

        input_sizes(graph, {n: a.shape for n, a in feeds.items() if n in graph.inputs})
    return session.run(feeds)


def _seeded_inputs(session, shapes: dict, seed: int) -> dict[str, np.ndarray]:
    names = list(session.input_names)
    if None in shapes:
        if len(names) != 1:
            raise UsageError(f"--shape: the model has {len(names)} inputs ({', '.join(names)}); name each")
        shapes = {names[0]: shapes[None]}
    missing = [n for n in names if n not in shapes]
    if missing or set(shapes) - set(names):
        raise UsageError(f"--shape: give one shape per model input ({', '.join(names)})")
    rng = np.random.default_rng(seed)
    types = {i.name: i.type for i in session.session.get_inputs()}
    return {n: rng.uniform(-1.0, 1.0, shapes[n]).astype(np.float16 if types[n] == "tensor(float16)" else np.float32)
            for n in names}


def write_seeded_weights(spec, output, defines=None, seed: int = 0) -> dict[str, np.ndarray]:
    """`cnncomp init`: a spec's seeded weights keyed by layer weight names, written to .safetensors (or a
    .pt/.pth PyTorch state_dict, by the output's suffix)."""
    from cnncomp.ir.weights import init_weights, save_weights

    weights = init_weights(load(spec, defines), seed)
    save_weights(weights, output)
    return weights


def draw_job(job: Job) -> LayerGraph:
    """`cnncomp graph`: draw the graph (after the passes, unless -O0) to .svg/.png/.pdf through Graphviz's
    `dot`, or write its DOT text (.dot); returns the graph drawn."""
    from cnncomp.emit.dot import dot_program, output_format, render, to_dot

    output = job.output.output
    fmt = output_format(output)  # an unknown suffix is an error before any work
    if fmt is not None and dot_program() is None:
        raise CnnError(f"cannot draw '{output}': Graphviz's `dot` program is not installed (or not on PATH); "
                       "install Graphviz (apt-get install graphviz, brew install graphviz, conda install graphviz), "
                       "or write the DOT text with -o model.dot")
    folder = Path(output).parent
    if not folder.is_dir():
        raise CnnError(f"cannot write '{output}': the folder '{folder}' does not exist")
    if job.optimize.opt_level == 0 and job.optimize.passes is None:
        graph, done = load(job.spec, job.source.defines), []
    else:
        graph = optimize_job(job).graph
        done = [str(p) for p in graph.meta.get("passes", [])]
    title = job.output.title or (f"{graph.name} (passes: {', '.join(done)})" if done else graph.name)
    render(to_dot(graph, title=title, rankdir=job.output.rankdir), output)
    return graph


# ---- import ------------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    """What an import produced: the spec text, its elaborated graph and its weights."""

    text: str
    graph: LayerGraph
    weights: dict


def import_model(path, network: str | None = None, input_shape: dict | None = None) -> ImportResult:
    """An ONNX model (a file, or an onnx.ModelProto) as a .cnn spec and weights, checked to reproduce the
    model's layers (nothing is written); `input_shape` ({input name or None: shape}) pins its dynamic dims."""
    from cnncomp.emit.cnn import write_program
    from cnncomp.frontend.onnx import read_model
    from cnncomp.ir.weights import check_weights

    model = read_model(path, network, input_shape)
    written = write_program(model.graph, f"Imported from {model.label} by cnncomp import.",
                            f"<import of {model.label}>")
    check_weights(model.weights, written.graph, f"the weights imported from {path}")
    return ImportResult(written.text, written.graph, model.weights)


def import_onnx_model(path, output, weights_out=None, input_shape: dict | None = None):
    """An ONNX model to a .cnn spec and a .safetensors file keyed by its layer names; returns the ImportResult.

    Nothing is written unless the whole model imports and the spec elaborates with the weights."""
    from cnncomp.fileio import write_text
    from cnncomp.ir.weights import save_safetensors

    from cnncomp.fileio import is_stdout, refuse_derived_output

    if weights_out is None:
        refuse_derived_output(output, "the weights", "--weights-out W")
    output = Path(output)
    weights_out = Path(weights_out) if weights_out is not None else output.with_suffix(".safetensors")
    if weights_out.resolve() == output.resolve():
        raise CnnError(f"the spec and the weights would both be written to {output}; choose another --weights-out")
    for target in (output, weights_out):
        if not target.parent.is_dir():
            raise CnnError(f"{target}: the folder {target.parent} does not exist")
    result = import_model(path, None if is_stdout(output) else output.stem, input_shape)
    # the weights take their place only once the spec is written: no weights without their spec, and
    # a weights file that was there before is never removed
    save_safetensors(result.weights, weights_out, with_other=lambda: write_text(output, result.text))
    return result


# ---- bench -------------------------------------------------------------------------------------------


def _bench_inputs(job: Job, compiled: Compiled | None, model) -> tuple[str, dict, dict | None]:
    """The network's name, its inputs ({name: (dtype, shape)}), and the calibration samples to run on (None:
    seeded uniform inputs)."""
    if compiled is None:
        import onnx

        initialized = {t.name for t in model.graph.initializer}
        inputs = {i.name: (onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type),
                           [d.dim_value if d.HasField("dim_value") else d.dim_param
                            for d in i.type.tensor_type.shape.dim])
                  for i in model.graph.input if i.name not in initialized}
        return Path(str(job.spec)).stem, inputs, None
    graph = compiled.ref_graph
    inputs = {n: (np.dtype(graph.layer(n).dtype), list(graph.layer(n).shape)) for n in graph.inputs}
    samples = None
    if job.optimize.calibration is not None:
        from cnncomp.precision.calibration import load_calibration

        samples = load_calibration(job.optimize.calibration, graph, job.values.get("preprocess"))
    return graph.name, inputs, samples


def _bench_feeds(inputs: dict, samples: dict | None, seed: int):
    """feeds_for(batch): the first calibration samples (repeated when too few; of samples that differ in size,
    those of the first one's size), or seeded uniform inputs."""
    from cnncomp.inputs import same_size_samples

    samples = same_size_samples(samples) if samples is not None else None

    def feeds_for(batch: int) -> dict:
        rng = np.random.default_rng(seed)
        feeds = {}
        for name, (dtype, shape) in inputs.items():
            if samples is not None:
                feeds[name] = samples[name][np.resize(np.arange(len(samples[name])), batch)]
            else:
                dims = [batch] + [d if isinstance(d, int) and d > 0 else 1 for d in shape[1:]]
                feeds[name] = rng.uniform(-1, 1, dims).astype(dtype)
        return feeds
    return feeds_for


def _bench_judge(job: Job, compiled: Compiled | None, samples: dict | None):
    """(judge, judged_by) for bench's rows: judge(batch)(outputs, baseline outputs) -> (budget error, metric
    values), each output judged by its --metric (the same plan as int8's: verification/metrics.py) against the
    float32 baseline's outputs at that batch, with --labels naming the classes of the calibration samples the batch
    runs on; judged_by describes the plan. An ONNX model has no graph to find class scores in: rel-l2 only."""
    from cnncomp.inputs import is_mixed
    from cnncomp.run.bench import MetricValue
    from cnncomp.verification.metrics import load_labels, metric_spec, plan_metrics, worst_budget_error

    spec, labels, max_error = metric_spec(job.values.get("metric", "auto")), job.values.get("labels"), \
        job.optimize.max_error
    if compiled is None:
        if labels is not None or spec.function is not None or any(i.name not in ("auto", "rel-l2")
                                                                   for i in spec.items):
            raise UsageError("--metric and --labels judge outputs by the network's graph, which an ONNX model lacks: "
                             "bench the .cnn spec (`cnncomp import` makes one from an ONNX model)")
        return None, [f"outputs: rel-l2 <= {max_error:g} (an ONNX model: no graph to find class scores in)"]
    if labels is not None:
        if samples is None:
            raise UsageError("--labels name the classes of the --calibration samples; give --calibration too")
        if is_mixed(samples):
            raise UsageError("--labels: bench runs the calibration samples of the first one's size; give samples "
                             "of one size with --labels")
        labels = load_labels(labels, len(next(iter(samples.values()))))
    plans: dict[int, object] = {}

    def judge(batch: int):
        def judged(outputs: dict, baseline: dict):
            if batch not in plans:  # thresholds such as max-abs's scale come from the baseline's outputs
                chosen = labels[np.resize(np.arange(len(labels)), batch)] if labels is not None else None
                plans[batch] = plan_metrics(spec, compiled.ref_graph, max_error, baseline, chosen)
                judged_by[:] = plans[batch].describe()
            results = plans[batch].results(baseline, baseline, outputs)
            return worst_budget_error(r.budget_error for r in results), [MetricValue(r.output, r.metric, r.converted.value if math.isfinite(
                r.converted.value) else None, r.converted.text, r.bound, r.budget_error) for r in results]
        return judged
    judged_by: list[str] = []
    return judge, judged_by


def bench_job(job: Job, log: Log = silent):
    """`cnncomp bench`: every runtime x precision x batch of the job side by side in one process (run/bench.py):
    medians, spread, speed-up, relative L2 error and each output's task metric (--metric) against float32 on
    ONNX Runtime's CPU provider, and the fastest choice within the budget (budget error <= 1). A spec is compiled once (-O1 unless told); each precision is converted
    once per kind of runtime that needs its own conversion; a choice that cannot run here keeps its reason."""
    from cnncomp.run.bench import BASELINE, Choice, measure, plot, plot_problem
    from cnncomp.run.runtime import open_session, runtimes
    from cnncomp.verification.compare import relative_output_error

    c = job.check
    if job.output.plot:
        problem = plot_problem(job.output.plot)
        if problem:
            raise CnnError(problem)  # before any work: nobody waits for a picture that will not come
    compiled = None
    if str(job.spec).endswith(".onnx"):
        import onnx

        try:
            model = onnx.load(str(job.spec))
        except Exception as e:  # a missing file, or bytes that are no ONNX model: the input's fault
            raise CnnError(f"{job.spec}: cannot read the ONNX model ({type(e).__name__}: {e})") from None
    else:
        compiled = optimize_job(job)
        _warn(compiled, "fp32", log)
        model = emit_model(compiled, job.optimize.opset)
    network, inputs, samples = _bench_inputs(job, compiled, model)
    for name, (_, shape) in inputs.items():
        if shape and isinstance(shape[0], int) and shape[0] > 0 and any(b != shape[0] for b in c.batches):
            raise UsageError(f"--batch {','.join(map(str, c.batches))}: the input '{name}' has the static batch "
                             f"size {shape[0]}")
    converted: dict[tuple, object] = {}
    choices = []
    for runtime_name, precision in [BASELINE] + [(r, p) for r in c.runtimes for p in c.precisions
                                                 if (r, p) != BASELINE]:
        choice = Choice(runtime_name, precision)
        runtime = runtimes()[runtime_name]
        try:
            if not runtime.available():
                raise CnnError(runtime.missing())
            # one conversion serves the runtimes that probe ONNX Runtime alike (cpu and openvino: its CPU provider)
            # and place int8 alike (int8_support.PLACEMENT_RULES: a table per runtime)
            request = _request(job, compiled, probe_provider=runtime_name, tensorrt=runtime.symmetric_int8,
                               runtime=runtime_name, timed_by_caller=True)  # bench compares the speeds itself
            key = (precision, repr(runtime.providers({})), runtime.symmetric_int8,
                   precision_of(precision).conversion_key(model, request) if compiled is not None else None)
            if key not in converted:
                if compiled is None and precision_of(precision).converts_model:
                    raise CnnError(f"{precision} is converted from the network's graph, which an ONNX model lacks: "
                                   "bench the .cnn spec (`cnncomp import` makes one from an ONNX model)")
                request.settings["keep_io_fp32"] = True  # every choice takes the same float32 inputs
                result = convert_precision(model, compiled.graph if compiled else None, precision, request, log)
                if result.precision != precision:  # int8's not-faster rule, should a converter apply it anyway
                    raise CnnError(f"not faster: {result.precision} written instead of {precision}")
                converted[key] = result.model
            choice.open = (lambda m=converted[key], r=runtime_name, p=precision:
                           open_session(m, r, precision=p, threads=c.threads, quiet=True, spinning=False))
        except CnnError as e:
            choice.problem = e.message
        choices.append(choice)
    judge, judged_by = _bench_judge(job, compiled, samples)
    report = measure(network, choices, _bench_feeds(inputs, samples, job.source.seed), list(c.batches),
                     relative_output_error, job.optimize.max_error, c.rounds, c.runs, threads=c.threads,
                     judge=judge)
    report.judged_by = judged_by  # filled by the judge from the first batch's plan
    if job.output.plot:
        plot(report, job.output.plot)
    return report
