"""Where an int8 network's time goes under OpenVINO: cnncomp's QDQ file against NNCF's int8, bf16 and f32.

Run by hand: `python tools/bench_openvino_int8.py [--spec specs/mobilenet_v2.cnn] [--rounds 11] [--runs 10]
[--calibration cal.npz] [--threads 1]`. Not a test. Needs `openvino` (the extra); `nncf` is optional.

In one process, one thread per session, batch 1, interleaved rounds (each round times every contestant in turn,
--runs runs each; the figure is the median of the rounds' medians, the spread half their range). Two clocks:
wall time, and the process's CPU time per run, which a loaded machine disturbs far less (another process
taking the core stops both clocks of a wall-time run but only the wall one): read the CPU-time ratios when
the load average is above the core count.

- ORT fp32:          cnncomp's float32 ONNX (-O1) under ONNX Runtime: the baseline of every ratio;
- ORT int8:          cnncomp's QDQ file (`--precision int8`, calibrated on --calibration) under ONNX Runtime;
- OV f32 / OV bf16:  the float32 file under OpenVINO, precision hint f32 / bf16;
- OV int8 cnncomp:   cnncomp's QDQ file under OpenVINO, through cnncomp's OpenVinoSession (what `bench` times:
                     compiled for the input's static shape);
- OV int8 dynamic:   cnncomp's file compiled as read, batch dimension dynamic (the static-shape compile's gain);
- OV int8 copying:   the same compiled model run the way cnncomp did before it shared its input arrays;
- OV int8 NNCF:      `nncf.quantize` (its defaults) of the same float32 ONNX model on the same samples.

Then, from OpenVINO's per-node counters (PERF_COUNT, the median of --runs inferences), the milliseconds of each
(layer type, kernel) of the compiled int8 models: which layers run in int8 (kernel names ending in I8/i8/u8)
and which in f32, and the sum of the nodes against the wall time.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

import cnncomp  # noqa: E402
from bench_compile import machine  # noqa: E402
from cnncomp.run.openvino import OpenVinoSession, openvino_problem  # noqa: E402
from cnncomp.run.runtime import open_session  # noqa: E402


def nncf_int8(float_path: Path, samples: np.ndarray, out: Path) -> Path | None:
    """NNCF's post-training int8 of the float32 ONNX model (its defaults), saved as ONNX; None without nncf."""
    try:
        import nncf
    except ImportError:
        return None
    dataset = nncf.Dataset([{"x": samples[i:i + 1]} for i in range(len(samples))])
    onnx.save(nncf.quantize(onnx.load(str(float_path)), dataset, subset_size=len(samples)), str(out))
    return out


def dynamic_run(session: OpenVinoSession):
    """The session's model compiled as read (its batch dimension dynamic), as OpenVinoSession ran it before it
    compiled for the input's static shape."""
    session._use(None)
    request = session.request

    def run(feeds):
        request.infer({i: feeds[n] for i, n in enumerate(session.input_names)}, share_inputs=True,
                      share_outputs=True)
        return {n: np.array(request.get_output_tensor(i).data, copy=True)
                for i, n in enumerate(session.output_names)}
    return run


def copying_run(session: OpenVinoSession):
    """OpenVinoSession.run as it was before it shared the inputs: infer() copies them and returns copied outputs."""
    def run(feeds):
        if session.request is None:
            session.run(feeds)  # compiles it for these input shapes
        session.request.infer({i: feeds[n] for i, n in enumerate(session.input_names)})
        return {n: np.array(session.request.get_output_tensor(i).data, copy=True)
                for i, n in enumerate(session.output_names)}
    return run


def node_split(path: Path, feeds: dict, runs: int, threads: int) -> tuple[dict, float]:
    """{(layer type, kernel): [nodes, median ms per inference]} and the summed ms, from OpenVINO's counters (the
    model compiled by OpenVinoSession for int8: its precision hint, the input's static shape)."""
    session = OpenVinoSession(str(path), "int8", threads)  # compiled as `bench` compiles it, counters on
    session.config["PERF_COUNT"] = True
    session._by_shapes.clear()
    session.run(feeds)
    request = session.request
    per_node = collections.defaultdict(list)
    for _ in range(runs + 2):
        request.infer(list(feeds.values()), share_inputs=True)
        for position, info in enumerate(request.profiling_info):  # names may repeat: keyed by position too
            if info.status.name == "EXECUTED":
                per_node[(position, info.node_type, info.exec_type)].append(info.real_time.total_seconds())
    split = collections.defaultdict(lambda: [0, 0.0])
    for (_, kind, kernel), seconds in per_node.items():
        split[kind, kernel][0] += 1
        split[kind, kernel][1] += statistics.median(seconds[2:] or seconds) * 1e3
    return dict(split), sum(ms for _, ms in split.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "specs" / "mobilenet_v2.cnn"))
    ap.add_argument("--calibration", help=".npz with an array per input (default: 16 seeded normal samples)")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if openvino_problem():
        sys.exit(f"bench_openvino_int8: {openvino_problem()}")
    graph = cnncomp.load(args.spec)
    (name,) = graph.inputs
    shape = (1,) + tuple(graph.layer(name).shape[1:])
    samples = (dict(np.load(args.calibration)) if args.calibration else
               {name: np.random.default_rng(0).standard_normal((16,) + shape[1:]).astype(np.float32)})
    feeds = {name: np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8, nncf_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx", Path(tmp) / "nncf.onnx"
        cnncomp.compile(args.spec, output=fp32)
        cnncomp.compile(args.spec, output=int8, precision="int8", calibration=samples)
        nncf_path = nncf_int8(fp32, samples[name], nncf_path)
        t = args.threads
        ours = OpenVinoSession(str(int8), "int8", t)
        contestants = {
            "ORT fp32": open_session(onnx.load(str(fp32)), "cpu", threads=t, quiet=True).run,
            "ORT int8": open_session(onnx.load(str(int8)), "cpu", threads=t, quiet=True).run,
            "OV f32": OpenVinoSession(str(fp32), "fp32", t).run,
            "OV bf16": OpenVinoSession(str(fp32), "bf16", t).run,
            "OV int8 cnncomp": ours.run,
            "OV int8 dynamic": dynamic_run(OpenVinoSession(str(int8), "int8", t)),
            "OV int8 copying": copying_run(OpenVinoSession(str(int8), "int8", t)),
        }
        if nncf_path:
            contestants["OV int8 NNCF"] = OpenVinoSession(str(nncf_path), "int8", t).run
        reference = contestants["ORT fp32"](feeds)
        errors = {}
        for label, run in contestants.items():
            got = run(feeds)
            errors[label] = max(float(np.linalg.norm(got[k] - v) / np.linalg.norm(v)) for k, v in reference.items())
        medians, cpu_medians = collections.defaultdict(list), collections.defaultdict(list)
        load = os.getloadavg()[0]
        for _ in range(args.rounds):
            for label, run in contestants.items():
                run(feeds)
                times, cpu_times = [], []
                for _ in range(args.runs):
                    start, cpu_start = time.perf_counter(), time.process_time()
                    run(feeds)
                    times.append(time.perf_counter() - start)
                    cpu_times.append(time.process_time() - cpu_start)
                medians[label].append(statistics.median(times))
                cpu_medians[label].append(statistics.fmean(cpu_times))  # the CPU clock ticks coarser: a mean
        load = max(load, os.getloadavg()[0])
        base, cpu_base = statistics.median(medians["ORT fp32"]), statistics.median(cpu_medians["ORT fp32"])
        print(f"\n{Path(args.spec).stem}, batch 1, {t} thread(s), {args.rounds} rounds x {args.runs} runs "
              f"(int8 samples: {'--calibration' if args.calibration else '16 seeded normal'}), "
              f"1-minute load average up to {load:.1f} on {os.cpu_count()} cores")
        print(f"{'':18s} {'wall ms':>7s} {'spread':>7s} {'vs ORT fp32':>11s} {'CPU ms':>7s} {'spread':>7s} "
              f"{'vs ORT fp32':>11s} {'rel. L2 vs ORT fp32':>20s}")
        for label, values in medians.items():
            m, c = statistics.median(values), statistics.median(cpu_medians[label])
            spread = (max(values) - min(values)) / 2 / m * 100
            cpu_spread = (max(cpu_medians[label]) - min(cpu_medians[label])) / 2 / c * 100
            print(f"{label:18s} {m * 1e3:7.2f} {spread:6.0f}% {base / m:10.2f}x {c * 1e3:7.2f} {cpu_spread:6.0f}% "
                  f"{cpu_base / c:10.2f}x {errors[label]:20.4f}")
        for label, path in (("cnncomp int8", int8), ("NNCF int8", nncf_path)):
            if path is None:
                continue
            split, total = node_split(path, feeds, args.runs * 3, t)
            print(f"\nOpenVINO nodes of {label}: {total:.2f} ms summed per inference")
            for (kind, kernel), (count, ms) in sorted(split.items(), key=lambda kv: -kv[1][1]):
                if ms >= 0.005:
                    print(f"  {kind:30s} {kernel:32s} {count:3d} nodes {ms:6.2f} ms")


if __name__ == "__main__":
    main()
