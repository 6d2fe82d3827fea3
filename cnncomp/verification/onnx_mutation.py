"""Mutation fuzzing of the ONNX importer: malformed models must give a CnnError, never a traceback.

A case is a seed. The seed picks a base model and one to three mutations of it:

- base models are ONNX files cnncomp emits (`emit_onnx`) for small networks: the bundled
  lenet and resnet18 (at width 8) and random graphs from the compiler fuzzer's generator
  (`fuzz.generate`), so that every import pattern meets a malformed instance of its nodes;
  and a small network exported by torch.onnx.export, with the node forms of real exports;
- structural mutations change the parsed model: drop, duplicate or retype an attribute,
  give it an odd value, drop or rename a node input or output, change an initializer's dims
  or data type without changing its data, change an op type, shuffle the node order,
  remove a graph input or output;
- byte mutations change the serialized file: flip, overwrite, insert or delete bytes, or cut
  the file short (most of these end at the protobuf parser; some slip through it).

`run_case(seed)` imports the mutated model (written to a file, read by `import_model`, as
`cnncomp import` does) and reports what happened: "imported", "refused" (a CnnError, the
right answer for a malformed model) or "crashed" with the traceback (a finding).
`tools/fuzz.py --onnx N` runs N cases; tests run a small seeded count.
"""

from __future__ import annotations

import random
import tempfile
import traceback
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx

from cnncomp.errors import CnnError

SPECS = Path(__file__).resolve().parents[2] / "specs"
BASES = ("lenet", "resnet18", "torch", "generated")
ODD_INTS = (0, -1, 1, 2, 3, 7, 2**31 - 1, -(2**31), 2**62)
ODD_FLOATS = (0.0, -1.0, 1e30, float("nan"), float("inf"))


@dataclass
class CaseResult:
    """What the importer did with one mutated model."""

    seed: int
    base: str
    mutations: list[str] = field(default_factory=list)
    outcome: str = ""  # imported, refused, crashed
    message: str = ""  # the CnnError, or the traceback of a crash


# ---- base models ------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _spec_model(name: str) -> bytes:
    from cnncomp.emit.onnx import emit_onnx
    from cnncomp.frontend.cnn.loader import load_spec
    from cnncomp.ir.weights import init_weights

    overrides = {"width": "8", "num_classes": "10"} if name == "resnet18" else None
    graph = load_spec(SPECS / f"{name}.cnn", overrides)
    return emit_onnx(graph, init_weights(graph, 0)).SerializeToString()


@lru_cache(maxsize=1)
def _torch_model() -> bytes:
    """A small network exported by torch.onnx.export (the TorchScript exporter): the node forms of real
    exports (Constant nodes, Shape/Gather/Reshape chains, Gemm, pixel shuffle, Resize, Softmax)."""
    import io

    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.SiLU(), nn.Conv2d(8, 4, 1))
            self.shuffle = nn.PixelShuffle(2)
            self.pool = nn.MaxPool2d(2)
            self.avg = nn.AvgPool2d(2, ceil_mode=True)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            x = self.stem(x)
            y = torch.cat([self.branch(x), x[:, :4]], dim=1)
            y = self.pool(self.shuffle(nn.functional.gelu(y)))
            y = nn.functional.interpolate(y, scale_factor=2.0, mode="nearest")
            y = self.avg(self.pool(nn.functional.leaky_relu(y, 0.1)))
            y = nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)
            return torch.softmax(self.fc(torch.cat([y, y, y, y], dim=1)), dim=-1)

    torch.manual_seed(0)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices: its node forms are wanted
        torch.onnx.export(Net().eval(), (torch.randn(1, 3, 8, 8),), buffer, opset_version=17, dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return buffer.getvalue()


def _generated_model(seed: int) -> bytes | None:
    from cnncomp.emit.onnx import emit_onnx
    from cnncomp.ir.weights import init_weights
    from cnncomp.verification.fuzz import RandomChooser, generate

    try:
        graph = generate(RandomChooser(seed), max_layers=6)
        return emit_onnx(graph, init_weights(graph, seed)).SerializeToString()
    except CnnError:  # a draw the emitter refuses: that case mutates lenet instead
        return None


def base_model(seed: int, rng: random.Random) -> tuple[str, bytes]:
    name = rng.choice(BASES)
    if name == "generated":
        data = _generated_model(seed)
        if data is not None:
            return f"generated(seed={seed})", data
        name = "lenet"
    return name, _torch_model() if name == "torch" else _spec_model(name)


# ---- mutations --------------------------------------------------------------------------------


def _odd_attribute(rng: random.Random, attr: onnx.AttributeProto) -> str:
    """Give an attribute an odd value of its own type, or of another type."""
    kind = rng.randrange(4)
    if kind == 0 and attr.type == onnx.AttributeProto.INTS:
        values = [rng.choice(ODD_INTS) for _ in range(rng.randrange(0, 6))]
        del attr.ints[:]
        attr.ints.extend(values)
        return f"{attr.name} = {values}"
    if kind == 1 and attr.type == onnx.AttributeProto.INT:
        attr.i = rng.choice(ODD_INTS)
        return f"{attr.name} = {attr.i}"
    if kind == 2 and attr.type == onnx.AttributeProto.FLOAT:
        attr.f = rng.choice(ODD_FLOATS)
        return f"{attr.name} = {attr.f}"
    if attr.type == onnx.AttributeProto.STRING and kind < 3:
        attr.s = rng.choice([b"", b"SAME_UPPER", b"\xff\xfe", b"nearest", b"x" * 40])
        return f"{attr.name} = {attr.s!r}"
    new_type = rng.choice([onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT, onnx.AttributeProto.INTS,
                           onnx.AttributeProto.STRING])
    attr.type = new_type  # the old field stays set: a value of one type tagged as another
    return f"{attr.name} retyped to {onnx.AttributeProto.AttributeType.Name(new_type)}"


def _mutate_node(rng: random.Random, model: onnx.ModelProto) -> str:
    nodes = model.graph.node
    if not nodes:
        return "no node to mutate"
    node = nodes[rng.randrange(len(nodes))]
    where = f"node {node.name or node.op_type} ({node.op_type})"
    choice = rng.randrange(7)
    if choice == 0 and node.attribute:
        i = rng.randrange(len(node.attribute))
        name = node.attribute[i].name
        del node.attribute[i]
        return f"{where}: attribute {name} removed"
    if choice == 1 and node.attribute:
        return f"{where}: " + _odd_attribute(rng, node.attribute[rng.randrange(len(node.attribute))])
    if choice == 2 and node.attribute:
        node.attribute.append(node.attribute[rng.randrange(len(node.attribute))])
        return f"{where}: attribute duplicated"
    if choice == 3 and node.input:
        i = rng.randrange(len(node.input))
        if rng.random() < 0.5:
            del node.input[i]
            return f"{where}: input {i} removed"
        node.input[i] = rng.choice(["", "nowhere", node.output[0] if node.output else "x"])
        return f"{where}: input {i} is now '{node.input[i]}'"
    if choice == 4 and node.output:
        node.output[0] = rng.choice(["", "y", node.input[0] if node.input else "z"])
        return f"{where}: output 0 is now '{node.output[0]}'"
    if choice == 5:
        old = node.op_type
        node.op_type = rng.choice(["Conv", "MaxPool", "AveragePool", "Relu", "Gemm", "MatMul", "Reshape", "Flatten",
                                   "Transpose", "Concat", "Add", "BatchNormalization", "Softmax", "GlobalAveragePool",
                                   "Resize", "Pad", "Clip", "Split", "Slice", "LeakyRelu", "ConstantOfShape"])
        return f"{where}: op type {old} -> {node.op_type}"
    node.attribute.add().CopyFrom(onnx.helper.make_attribute(
        rng.choice(["kernel_shape", "axis", "pads", "strides", "group", "perm", "mode", "alpha", "value"]),
        rng.choice([rng.choice(ODD_INTS), [rng.choice(ODD_INTS) for _ in range(3)], rng.choice(ODD_FLOATS), "x"])))
    return f"{where}: attribute {node.attribute[-1].name} added"


def _mutate_initializer(rng: random.Random, model: onnx.ModelProto) -> str:
    inits = model.graph.initializer
    if not inits:
        return "no initializer to mutate"
    t = inits[rng.randrange(len(inits))]
    choice = rng.randrange(4)
    if choice == 0 and t.dims:
        i = rng.randrange(len(t.dims))
        t.dims[i] = rng.choice([0, 1, t.dims[i] * 2, t.dims[i] + 1, 2**31, 10**8])
        return f"initializer {t.name}: dims {list(t.dims)} (data unchanged)"
    if choice == 1:
        t.data_type = rng.choice([onnx.TensorProto.DOUBLE, onnx.TensorProto.INT64, onnx.TensorProto.FLOAT16,
                                  onnx.TensorProto.STRING, onnx.TensorProto.BOOL, 0, 99])
        return f"initializer {t.name}: data type {t.data_type} (data unchanged)"
    if choice == 2:
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data) + 1)]
        return f"initializer {t.name}: raw data cut to {len(t.raw_data)} bytes"
    del t.dims[:]
    t.dims.extend([rng.choice([1, 2, 3, 4]) for _ in range(rng.randrange(0, 5))])
    return f"initializer {t.name}: dims {list(t.dims)} (data unchanged)"


def _mutate_graph(rng: random.Random, model: onnx.ModelProto) -> str:
    g = model.graph
    choice = rng.randrange(5)
    if choice == 0 and len(g.node) > 1:
        nodes = list(g.node)
        rng.shuffle(nodes)
        del g.node[:]
        g.node.extend(nodes)
        return "nodes shuffled"
    if choice == 1 and g.output:
        del g.output[rng.randrange(len(g.output))]
        return "a graph output removed"
    if choice == 2 and g.input:
        vi = g.input[rng.randrange(len(g.input))]
        dims = vi.type.tensor_type.shape.dim
        if dims:
            d = dims[rng.randrange(len(dims))]
            if rng.random() < 0.5:
                d.dim_value = rng.choice([0, 1, 10**9])
            else:
                d.dim_param = rng.choice(["N", "é", ""])
        return f"graph input {vi.name}: shape changed"
    if choice == 3 and g.input:
        del g.input[rng.randrange(len(g.input))]
        return "a graph input removed"
    model.opset_import[0].version = rng.choice([1, 10, 11, 13, 17, 18, 21, 99])
    return f"opset {model.opset_import[0].version}"


def _mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    buf = bytearray(data)
    choice = rng.randrange(5)
    pos = rng.randrange(len(buf))
    if choice == 0:
        for _ in range(rng.randint(1, 4)):
            p = rng.randrange(len(buf))
            buf[p] ^= 1 << rng.randrange(8)
        return bytes(buf), "bits flipped"
    if choice == 1:
        buf[pos:pos + 4] = bytes(rng.choice([0, 0x7F, 0x80, 0xFF]) for _ in range(4))
        return bytes(buf), f"4 bytes overwritten at {pos}"
    if choice == 2:
        buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        return bytes(buf), f"bytes inserted at {pos}"
    if choice == 3:
        del buf[pos:pos + rng.randint(1, 8)]
        return bytes(buf), f"bytes deleted at {pos}"
    return bytes(buf[:pos]), f"cut at {pos} of {len(data)} bytes"


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, list[str]]:
    """One to three mutations of a serialized model; what each did."""
    done = []
    if rng.random() < 0.25:
        data, what = _mutate_bytes(rng, data)
        return data, [what]
    model = onnx.ModelProto()
    model.ParseFromString(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.choices([_mutate_node, _mutate_initializer, _mutate_graph], weights=[6, 2, 1])[0]
        done.append(kind(rng, model))
    return model.SerializeToString(), done


# ---- one case ---------------------------------------------------------------------------------


def run_case(seed: int, folder: str | Path | None = None) -> CaseResult:
    """Import the model of this seed; a crash (anything but a CnnError) is the finding."""
    from cnncomp.emit.cnn import write_program
    from cnncomp.frontend.onnx import read_model

    rng = random.Random(seed)
    base, data = base_model(seed, rng)
    data, mutations = mutate(data, rng)
    result = CaseResult(seed, base, mutations)
    with tempfile.TemporaryDirectory(prefix="cnncomp-onnx-fuzz-", dir=folder) as tmp:
        path = Path(tmp) / f"seed{seed}.onnx"
        path.write_bytes(data)
        try:
            with np.errstate(all="ignore"):
                write_program(read_model(path).graph)  # all of `cnncomp import` but writing files
            result.outcome = "imported"
        except CnnError as err:
            result.outcome, result.message = "refused", str(err)
        except Exception:  # noqa: BLE001 - a crash is what the fuzzer looks for
            result.outcome, result.message = "crashed", traceback.format_exc()
    return result


def mutated_model(seed: int) -> bytes:
    """The mutated model of a seed, to save and reproduce a crash with `cnncomp import`."""
    rng = random.Random(seed)
    _, data = base_model(seed, rng)
    return mutate(data, rng)[0]
