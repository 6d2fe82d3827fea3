"""Int8 hard-swish for ONNX Runtime's CPU provider: QLinearAdd + QLinearMul instead of a float32 round trip.

ONNX Runtime has no int8 HardSwish kernel. In the QDQ model its quantizer writes, a conv feeding a hard-swish
ends in

    QLinearConv -> DequantizeLinear -> HardSwish (float32) -> QuantizeLinear -> (next QLinearConv)

and the float32 round trip runs unfused over the whole map (three passes, ~2 ns per element here). But

    hardswish(x) = x * clip(x + 3, 0, 6) / 6

and both halves have int8 kernels once written in QDQ form:

    r = Q(DQ(x) + 3; scale 6/255)     QLinearAdd: the 8-bit saturation at 0 and 6 is the clip (uint8: codes 0
                                      and 255, zero point 0; int8: -128 and 127, zero point -128)
    y = Q(DQ(x) * DQ(r); s_out * 6)   QLinearMul: the /6 folded into its output scale, zero point z_out

which ONNX Runtime's QDQ fusion turns into QLinearAdd and QLinearMul (both run in its NHWC int8 layout: no
Transpose is added). `y` has the QuantizeLinear's own scale and zero point, so the next layer's
DequantizeLinear reads it unchanged.

It is not exact: r is rounded to 6/255 before the product, which moves hardswish(x) by at most
|x| * (3/255) / 6 <= 3/510 ~ 0.0059 where the clip is not saturated (|x| < 3; at the saturated ends r is
exactly 0 or 6). A site is rewritten only where that is at most half an output step (`rounding_bound`), so
each output differs from DequantizeLinear -> HardSwish -> QuantizeLinear by at most one code
(tests/test_int8_hardswish.py checks it on all 256 codes); `rewrite_if_within_budget` measures the network
again and keeps the rewrite only within the error budget.

Measured first (tools/bench_int8_hardswish.py; docs/precision.md, "Int8 hard-swish under ONNX Runtime CPU"):
the exact alternative, a 256-entry table as Cast(int32) + Gather, was 3 to 4.5x slower than the float32
round trip (ONNX Runtime's Gather copies one byte per index, and it is not an NHWC op: two Transposes per
table); this decomposition costs 0.75 to 0.91 ns per element against the round trip's 2.0 to 2.1 ns.

Only for ONNX Runtime's CPU target: OpenVINO and TensorRT fuse hard-swish into their own int8 conv.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cnncomp.onnx_graph import consumers, producers

R_CODES = 255  # r = clip(x + 3, 0, 6) over the 8-bit range: scale 6/255


def rounding_bound(scale: float, zero: int, dtype: type) -> float:
    """The most that rounding r moves hardswish(x) for an input of this scale and zero point: half r's step
    over 6 times the largest |x| below 3 that the input's codes reach (r is exact where the clip saturates)."""
    info = np.iinfo(dtype)
    largest = max(abs((info.min - zero) * scale), abs((info.max - zero) * scale))
    return min(3.0, largest) * (6 / R_CODES / 2) / 6


@dataclass
class HardSwishSite:
    """One DequantizeLinear -> HardSwish -> QuantizeLinear chain (the QuantizeLinear: one of the op's readers)."""

    dequantize: onnx.NodeProto
    op: onnx.NodeProto
    quantize: onnx.NodeProto


def _scalar_pair(node: onnx.NodeProto, initializers: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """A Q/DQ node's (scale, zero point) when both are scalar 8-bit-zero-point initializers, else None."""
    if len(node.input) < 3:
        return None
    scale, zero = initializers.get(node.input[1]), initializers.get(node.input[2])
    if scale is None or zero is None or scale.size != 1 or zero.size != 1 or zero.dtype not in (np.uint8, np.int8):
        return None
    return scale, zero


def refusal(dq: onnx.NodeProto | None, op: onnx.NodeProto, readers: list[onnx.NodeProto], outputs: set[str],
            initializers: dict) -> str | None:
    """Why a HardSwish node is not rewritten (None: it is): the rewrite needs an 8-bit per-tensor input, and
    only per-tensor QuantizeLinears reading it, fine enough that rounding r stays within half an output step."""
    if dq is None or dq.op_type != "DequantizeLinear" or _scalar_pair(dq, initializers) is None:
        return "its input is not a per-tensor DequantizeLinear of an 8-bit tensor"
    if op.output[0] in outputs:
        return "it writes a graph output"
    if not readers:
        return "nothing reads it"
    if any(r.op_type != "QuantizeLinear" or _scalar_pair(r, initializers) is None for r in readers):
        return "a node other than a per-tensor QuantizeLinear reads it (it would stay float32 besides)"
    scale_in, zero_in = _scalar_pair(dq, initializers)
    bound = rounding_bound(float(scale_in), int(zero_in), zero_in.dtype.type)
    for q in readers:
        scale, zero = _scalar_pair(q, initializers)
        if zero.dtype != zero_in.dtype:
            return "its QuantizeLinear writes another 8-bit type than its input (QLinearMul takes one)"
        if bound > float(scale) / 2:
            return (f"its output step {float(scale):.3g} is under twice what rounding clip(x + 3, 0, 6) moves "
                    f"it ({bound:.3g}): an output could move by more than one code")
    return None


def _scalars(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """{initializer: value} of the one-element initializers (Q/DQ scales and zero points): all the rewrite reads,
    without converting every weight of the model."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if int(np.prod(t.dims)) == 1}


def hard_swish_sites(model: onnx.ModelProto) -> list[HardSwishSite]:
    """The DQ -> HardSwish -> Q chains of a QDQ model that `refusal` lets through, in graph order."""
    initializers = _scalars(model)
    producer, readers = producers(model), consumers(model)
    outputs = {o.name for o in model.graph.output}
    counts = Counter(n.name for n in model.graph.node)
    unique = {name for name, count in counts.items() if name and count == 1}  # the rewrite finds nodes by name
    sites = []
    for op in model.graph.node:
        if op.op_type != "HardSwish" or op.domain not in ("", "ai.onnx"):
            continue
        dq, qs = producer.get(op.input[0]), readers.get(op.output[0], [])
        if not all(n.name in unique for n in (op, dq, *qs) if n is not None):
            continue
        if refusal(dq, op, qs, outputs, initializers) is None:
            sites += [HardSwishSite(dq, op, q) for q in qs]
    return sites


def _add_mul_nodes(site: HardSwishSite, zero_type: type, out_scale: np.ndarray
                   ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The QDQ nodes (and their constants) of x * clip(x + 3, 0, 6) / 6 for one site, writing its
    QuantizeLinear's output with its zero point and `out_scale` (its scale)."""
    x, x_scale, x_zero = site.dequantize.input[:3]
    q = site.quantize
    name = q.name
    low = np.iinfo(zero_type).min if zero_type is np.int8 else 0  # code of r = 0: the clip's lower end
    constants = [
        numpy_helper.from_array(np.array(3.0, np.float32), f"{name}_hswish_three_scale"),
        numpy_helper.from_array(np.array(low + 1, zero_type), f"{name}_hswish_three"),  # 3.0 = (low + 1 - low) * 3
        numpy_helper.from_array(np.array(6.0 / R_CODES, np.float32), f"{name}_hswish_r_scale"),
        numpy_helper.from_array(np.array(low, zero_type), f"{name}_hswish_r_zero"),
        numpy_helper.from_array(np.asarray(out_scale * np.float32(6.0), np.float32), f"{name}_hswish_out_scale"),
    ]
    three, three_scale, r_scale, r_zero = (f"{name}_hswish_{s}" for s in ("three", "three_scale", "r_scale",
                                                                             "r_zero"))
    out_scale = f"{name}_hswish_out_scale"  # s_out * 6: the product's /6
    return [
        helper.make_node("DequantizeLinear", [x, x_scale, x_zero], [f"{name}_hswish_xa"], name=f"{name}_hswish_dqa"),
        helper.make_node("DequantizeLinear", [three, three_scale, r_zero], [f"{name}_hswish_3"],
                         name=f"{name}_hswish_dq3"),
        helper.make_node("Add", [f"{name}_hswish_xa", f"{name}_hswish_3"], [f"{name}_hswish_x3"],
                         name=f"{name}_hswish_add"),
        helper.make_node("QuantizeLinear", [f"{name}_hswish_x3", r_scale, r_zero], [f"{name}_hswish_rq"],
                         name=f"{name}_hswish_qr"),  # saturating at codes low and low + 255: the clip
        helper.make_node("DequantizeLinear", [f"{name}_hswish_rq", r_scale, r_zero], [f"{name}_hswish_r"],
                         name=f"{name}_hswish_dqr"),
        helper.make_node("DequantizeLinear", [x, x_scale, x_zero], [f"{name}_hswish_xm"], name=f"{name}_hswish_dqm"),
        helper.make_node("Mul", [f"{name}_hswish_xm", f"{name}_hswish_r"], [f"{name}_hswish_y"],
                         name=f"{name}_hswish_mul"),
        helper.make_node("QuantizeLinear", [f"{name}_hswish_y", out_scale, q.input[2]], list(q.output), name=name),
    ], constants


def int8_hard_swish(model: onnx.ModelProto) -> int:
    """Rewrite every DQ -> HardSwish -> Q chain that `refusal` lets through into QLinearAdd + QLinearMul form
    (in place); returns how many QuantizeLinears were replaced."""
    sites = hard_swish_sites(model)
    if not sites:
        return 0
    initializers = _scalars(model)
    by_quantize = {s.quantize.name: s for s in sites}
    replaced = {s.op.name for s in sites}
    nodes, added = [], []
    for node in model.graph.node:
        if node.name in replaced:
            continue
        site = by_quantize.get(node.name)
        if site is None:
            nodes.append(node)
            continue
        new_nodes, constants = _add_mul_nodes(site, initializers[site.dequantize.input[2]].dtype.type,
                                              initializers[node.input[1]])
        nodes += new_nodes
        added += constants
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(added)
    _drop_unread(model, [s.dequantize for s in sites], {i for s in sites for i in s.quantize.input[1:]})
    return len(sites)


def _drop_unread(model: onnx.ModelProto, candidates: list[onnx.NodeProto], constants: set[str]) -> None:
    """Remove the replaced chains' DequantizeLinears that nothing reads any more (another reader may remain),
    then those of `constants` (the replaced QuantizeLinears' scales) that nothing reads."""
    read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    names = {n.name for n in candidates if not any(o in read for o in n.output)}
    kept = [n for n in model.graph.node if n.name not in names]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    read = {i for n in model.graph.node for i in n.input}
    for tensor in [t for t in model.graph.initializer if t.name in constants and t.name not in read]:
        model.graph.initializer.remove(tensor)


def rewrite_if_within_budget(quantized: onnx.ModelProto, probe, report) -> onnx.ModelProto:
    """The chosen QDQ model with its hard-swishes in int8 (`int8_hard_swish`), measured again by `probe`
    (int8.ErrorProbe) and kept when its budget error is within the budget or no worse than before; `report`
    (int8.Int8Report) gets the new errors and a note either way. A model with no site comes back unchanged."""
    if not hard_swish_sites(quantized):  # before copying the whole model
        return quantized
    rewritten = onnx.ModelProto.FromString(quantized.SerializeToString())
    count = int8_hard_swish(rewritten)
    outputs = probe.outputs(rewritten)
    budget_error = probe.budget_error(rewritten, outputs)
    if not budget_error <= 1.0 and not budget_error <= report.budget_error:  # NaN is not within
        report.notes.append(f"int8: hard-swish left in float32 between its Q/DQ nodes: in int8 (QLinearAdd + "
                            f"QLinearMul) the budget error would be {budget_error:.3g}")
        return quantized
    report.budget_error, report.error = budget_error, probe.error(rewritten, outputs)
    report.notes.append(f"int8: {count} hard-swish{'es' if count != 1 else ''} in int8 as QLinearAdd + QLinearMul "
                        "(ONNX Runtime has no int8 HardSwish)")
    return rewritten
