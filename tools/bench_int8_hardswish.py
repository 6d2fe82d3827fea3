"""Int8 hard-swish under ONNX Runtime CPU: which op sequence pays (docs/precision.md, "Int8 hard-swish").

Run by hand: `python tools/bench_int8_hardswish.py [--sizes 8x16,16x48,24x72,48x96,96x192] [--rounds 30]`.

A micro model with ppocr-cls-like shapes: three MobileNetV3 blocks (1x1 conv C -> E, hard-swish, 3x3 depthwise
conv, hard-swish, 1x1 conv E -> C) on a 1 x C x 24 x 96 map, six hard-swishes. Quantized the way cnncomp does
(quantize_static, QDQ, per-channel int8 weights, uint8 activations), then, side by side (batch 1, one thread,
rounds interleaved in shuffled order, best of 3 x `--repeats` runs per round, median over rounds):

  float32          the float32 model (ONNX Runtime fuses each hard-swish into its conv)
  int8 DQ/HS/Q     quantize_static's model: DequantizeLinear -> HardSwish -> QuantizeLinear in float32
  int8 table       each DQ -> HardSwish -> Q replaced by Cast(int32) + Gather over its 256-entry table
                   (exact: the table is ONNX Runtime's output of the three nodes on the 256 codes)
  int8 add+mul     cnncomp's rewrite (precision/int8_hardswish.py): QLinearAdd + QLinearMul
  int8 relu        the same blocks with Relu (fused into QLinearConv): what int8 costs with a free activation

and the relative L2 error of each int8 model against float32 on the input timed, and how many of the six
hard-swishes the rewrite took (it refuses an output step too fine for it: int8_hardswish.refusal).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnncomp.onnx_graph import producers  # noqa: E402
from cnncomp.precision.int8 import FeedReader, quiet_quantizer  # noqa: E402
from cnncomp.precision.int8_hardswish import int8_hard_swish  # noqa: E402

HEIGHT, WIDTH = 24, 96


def blocks(channels: int, expanded: int, activation: str = "HardSwish", count: int = 3) -> onnx.ModelProto:
    """`count` MobileNetV3 blocks on a 1 x channels x 24 x 96 map, seeded weights."""
    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "x"
    for b in range(count):
        for j, (cin, cout, k, group) in enumerate([(channels, expanded, 1, 1), (expanded, expanded, 3, expanded),
                                                   (expanded, channels, 1, 1)]):
            fan_in = cin // group * k * k
            weights += [numpy_helper.from_array((rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(fan_in))
                                                .astype(np.float32), f"w{b}_{j}"),
                        numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"b{b}_{j}")]
            nodes.append(helper.make_node("Conv", [x, f"w{b}_{j}", f"b{b}_{j}"], [f"c{b}_{j}"], group=group,
                                          pads=[k // 2] * 4, name=f"conv{b}_{j}"))
            x = f"c{b}_{j}"
            if j < 2:
                nodes.append(helper.make_node(activation, [x], [f"{x}_act"], name=f"act{b}_{j}"))
                x = f"{x}_act"
    shape = [1, channels, HEIGHT, WIDTH]
    graph = helper.make_graph(nodes, "blocks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def quantized(model: onnx.ModelProto, feeds: dict) -> onnx.ModelProto:
    """quantize_static with cnncomp's settings (int8.Quantizer: QDQ, per-channel symmetric int8 weights,
    uint8 activations), min-max ranges."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as tmp, quiet_quantizer():
        source, out = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(model, str(source))
        quantize_static(str(source), str(out), FeedReader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        return onnx.load(str(out))


def session(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def tabulated(model: onnx.ModelProto) -> onnx.ModelProto:
    """The measured alternative: each DQ -> HardSwish -> Q as Cast(int32) + Gather(its 256 codes' table)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    producer = producers(model)
    initializers = {t.name: t for t in model.graph.initializer}
    nodes, tables = [], []
    for node in model.graph.node:
        op = producer.get(node.input[0]) if node.op_type == "QuantizeLinear" else None
        dq = producer.get(op.input[0]) if op is not None and op.op_type == "HardSwish" else None
        if dq is None or dq.op_type != "DequantizeLinear":
            nodes.append(node)
            continue
        chain = helper.make_graph(
            [dq, op, node], "table", [helper.make_tensor_value_info(dq.input[0], TensorProto.UINT8, [256])],
            [helper.make_tensor_value_info(node.output[0], TensorProto.UINT8, [256])],
            [initializers[n] for n in (*dq.input[1:], *node.input[1:])])
        table = session(helper.make_model(chain, opset_imports=list(model.opset_import))).run(
            None, {dq.input[0]: np.arange(256, dtype=np.uint8)})[0]
        tables.append(numpy_helper.from_array(table, f"{node.name}_table"))
        nodes += [helper.make_node("Cast", [dq.input[0]], [f"{node.name}_index"], to=TensorProto.INT32),
                  helper.make_node("Gather", [f"{node.name}_table", f"{node.name}_index"], list(node.output))]
    read = {i for n in nodes for i in n.input}
    nodes = [n for n in nodes if n.op_type == "QuantizeLinear" or any(o in read for o in n.output)
             or n.output[0] in {o.name for o in model.graph.output}]  # the replaced DQs and hard-swishes
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(tables)
    return model


def timed(sessions: dict, feeds: dict, rounds: int, repeats: int) -> dict[str, float]:
    """Median ms per run over interleaved rounds (shuffled order), each the best of 3 x `repeats` runs."""
    times = {name: [] for name in sessions}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feeds)
    for _ in range(rounds):
        for name in random.sample(list(sessions), len(sessions)):
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                for _ in range(repeats):
                    sessions[name].run(None, feeds)
                best = min(best, (time.perf_counter() - start) / repeats)
            times[name].append(best)
    return {name: float(np.median(t)) * 1e3 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8x16,16x48,24x72,48x96,96x192", help="CxE pairs: channels x expanded")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"# {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, onnxruntime {__import__('onnxruntime').__version__}")
    print("| C x E | float32 ms | int8 DQ/HS/Q | int8 table | int8 add+mul | int8 relu | rel L2 DQ/HS/Q, table, "
          "add+mul | hard-swishes rewritten |\n|---|---:|---:|---:|---:|---:|---|---:|")
    for size in args.sizes.split(","):
        channels, expanded = map(int, size.split("x"))
        rng = np.random.default_rng(1)
        # std 3: hard-swish inputs over a few units, as in the trained nets (a narrower range gives output steps
        # too fine for the rewrite, which then refuses the site)
        feeds = {"x": 3 * rng.standard_normal((4, channels, HEIGHT, WIDTH)).astype(np.float32)}
        float32 = blocks(channels, expanded)
        qdq = quantized(float32, feeds)
        add_mul = onnx.ModelProto.FromString(qdq.SerializeToString())
        rewritten = int8_hard_swish(add_mul)
        models = {"float32": float32, "DQ/HS/Q": qdq, "table": tabulated(qdq), "add+mul": add_mul,
                  "relu": quantized(blocks(channels, expanded, "Relu"), feeds)}
        sessions = {name: session(m) for name, m in models.items()}
        one = {"x": feeds["x"][:1]}
        outputs = {name: s.run(None, one)[0] for name, s in sessions.items()}
        errors = [np.linalg.norm(outputs[n] - outputs["float32"]) / np.linalg.norm(outputs["float32"])
                  for n in ("DQ/HS/Q", "table", "add+mul")]
        ms = timed(sessions, one, args.rounds, args.repeats)
        base = ms["float32"]
        cells = " | ".join(f"{ms[n]:.3f} ({base / ms[n]:.2f}x)" for n in ("DQ/HS/Q", "table", "add+mul", "relu"))
        print(f"| {channels} x {expanded} | {base:.3f} | {cells} | {', '.join(f'{e:.4f}' for e in errors)} | "
              f"{rewritten} of 6 |", flush=True)
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
