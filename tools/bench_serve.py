"""Load generator: a model served by `cnncomp serve` (Triton, gRPC) against the same model in process.

Run by hand: `python tools/bench_serve.py [--models resnet50,mobilenet_v2] [--precisions fp32,int8]
[--concurrency 1,2,4,8] [--seconds 5] [--threads 2]`. Not a test; needs the `serve` extra.

Each model is deployed once (`cnncomp deploy SPEC --triton REPO`, -O1, seeded weights, max batch 8)
and both sides run that repository's model.onnx with ONNX Runtime's CPU provider and --threads
intra-op threads (the config gets `parameters { key: "intra_op_thread_count" }`, which Triton's
C++ onnxruntime backend reads too). At concurrency C:

- served:     C coroutines of tritonclient's asyncio gRPC client, each sending one batch-1 request
              after the other to Triton on 127.0.0.1, whose dynamic batching may gather the
              outstanding requests into one batch;
- in-process: C threads, each calling `InferenceSession.run` on batch-1 inputs after the other
              (one shared session, as the server has one instance).

Each cell runs for --seconds after one second of warm-up; throughput is completed requests per
second, latencies are per request (p50/p95/p99). The served column also shows the mean batch size
Triton executed (from its statistics). The ratio is served/in-process throughput (aim: >= 0.9 at
concurrency 4 and more). int8 runs when `deploy` has `--precision int8`; otherwise it is skipped,
saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
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

from cnncomp.cli import build_parser, main
from cnncomp.deployment.serve import HOST, Ports, TritonServer, free_ports, serve_extra_missing

WARMUP_S = 1.0


def int8_available() -> bool:
    """Whether `deploy` takes --precision int8 (the int8 issue adds it)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["deploy", "net.cnn", "--triton", "repo", "--precision", "int8"])
    except SystemExit:
        return False
    return True


def deploy(repo: Path, model: str, precision: str, threads: int) -> str:
    name = f"{model}_{precision}"
    args = ["deploy", str(ROOT / "specs" / f"{model}.cnn"), "--triton", str(repo), "--name", name,
            "--max-batch", "8", "--kind", "cpu"]
    if precision != "fp32":
        args += ["--precision", precision]
    if main(args) != 0:
        raise SystemExit(f"deploy {model} {precision} failed")
    config = repo / name / "config.pbtxt"
    config.write_text(config.read_text() + 'parameters { key: "intra_op_thread_count" value: { string_value: "'
                      + str(threads) + '" } }\n')
    return name


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    ms = np.array(latencies) * 1e3
    return tuple(float(np.percentile(ms, q)) for q in (50, 95, 99))


def in_process(path: Path, x: np.ndarray, concurrency: int, seconds: float, threads: int) -> dict:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.perf_counter()
    measure_from, stop_at = start + WARMUP_S, start + WARMUP_S + seconds

    def worker():
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            session.run(None, {name: x})
            t1 = time.perf_counter()
            if t0 >= measure_from and t1 <= stop_at:
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
            if t0 >= measure_from and t1 <= stop_at:
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


def main_bench() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,mobilenet_v2")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell (default 5)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="ONNX Runtime intra-op threads on both sides (default: the usable cores)")
    args = parser.parse_args()
    missing = serve_extra_missing()
    if missing:
        print(f"cannot benchmark serving: {missing}", file=sys.stderr)
        return 1
    precisions = args.precisions.split(",")
    if "int8" in precisions and not int8_available():
        print("int8: skipped (deploy has no --precision int8 yet)")
        precisions.remove("int8")
    levels = [int(c) for c in args.concurrency.split(",")]
    print(machine())
    print(f"threads {args.threads}, {args.seconds:g} s per cell after {WARMUP_S:g} s warm-up, batch-1 requests")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        names = {(m, p): deploy(repo, m, p, args.threads) for m in args.models.split(",") for p in precisions}
        with TritonServer(repo, Ports(*free_ports())) as server:
            grpc_url = f"{HOST}:{server.ports.grpc}"
            print("\n| model | precision | concurrency | in-process req/s | p50 / p95 / p99 ms | served req/s "
                  "| p50 / p95 / p99 ms | mean batch | served / in-process |")
            print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for (model, precision), name in names.items():
                path = repo / name / "1" / "model.onnx"
                dtype = np.float16 if precision == "fp16" else np.float32
                x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(dtype)
                for c in levels:
                    local = in_process(path, x, c, args.seconds, args.threads)
                    remote = asyncio.run(served(grpc_url, name, x, c, args.seconds))
                    ratio = remote["rps"] / local["rps"] if local["rps"] else float("nan")
                    lat = " / ".join(f"{v:.1f}" for v in local["latency"])
                    rlat = " / ".join(f"{v:.1f}" for v in remote["latency"])
                    print(f"| {model} | {precision} | {c} | {local['rps']:.1f} | {lat} | {remote['rps']:.1f} | "
                          f"{rlat} | {remote['batch']:.2f} | {ratio:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main_bench())
