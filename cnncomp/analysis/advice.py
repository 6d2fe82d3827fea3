"""Lint: warnings about known CNN design mistakes, each with a code and a spec location."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

from cnncomp.errors import Loc
from cnncomp.ir.graph import Layer, LayerGraph
from cnncomp.ops.merge import dim_name
from cnncomp.ops.registry import get_op


def _sliding(layer: Layer) -> bool:
    return layer.op != "input" and get_op(layer.op).sliding_window


@dataclass
class LintWarning:
    code: str
    message: str
    loc: Loc | None
    layer: str

    def to_json(self) -> dict:
        return {"code": self.code, "message": self.message, "line": self.loc.line if self.loc else 0,
                "column": self.loc.col if self.loc else 0, "file": self.loc.file if self.loc else "",
                "layer": self.layer}

    def format(self) -> str:
        where = f"{self.loc}: " if self.loc else ""
        return f"{where}warning[{self.code}]: {self.message}"


def spec_location(graph: LayerGraph, layer: Layer) -> Loc | None:
    """Where to point a user at a layer: its own line if it is in the spec, else the spec's outermost call."""
    spec_file = graph.meta.get("file")
    if layer.loc is None or not layer.chain or layer.loc.file == spec_file:
        return layer.loc
    return layer.chain[0].loc


def lint(graph: LayerGraph) -> list[LintWarning]:
    """All lint warnings of a graph, in layer order."""
    warnings: list[LintWarning] = []
    for rule in (_gridding, _asymmetric_padding, _dropped_border, _redundant_bias, _dense_heavy, _spelled_out):
        warnings += rule(graph)
    order = {name: i for i, name in enumerate(l.name for l in graph.layers())}
    warnings.sort(key=lambda w: order.get(w.layer, 0))
    return warnings


def _warn(graph, layer, code, message) -> LintWarning:
    return LintWarning(code, message, spec_location(graph, layer), layer.name)


# ---- gridding: the hybrid-dilated-convolution rule (Wang et al. 2018) ----------------------

def hdc_violation(rates: list[int], kernel: int) -> str | None:
    """Why a stack of dilated convs with these rates grids, or None if it follows the HDC rule.

    The rule: the rates share no common factor > 1, and M_2 <= K where M_n = r_n and
    M_i = max(M_{i+1} - 2 r_i, M_{i+1} - 2 (M_{i+1} - r_i), r_i).
    """
    common = reduce(math.gcd, rates)
    if common > 1:
        return f"dilation rates {tuple(rates)} share the factor {common}: the stack sees one pixel in {common}"
    m = rates[-1]
    ms = [m]
    for r in reversed(rates[:-1]):
        m = max(m - 2 * r, m - 2 * (m - r), r)
        ms.append(m)
    ms.reverse()  # ms[i] = M_{i+1}
    if len(ms) >= 2 and ms[1] > kernel:
        return (f"dilation rates {tuple(rates)} leave holes: M_2 = {ms[1]} > kernel {kernel} "
                "(hybrid dilated convolution rule)")
    return None


def _previous_conv(graph: LayerGraph, layer: Layer, axis: int) -> Layer | None:
    """The conv before `layer` whose kernel spans spatial axis `axis` on the same sampling grid, or None."""
    preds = graph.inputs_of(layer.name)
    while len(preds) == 1:
        p = preds[0]
        if p.op == "conv" and p.attrs["stride"][axis] > 1:
            return None  # a new resolution: rates before it count on another grid
        if p.op == "conv" and p.attrs["kernel"][axis] > 1:
            return p
        if p.op == "conv" or (p.op != "input" and get_op(p.op).keeps_grid):
            preds = graph.inputs_of(p.name)  # a conv 1 wide along the axis, or a point-wise layer
            continue
        return None
    return None


def _gridding(graph: LayerGraph) -> list[LintWarning]:
    """HDC's rule along each spatial axis: one warning per dilated stack, naming the axes it grids along."""
    found: dict[tuple, list[int]] = {}  # (first dilated layer, group names, why) -> spatial axes
    layers = {}
    for axis in range(max((len(l.shape) - 2 for l in graph.layers() if l.op == "conv"), default=0)):
        convs = [l for l in graph.layers() if l.op == "conv" and l.attrs["kernel"][axis] > 1]
        prev = {c.name: _previous_conv(graph, c, axis) for c in convs}
        has_next = {p.name for p in prev.values() if p is not None}
        for last in convs:
            if last.name in has_next:
                continue
            chain = [last]
            while prev[chain[-1].name] is not None and prev[chain[-1].name].name not in {c.name for c in chain}:
                chain.append(prev[chain[-1].name])
            chain.reverse()
            for group in _rate_groups(chain, axis):
                rates = [c.attrs["dilation"][axis] for c in group]
                if len(group) < 2 or max(rates) == 1:
                    continue
                why = hdc_violation(rates, min(c.attrs["kernel"][axis] for c in group))
                if why:
                    first = next(c for c in group if c.attrs["dilation"][axis] > 1)
                    key = (first.name, group[0].name, group[-1].name, why)
                    layers[key] = first
                    found.setdefault(key, []).append(axis)
    out = []
    for (first_name, head, tail, why), axes in found.items():
        first = layers[(first_name, head, tail, why)]
        rank = len(first.shape)
        where = " and ".join(dim_name(2 + a, rank) for a in axes)
        out.append(_warn(graph, first, "gridding", f"{why} along {where}; layers {head} .. {tail}"))
    return out


def _rate_groups(chain: list[Layer], axis: int) -> list[list[Layer]]:
    """Split a conv stack where the rate drops: HDC's rule holds per repeated group (1, 2, 5, 1, 2, 5)."""
    groups = [[chain[0]]]
    for conv in chain[1:]:
        if conv.attrs["dilation"][axis] < groups[-1][-1].attrs["dilation"][axis]:
            groups.append([])
        groups[-1].append(conv)
    return groups


# ---- padding and strides ------------------------------------------------------------------

def _asymmetric_padding(graph: LayerGraph) -> list[LintWarning]:
    out = []
    for layer in graph.layers():
        if not _sliding(layer) or layer.args.get("p") != "same":
            continue
        pads = layer.attrs["pads"]
        rank = len(pads) // 2
        if pads[:rank] != pads[rank:]:
            even = [k for k in _eff(layer) if k % 2 == 0]
            why = (f"the effective kernel {_eff(layer)} is even" if even else
                   f"stride {list(layer.attrs['stride'])} does not divide the input evenly")
            out.append(_warn(graph, layer, "asymmetric-padding",
                             f"{layer.name}: p=same pads unevenly (begin {list(pads[:rank])}, end "
                             f"{list(pads[rank:])}) because {why}; runtimes and frameworks disagree on where the "
                             "extra row goes: prefer an odd kernel and explicit padding"))
    return out


def _eff(layer: Layer) -> list[int]:
    return [d * (k - 1) + 1 for k, d in zip(layer.attrs["kernel"], layer.attrs.get("dilation", (1,) * 3))]


def _dropped_border(graph: LayerGraph) -> list[LintWarning]:
    out = []
    for layer in graph.layers():
        if not _sliding(layer) or layer.attrs.get("ceil"):
            continue
        in_shape = graph.inputs_of(layer.name)[0].shape
        pads = layer.attrs["pads"]
        rank = len(pads) // 2
        for i in range(rank):
            n, s = in_shape[2 + i], layer.attrs["stride"][i]
            if not isinstance(n, int) or s == 1:
                continue
            eff = _eff(layer)[i]
            out_n = layer.shape[2 + i]
            covered_to = (out_n - 1) * s + eff - 1  # last padded index the windows reach
            unused = (pads[i] + n - 1) - covered_to
            gap = max(s - eff, 0)  # positions every stride skips by design (a 1x1 conv at stride 2)
            if unused > gap:
                out.append(_warn(graph, layer, "dropped-border",
                                 f"{layer.name}: stride {s} with kernel {eff} leaves the last {unused} of {n} input "
                                 f"positions along spatial dim {i} unused; adjust padding or the input size"))
                break
    return out


# ---- parameters ---------------------------------------------------------------------------

def _redundant_bias(graph: LayerGraph) -> list[LintWarning]:
    out = []
    for layer in graph.layers():
        if layer.op not in ("conv", "linear") or not layer.attrs.get("bias"):
            continue
        users = [graph.layer(u) for u in graph.users(layer.name)]
        if users and all(u.op == "bn" for u in users):
            out.append(_warn(graph, layer, "redundant-bias",
                             f"{layer.name}: the bias is cancelled by the batch norm {users[0].name} that follows; "
                             "use bias=false"))
    return out


def _dense_heavy(graph: LayerGraph) -> list[LintWarning]:
    from cnncomp.ir.cost import layer_params

    layers = list(graph.layers())
    total = sum(layer_params(l) for l in layers)
    out = []
    for layer in layers:
        if layer.op == "linear" and total and layer_params(layer) * 2 > total:
            share = layer_params(layer) / total
            out.append(_warn(graph, layer, "dense-heavy",
                             f"{layer.name} holds {share:.0%} of the parameters ({layer_params(layer):,}); "
                             "global average pooling (gap) before a small classifier removes most of them"))
    return out


# ---- a general layer where a named one says it ------------------------------------------------

def _spelled_out(graph: LayerGraph) -> list[LintWarning]:
    """`mean` over every spatial axis kept as 1 is `gap`; `clip(min=0, max=6)` is `relu6`."""
    out = []
    for layer in graph.layers():
        a = layer.attrs
        if layer.op == "mean" and a["keepdims"] and len(layer.shape) > 2 \
                and a["axes"] == tuple(range(2, len(layer.shape))):
            out.append(_warn(graph, layer, "spelled-out",
                             f"{layer.name}: a mean over every spatial axis with keepdims=true is gap; "
                             "write gap (ONNX GlobalAveragePool, and a global receptive field in the summary)"))
        elif layer.op == "clip" and a.get("min") == 0 and a.get("max") == 6:
            out.append(_warn(graph, layer, "spelled-out", f"{layer.name}: clip(min=0, max=6) is relu6; write relu6"))
    return out
