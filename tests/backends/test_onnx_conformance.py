"""The new layers against ONNX's own backend node conformance cases (`onnx.backend.test.case.node`).

Each case is one ONNX node with inputs and expected outputs computed by ONNX's reference. A
case the language can express becomes a one-layer spec (the node's weight inputs become the
layer's weights, its other tensor inputs graph inputs); the PyTorch reference and the emitted
model under ONNX Runtime must both reproduce ONNX's expected outputs. A case the language cannot
express (an attribute with no layer argument, a different channel order) is skipped with the
reason; `test_expressible_case_counts` pins how many cases of each operator are covered, so a
regression that stops expressing one fails.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from onnx import helper, numpy_helper

from cnncomp.emit.onnx import emit_onnx
from cnncomp.errors import CnnError
from cnncomp.frontend.cnn.loader import load_text
from cnncomp.run.reference import run_reference

OP_TYPES = ("ConvTranspose", "DeformConv", "DepthToSpace", "SpaceToDepth", "Pad", "Resize", "Selu", "Mish", "Gelu",
            "HardSigmoid", "HardSwish", "AveragePool", "LpPool", "Flatten", "PRelu", "ReduceMean", "ReduceSum",
            "LayerNormalization", "Transpose", "Clip", "Neg", "Sub", "Div")
ATOL, RTOL = 1e-5, 1e-3  # the cases' data are float32; ONNX's own default rtol is 1e-3

# measured with this file: how many cases of each operator the language expresses (all of them pass)
EXPRESSIBLE = {"ConvTranspose": 11, "DeformConv": 4, "DepthToSpace": 1, "SpaceToDepth": 0, "Pad": 4, "Resize": 21,
               "Selu": 1, "Mish": 0, "Gelu": 2, "HardSigmoid": 2, "HardSwish": 1, "AveragePool": 18, "LpPool": 7,
               "Flatten": 9, "PRelu": 1, "ReduceMean": 6, "ReduceSum": 6, "LayerNormalization": 13, "Transpose": 2,
               "Clip": 3, "Neg": 1, "Sub": 1, "Div": 1}
# of 11, 4, 2, 4, 6, 39, 3, 1, 4, 3, 1, 20, 8, 9, 2, 8, 12, 19, 7, 12, 2, 9, 10 cases (onnx 1.23); the others
# reduce or move the batch axis, have rank 1, integer data, or rank-mismatched broadcasting


def _collect():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        # collect_testcases imports the case modules once, so one call collects all, then filter
        cases = [(case.model.graph.node[0].op_type, case) for case in collect_testcases()
                 if case.kind == "node" and len(case.model.graph.node) == 1]
        return sorted(((op, case) for op, case in cases if op in OP_TYPES), key=lambda pair: pair[1].name)


CASES = _collect()


class Inexpressible(Exception):
    """The case uses something the language has no argument for."""


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _tuple(values) -> str:
    return "(" + ", ".join(str(v) for v in values) + ")" if len(values) > 1 else str(values[0])


def _auto_pads(auto_pad: str, spatial, kernel, stride, dilation) -> list[int] | None:
    """Explicit pads for SAME_UPPER / SAME_LOWER (None for NOTSET, zeros for VALID)."""
    if auto_pad in ("", "NOTSET"):
        return None
    if auto_pad == "VALID":
        return [0] * (2 * len(kernel))
    begins, ends = [], []
    for n, k, s, d in zip(spatial, kernel, stride, dilation):
        total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def _window_args(a: dict, x_shape, kernel) -> list[str]:
    rank = len(kernel)
    stride = a.get("strides", [1] * rank)
    dilation = a.get("dilations", [1] * rank)
    pads = _auto_pads(a.get("auto_pad", b"NOTSET").decode(), x_shape[2:], kernel, stride, dilation)
    pads = pads if pads is not None else a.get("pads", [0] * (2 * rank))
    return [f"k={_tuple(kernel)}", f"s={_tuple(stride)}", f"p={_tuple(pads)}"] + \
        ([f"d={_tuple(dilation)}"] if set(dilation) != {1} else [])  # written only where needed


def translate(op_type: str, node, inputs: list[np.ndarray]) -> tuple[str, dict, dict]:
    """(the stage, the graph inputs {name: array}, the weights {suffix: array}) for one ONNX node."""
    a = _attrs(node)
    x = inputs[0]
    if x.dtype.kind in "iu" and op_type == "Pad":
        x = inputs[0] = x.astype(np.float32)  # data movement: the same positions in float32
    feeds, weights = {"x": x}, {}
    if x.dtype != np.float32:
        raise Inexpressible(f"input dtype {x.dtype}")
    if op_type == "ConvTranspose":
        w = inputs[1]
        rank = w.ndim - 2
        kernel = a.get("kernel_shape", list(w.shape[2:]))
        stride, dilation = a.get("strides", [1] * rank), a.get("dilations", [1] * rank)
        extra = list(a.get("output_padding", [0] * rank))
        auto_pad = a.get("auto_pad", b"NOTSET").decode()
        pads = a.get("pads", [0] * (2 * rank))
        want = a.get("output_shape") or ([n * s for n, s in zip(x.shape[2:], stride)] if "SAME" in auto_pad else None)
        if want is not None:
            want = list(want)[-rank:]
            begins, ends = [], []
            for i in range(rank):
                total = stride[i] * (x.shape[2 + i] - 1) + extra[i] + dilation[i] * (kernel[i] - 1) + 1 - want[i]
                if total < 0:  # a longer output than the kernel reaches: output_padding at the end
                    extra[i] -= total
                    total = 0
                small, large = total // 2, total - total // 2
                begins.append(small if auto_pad == "SAME_UPPER" else large)
                ends.append(large if auto_pad == "SAME_UPPER" else small)
            pads = begins + ends
        group = a.get("group", 1)
        weights["weight"] = w
        if len(inputs) > 2:
            weights["bias"] = inputs[2]
        args = [str(w.shape[1] * group), f"k={_tuple(kernel)}", f"s={_tuple(stride)}", f"p={_tuple(pads)}",
                f"output_padding={_tuple(extra)}", f"d={_tuple(dilation)}", f"g={group}",
                f"bias={'true' if len(inputs) > 2 else 'false'}"]
        if set(extra) == {0}:
            args.remove(f"output_padding={_tuple(extra)}")
        return f"conv_transpose({', '.join(args)})", feeds, weights
    if op_type == "DeformConv":
        w, offsets = inputs[1], inputs[2]
        kernel = a.get("kernel_shape", list(w.shape[2:]))
        rank = len(kernel)
        group = a.get("group", 1)
        weights["weight"] = w
        has_bias = len(inputs) > 3 and inputs[3] is not None and inputs[3].size
        if has_bias:
            weights["bias"] = inputs[3]
        feeds["off"] = offsets
        args = ["off", str(w.shape[0]), f"k={_tuple(kernel)}", f"s={_tuple(a.get('strides', [1] * rank))}",
                f"p={_tuple(a.get('pads', [0] * (2 * rank)))}", f"d={_tuple(a.get('dilations', [1] * rank))}",
                f"g={group}", f"offset_groups={a.get('offset_group', 1)}", f"bias={'true' if has_bias else 'false'}"]
        if len(inputs) > 4:
            feeds["m"] = inputs[4]
            args.append("mask=m")
        return f"deform_conv({', '.join(args)})", feeds, weights
    if op_type == "DepthToSpace":
        if a.get("mode", b"DCR") != b"CRD":
            raise Inexpressible("DepthToSpace mode DCR: pixel_shuffle is PyTorch's order, CRD")
        return f"pixel_shuffle({a['blocksize']})", feeds, weights
    if op_type == "SpaceToDepth":
        raise Inexpressible("SpaceToDepth orders channels (block, C); pixel_unshuffle is PyTorch's (C, block)")
    if op_type == "Pad":
        mode = a.get("mode", b"constant").decode()
        pads = inputs[1].tolist()
        if len(inputs) > 3 and inputs[3] is not None:
            raise Inexpressible("Pad with axes")
        rank = x.ndim
        if any(pads[i] or pads[i + rank] for i in (0, 1)) or min(pads) < 0:
            raise Inexpressible("padding of the batch or channel dims, or negative padding")
        value = float(inputs[2]) if len(inputs) > 2 and inputs[2] is not None and inputs[2].size else 0.0
        spatial = pads[2:rank] + pads[rank + 2:]
        mode = {"edge": "replicate", "wrap": "circular"}.get(mode, mode)
        extra = f", value={value!r}" if mode == "constant" else f", mode=\"{mode}\""
        return f"pad({_tuple(spatial)}{extra})", feeds, weights
    if op_type == "Resize":
        return _resize(a, inputs), feeds, weights
    if op_type == "HardSigmoid":
        return f"hardsigmoid(alpha={a.get('alpha', 0.2)!r}, beta={a.get('beta', 0.5)!r})", feeds, weights
    if op_type in ("PRelu", "ReduceMean", "ReduceSum", "LayerNormalization", "Transpose", "Clip", "Neg", "Sub",
                   "Div"):
        return _issue17_layer(op_type, a, inputs, feeds, weights)
    if op_type == "Selu":
        defaults = {"Selu": {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805}}[op_type]
        onnx_defaults = {"Selu": {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875}}[op_type]
        for key, value in defaults.items():
            if not math.isclose(a.get(key, onnx_defaults[key]), value, rel_tol=1e-6):
                raise Inexpressible(f"{op_type} {key}={a.get(key, onnx_defaults[key])} (the layer has PyTorch's {value})")
        return op_type.lower(), feeds, weights
    if op_type in ("Mish", "HardSwish"):
        return op_type.lower(), feeds, weights
    if op_type == "Gelu":
        approximate = a.get("approximate", b"none").decode()
        return "gelu" if approximate == "none" else f"gelu(approximate=\"{approximate}\")", feeds, weights
    if op_type in ("AveragePool", "LpPool"):
        kernel = a["kernel_shape"]
        args = _window_args(a, x.shape, kernel) + (["ceil=true"] if a.get("ceil_mode") else [])
        if op_type == "AveragePool":
            count_pad = ["count_pad=true"] if a.get("count_include_pad") else []
            return "avgpool(" + ", ".join(args + count_pad) + ")", feeds, weights
        return "lppool(" + ", ".join(args + [f"norm={a.get('p', 2)}"]) + ")", feeds, weights
    if op_type == "Flatten":
        return f"flatten(axis={a.get('axis', 1)})", feeds, weights
    raise Inexpressible(op_type)


def _issue17_layer(op_type: str, a: dict, inputs: list, feeds: dict, weights: dict) -> tuple[str, dict, dict]:
    """The layers of issue 17: prelu(shape=), mean, sum, layer_norm, permute, clip, neg, sub, div."""
    x = inputs[0]
    if op_type == "PRelu":
        slope = np.asarray(inputs[1], np.float32)
        while slope.ndim >= x.ndim and slope.shape[0] == 1:  # a leading batch axis of 1
            slope = slope.reshape(slope.shape[1:])
        weights["weight"] = slope
        return f"prelu(shape={_tuple(list(slope.shape) or [1])})", feeds, weights
    if op_type in ("ReduceMean", "ReduceSum"):
        axes = inputs[1] if len(inputs) > 1 and inputs[1] is not None else a.get("axes")
        if axes is None or not len(axes):
            raise Inexpressible("a reduction over every axis, the batch too")
        keep = "true" if a.get("keepdims", 1) else "false"
        return f"{op_type[6:].lower()}(axes={_tuple(list(map(int, axes)))}, keepdims={keep})", feeds, weights
    if op_type == "LayerNormalization":
        axis = a.get("axis", -1) % x.ndim
        weights["weight"] = inputs[1]
        weights["bias"] = inputs[2] if len(inputs) > 2 and inputs[2] is not None else np.zeros_like(inputs[1])
        return f"layer_norm(axes={_tuple(list(range(axis, x.ndim)))}, eps={a.get('epsilon', 1e-5)!r})", feeds, weights
    if op_type == "Transpose":
        perm = a.get("perm", list(reversed(range(x.ndim))))
        return f"permute({_tuple(list(perm))})", feeds, weights
    if op_type == "Clip":
        bounds = [f"{k}={float(v)!r}" for k, v in zip(("min", "max"), inputs[1:]) if v is not None and v.size]
        return f"clip({', '.join(bounds)})" if bounds else "clip", feeds, weights
    if op_type == "Neg":
        return "neg", feeds, weights
    if inputs[1].dtype != np.float32:
        raise Inexpressible(f"input dtype {inputs[1].dtype}")
    feeds["z"] = inputs[1]
    return f"{op_type.lower()}(z)", feeds, weights


def _resize(a: dict, inputs: list) -> str:
    x = inputs[0]
    if x.ndim < 3:
        raise Inexpressible("a rank-2 input")
    if a.get("antialias") or a.get("keep_aspect_ratio_policy", b"stretch") != b"stretch":
        raise Inexpressible("antialias or keep_aspect_ratio_policy")
    if a.get("exclude_outside"):
        raise Inexpressible("exclude_outside")
    mode = a.get("mode", b"nearest").decode()
    coords = a.get("coordinate_transformation_mode", b"half_pixel").decode()
    scales = inputs[2] if len(inputs) > 2 and inputs[2] is not None and inputs[2].size else None
    sizes = inputs[3] if len(inputs) > 3 and inputs[3] is not None and inputs[3].size else None
    if a.get("axes"):  # scales or sizes for some axes only: the others keep their size
        full_scales, full_sizes = [1.0] * x.ndim, list(x.shape)
        for i, axis in enumerate(a["axes"]):
            if scales is not None:
                full_scales[axis] = scales[i]
            else:
                full_sizes[axis] = sizes[i]
        scales = np.array(full_scales) if scales is not None else None
        sizes = np.array(full_sizes) if sizes is not None else None
    if scales is not None and list(scales[:2]) != [1, 1] or sizes is not None and list(sizes[:2]) != list(x.shape[:2]):
        raise Inexpressible("resizing the batch or channel dims")
    out = list(sizes[2:]) if sizes is not None else [math.floor(n * s) for n, s in zip(x.shape[2:], scales[2:])]
    rounding = a.get("nearest_mode", b"round_prefer_floor").decode()
    if mode == "nearest" and coords == "asymmetric" and rounding == "floor":
        args = []
    elif mode in ("nearest", "linear") and coords in ("asymmetric", "half_pixel", "pytorch_half_pixel",
                                                      "half_pixel_symmetric"):
        args = ([f"mode=\"{mode}\""] if mode != "nearest" else []) + [f"coordinates=\"{coords}\""] \
            + ([f"rounding=\"{rounding}\""] if mode == "nearest" else [])
    elif mode == "nearest":
        raise Inexpressible(f"nearest with {coords} coordinates")
    else:
        if mode == "cubic" and not math.isclose(a.get("cubic_coeff_a", -0.75), -0.75):
            raise Inexpressible(f"cubic_coeff_a={a.get('cubic_coeff_a')} (PyTorch's is -0.75)")
        if coords == "pytorch_half_pixel" and min(out) > 1:
            coords = "half_pixel"  # the same unless an output size is 1
        if coords not in ("half_pixel", "align_corners"):
            raise Inexpressible(f"{coords} coordinates")
        if coords == "align_corners" and scales is not None and any(n * s != int(n * s)
                                                                    for n, s in zip(x.shape[2:], scales[2:])):
            raise Inexpressible("align_corners with a scale that does not give a whole size: ONNX aligns to the "
                                "unrounded n * scale, F.interpolate to the output size")
        args = [f"mode=\"{mode}\""] + (["align_corners=true"] if coords == "align_corners" else [])
    if sizes is not None:
        return f"upsample(size={_tuple([int(s) for s in sizes[2:]])}, {', '.join(args)})".replace(", )", ")")
    return f"upsample(scale={_tuple([float(s) for s in scales[2:]])}, {', '.join(args)})".replace(", )", ")")


def _case_inputs(case) -> tuple:
    graph = case.model.graph
    inputs, outputs = case.data_sets[0]
    names = [i.name for i in graph.input]
    node = graph.node[0]
    by_name = dict(zip(names, inputs))
    for init in graph.initializer:
        by_name[init.name] = numpy_helper.to_array(init)
    ordered = [by_name.get(n) if n else None for n in node.input]
    return node, ordered, outputs


def _build(op_type, case):
    """(stage, graph, feeds, weights, expected output) of a case, or Inexpressible."""
    node, inputs, outputs = _case_inputs(case)
    stage, feeds, weights = translate(op_type, node, inputs)
    decls = "".join(f"input {name}: [{', '.join(map(str, array.shape))}]\n" for name, array in feeds.items())
    text = f"network case\n{decls}y = x -> {stage} as layer\noutput y\n"
    try:
        graph = load_text(text, "case.cnn")
    except CnnError as err:
        raise Inexpressible(f"{stage}: {err}") from None
    weights = {f"layer.{k}": np.asarray(v, np.float32) for k, v in weights.items()}
    return stage, graph, feeds, weights, np.asarray(outputs[0]).astype(np.float32)


@pytest.mark.parametrize("op_type,case", CASES, ids=[c.name for _, c in CASES])
def test_conformance_case(op_type, case, helpers):
    try:
        stage, graph, feeds, weights, want = _build(op_type, case)
    except Inexpressible as why:
        pytest.skip(f"not expressible in the language: {why}")
    got = run_reference(graph, weights, feeds)["y"]
    assert got.shape == want.shape, f"{stage}: reference shape {got.shape}, ONNX {want.shape}"
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL, err_msg=f"{stage}: reference vs ONNX")
    model = emit_onnx(graph, weights, opset=17)
    helpers.assert_valid_onnx(model)
    got = helpers.ort_run(model, feeds)["y"]
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL, err_msg=f"{stage}: ONNX Runtime vs ONNX")


def test_expressible_case_counts():
    counts = dict.fromkeys(OP_TYPES, 0)
    for op_type, case in CASES:
        try:
            _build(op_type, case)
        except Inexpressible:
            continue
        counts[op_type] += 1
    assert counts == EXPRESSIBLE
