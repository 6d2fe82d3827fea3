"""Load generator: a model served by `cnncomp serve` (Triton, gRPC) against the same model in process.

Run by hand: `python tools/bench_serve.py [--models resnet50,mobilenet_v2] [--precisions fp32,int8]
[--concurrency 1,2,4,8] [--seconds 10] [--threads 2]`. Not a test; needs the `serve` extra.

Each model is deployed once (`cnncomp deploy SPEC --triton REPO`, -O1, seeded weights, max batch 8)
and both sides run that repository's model.onnx with ONNX Runtime's CPU provider and --threads
intra-op threads (the config gets `parameters { key: "intra_op_thread_count" }`, which Triton's
C++ onnxruntime backend reads too). At concurrency C:

- served:     C coroutines of tritonclient's asyncio gRPC client, each sending one batch-1 request
              after the other to Triton on 127.0.0.1, whose dynamic batching may gather the
              outstanding requests into one batch;
- in-process: C threads, each calling `InferenceSession.run` on batch-1 inputs after the other, on
              one shared session, in two ways: *free* (the C runs overlap, each with its own calling
              thread on top of the session's pool: up to C x threads busy threads) and *one at a time*
              (a lock around run: the threads Triton's single instance has, but no batching).

Each cell runs for --seconds after one second of warm-up; throughput is the requests completed
within that window per second, latencies are those requests' (p50/p95/p99). The served column also shows the mean batch size
Triton executed (from its statistics). The ratios are served/in-process throughput (aim: >= 0.9 at
concurrency 4 and more). int8 runs when `deploy` has `--precision int8`; otherwise it is skipped,
saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import numpy as np
import onnxruntime as ort
from bench_compile import machine

from cnncomp.cli import main
from cnncomp.deployment.serve import HOST, Ports, TritonServer, free_ports, serve_extra_missing

WARMUP_S = 1.0


def deploy(repo: Path, model: str, precision: str, threads: int) -> str:
    name = f"{model}_{precision}"
    args = ["deploy", str(ROOT / "specs" / f"{model}.cnn"), "--triton", str(repo), "--name", name,
            "--max-batch", "8", "--kind", "cpu"]
    if precision != "fp32":
        args += ["--precision", precision]
    if precision == "int8":  # calibrate on seeded images of the served shape
        calibration = repo.parent / f"{model}.calibration.npz"
        np.savez(calibration, x=np.random.default_rng(1).standard_normal((8, 3, 224, 224)).astype(np.float32))
        args += ["--calibration", str(calibration)]
    if main(args) != 0:
        raise SystemExit(f"deploy {model} {precision} failed")
    config = repo / name / "config.pbtxt"
    config.write_text(config.read_text() + 'parameters { key: "intra_op_thread_count" value: { string_value: "'
                      + str(threads) + '" } }\n')
    return name


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    ms = np.array(latencies) * 1e3
    return tuple(float(np.percentile(ms, q)) for q in (50, 95, 99))


def in_process(path: Path, x: np.ndarray, concurrency: int, seconds: float, threads: int, serial: bool) -> dict:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    latencies: list[float] = []
    lock = threading.Lock()
    one_at_a_time = threading.Lock() if serial else contextlib.nullcontext()
    start = time.perf_counter()
    measure_from, stop_at = start + WARMUP_S, start + WARMUP_S + seconds

    def worker():
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            with one_at_a_time:
                session.run(None, {name: x})
            t1 = time.perf_counter()
            if measure_from <= t1 <= stop_at:  # completions in the window: unbiased in steady state
                with lock:
                    latencies.append(t1 - t0)

    workers = [threading.Thread(target=worker) for _ in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"rps": len(latencies) / seconds, "latency": percentiles(latencies)}


async def served(grpc_url: str, model: str, x: np.ndarray, concurrency: int, seconds: float) -> dict:
    import tritonclient.grpc.aio as aioclient
    from tritonclient.grpc import InferInput

    client = aioclient.InferenceServerClient(grpc_url)
    datatype = {np.float32: "FP32", np.float16: "FP16"}[x.dtype.type]
    inp = InferInput("x", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    latencies: list[float] = []
    start = time.perf_counter()
    measure_from, stop_at = start + WARMUP_S, start + WARMUP_S + seconds
    before = None

    async def worker():
        nonlocal before
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            await client.infer(model, [inp], client_timeout=60)
            t1 = time.perf_counter()
            if measure_from <= t1 <= stop_at:  # completions in the window: unbiased in steady state
                latencies.append(t1 - t0)

    async def snapshot_after_warmup():
        nonlocal before
        await asyncio.sleep(WARMUP_S)
        before = await client.get_inference_statistics(model, as_json=True)

    await asyncio.gather(snapshot_after_warmup(), *(worker() for _ in range(concurrency)))
    after = await client.get_inference_statistics(model, as_json=True)
    await client.close()
    runs = int(after["model_stats"][0].get("execution_count", 0)) - int(before["model_stats"][0].get("execution_count", 0))
    count = int(after["model_stats"][0].get("inference_count", 0)) - int(before["model_stats"][0].get("inference_count", 0))
    return {"rps": len(latencies) / seconds, "latency": percentiles(latencies), "batch": count / max(runs, 1)}


def ratio(a: dict, b: dict) -> float:
    return a["rps"] / b["rps"] if b["rps"] else float("nan")


def main_bench() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,mobilenet_v2")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per cell (default 10)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="ONNX Runtime intra-op threads on both sides (default: the usable cores)")
    args = parser.parse_args()
    missing = serve_extra_missing()
    if missing:
        print(f"cannot benchmark serving: {missing}", file=sys.stderr)
        return 1
    precisions = args.precisions.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    print(machine())
    print(f"threads {args.threads}, {args.seconds:g} s per cell after {WARMUP_S:g} s warm-up, batch-1 requests")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        names = {(m, p): deploy(repo, m, p, args.threads) for m in args.models.split(",") for p in precisions}
        with TritonServer(repo, Ports(*free_ports())) as server:
            grpc_url = f"{HOST}:{server.ports.grpc}"
            print("\n| model | precision | C | in-process free req/s (p50 ms) | in-process one at a time req/s "
                  "(p50 ms) | served req/s | served p50 / p95 / p99 ms | mean batch | served / free | "
                  "served / one at a time |")
            print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for (model, precision), name in names.items():
                path = repo / name / "1" / "model.onnx"
                dtype = np.float16 if precision == "fp16" else np.float32
                x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(dtype)
                for c in levels:
                    free = in_process(path, x, c, args.seconds, args.threads, serial=False)
                    serial = in_process(path, x, c, args.seconds, args.threads, serial=True)
                    remote = asyncio.run(served(grpc_url, name, x, c, args.seconds))
                    rlat = " / ".join(f"{v:.0f}" for v in remote["latency"])
                    print(f"| {model} | {precision} | {c} | {free['rps']:.1f} ({free['latency'][0]:.0f}) | "
                          f"{serial['rps']:.1f} ({serial['latency'][0]:.0f}) | {remote['rps']:.1f} | {rlat} | "
                          f"{remote['batch']:.2f} | {ratio(remote, free):.2f} | {ratio(remote, serial):.2f} |",
                          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main_bench())
