"""The job description: every option of every command that compiles, declared once, and the Job a
request becomes, whichever door it came through.

    OPTIONS (below) + each precision's options (precision/convert.py) + each runtime's (run/runtime.py)
        -> `add_options(parser, command)`      the command line's flags (cli/)
        -> `job_from_args(command, args)`      a parsed command line as a Job
        -> `job_from_keywords(command, spec, keywords)`   the Python API's keywords as a Job (api.py)

Both doors go through `build_job`, which fills the declared defaults, parses and checks every value
with its Option (the same UsageError for the same bad value), refuses a precision's option with another
precision, and resolves the defaults that depend on other options (-O0 for --emit torch and for
`graph`). The pipeline runs the Job; nothing downstream has its own default for these options.

To add an option: one `Option(...)` here (or in the precision or runtime it belongs to) naming the
commands that take it and its group; read it in the pipeline as `job.<group>.<name>`. The parity test
(tests/test_job_parity.py) checks that the CLI and the API then both have it, with the same default.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from cnncomp.errors import UsageError
from cnncomp.options import Option, at_least, port, positive_finite
from cnncomp.precision.convert import precision_of, precision_options, precisions
from cnncomp.run.runtime import runtime_choices, runtime_options, runtimes
from cnncomp.verification.tolerances import DEFAULT_MAX_ERROR

JOB_COMMANDS = ("compile", "verify", "deploy", "graph", "serve", "bench")
COMPILING = ("compile", "verify", "deploy", "graph")  # the commands that load and optimize a spec
MEASURING = COMPILING + ("bench",)  # ... and bench, which compiles its spec as they do (it prints no --stats)
CONVERTING = ("compile", "verify", "deploy")  # ... and convert its precision
CHECKING = ("compile", "verify")  # ... and check it numerically
GROUPS = ("source", "optimize", "precision", "check", "output")
EMITTERS = ("onnx", "cnn", "dot", "torch")


def parse_defines(items, flag: str = "-D") -> dict[str, str]:
    """-D NAME=VALUE (repeatable) as {NAME: VALUE}; the API takes the dict."""
    if isinstance(items, dict):
        return dict(items)
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()):
            shown = item.encode("unicode_escape").decode("ascii")
            raise UsageError(f"-D takes NAME=VALUE with NAME a `let` constant's name, got '{shown}'")
        out[name.strip()] = value.strip()
    return out


def _parse_tolerance(values, flag: str):
    """--atol 1e-4 or --atol logits=1e-3 (repeatable) as a float or {output: float}."""
    if not values:
        return None
    out: dict[str, float] = {}
    for item in values:
        name, eq, number = item.rpartition("=")
        try:
            out[name if eq else ""] = float(number)
        except ValueError:
            raise UsageError(f"{flag} takes a number or OUTPUT=NUMBER, got '{item}'") from None
    return out[""] if list(out) == [""] else out


def _parse_range(text, flag: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} takes LO,HI, got '{text}'") from None
    return lo, hi


def parse_shape(text: str, flag: str = "--shape") -> dict:
    """`x=1x3x512x512` (several inputs: `x=1x3x64x64,y=1x1x64x64`; one input: `1x3x512x512`) as
    {input name or None: (1, 3, 512, 512)}."""
    out = {}
    for item in str(text).split(","):
        name, eq, dims = item.strip().rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not shape or any(d < 1 for d in shape) or (eq and not name.strip()):
            raise UsageError(f"{flag} takes NAME=DxDx... with positive dims (e.g. x=1x3x512x512), got '{text}'")
        out[name.strip() or None] = shape
    return out


def _parse_shapes(values, flag: str) -> list[dict]:
    """--shape (repeatable): one dict of input shapes per size."""
    return [parse_shape(v, flag) for v in values] if values else None


def _parse_shape_ranges(values, flag: str) -> dict:
    """--shape-range x=1x3x256x256:1x3x512x512:4x3x1024x1024 (repeatable, one per input; the name may be left
    out for a one-input model) as {input name or None: (min, opt, max)}."""
    out = {}
    for text in values or ():
        name, eq, ranges = str(text).strip().rpartition("=")
        parts = ranges.split(":")
        if len(parts) != 3 or (eq and not name.strip()):
            raise UsageError(f"{flag} takes NAME=MIN:OPT:MAX with shapes as 1x3x256x256, got '{text}'")
        out[name.strip() or None] = tuple(next(iter(parse_shape(part, flag).values())) for part in parts)
    return out or None


def _ordered_range(value) -> str | None:
    lo, hi = value
    return None if lo < hi else f"needs LO < HI, got '{lo:g},{hi:g}'"


def _parse_list(text, flag: str) -> tuple[str, ...]:
    """A comma-separated list (cpu,openvino) as a tuple, duplicates dropped."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UsageError(f"{flag} takes a comma-separated list, got '{text}'")
    return tuple(dict.fromkeys(items))


def _parse_sizes(text, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in _parse_list(text, flag))
    except ValueError:
        raise UsageError(f"{flag} takes sizes like 1,8, got '{text}'") from None


def _names_of(registry, what: str):
    """A check that every name of a list is registered (`registry`: runtimes or precisions)."""
    def check(value) -> str | None:
        if isinstance(value, str) or not value:
            return f"takes a list of {what}s, got {value!r}"
        unknown = [v for v in value if v not in registry()]
        return f"names an unknown {what} '{unknown[0]}'; known: {', '.join(registry())}" if unknown else None
    return check


def _sizes(value) -> str | None:
    if isinstance(value, (str, int)) or not value or not all(isinstance(v, int) and v >= 1 for v in value):
        return f"takes sizes of 1 or more, got {value!r}"
    return None


def _plot_file(value) -> str | None:
    suffix = str(value).rpartition(".")[2].lower()
    return None if "." in str(value) and suffix in ("png", "svg", "pdf") else \
        f"takes a .png, .svg or .pdf file, got '{value}'"


def _target_choices() -> tuple[str, ...]:
    from cnncomp.deployment.targets import compile_targets

    return tuple(compile_targets())


def _levels(value) -> str | None:
    return None if value in (0, 1, 2, 3) else f"takes 0 to 3, got {value}"


OPTIONS: tuple[Option, ...] = (
    # ---- source: what to compile
    Option("defines", None, {}, "override a top-level `let` constant (repeatable), e.g. -D width=32",
           MEASURING + ("serve", "run"), parse=parse_defines, flags=("-D",), metavar="NAME=VALUE", action="append",
           group="source", overrides={"serve": {"help": "with a spec: override a top-level let constant"}}),
    Option("weights", str, None, "weights: .safetensors or a PyTorch checkpoint (default: seeded)",
           MEASURING + ("run",), metavar="W", group="source"),
    Option("seed", int, 0, "seed for initialization and verification inputs", MEASURING + ("run",), group="source"),
    Option("input_shape", str, None, "pin the model's dynamic dims to this input shape (default: they stay "
           "symbols named after the model's dim_params)", ("import",),
           parse=lambda text, flag: parse_shape(text, flag), metavar="NAME=1x3xHxW", group="source"),
    # ---- optimize: the passes
    Option("opt_level", int, None, "-O0 no passes, -O1 the exact passes, -O2 also layout-neutral simplifications, "
           "-O3 also the approximate rewrites under --max-error (default -O1; -O0 for --emit torch and graph)",
           MEASURING, check=_levels, group="optimize"),
    Option("passes", str, None, "run these passes instead of a level, e.g. fold-bn,bottleneck(ratio=0.5),"
           "depthwise(m=4)", MEASURING, metavar="P,...", group="optimize"),
    Option("opset", int, 17, "ONNX opset", MEASURING, group="optimize"),
    Option("stats", None, False, "print, per pass, the rewrites and params/MACs before and after (with "
           "--precision int8 also every layer's sensitivity)", COMPILING, action="store_true", group="optimize"),
    Option("max_error", float, DEFAULT_MAX_ERROR, "with -O3 or --precision int8: end-to-end relative L2 error "
           "budget of the outputs against the float64 reference", MEASURING, check=positive_finite, metavar="E",
           group="optimize"),
    Option("calibration", str, None, "inputs on which to measure the error budget (-O3: .npz keyed by input "
           "name, or .npy for a one-input network; finite) and, with --precision int8, to calibrate (.npz, .npy, "
           "or a folder of images with --preprocess); the API also takes a dict of arrays", MEASURING,
           metavar="DATA", group="optimize"),
    Option("jobs", int, 1, "with -O3: measure each layer's candidate rewrites in N processes at once; with "
           "--precision int8 and a search (--stats, or a missed --max-error): its layers", MEASURING,
           check=at_least(1), metavar="N", group="optimize"),
    Option("autotune", None, False, "with -O3: keep a rewrite only where ONNX Runtime measures it faster on this "
           "machine, timed in the --precision of the job (int8 layers as int8)", MEASURING, action="store_true",
           group="optimize"),
    # ---- precision
    Option("precision", str, "fp32", "the precision of the model: " + "; ".join(
           f"{p.name}: {p.help}" for p in precisions().values()), CONVERTING, choices=lambda: tuple(precisions()),
           group="precision"),
    # ---- check: where and how the model is run and judged
    Option("runtime", str, "cpu", "where the model runs: " + ", ".join(runtime_choices()) + " (auto falls back to "
           "cpu and says so)", CHECKING + ("run", "deploy"), choices=runtime_choices, aliases=("provider",),
           overrides={"deploy": {"help": "where Triton runs the model: a runtime with a Triton CPU accelerator "
                                         "(openvino) runs CPU instances through it; the others leave it to ONNX "
                                         "Runtime's backend"}}),
    Option("verify", None, False, "check the emitted model against the reference", ("compile",),
           action="store_true"),
    Option("atol", str, None, "absolute tolerance, for all outputs or one (repeatable); default 1e-4 * "
           "max|reference|", CHECKING, parse=_parse_tolerance, action="append", metavar="[OUTPUT=]A"),
    Option("rtol", str, None, "relative tolerance, for all outputs or one (repeatable; default 1e-3)", CHECKING,
           parse=_parse_tolerance, action="append", metavar="[OUTPUT=]R"),
    Option("val_range", str, (-1.0, 1.0), "range of the seeded inputs", CHECKING, parse=_parse_range,
           check=_ordered_range, metavar="LO,HI"),
    Option("batch", int, 2, "size of a symbolic batch dim in the check", CHECKING, check=at_least(1)),
    Option("shape", str, None, "also check at this input shape (repeatable); a spec with symbolic sizes is "
           "checked at three sizes its constraints allow by default", CHECKING + ("run",), parse=_parse_shapes,
           action="append", metavar="NAME=1x3xHxW",
           overrides={"run": {"help": "instead of --input: seeded uniform inputs in [-1, 1) of this shape"}}),
    Option("per_layer", None, False, "compare every layer and name the first that diverges", ("verify",),
           action="store_true"),
    Option("verify_each", None, False, "check after every pass (the -O3 rewrites included); name the first that "
           "breaks", ("verify",), action="store_true"),
    Option("load_inputs", str, None, "use these inputs (.npz keyed by input name, or .npy for a one-input "
           "network)", ("verify",), metavar="NPZ"),
    Option("save_inputs", str, None, "save the inputs used (npz)", ("verify",), metavar="NPZ"),
    Option("save_outputs", str, None, "save ONNX Runtime's outputs (npz)", ("verify",), metavar="NPZ"),
    # ---- output: what is written, and where
    Option("output", str, None, "the file to write; - writes text (--emit cnn/torch/dot) to standard output",
           ("compile", "graph", "run"), flags=("-o", "--output"), metavar="OUT", group="output", required=True,
           overrides={"graph": {"help": "model.svg, .png, .pdf or .dot (- prints the DOT text)",
                                "metavar": "PICTURE"},
                      "run": {"help": "write outputs here (.npy or .npz)", "metavar": "Y", "required": False}}),
    Option("emit", str, "onnx", "what to write", ("compile",), choices=EMITTERS, group="output"),
    Option("target", str, "onnx", "tensorrt: write a serialized TensorRT engine (.plan); needs tensorrt and an "
           "NVIDIA GPU", ("compile",), choices=_target_choices, group="output"),
    Option("min_batch", int, 1, "with --target tensorrt", ("compile",), check=at_least(1), metavar="B",
           group="output"),
    Option("opt_batch", int, None, "with --target tensorrt (default --max-batch)", ("compile",), metavar="B",
           group="output"),
    Option("shape_range", str, None, "with --target tensorrt: the engine's profile for an input with symbolic "
           "sizes, shapes as 1x3x256x256 (repeatable, one per input)", ("compile",), parse=_parse_shape_ranges,
           action="append", metavar="NAME=MIN:OPT:MAX", group="output"),
    Option("max_batch", int, 8, "with --target tensorrt", ("compile", "deploy", "serve"), check=at_least(0),
           metavar="B", group="output",
           overrides={"deploy": {"help": "Triton's max_batch_size: requests batched up to N along the batch dim; 0 "
                                         "turns batching off", "metavar": "N"},
                      "serve": {"default": None, "metavar": "N",
                                "help": "with a spec: Triton's max_batch_size (as in deploy)"}}),
    Option("triton", str, None, "the model repository folder (created if needed)", ("deploy",), metavar="REPO",
           required=True, group="output"),
    Option("tensorrt", None, False, "run the model through TensorRT inside Triton (the ONNX Runtime backend's "
           "accelerator)", ("deploy",), action="store_true", group="output"),
    Option("instances", int, 1, "model instances", ("deploy",), check=at_least(1), metavar="K", group="output"),
    Option("kind", str, None, "where instances run (default: left to Triton, GPU where the server has one, "
           "else CPU)", ("deploy",), choices=("gpu", "cpu"), group="output"),
    Option("name", str, None, "the model's name in Triton (default: the spec's network name)", ("deploy",),
           group="output"),
    Option("rankdir", str, "TB", "layout direction: TB top to bottom, LR left to right", ("graph",),
           choices=("TB", "LR"), group="output"),
    Option("title", str, None, "the title above the picture (default: the network and its passes)", ("graph",),
           group="output"),
    Option("http_port", int, 8000, "HTTP port", ("serve",), check=port, metavar="P", group="output"),
    Option("grpc_port", int, 8001, "gRPC port", ("serve",), check=port, metavar="P", group="output"),
    Option("metrics_port", int, 8002, "metrics port", ("serve",), check=port, metavar="P", group="output"),
    Option("tritonserver", str, None, "a tritonserver binary with its own backends (default: the one of the "
           "serve extra)", ("serve",), metavar="PATH", group="output"),
    Option("timeout", float, 300.0, "seconds to wait for the server and every model to be ready", ("serve",),
           check=positive_finite, metavar="S", group="output"),
    # ---- bench: the choices compared side by side, and how they are timed
    Option("runtimes", str, ("cpu", "openvino"), "runtimes to compare: " + ", ".join(runtimes()), ("bench",),
           parse=_parse_list, check=_names_of(runtimes, "runtime"), metavar="R,..."),
    Option("precisions", str, ("fp32", "fp16", "bf16", "int8"), "precisions to compare: " + ", ".join(precisions()),
           ("bench",), parse=_parse_list, check=_names_of(precisions, "precision"), metavar="P,..."),
    Option("batches", str, (1,), "batch sizes to time, e.g. 1,8", ("bench",), parse=_parse_sizes,
           check=_sizes, flags=("--batch",), metavar="B,..."),
    Option("threads", int, 0, "threads per session; 0 leaves it to each runtime", ("bench",),
           check=at_least(0), metavar="N"),
    Option("rounds", int, 5, "interleaved timing rounds", ("bench",), check=at_least(1)),
    Option("runs", int, 10, "runs of each choice per round", ("bench",), check=at_least(1)),
    Option("plot", str, None, "also draw the speed-ups as a bar chart (.png, .svg or .pdf; needs matplotlib)",
           ("bench",), check=_plot_file, metavar="OUT.png", group="output"),
)


def _bench_judging_options() -> tuple[Option, ...]:
    """int8's --metric and --labels as bench takes them: one declaration (int8's: its spelling and check), which
    judges every choice of bench against float32 and the int8 choice's own conversion."""
    from dataclasses import replace

    helps = {"metric": "what every choice's outputs are judged by against float32 on the same inputs, int8's "
                       "--metric spelling ([OUTPUT=]METRIC[<=T], comma-separated: rel-l2, max-abs, top1, topK, "
                       "iou(T), psnr, accuracy); the winner is the fastest choice within it, and int8 is converted "
                       "under it. auto: top1 for class scores, rel-l2 (threshold --max-error) for the others",
             "labels": "the true class of every --calibration sample (.npy of integers or .txt, one per line): the "
                       "class-score output is judged by the accuracy it loses against float32 on the samples run"}
    int8 = {o.name: o for o in precision_of("int8").options}
    return tuple(replace(int8[name], commands=("bench",), help=text, overrides={}) for name, text in helps.items())


def options_of(command: str) -> dict[str, Option]:
    """Every option `command` takes, as it has them, by name: the job's, the precisions', the runtimes', bench's
    judging ones."""
    every = OPTIONS + precision_options() + runtime_options() + _bench_judging_options()
    return {o.name: o.for_command(command) for o in every if command in o.commands}


# ---- the command line --------------------------------------------------------------------------------


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of `command`, from the declarations; -O0..-O3 and --passes exclude each other."""
    options = options_of(command)
    if "opt_level" in options:
        levels = parser.add_mutually_exclusive_group()
        for level, what in ((0, "no passes"), (1, "the exact passes"),
                            (2, "exact passes and layout-neutral simplifications"),
                            (3, "also the approximate rewrites, under --max-error")):
            levels.add_argument(f"-O{level}", dest="opt_level", action="store_const", const=level, help=what)
        parser.set_defaults(opt_level=None)
        options["passes"].add_to(levels)
    for option in options.values():
        if option.name not in ("opt_level", "passes"):
            option.add_to(parser)


def job_from_args(command: str, args) -> "Job":
    """A parsed command line as a Job (every declared option read from `args`, the text parsed)."""
    options = options_of(command)
    given = {name: getattr(args, name) for name in options
             if getattr(args, name, None) is not None and getattr(args, name) is not False}
    return build_job(command, getattr(args, "spec", None), given, from_text=True)


def job_from_keywords(command: str, spec, keywords: dict) -> "Job":
    """The Python API's keyword arguments as a Job; an unknown keyword is a UsageError naming the known ones."""
    options = options_of(command)
    given = dict(keywords)
    for name, option in options.items():
        for alias in option.aliases:
            if alias in given:
                given[name] = given.pop(alias)
    unknown = sorted(set(given) - set(options))
    if unknown:
        raise UsageError(f"cnncomp.{command}() has no option {', '.join(map(repr, unknown))}; it takes "
                         f"{', '.join(sorted(options))}")
    return build_job(command, spec, {k: v for k, v in given.items() if v is not None})


# ---- the Job -----------------------------------------------------------------------------------------


class Settings(dict):
    """One group of a job's options by name; also read as attributes (job.optimize.max_error)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class Job:
    """The whole request: the command, the spec (a path or a LayerGraph), and its options by group (see GROUPS):
    source (defines, weights, seed), optimize (opt_level, passes, max_error, calibration, jobs, ...), precision
    (its name and its own options), check (runtime, tolerances, batch, ...), output (file, emitter, target, ...)."""

    command: str
    spec: object
    source: Settings
    optimize: Settings
    precision: Settings
    check: Settings
    output: Settings

    @property
    def values(self) -> dict:
        """Every option of the job by name (a precision converter reads its settings from this)."""
        return {k: v for g in GROUPS for k, v in getattr(self, g).items()}

    @property
    def precision_name(self) -> str:
        return self.precision.get("precision", "fp32")

    def o3_calibration(self):
        """The arrays -O3 measures its budget on: a dict as given, a .npz/.npy read; an image folder serves a
        calibrated precision (int8) alone and -O3 then measures on seeded inputs. The one place that decides."""
        data = self.optimize.get("calibration")
        if data is None or isinstance(data, dict):
            return data
        if Path(data).is_dir() and precision_of(self.precision_name).calibrated:
            return None
        from cnncomp.inputs import load_arrays

        return load_arrays(data, "--calibration")


def build_job(command: str, spec, given: dict, from_text: bool = False) -> Job:
    """The Job of `command` on `spec` with the options `given` (by name; the rest take their defaults)."""
    options = options_of(command)
    groups: dict[str, Settings] = {g: Settings() for g in GROUPS}
    for name, option in options.items():
        value = option.value(given[name], from_text) if name in given else option.default
        groups[option.group][name] = dict(value) if isinstance(value, dict) else value
    job = Job(command, spec, **groups)
    if "opt_level" in options and job.optimize.opt_level is None:
        torch_source = job.output.get("emit") == "torch"  # torch source keeps the spec's blocks
        job.optimize["opt_level"] = 0 if command == "graph" or torch_source else 1
    if "precision" in options:
        _refuse_foreign_precision_options(job, given)
    return job


def _refuse_foreign_precision_options(job: Job, given: dict) -> None:
    """A precision's own option given with another precision is a usage error (--keep-io-fp32 with int8)."""
    chosen = precision_of(job.precision_name)
    for precision in precisions().values():
        if precision is chosen:
            continue
        for option in precision.options:
            if option.name in given and given[option.name] not in (None, False, option.default) and \
                    option.name not in {o.name for o in chosen.options}:
                raise UsageError(f"{option.flag} goes with --precision {precision.name}")
