"""Pooling layers: maxpool, avgpool, minpool, lppool, gap, gmp, kmaxpool."""

from __future__ import annotations

from cnncomp.errors import CnnError
from cnncomp.ops.dims import is_symbolic_shape
from cnncomp.ops.registry import (
    Op, Param, Window, as_tuple, compact, padding_arg, positive_ints, register, resolve_padding,
    sliding_window_step, spatial_rank, window_output,
)


def _pool_attrs(op_name: str, args: dict, shape: tuple) -> dict:
    rank = spatial_rank(shape)
    kernel = positive_ints(as_tuple(args["k"], rank, "kernel k"), "kernel k")
    stride = kernel if args.get("s") is None else positive_ints(as_tuple(args["s"], rank, "stride s"), "stride s")
    dilation = positive_ints(as_tuple(args.get("d", 1), rank, "dilation d"), "dilation d")
    pads = resolve_padding(args.get("p", 0), rank, kernel, stride, dilation, shape[2:])
    for i, k in enumerate(kernel):
        eff = dilation[i] * (k - 1) + 1
        if max(pads[i], pads[i + rank]) > eff // 2:
            raise CnnError(f"{op_name}: padding {max(pads[i], pads[i + rank])} is more than half the kernel {eff}")
    return {"kernel": kernel, "stride": stride, "pads": pads, "dilation": dilation, "ceil": bool(args.get("ceil", False))}


def _pool_spec_args(op: Op, attrs: dict) -> dict:
    full = {"k": compact(attrs["kernel"]), "s": compact(attrs["stride"]), "p": padding_arg(attrs["pads"]),
            "ceil": attrs["ceil"], "d": compact(attrs["dilation"]), "count_pad": attrs.get("count_pad"),
            "norm": attrs.get("norm")}
    return {p.name: full[p.name] for p in op.params}


def _pool_shape(op_name: str, attrs: dict, shape: tuple) -> tuple:
    rank = len(attrs["kernel"])
    spatial = tuple(
        window_output(n, k, s, attrs["pads"][i], attrs["pads"][i + rank], d, attrs["ceil"], op_name)
        for i, (n, k, s, d) in enumerate(zip(shape[2:], attrs["kernel"], attrs["stride"], attrs["dilation"]))
    )
    _check_windows_see_input(op_name, attrs, tuple(shape[2:]), spatial)
    return tuple(shape[:2]) + spatial


def _check_windows_see_input(op_name: str, attrs: dict, in_spatial: tuple, out_spatial: tuple) -> None:
    """Every window must read at least one input position: a dilated window can straddle a small
    input with every tap in the padding (a max over nothing is -inf, an average 0/0)."""
    rank = len(attrs["kernel"])
    for i, (n, out) in enumerate(zip(in_spatial, out_spatial)):
        k, s, d, begin = attrs["kernel"][i], attrs["stride"][i], attrs["dilation"][i], attrs["pads"][i]
        if d == 1 or not isinstance(n, int) or not isinstance(out, int):
            continue  # padding is at most half the window: an undilated window always reaches the input
        for o in range(out):
            start = o * s - begin
            if not any(0 <= start + j * d < n for j in range(k)):
                raise CnnError(f"{op_name}: the window at output position {o} of spatial dim {i} reads only "
                               f"padding (kernel {k}, dilation {d}, padding {begin}, {attrs['pads'][i + rank]} "
                               f"on {n} positions); use less padding or dilation")


class _WindowPool(Op):
    """Shared by the sliding-window pools: arguments, shape rule and window from the pool attributes."""

    spatial_only = True
    category = "pool"
    sliding_window = True

    def normalize(self, args, shapes):
        return _pool_attrs(self.name, args, shapes[0])

    def infer_shape(self, attrs, shapes):
        return _pool_shape(self.name, attrs, shapes[0])

    def spec_args(self, attrs):
        return _pool_spec_args(self, attrs)

    def window(self, attrs, shapes):
        return sliding_window_step(attrs)

    def torch_source(self, s):
        args = s.written()
        shape_args = [s.shape, s.arg("k", "init")] + s.keywords(["s", "p", "d", "ceil"])
        return s.function(s.helper(self.name), *args, shape=f"{s.helper('shape_pool')}({', '.join(shape_args)})")


def _pool_onnx_attrs(a: dict, pads: list | None = None, layer=None) -> dict:
    """kernel_shape, strides and pads; with the layer, ceil_mode where its sizes are symbolic (ceil
    mode is then never turned into padding: see _onnx_pool_pads)."""
    attrs = {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"]),
             "pads": list(a["pads"] if pads is None else pads)}
    if layer is not None and a.get("ceil") and is_symbolic_shape(layer.shape[2:]):
        attrs["ceil_mode"] = 1
    return attrs


def _onnx_pool_pads(b, layer, x: str) -> list:
    """ONNX pads for a pooling layer, with ceil mode turned into extra end padding.

    ONNX shape inference (onnx 1.23) sizes ceil-mode outputs without the rule,
    applied by PyTorch and ONNX Runtime, that drops a last window starting in
    the end padding ([N, C, 5, 5], k=2, s=2, p=1: inference says 4, both
    runtimes give 3). Padding the end explicitly (by as much as the last window
    needs) and pooling in floor mode gives the same size everywhere.
    """
    a = layer.attrs
    pads = list(a["pads"])
    if a["ceil"]:
        rank = len(a["kernel"])
        in_spatial = tuple(b.shape(x)[2:])
        if all(isinstance(n, int) for n in in_spatial):
            for i, extra in enumerate(_ceil_extra(in_spatial, a, tuple(layer.shape[2:]))):
                pads[rank + i] += extra
    return pads


def _onnx_pad(b, layer, x: str, pads: list, value: float) -> str:
    """An explicit constant Pad node for ONNX-order spatial pads."""
    rank = len(pads) // 2
    full = [0, 0] + list(pads[:rank]) + [0, 0] + list(pads[rank:])
    return b.node("Pad", [x, b.const_int64(full, layer.name + "/pads"), b.const_scalar(value, layer.dtype)],
                  b.fresh(layer.name + "/padded"), mode="constant")


def _avgpool_wide_pads(b, layer, x: str, pads: list, dilations: dict) -> str:
    """Average pooling whose padding reaches the kernel size (a dilated window), which ONNX Runtime
    refuses: pad with zeros, take the mean over the whole window, and rescale by prod(k) / count,
    the count of each window's positions inside the input (and the spec's padding with count_pad),
    a constant of the static shapes."""
    import numpy as np

    a = layer.attrs
    rank = len(a["kernel"])
    spatial = tuple(b.shape(x)[2:])
    if not all(isinstance(n, int) for n in spatial):
        raise CnnError("avgpool: padding as large as the kernel needs static spatial sizes")
    counted = np.ones(spatial)
    counted_pads = a["pads"] if a["count_pad"] else (0,) * (2 * rank)
    counted = np.pad(counted, [(counted_pads[i], counted_pads[i + rank]) for i in range(rank)], constant_values=1)
    counted = np.pad(counted, [(pads[i] - counted_pads[i], pads[i + rank] - counted_pads[i + rank])
                               for i in range(rank)])
    out = tuple(layer.shape[2:])
    count = np.zeros(out)
    for tap in np.ndindex(*a["kernel"]):
        window = tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                       for t, d, s, o in zip(tap, a["dilation"], a["stride"], out))
        count += counted[window]
    x = _onnx_pad(b, layer, x, pads, 0.0)
    mean = b.node("AveragePool", [x], b.fresh(layer.name + "/window_mean"), count_include_pad=1, **dilations,
                  **_pool_onnx_attrs(a, [0] * len(pads)))
    rescale = b.add_initializer(b.fresh(layer.name + "/rescale"),
                                (np.prod(a["kernel"]) / count).reshape((1, 1) + out).astype(np.dtype(layer.dtype)))
    return b.node("Mul", [mean, rescale], layer.name)


def _ceil_extra(shape_in: tuple, attrs: dict, out_spatial: tuple) -> tuple:
    """Extra end padding that ceil mode needs so that the last window fits."""
    rank = len(attrs["kernel"])
    extra = []
    for i in range(rank):
        eff = attrs["dilation"][i] * (attrs["kernel"][i] - 1) + 1
        need = (out_spatial[i] - 1) * attrs["stride"][i] + eff
        have = shape_in[i] + attrs["pads"][i] + attrs["pads"][i + rank]
        extra.append(max(need - have, 0))
    return tuple(extra)


def _torch_max(x, attrs):
    import torch.nn.functional as F

    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(attrs["kernel"])]
    rank, pads = len(attrs["kernel"]), attrs["pads"]
    if pads[:rank] == pads[rank:] and all(2 * p <= k for p, k in zip(pads, attrs["kernel"])):
        return pool(x, attrs["kernel"], attrs["stride"], pads[:rank], attrs["dilation"], ceil_mode=attrs["ceil"])
    # Asymmetric padding, or more than F.max_pool allows (half the kernel, not of the dilated
    # window): pad with -inf by as much as the last window needs, then pool in floor mode.
    # (Pre-padding and pooling in ceil mode would let the last window start in the end padding.)
    out_spatial = _pool_shape("maxpool", attrs, tuple(x.shape))[2:]
    extra = _ceil_extra(tuple(x.shape[2:]), attrs, out_spatial)
    torch_pads = [p for i in reversed(range(rank)) for p in (pads[i], pads[i + rank] + extra[i])]
    x = F.pad(x, torch_pads, value=float("-inf"))
    return pool(x, attrs["kernel"], attrs["stride"], 0, attrs["dilation"])


def _sum_pool(x, kernel, stride, dilation=1):
    import torch
    import torch.nn.functional as F

    c = x.shape[1]
    ones = torch.ones((c, 1) + tuple(kernel), dtype=x.dtype)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(kernel)]
    return conv(x, ones, None, tuple(stride), 0, dilation, c)


def _dilation_onnx(b, layer, what: str, opset: int) -> dict:
    """The dilations attribute of AveragePool / LpPool, which need a newer opset; none when 1."""
    dilation = layer.attrs["dilation"]
    if all(d == 1 for d in dilation):
        return {}
    b.require_opset(opset, f"{what} with d= (dilations)")
    return {"dilations": list(dilation)}


MAXPOOL_PARAMS = (Param("k", "spatial"), Param("s", "spatial", None), Param("p", "padding", 0),
                  Param("ceil", "bool", False))


@register
class MaxPool(_WindowPool):
    name = "maxpool"
    params = MAXPOOL_PARAMS + (Param("d", "spatial", 1),)
    spatial_only = True
    doc = "max pooling"

    def to_onnx(self, b, layer, inputs, weights):
        a, x = layer.attrs, inputs[0]
        pads = _onnx_pool_pads(b, layer, x)
        if max(pads) >= min(a["kernel"]):
            # ONNX Runtime refuses pads >= kernel (dilated windows allow them): pad with -inf first.
            x, pads = _onnx_pad(b, layer, x, pads, float("-inf")), [0] * len(pads)
        return b.node("MaxPool", [x], layer.name, dilations=list(a["dilation"]), **_pool_onnx_attrs(a, pads, layer))

    def torch_ref(self, attrs, inputs, weights):
        return _torch_max(inputs[0], attrs)


@register
class MinPool(_WindowPool):
    name = "minpool"
    params = (Param("k", "spatial"), Param("s", "spatial", None), Param("p", "padding", 0))
    spatial_only = True
    doc = "min pooling, -maxpool(-x)"

    def to_onnx(self, b, layer, inputs, weights):
        neg = b.node("Neg", [inputs[0]], b.fresh(layer.name + "/neg"))
        pooled = b.node("MaxPool", [neg], b.fresh(layer.name + "/max"), **_pool_onnx_attrs(layer.attrs))
        return b.node("Neg", [pooled], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        return -_torch_max(-inputs[0], attrs)


@register
class AvgPool(_WindowPool):
    name = "avgpool"
    params = MAXPOOL_PARAMS + (Param("count_pad", "bool", False), Param("d", "spatial", 1))
    spatial_only = True
    doc = "average pooling; count_pad counts padded positions in the divisor; d= dilates the window"

    def normalize(self, args, shapes):
        attrs = super().normalize(args, shapes)
        attrs["count_pad"] = bool(args["count_pad"])
        return attrs

    def to_onnx(self, b, layer, inputs, weights):
        # Ceil mode becomes extra end padding (see _onnx_pool_pads). PyTorch never counts that
        # extra in the divisor, even with count_pad; so with count_pad the spec's padding is
        # made explicit zeros (counted as data) and only the extra is left to AveragePool.
        a, x = layer.attrs, inputs[0]
        pads = _onnx_pool_pads(b, layer, x)
        dilations = _dilation_onnx(b, layer, "avgpool", 19)
        if max(pads) >= min(a["kernel"]):
            return _avgpool_wide_pads(b, layer, x, pads, dilations)
        if a["count_pad"] and pads != list(a["pads"]):
            if any(a["pads"]):
                x = _onnx_pad(b, layer, x, list(a["pads"]), 0.0)
            pads = [p - q for p, q in zip(pads, a["pads"])]
            return b.node("AveragePool", [x], layer.name, count_include_pad=0, **dilations,
                          **_pool_onnx_attrs(a, pads, layer))
        return b.node("AveragePool", [x], layer.name, count_include_pad=int(a["count_pad"]), **dilations,
                      **_pool_onnx_attrs(a, pads, layer))

    def torch_ref(self, attrs, inputs, weights):
        # Independent of F.avg_pool: a sum over each window divided by the number of
        # positions it covers (inside the input, or inside input+padding with count_pad).
        import torch
        import torch.nn.functional as F

        x = inputs[0]
        rank = len(attrs["kernel"])
        out_spatial = _pool_shape(self.name, attrs, tuple(x.shape))[2:]
        extra = _ceil_extra(tuple(x.shape[2:]), attrs, out_spatial)
        pads = attrs["pads"]
        torch_pads, mask_pads = [], []
        for i in reversed(range(rank)):
            torch_pads += [pads[i], pads[i + rank] + extra[i]]
            mask_pads += [0, extra[i]]
        ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype)
        if attrs["count_pad"]:
            ones = F.pad(ones, [p for i in reversed(range(rank)) for p in (pads[i], pads[i + rank])], value=1.0)
            mask = F.pad(ones, mask_pads)
        else:
            mask = F.pad(ones, torch_pads)
        total = _sum_pool(F.pad(x, torch_pads), attrs["kernel"], attrs["stride"], attrs["dilation"])
        count = _sum_pool(mask, attrs["kernel"], attrs["stride"], attrs["dilation"])
        return total / count


@register
class LpPool(_WindowPool):
    name = "lppool"
    params = (Param("k", "spatial"), Param("s", "spatial", None), Param("norm", "int", 2), Param("p", "padding", 0),
              Param("d", "spatial", 1), Param("ceil", "bool", False))
    spatial_only = True
    doc = "Lp-norm pooling: (sum |x|^norm)^(1/norm) over each window (padding adds zeros)"

    def normalize(self, args, shapes):
        attrs = super().normalize(args, shapes)
        if args["norm"] < 1:
            raise CnnError(f"lppool: norm must be a positive integer, got {args['norm']}")
        attrs["norm"] = args["norm"]
        return attrs

    def to_onnx(self, b, layer, inputs, weights):
        # Ceil mode is extra end padding (see _onnx_pool_pads): padded zeros add nothing to the sum.
        a = layer.attrs
        x, pads = inputs[0], _onnx_pool_pads(b, layer, inputs[0])
        rank = len(a["kernel"])
        if any(max(pads[i], pads[i + rank]) >= k for i, k in enumerate(a["kernel"])):
            # ONNX Runtime wants pads below the (undilated) kernel; zeros padded first are the same sum
            x, pads = _onnx_pad(b, layer, x, pads, 0.0), [0] * len(pads)
        return b.node("LpPool", [x], layer.name, p=a["norm"], **_dilation_onnx(b, layer, "lppool", 18),
                      **_pool_onnx_attrs(a, pads, layer))

    def torch_ref(self, attrs, inputs, weights):
        import torch.nn.functional as F

        x, p = inputs[0], attrs["norm"]
        rank = len(attrs["kernel"])
        out_spatial = _pool_shape(self.name, attrs, tuple(x.shape))[2:]
        extra = _ceil_extra(tuple(x.shape[2:]), attrs, out_spatial)
        pads = attrs["pads"]
        torch_pads = [v for i in reversed(range(rank)) for v in (pads[i], pads[i + rank] + extra[i])]
        powered = F.pad(x.abs() ** p, torch_pads)
        return _sum_pool(powered, attrs["kernel"], attrs["stride"], attrs["dilation"]) ** (1.0 / p)


class _GlobalPool(Op):
    spatial_only = True
    category = "pool"

    def infer_shape(self, attrs, shapes):
        return tuple(shapes[0][:2]) + (1,) * (len(shapes[0]) - 2)

    def window(self, attrs, shapes):
        rank = len(shapes[0]) - 2
        return Window((1.0,) * rank, (1.0,) * rank, (True,) * rank)

    def torch_source(self, s):
        return s.function(s.helper(self.name), *s.written(), shape=f"{s.helper('shape_global_pool')}({s.shape})")


@register
class GlobalAvgPool(_GlobalPool):
    name = "gap"
    doc = "global average pooling to 1 per spatial dim"

    def to_onnx(self, b, layer, inputs, weights):
        return b.node("GlobalAveragePool", [inputs[0]], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        x = inputs[0]
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@register
class GlobalMaxPool(_GlobalPool):
    name = "gmp"
    doc = "global max pooling to 1 per spatial dim"

    def to_onnx(self, b, layer, inputs, weights):
        return b.node("GlobalMaxPool", [inputs[0]], layer.name)

    def torch_ref(self, attrs, inputs, weights):
        x = inputs[0]
        return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@register
class KMaxPool(Op):
    name = "kmaxpool"
    params = (Param("k", "int"),)
    category = "pool"
    spatial_only = True
    doc = "k-max pooling over the last spatial axis, keeping the original order"

    def normalize(self, args, shapes):
        n = shapes[0][-1]
        k = args["k"]
        if k < 1:
            raise CnnError(f"kmaxpool: k must be positive, got {k}")
        if isinstance(n, int) and k > n:
            raise CnnError(f"kmaxpool: k={k} is larger than the last axis ({n})")
        return {"k": k}

    def infer_shape(self, attrs, shapes):
        return tuple(shapes[0][:-1]) + (attrs["k"],)

    def window(self, attrs, shapes):
        rank = len(shapes[0]) - 2
        return Window((1.0,) * rank, (1.0,) * rank, (False,) * (rank - 1) + (True,))

    def to_onnx(self, b, layer, inputs, weights):
        k = b.const_int64([layer.attrs["k"]], layer.name + "/k")
        _, idx = b.node("TopK", [inputs[0], k], [b.fresh(layer.name + "/values"), b.fresh(layer.name + "/idx")],
                        axis=-1, largest=1, sorted=1)
        _, ordered = b.node("TopK", [idx, k], [b.fresh(layer.name + "/sorted"), b.fresh(layer.name + "/order")],
                            axis=-1, largest=0, sorted=1)
        positions = b.node("GatherElements", [idx, ordered], b.fresh(layer.name + "/positions"), axis=-1)
        return b.node("GatherElements", [inputs[0], positions], layer.name, axis=-1)

    def torch_ref(self, attrs, inputs, weights):
        import torch

        # Equal values: the lower position wins, as ONNX TopK says (torch.topk leaves ties open,
        # and after a padded conv or a relu ties are common).
        x = inputs[0]
        idx = torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :attrs["k"]]
        idx, _ = torch.sort(idx, dim=-1)
        return torch.gather(x, -1, idx)

    def torch_source(self, s):
        return s.function(s.helper("kmaxpool"), *s.written(), shape=f"{s.shape}[:-1] + ({s.arg('k', 'init')},)")
