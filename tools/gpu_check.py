"""The GPU check: everything cnncomp says about NVIDIA GPUs, run on the day one is lent, in one report.

    python tools/gpu_check.py [--no-install] [--budget-s 600] [--specs lenet,resnet50] [--skip tensorrt,bench]
                              [--out DIR] [--json]

On a machine with an NVIDIA GPU (found by `nvidia-smi`) it

1. installs what it needs from the package index (unless --no-install): onnxruntime-gpu in place of
   onnxruntime when this onnxruntime has no CUDA provider, and the tensorrt wheel when `import tensorrt`
   fails; the CUDA, cuDNN and TensorRT libraries of those wheels are put on LD_LIBRARY_PATH of every
   command below;
2. runs `cnncomp verify SPEC --runtime cuda` for every bundled spec, in float32 and float16;
3. builds TensorRT engines with `cnncomp compile --target tensorrt`: float16, int8 from the QDQ model, and an
   optimization profile over a dynamic batch (min 1, opt 4, max 8), when TensorRT installed;
4. runs `cnncomp bench` on ResNet-50 and MobileNetV2 over the cpu, cuda and tensorrt runtimes;
5. prints one table: each check, ok / FAILED / not run, its seconds, and what it found or why it did not run.

It keeps within --budget-s seconds (default 600) in all: each command gets the time left, and the checks
that no longer fit are listed as not run for lack of time. Verifying gets at most half the budget, so that
the engines and the benchmarks are reached. Exit status: 0 when every check that ran passed and at least
one ran, 1 otherwise (a failed check, or nothing checked: no GPU, nothing installed), 2 on bad usage.
Without a GPU it says so and lists every check as not run, with the reason.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("install", "verify", "tensorrt", "bench")
BENCH_SPECS = ("resnet50", "mobilenet_v2")
ENGINE_SPEC = "resnet18"  # a dynamic-batch network small enough to build three engines quickly


@dataclass
class Check:
    """One line of the report: what was checked, its status (ok, FAILED, not run), seconds, and detail."""

    name: str
    status: str = "not run"
    seconds: float = 0.0
    detail: str = ""
    command: list[str] = field(default_factory=list)


class Clock:
    """The budget: seconds left, and whether a command still fits."""

    def __init__(self, budget_s: float):
        self.end = time.monotonic() + budget_s

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--no-install", action="store_true", help="install nothing; check what is installed")
    p.add_argument("--budget-s", type=float, default=600.0, help="seconds for everything (default 600)")
    p.add_argument("--specs", help="comma-separated spec names to verify (default: every spec in specs/)")
    p.add_argument("--skip", default="", help=f"steps to leave out: {', '.join(STEPS)}")
    p.add_argument("--out", help="folder for engines and reports (default: a temporary folder, removed)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = p.parse_args(argv)
    if not 0 < args.budget_s <= 3600:
        p.error(f"--budget-s takes seconds in (0, 3600], got {args.budget_s:g}")
    args.skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    unknown = [s for s in args.skip if s not in STEPS]
    if unknown:
        p.error(f"--skip: unknown step '{unknown[0]}'; steps: {', '.join(STEPS)}")
    every = sorted(p.stem for p in (ROOT / "specs").glob("*.cnn"))
    args.specs = [s.strip() for s in args.specs.split(",") if s.strip()] if args.specs else every
    missing = [s for s in args.specs if s not in every]
    if missing:
        p.error(f"--specs: no specs/{missing[0]}.cnn (bundled: {', '.join(every)})")
    return args


def gpu_name() -> str | None:
    """The first NVIDIA GPU as nvidia-smi names it (name, memory, driver), or None."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return lines[0] if out.returncode == 0 and lines else None


def python_probe(code: str, env: dict, timeout: float = 60) -> str:
    """What a fresh interpreter prints for `code` (so that packages installed just now are seen)."""
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return ""
    return out.stdout.strip()


def providers(env: dict) -> list[str]:
    text = python_probe("import onnxruntime as o; print(','.join(o.get_available_providers()))", env)
    return [p for p in text.split(",") if p]


def tensorrt_version(env: dict) -> str | None:
    return python_probe("import tensorrt; print(tensorrt.__version__)", env) or None


def library_path(env: dict) -> dict:
    """env with the shared-library folders of the nvidia-* and tensorrt wheels on LD_LIBRARY_PATH."""
    site = python_probe("import site; print(site.getsitepackages()[0])", env)
    folders = sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib"))) + \
        sorted(glob.glob(os.path.join(site, "tensorrt_libs")))
    old = env.get("LD_LIBRARY_PATH", "")
    return dict(env, LD_LIBRARY_PATH=os.pathsep.join(folders + ([old] if old else [])))


def run(check: Check, command: list[str], clock: Clock, env: dict, judge=None) -> Check:
    """Run a command within the time left; ok on exit 0 (and when `judge(stdout)` returns no complaint)."""
    check.command = command
    if clock.left() < 5:
        check.detail = "the time budget was spent"
        return check
    start = time.monotonic()
    try:
        out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=clock.left(), cwd=ROOT)
    except subprocess.TimeoutExpired:
        check.status, check.detail = "FAILED", f"timed out with the budget ({clock.left():.0f} s left)"
        check.seconds = time.monotonic() - start
        return check
    check.seconds = time.monotonic() - start
    complaint = judge(out.stdout) if judge and out.returncode == 0 else None
    if out.returncode == 0 and not complaint:
        check.status = "ok"
        check.detail = summary_of(out.stdout)
    else:
        check.status = "FAILED"
        lines = [line for line in (out.stderr + out.stdout).splitlines() if line.strip()]
        check.detail = complaint or (lines[-1][:200] if lines else f"exit {out.returncode}")
    return check


def summary_of(stdout: str) -> str:
    """A short detail from a command's output: verify's worst error, or the last line."""
    try:
        data = json.loads(stdout)
    except ValueError:
        lines = [line for line in stdout.splitlines() if line.strip()]
        return lines[-1][:200] if lines else ""
    if "outputs" in data:
        worst = max((o.get("max_abs_err", 0.0) for o in data["outputs"].values()), default=0.0)
        return f"{data.get('provider')}, max abs error {worst:.3g}"
    if "winner" in data:
        return "; ".join(f"batch {b}: {w['runtime']} {w['precision']}" if w else f"batch {b}: none"
                         for b, w in data["winner"].items())
    return ""


def cnncomp(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnncomp", *args]


def install(checks: list[Check], clock: Clock, env: dict, no_install: bool) -> None:
    """onnxruntime-gpu and tensorrt from the package index, where missing."""
    if "CUDAExecutionProvider" not in providers(env):
        c = Check("install onnxruntime-gpu")
        if no_install:
            c.detail = "--no-install (this onnxruntime has no CUDA provider)"
        else:
            version = python_probe("import onnxruntime as o; print(o.__version__)", env)
            run(c, [sys.executable, "-m", "pip", "uninstall", "-y", "onnxruntime"], clock, env)
            run(c, [sys.executable, "-m", "pip", "install", f"onnxruntime-gpu=={version}" if version else
                    "onnxruntime-gpu"], clock, env)
        checks.append(c)
    if tensorrt_version(env) is None:
        c = Check("install tensorrt")
        if no_install:
            c.detail = "--no-install (import tensorrt fails)"
        else:
            run(c, [sys.executable, "-m", "pip", "install", "tensorrt"], clock, env)
        checks.append(c)


def verify_judge(stdout: str) -> str | None:
    data = json.loads(stdout)
    return None if data.get("ok") else "verify reports a mismatch"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = Clock(args.budget_s)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_check."))
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               CNNCOMP_NO_PROGRESS="1")
    gpu = gpu_name()
    checks: list[Check] = [Check("NVIDIA GPU", "ok" if gpu else "FAILED", 0.0, gpu or "none found (nvidia-smi "
                                 "missing or reports no GPU): nothing below can run here")]
    try:
        if gpu and "install" not in args.skip:
            install(checks, clock, env, args.no_install)
        env = library_path(env)
        have = providers(env) if gpu else []
        trt = tensorrt_version(env) if gpu else None
        cuda_missing = None if "CUDAExecutionProvider" in have else \
            "no GPU" if not gpu else f"this onnxruntime has no CUDA provider (it has {', '.join(have) or 'none'})"
        if "verify" not in args.skip:
            share = Clock(min(clock.left(), args.budget_s / 2))  # verify may not starve the engines and bench
            for spec in args.specs:
                for precision in ("fp32", "fp16"):
                    c = Check(f"verify {spec} cuda {precision}")
                    checks.append(c)
                    if cuda_missing:
                        c.detail = cuda_missing
                        continue
                    run(c, cnncomp("verify", f"specs/{spec}.cnn", "--runtime", "cuda", "--precision", precision,
                                   "--batch", "1", "--json"), share, env, verify_judge)
        if "tensorrt" not in args.skip:
            trt_missing = "no GPU" if not gpu else None if trt else "TensorRT is not installed (import tensorrt fails)"
            for what, extra in (("fp16", ["--precision", "fp16"]), ("int8 (QDQ)", ["--precision", "int8"]),
                                ("fp32, profile 1/4/8", ["--min-batch", "1", "--opt-batch", "4",
                                                         "--max-batch", "8"])):
                c = Check(f"tensorrt engine {ENGINE_SPEC} {what}")
                checks.append(c)
                if trt_missing:
                    c.detail = trt_missing
                    continue
                engine = out / f"{ENGINE_SPEC}_{what.split()[0].strip(',')}.plan"
                run(c, cnncomp("compile", f"specs/{ENGINE_SPEC}.cnn", "--target", "tensorrt", "-o", str(engine),
                               *extra), clock, env)
        if "bench" not in args.skip:
            for spec in BENCH_SPECS:
                c = Check(f"bench {spec}")
                checks.append(c)
                if cuda_missing:
                    c.detail = cuda_missing
                    continue
                run(c, cnncomp("bench", f"specs/{spec}.cnn", "--runtimes", "cpu,cuda,tensorrt", "--precisions",
                               "fp32,fp16,int8", "--batch", "1,8", "--rounds", "3", "--runs", "10", "--json"),
                    clock, env)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    print(json.dumps([asdict(c) for c in checks], indent=1) if args.json else report(checks))
    failed = [c for c in checks if c.status == "FAILED"]
    checked = [c for c in checks[1:] if c.status == "ok"]
    return 1 if failed or not checked else 0


def report(checks: list[Check]) -> str:
    """One table: check, status, seconds, detail; then a line counting what ran, failed and did not run."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'check'.ljust(width)}  {'status':8} {'s':>6}  detail"]
    lines += [f"{c.name.ljust(width)}  {c.status:8} {c.seconds:6.1f}  {c.detail}" for c in checks]
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "FAILED", "not run")}
    lines.append(f"{counts['ok']} ok, {counts['FAILED']} failed, {counts['not run']} not run")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
