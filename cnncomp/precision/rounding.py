"""Weight rounding for int8 that minimises each layer's output error (`--weight-rounding gptq`).

Rounding every weight to its nearest int8 level minimises the error of each weight, not of the layer's
output: the errors of the weights that meet the same input add up. AdaRound (Nagel et al. 2020) learns,
per weight, whether to round up or down so that the layer's output on calibration data moves least.
This module finds such an up/down choice without gradient descent, as GPTQ / Optimal Brain Quantization
(Frantar et al. 2022) do: for each conv/linear layer, with X its float32 input (im2col patches for a conv,
a sample of positions), the output error ||(W - Q) X^T||^2 is a quadratic form in the Hessian H = X^T X;
the weights of each output channel are rounded one input column at a time, and the rounding error of a
column is spread over the columns not yet rounded through H's Cholesky factor, so that later choices
compensate it. Unlike GPTQ, each weight may only go to the level just below or just above
its float value (AdaRound's search space): every weight stays within one step of nearest rounding, and
the QDQ model's per-channel scales and zero points are kept as ONNX Runtime's quantizer set them.

Closed form and one pass over the calibration data: about as fast as bias correction (no training loop).
It rewrites only the int8 weight initializers of the QDQ model; bias correction, applied after it, then
measures the shift of the new weights. Grouped and depthwise convs are handled per group (a depthwise
3x3 channel is 9 weights with its own 9x9 Hessian). Conv1d/3d and anything else keep nearest rounding.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from cnncomp.onnx_graph import attrs_of

MODES = ("nearest", "gptq")
DEFAULT_MODE = "nearest"
MAX_SAMPLES = 32  # calibration samples whose layer inputs make the Hessians
ROWS_PER_LAYER = 4096  # im2col rows (output positions) per layer over those samples: H costs rows * D^2
DAMPING = 0.01  # of the mean diagonal of H, added to it: keeps H invertible where inputs are collinear
BLOCK = 128  # columns rounded between full updates of the remaining ones (the result is the same)
# up to this many columns a layer is rounded in float64 (its factorization is at most ~1e9 operations); wider
# ones in float32 as GPTQ does, where float64 takes 2-4x as long (ResNet-50's 4608-column convs: seconds each)
FLOAT64_COLUMNS = 1024


def _layers(quantized: onnx.ModelProto, float_model: onnx.ModelProto):
    """(int8 node, float node, DequantizeLinear of its weight, axis) for each Conv (2-D) / Gemm whose weight
    the QDQ model dequantizes from an int8 initializer and whose float weight is an initializer."""
    from cnncomp.precision.bias_correction import quantized_layers

    inits = {t.name for t in quantized.graph.initializer}
    float_inits = {t.name for t in float_model.graph.initializer}
    dq_of = {n.output[0]: n for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    for q, f in quantized_layers(quantized, float_model):
        dq = dq_of.get(q.input[1])
        if dq is None or dq.input[0] not in inits or f.input[1] not in float_inits:
            continue
        if q.op_type == "Conv" and (attrs_of(q).get("auto_pad", "NOTSET") != "NOTSET"):
            continue
        yield q, f, dq


def _patches(x: np.ndarray, node: onnx.NodeProto, groups: int, rng: np.random.Generator,
             rows: int) -> np.ndarray | None:
    """A conv's input as im2col rows per group [G, rows, C/G * kh * kw] at up to `rows` output positions
    drawn at random (gathered directly, not the whole im2col), a Gemm's as [1, N, D]."""
    attrs = attrs_of(node)
    if node.op_type == "Gemm":
        if x.ndim != 2:
            return None
        return (x.T if attrs.get("transA", 0) else x)[None]
    if x.ndim != 4 or "kernel_shape" not in attrs:
        return None
    (kh, kw), pads = attrs["kernel_shape"], attrs.get("pads", [0, 0, 0, 0])
    (sh, sw), (dh, dw) = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    out_h, out_w = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1, (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    total = x.shape[0] * out_h * out_w
    if total <= 0:
        return None
    pick = rng.choice(total, rows, replace=False) if total > rows else np.arange(total)
    n, rest = np.divmod(pick, out_h * out_w)
    oh, ow = np.divmod(rest, out_w)
    ih = oh[:, None] * sh + np.arange(kh) * dh  # [R, kh]
    iw = ow[:, None] * sw + np.arange(kw) * dw  # [R, kw]
    rows = x[n[:, None, None], :, ih[:, :, None], iw[:, None, :]]  # [R, kh, kw, C]
    rows = rows.transpose(0, 3, 1, 2).reshape(len(pick), -1)  # C, kh, kw order: the weight's
    return rows.reshape(len(pick), groups, -1).transpose(1, 0, 2)


def layer_hessians(float_model: onnx.ModelProto, layers: list, calibration: dict, batch: int = 1,
                   seed: int = 0, taps=None) -> dict[str, np.ndarray]:
    """{node: H = sum of X^T X per group [G, D, D], float32; only its upper triangle (`gram`)} of each layer's
    float32 input on the calibration data (`taps`: the model's float_taps.FloatTaps)."""
    from cnncomp.passes.budget import batches
    from cnncomp.precision.float_taps import FloatTaps

    rng = np.random.default_rng(seed)
    inputs = {i.name for i in float_model.graph.input}
    names = list(dict.fromkeys(f.input[0] for _, f, _ in layers if f.input[0] not in inputs))
    taps = taps or FloatTaps(float_model)
    gathered: dict[str, list[np.ndarray]] = {}
    skipped: set[str] = set()
    calibration = {k: v[:max(batch, MAX_SAMPLES // batch * batch)] for k, v in calibration.items()}
    runs = -(-len(next(iter(calibration.values()))) // batch)
    for feeds in batches(calibration, batch):
        values = taps.run(feeds, names) if names else {}
        for q, f, _ in layers:
            if q.name in skipped:
                continue
            x = feeds[f.input[0]] if f.input[0] in inputs else values[f.input[0]]
            groups = attrs_of(q).get("group", 1) if q.op_type == "Conv" else 1
            rows = _patches(np.asarray(x, np.float32), q, groups, rng, -(-ROWS_PER_LAYER // runs))
            if rows is None:
                skipped.add(q.name)
                gathered.pop(q.name, None)
                continue
            gathered.setdefault(q.name, []).append(rows)
    # one product per layer over the rows of all runs (at most ROWS_PER_LAYER), float32 as GPTQ: per run, a
    # layer4 3x3 conv of ResNet-50 has 49 rows against its 4608 columns, and 12 thin products each writing
    # the whole 4608 x 4608 H cost several times one product
    return {name: gram(np.concatenate(parts, axis=1)) for name, parts in gathered.items()}


GRAM_BLOCK = 1024  # columns of X^T X computed per product: only the blocks on and above the diagonal


def gram(rows: np.ndarray) -> np.ndarray:
    """The upper triangle of X^T X of each group's rows [G, R, D] -> [G, D, D], float32, by torch's BLAS (numpy's,
    OpenBLAS here, took 4.6 s for one 4096 x 4608 product that torch's does in 1.35 s). Only the blocks on and
    above the diagonal are computed, 20-30% fewer operations on the widest layers (ResNet-50's 4608 columns);
    below them the matrix holds zeros: `round_columns` factorizes H from its upper triangle alone, and mirroring
    it took a fifth of this function's time."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(rows, np.float32))
    d = x.shape[2]
    if d <= GRAM_BLOCK:
        return torch.bmm(x.transpose(1, 2), x).numpy()
    out = torch.zeros(x.shape[0], d, d)
    for i in range(0, d, GRAM_BLOCK):
        torch.bmm(x[:, :, i:i + GRAM_BLOCK].transpose(1, 2), x[:, :, i:], out=out[:, i:i + GRAM_BLOCK, i:])
    return out.numpy()


def round_columns(w: np.ndarray, hessian, qmin: float = -np.inf, qmax: float = np.inf,
                  dtype: str | None = None) -> np.ndarray:
    """Integer levels q for weights `w` (in units of their step) [G, M, D], each the floor or the ceiling of its
    weight within [qmin, qmax], rounded one column at a time, the last column first, the error of each spread over
    the columns not yet rounded (GPTQ's update), so that ||(w - q) X^T||^2 with X^T X = H stays small. `hessian`:
    H [G, D, D], of which only the upper triangle is read, or a list of such arrays to be rounded together (the
    groups of several layers of one shape).

    GPTQ rounds the columns first to last with the upper factor U of H^-1 (U^T U = H^-1): H^-1 and then its
    factorization. Rounded last to first, the same update comes from the Cholesky factor of H itself
    (R^T R = H, R upper; R is GPTQ's U of the columns in reverse order, inverted): column k is rounded at
        w_k + sum_{c > k} (w_c - q_c) R[k, c] / R[k, k],
    the errors of the columns rounded before it against their own (unmoved) weights. One factorization replaces
    GPTQ's inverse and second factorization (on ResNet-50 they took 60% more time than the factorization alone).

    GPTQ's lazy blocked form: within a block of BLOCK columns the errors go only to the block's own columns; the
    columns before the block get them all at once (one matrix product per block), which gives the same result as
    updating every column after each one. In `dtype`: by default float64 up to FLOAT64_COLUMNS columns, float32
    (as GPTQ) above; a Hessian float32 cannot factorize is factorized in float64."""
    import torch

    dtype = dtype or ("float64" if np.shape(w)[2] <= FLOAT64_COLUMNS else "float32")
    kind = {"float32": torch.float32, "float64": torch.float64}[dtype]
    parts = hessian if isinstance(hessian, (list, tuple)) else [hessian]
    h = torch.empty((sum(len(part) for part in parts),) + np.shape(parts[0])[1:], dtype=kind)
    start = 0
    for part in parts:  # one copy, converted on the way (H is the largest array here: 85 MB for 4608 columns)
        h[start:start + len(part)].copy_(torch.from_numpy(np.asarray(part)))
        start += len(part)
    diag = torch.diagonal(h, dim1=1, dim2=2)
    dead = diag <= 0
    diag[dead] = 1.0  # an input that is always zero: any rounding does, nearest is taken
    diag += DAMPING * diag.mean(dim=1, keepdim=True)  # GPTQ's dampening: 1% of the mean diagonal
    try:
        factor = torch.linalg.cholesky(h, upper=True)  # reads H's upper triangle only
    except torch.linalg.LinAlgError:  # not positive definite in float32's precision
        factor = torch.linalg.cholesky(h.double(), upper=True).to(kind)
    del h
    # row k over R[k, k] (a copy of the diagonal: dividing by a view of it in place reads values already divided)
    factor /= torch.diagonal(factor, dim1=1, dim2=2).clone()[:, :, None]
    # columns first ([G, D, M]): a column and the rows of other columns it updates are contiguous
    w = torch.from_numpy(np.asarray(w, np.float64)).to(kind).transpose(1, 2).contiguous()
    low, high = torch.floor(w).clamp_(qmin, qmax), torch.ceil(w).clamp_(qmin, qmax)
    moved = w.clone()  # each column where it is rounded: its weight plus the pull of the errors before it
    q = torch.empty_like(w)
    threads = torch.get_num_threads()
    try:
        for b2 in range(w.shape[1], 0, -BLOCK):
            b1 = max(b2 - BLOCK, 0)
            block, errors = moved[:, b1:b2], torch.empty_like(w[:, b1:b2])
            rb = factor[:, b1:b2, b1:b2]  # rb[:, j, k] = R[j, k] / R[j, j], block-local
            # one thread for the small per-column steps: handing each to a second thread costs more than it
            # saves (twice as long on the shared 2-core machine); all threads for the block's matrix product
            torch.set_num_threads(1)
            for k in range(b2 - b1 - 1, -1, -1):
                chosen = torch.round(block[:, k]).clamp_(low[:, b1 + k], high[:, b1 + k])
                q[:, b1 + k] = chosen
                error = torch.sub(w[:, b1 + k], chosen, out=errors[:, k])
                block[:, :k].baddbmm_(rb[:, :k, k:k + 1], error[:, None, :])
            torch.set_num_threads(threads)
            moved[:, :b1].baddbmm_(factor[:, :b1, b1:b2], errors)
    finally:
        torch.set_num_threads(threads)
    return q.transpose(1, 2).to(torch.float64).numpy()


def rounded_weights(float_model: onnx.ModelProto, quantized: onnx.ModelProto, calibration: dict,
                    batch: int = 1, taps=None) -> dict[str, np.ndarray]:
    """{node: its new int8 weights} for every quantized 2-D Conv / Gemm of `quantized`, rounded up or down
    (never further than one step from nearest) to minimise its output error on `calibration` (`taps`: the float
    model's float_taps.FloatTaps)."""
    layers = list(_layers(quantized, float_model))
    if not layers:
        return {}
    inits = {t.name: t for t in quantized.graph.initializer}
    float_inits = {t.name: t for t in float_model.graph.initializer}
    hessians = layer_hessians(float_model, layers, calibration, batch, taps=taps)
    jobs = {}  # node -> (units, (qmin, qmax), weight shape, axis, dtype), rounded together with same-shaped layers
    for q, f, dq in layers:
        if q.name not in hessians:
            continue
        levels = numpy_helper.to_array(inits[dq.input[0]])
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64).reshape(-1)
        zero = (numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64).reshape(-1)
                if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale))
        weight = numpy_helper.to_array(float_inits[f.input[1]]).astype(np.float64)
        axis = attrs_of(dq).get("axis", 1) % weight.ndim if scale.size > 1 else 0
        # rows = output channels: a conv's axis 0, a Gemm's output axis (the DQ's per-channel axis)
        w = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
        units = w / scale[:, None] + zero[:, None] if scale.size > 1 else w / scale[0] + zero[0]
        info = np.iinfo(levels.dtype)
        groups = hessians[q.name].shape[0]
        jobs[q.name] = (units.reshape(groups, units.shape[0] // groups, -1), (info.min, info.max), weight.shape,
                        axis, levels.dtype)
    # layers of the same shape (ResNet-50's 6 layer3 3x3 convs) as the groups of one call: the per-column
    # steps are Python calls, one for all of them instead of one each
    same_shape: dict[tuple, list[str]] = {}
    for name, job in jobs.items():
        same_shape.setdefault(job[0].shape[1:] + job[1], []).append(name)
    out = {}
    for names in same_shape.values():
        sizes = [jobs[n][0].shape[0] for n in names]
        units = jobs[names[0]][0] if len(names) == 1 else np.concatenate([jobs[n][0] for n in names])
        new = round_columns(units, [hessians[n] for n in names], *jobs[names[0]][1])
        for name, part in zip(names, np.split(new, np.cumsum(sizes)[:-1])):
            _, _, shape, axis, dtype = jobs[name]
            moved = (shape[axis],) + tuple(d for i, d in enumerate(shape) if i != axis)
            out[name] = np.moveaxis(part.reshape(moved), 0, axis).astype(dtype)
    return out


def apply_rounded_weights(quantized: onnx.ModelProto, rounded: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Write each node's rounded int8 weights into its weight initializer (in place); a node not in the model
    (kept in float32) is skipped."""
    inits = {t.name: t for t in quantized.graph.initializer}
    dq_of = {n.output[0]: n for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    for node in quantized.graph.node:
        if node.name not in rounded or len(node.input) < 2 or node.input[1] not in dq_of:
            continue
        tensor = inits.get(dq_of[node.input[1]].input[0])
        if tensor is not None and tuple(tensor.dims) == rounded[node.name].shape:
            tensor.CopyFrom(numpy_helper.from_array(rounded[node.name], tensor.name))
    return quantized
