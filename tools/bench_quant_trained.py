"""`tools/bench_quant.py --trained`: int8 on real trained networks (tests/trained_nets.py), four quantizers.

For each network, on the same float32 model (cnncomp's -O1 compile of the imported or trained spec) and the
same calibration samples (real inputs; the test samples are held out from all of them):

  cnncomp int8        `cnncomp.compile(spec, precision="int8", calibration=..., metric=<the net's task
                      metric>)` at default settings (before issue 19's --metric: the rel-l2 budget); where
                      it writes float32 because int8 is not faster, also a row with --keep-slower-int8
  ort default         onnxruntime.quantization.quantize_static with its defaults (QDQ, per-tensor)
  ort per-channel     the same with per_channel=True
  nncf                nncf.quantize on the ONNX model, defaults (skipped, with the reason, where NNCF is missing)

Columns: share of the conv/linear MACs that run in int8 (nodes reading dequantized activations and
weights), latency (ONNX Runtime CPU, batch 1, one thread, rounds interleaved across the models, median
over rounds) and speedup vs float32, the task metric of each output against float32 on the test samples
(top1: points of decisions changed; iou(t): 1 - IoU of the maps thresholded at t; rel-l2), the relative L2
of all outputs, and the seconds the quantizer took. `done` marks a row that runs >= 80% of its MACs in int8
with every output within its threshold (top1 1 point, iou 0.05, rel-l2 0.01): issue 19's "done when".
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from trained_nets import NETS, Prepared, cnncomp_int8, float32_model, has_metric_option, int8_macs_share  # noqa: E402
from trained_nets import KEEP_SLOWER_OPTION, has_option, metric_error, rel_l2, run_batched  # noqa: E402

THRESHOLDS = {"top1": 0.01, "iou": 0.05, "rel-l2": 0.01}
MIN_INT8_MACS = 0.8


def threshold(metric: str) -> float:
    return THRESHOLDS[metric.split("(")[0]]


def ort_quantized(model: onnx.ModelProto, calibration: dict, per_channel: bool) -> onnx.ModelProto:
    from onnxruntime.quantization import quantize_static

    from cnncomp.precision.int8 import FeedReader, quiet_quantizer

    with tempfile.TemporaryDirectory() as tmp, quiet_quantizer():
        src, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        quantize_static(str(src), str(out), FeedReader(calibration), per_channel=per_channel)
        return onnx.load(str(out))


def nncf_quantized(model: onnx.ModelProto, calibration: dict) -> onnx.ModelProto:
    import contextlib
    import io

    import nncf

    nncf.set_log_level(logging.ERROR)
    count = len(next(iter(calibration.values())))
    samples = [{k: v[i:i + 1] for k, v in calibration.items()} for i in range(count)]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
        return nncf.quantize(model, nncf.Dataset(samples), subset_size=count)


def nncf_missing() -> str | None:
    try:
        import nncf  # noqa: F401
    except Exception as e:  # an import error of NNCF or of one of its dependencies
        return f"nncf does not import here ({type(e).__name__}: {e})"
    return None


def said(report) -> str:
    """What cnncomp's int8 told the user: its warnings (too few held-out decisions, ...), then its summary."""
    return "\n".join([f"warning: {w}" for w in getattr(report, "warnings", [])] + [report.summary()])


def quantizers(prepared: Prepared, float32: onnx.ModelProto, log) -> list[tuple[str, onnx.ModelProto, float, str]]:
    """[(label, model, seconds, note)]: cnncomp's int8 first (float32 is timed beside them by the caller)."""
    rows = []
    start = time.perf_counter()
    _, int8, report = cnncomp_int8(prepared)
    slower = getattr(report, "written", "int8") != "int8"  # the not-faster rule wrote float32
    rows.append(("cnncomp int8" + (" (wrote fp32: not faster)" if slower else ""), int8,
                 time.perf_counter() - start, said(report)))
    if slower and has_option(KEEP_SLOWER_OPTION):
        start = time.perf_counter()
        _, forced, report = cnncomp_int8(prepared, keep_slower=True)
        rows.append((f"cnncomp int8 --{KEEP_SLOWER_OPTION.replace('_', '-')}", forced, time.perf_counter() - start,
                     said(report)))
    for label, make in (("ort default", lambda: ort_quantized(float32, prepared.calibration, False)),
                        ("ort per-channel", lambda: ort_quantized(float32, prepared.calibration, True)),
                        ("nncf", lambda: nncf_quantized(float32, prepared.calibration))):
        if label == "nncf" and nncf_missing():
            log(f"  {prepared.name}: nncf skipped: {nncf_missing()}")
            continue
        start = time.perf_counter()
        try:
            rows.append((label, make(), time.perf_counter() - start, ""))
        except Exception as e:  # a third-party quantizer that fails on this net: say so, go on
            log(f"  {prepared.name}: {label} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return rows


def latencies(models: list[tuple[str, onnx.ModelProto]], feeds: dict, rounds: int, repeats: int) -> dict[str, float]:
    """Median seconds per model: batch 1, one thread, no spinning, rounds interleaved."""
    from cnncomp.run.session import Session

    sessions = [(label, Session(model, quiet=True, threads=1, spinning=False)) for label, model in models]
    times: dict[str, list[float]] = {label: [] for label, _ in sessions}
    for _ in range(rounds):
        for label, session in sessions:
            times[label].append(session.median_seconds(feeds, repeats, warmup=2))
    return {label: float(np.median(t)) for label, t in times.items()}


def describe(metrics: dict[str, str], errors: dict[str, float]) -> str:
    parts = []
    for (name, metric), error in zip(metrics.items(), errors.values()):
        shown = f"{error * 100:.1f} pt" if metric == "top1" else f"{error:.3g}"
        parts.append(f"{metric} {shown}" if len(metrics) < 3 else f"{metric}:{shown}")
    return "; ".join(dict.fromkeys(parts)) if len(metrics) < 3 else worst(metrics, errors)


def worst(metrics: dict[str, str], errors: dict[str, float]) -> str:
    """Many outputs: the worst of each metric over its outputs."""
    by_metric: dict[str, float] = {}
    for name, metric in metrics.items():
        by_metric[metric] = max(by_metric.get(metric, 0.0), errors[name])
    return "; ".join(f"{m} {e * 100:.1f} pt" if m == "top1" else f"{m} {e:.3g} (worst)" for m, e in by_metric.items())


def bench_net(name: str, workdir: Path, rounds: int, repeats: int, log) -> list[str]:
    """The table rows of one network."""
    net = NETS[name]
    start = time.perf_counter()
    prepared = net.prepare(workdir / name)
    float32 = float32_model(prepared)
    log(f"  {name}: prepared in {time.perf_counter() - start:.0f} s; metric {prepared.metric}")
    rows = quantizers(prepared, float32, log)
    for label, _, seconds, note in rows:
        log(f"  {name}: {label} in {seconds:.1f} s" + (f"\n    " + note.replace("\n", "\n    ") if note else ""))
    models = [("float32", float32)] + [(label, model) for label, model, _, _ in rows]
    one = {k: v[:1] for k, v in prepared.test.items()}
    ms = latencies(models, one, rounds, repeats)
    reference = run_batched(float32, prepared.test)
    lines = []
    for label, model in models:
        got = run_batched(model, prepared.test)
        errors = {o: metric_error(m, reference[o], got[o]) for o, m in prepared.metrics.items()}
        joint = rel_l2(np.concatenate([reference[o].ravel() for o in reference]),
                       np.concatenate([got[o].ravel() for o in reference]))
        share = int8_macs_share(model) if label != "float32" else 0.0
        done = share >= MIN_INT8_MACS and all(errors[o] <= threshold(m) for o, m in prepared.metrics.items())
        seconds = next((s for l, _, s, _ in rows if l == label), 0.0)
        lines.append(f"| {name} | {label} | {share:.0%} | {ms[label] * 1e3:.2f} | {ms['float32'] / ms[label]:.2f}x | "
                     f"{describe(prepared.metrics, errors) if label != 'float32' else '-'} | {joint:.3g} | "
                     f"{seconds:.1f} | {'yes' if done else 'no' if label != 'float32' else ''} |")
    return lines


def main(names: str, rounds: int, repeats: int) -> None:
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    chosen = list(NETS) if names == "all" else names.split(",")
    unknown = [n for n in chosen if n not in NETS]
    if unknown:
        raise SystemExit(f"unknown trained net {', '.join(unknown)}; known: {', '.join(NETS)}")
    print(f"# int8 on real trained networks: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, onnxruntime "
          f"{__import__('onnxruntime').__version__}; cnncomp int8 budget: "
          f"{'the task metric (metric=)' if has_metric_option() else 'rel-l2 --max-error 0.01 (no metric option yet)'}")
    print("| network | quantizer | int8 MACs | ms | speedup | task metric vs float32 | rel L2 | quantize s | done |")
    print("|---|---|---:|---:|---:|---|---:|---:|---|")
    with tempfile.TemporaryDirectory(prefix="cnncomp-trained-") as tmp:
        for name in chosen:
            why = NETS[name].missing()
            if why:
                print(f"| {name} | skipped: {why} | | | | | | | |", flush=True)
                continue
            try:
                lines = bench_net(name, Path(tmp), rounds, repeats, log)
            except Exception as e:  # one net that fails (cnncomp or a third-party quantizer): its row says so
                lines = [f"| {name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:160]} | | | | | | | |"]
            for line in lines:
                print(line, flush=True)


if __name__ == "__main__":
    main("all", 5, 10)
