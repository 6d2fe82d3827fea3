"""Arguments and helpers shared by the commands that compile a spec."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnncomp.cli.args import UsageError, add_shape_argument, add_spec_arguments, parse_defines


def add_compile_arguments(p: argparse.ArgumentParser) -> None:
    """SPEC, -D, -O, --passes, --weights, --seed, --opset."""
    add_spec_arguments(p)
    levels = p.add_mutually_exclusive_group()
    for level, what in ((0, "no passes (the default for --emit torch)"), (1, "the exact passes (default)"),
                        (2, "exact passes and layout-neutral simplifications"),
                        (3, "also the approximate rewrites, under --max-error")):
        levels.add_argument(f"-O{level}", dest="opt_level", action="store_const", const=level, help=what)
    p.set_defaults(opt_level=None)
    levels.add_argument("--passes", metavar="P,...",
                        help="run these passes instead of a level, e.g. fold-bn,bottleneck(ratio=0.5),depthwise(m=4)")
    p.add_argument("--weights", metavar="W", help="weights: .safetensors or a PyTorch checkpoint (default: seeded)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialization and verification inputs (default 0)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--stats", action="store_true", help="print, per pass, the rewrites and params/MACs before and after")
    p.add_argument("--max-error", type=float, default=0.01, metavar="E",
                   help="with -O3 or --precision int8: end-to-end relative L2 error budget of the outputs against "
                        "the float64 reference (default 0.01)")
    p.add_argument("--calibration", metavar="DATA",
                   help="inputs on which to measure the error budget (-O3: .npz keyed by input name, or .npy for a "
                        "one-input network; finite) and, with --precision int8, to calibrate (.npz, .npy, or a "
                        "folder of images with --preprocess)")
    p.add_argument("--preprocess", choices=("imagenet", "unit"),
                   help="with an image folder as --calibration: imagenet (resize 256, center crop 224, ImageNet "
                        "mean/std; the default) or unit (resize, scale to [0, 1])")
    p.add_argument("--calibration-method", choices=("minmax", "percentile", "entropy"),
                   help="with --precision int8: how activation ranges are set from the calibration data "
                        "(default percentile)")
    p.add_argument("--bias-correction", choices=("auto", "on", "off"), default="auto",
                   help="with --precision int8: subtract the mean shift that rounding the weights adds to each "
                        "conv/linear output (auto: only where it lowers the error on calibration samples; default)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="with -O3: measure each layer's candidate rewrites in N processes at once; with "
                        "--precision int8 and a search (--stats, or a missed --max-error): its layers (default 1)")
    p.add_argument("--autotune", action="store_true",
                   help="with -O3: keep a rewrite only where ONNX Runtime measures it faster on this machine, "
                        "timed in the --precision of the job (int8 layers as int8)")


def add_check_arguments(p: argparse.ArgumentParser) -> None:
    """Tolerances and inputs for a numeric check."""
    p.add_argument("--provider", default="cpu", choices=("cpu", "cuda", "tensorrt", "auto"),
                   help="ONNX Runtime execution provider (default cpu; auto falls back to cpu and says so)")
    p.add_argument("--atol", action="append", metavar="[OUTPUT=]A",
                   help="absolute tolerance, for all outputs or one (repeatable); default 1e-4 * max|reference|")
    p.add_argument("--rtol", action="append", metavar="[OUTPUT=]R", help="relative tolerance (default 1e-3)")
    p.add_argument("--val-range", default="-1,1", metavar="LO,HI", help="range of the seeded inputs (default -1,1)")
    p.add_argument("--batch", type=int, default=2, help="size of a symbolic batch dim in the check (default 2)")
    add_shape_argument(p, "also check at this input shape (repeatable); a spec with symbolic sizes is checked at "
                          "two or three sizes its constraints allow by default")
    p.add_argument("--trt-fp16", action="store_true", help="with --provider tensorrt: let TensorRT use float16")
    p.add_argument("--trt-engine-cache", metavar="DIR",
                   help="with --provider tensorrt: cache built engines in DIR (later runs skip the build)")


def defines(args) -> dict[str, str]:
    return parse_defines(args.defines)


def tolerance(values: list[str] | None, flag: str):
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


def val_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--val-range takes LO,HI, got '{text}'") from None
    if not lo < hi:
        raise UsageError(f"--val-range needs LO < HI, got '{text}'")
    return lo, hi


def opt_level(args, default: int = 1) -> int:
    """The -O level given, or the command's default."""
    return default if args.opt_level is None else args.opt_level


def passes_arg(args):
    return args.passes if getattr(args, "passes", None) else None


def calibration(args):
    """The --calibration inputs, or None."""
    if not getattr(args, "calibration", None):
        return None
    if getattr(args, "precision", None) == "int8" and Path(args.calibration).is_dir():
        return None  # an image folder calibrates int8 only (-O3 then measures on seeded inputs)
    return load_npz(args.calibration, "--calibration")


def load_npz(path: str, what: str = "--load-inputs") -> dict:
    """Finite arrays from a .npz keyed by input name, or a .npy for a one-input network; else a CnnError."""
    from cnncomp.inputs import load_arrays

    return load_arrays(path, what)


def source(args, default_level: int = 1):
    """The spec and how to optimize it, from SPEC, -D, -O/--passes, --weights, --seed, --opset, --max-error,
    --calibration and --autotune."""
    from cnncomp.pipeline import Source

    return Source(args.spec, defines(args), args.weights, args.seed, opt_level(args, default_level), passes_arg(args),
                  args.max_error, args.autotune, calibration(args), args.opset, args.jobs)


def int8_options(args, sensitivity: bool = False):
    """How --precision int8 calibrates: --calibration, --preprocess, --calibration-method, --max-error, --seed,
    --bias-correction."""
    from cnncomp.pipeline import Int8Options

    return Int8Options(getattr(args, "calibration", None), args.preprocess, args.calibration_method, args.max_error,
                       sensitivity, args.seed, bias_correction=args.bias_correction)


def check_options(args, per_layer: bool = False):
    """How the numeric check runs, from --provider, --atol/--rtol, --val-range, --batch, --max-error, --trt-*."""
    from cnncomp.pipeline import CheckOptions

    return CheckOptions(args.provider, args.seed, val_range(args.val_range), args.batch,
                        tolerance(args.atol, "--atol"), tolerance(args.rtol, "--rtol"), args.max_error,
                        session_options(args), per_layer, shapes=list(getattr(args, "shapes", [])))


def session_options(args) -> dict:
    """ONNX Runtime session options from the command line (the TensorRT provider's, passed through)."""
    if args.provider not in ("tensorrt", "auto") or not (args.trt_fp16 or args.trt_engine_cache):
        return {}
    from cnncomp.run.session import TensorRTOptions

    return {"trt": TensorRTOptions(fp16=args.trt_fp16, engine_cache=args.trt_engine_cache)}
