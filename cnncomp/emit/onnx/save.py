"""Saving a model: atomically, streamed piece by piece, weights in an external file past 2 GB."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import onnx

from cnncomp.fileio import removed_on_termination
from cnncomp.ir.weights import atomic_write

EXTERNAL_DATA_LIMIT = 2**31 - 2**26  # bytes of weights above which save_onnx uses external data


def weights_nbytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers."""
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save_onnx(model: onnx.ModelProto, path: str | Path, external_data: bool | None = None) -> None:
    """Write a model atomically; weights go to `PATH.data` when they exceed 2 GB (or when asked)."""
    path = Path(path)
    if external_data is None:
        external_data = weights_nbytes(model) > EXTERNAL_DATA_LIMIT
    if external_data:
        _save_external(model, path)
    else:
        atomic_write(path, lambda tmp: _write_streamed(model, tmp))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload_len: int) -> bytes:
    """The key and length of a length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(payload_len)


_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9  # field numbers in onnx.proto


def _is_repeated(descriptor) -> bool:
    flag = getattr(descriptor, "is_repeated", None)  # protobuf >= 6; older ones only have .label
    if flag is None:
        return descriptor.label == descriptor.LABEL_REPEATED
    return flag() if callable(flag) else bool(flag)


def _without(message, empty, skip: str):
    """A copy of a protobuf message with every set field but one (that one is not copied at all)."""
    for descriptor, value in message.ListFields():
        if descriptor.name == skip:
            continue
        target = getattr(empty, descriptor.name)
        if _is_repeated(descriptor):
            target.extend(value)
        elif descriptor.type == descriptor.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(empty, descriptor.name, value)
    return empty


def _write_streamed(model: onnx.ModelProto, path: str) -> None:
    """Write a model without serializing it as one message: the model and graph without their
    initializers first, then each initializer as its own `graph { initializer { ... } }` piece,
    its raw bytes written straight out. Protobuf merges repeated fields of concatenated messages,
    so the file parses to the same model (tests check it), and a 100 MB model is not copied
    into one 100 MB buffer first."""
    graph = model.graph
    head = _without(model, onnx.ModelProto(), "graph")
    skeleton = _without(graph, onnx.GraphProto(), "initializer")
    skeleton_bytes = skeleton.SerializeToString()
    with open(path, "wb") as f:
        f.write(head.SerializeToString())
        f.write(_field(_MODEL_GRAPH, len(skeleton_bytes)) + skeleton_bytes)
        for tensor in graph.initializer:
            raw = tensor.raw_data
            if raw:
                meta_bytes = _without(tensor, onnx.TensorProto(), "raw_data").SerializeToString()
                tensor_len = len(meta_bytes) + len(_field(_TENSOR_RAW_DATA, len(raw))) + len(raw)
                prefix = _field(_GRAPH_INITIALIZER, tensor_len)
                f.write(_field(_MODEL_GRAPH, len(prefix) + tensor_len) + prefix + meta_bytes
                        + _field(_TENSOR_RAW_DATA, len(raw)))
                f.write(raw)
            else:
                tensor_bytes = tensor.SerializeToString()
                prefix = _field(_GRAPH_INITIALIZER, len(tensor_bytes))
                f.write(_field(_MODEL_GRAPH, len(prefix) + len(tensor_bytes)) + prefix + tensor_bytes)


def _save_external(model: onnx.ModelProto, path: Path) -> None:
    """Save with the weights in `PATH.data`: both written under temporary names, then moved, data first."""
    from onnx.external_data_helper import convert_model_to_external_data, uses_external_data

    location = path.name + ".data"
    data_tmp = path.with_name(f".{location}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    convert_model_to_external_data(copy, all_tensors_to_one_file=True, location=data_tmp.name, size_threshold=1024)

    def write(tmp: str) -> None:
        onnx.save_model(copy, tmp)  # also writes the tensors to data_tmp, beside tmp
        for tensor in copy.graph.initializer:
            if uses_external_data(tensor):
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = location
        Path(tmp).write_bytes(copy.SerializeToString())
        if data_tmp.exists():  # absent when every tensor is under the 1 KiB threshold
            os.replace(data_tmp, path.with_name(location))

    try:
        with removed_on_termination(data_tmp):
            atomic_write(path, write)
    finally:
        if data_tmp.exists():
            data_tmp.unlink()
