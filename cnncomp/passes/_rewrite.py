"""Small helpers shared by the passes: weights of a layer, single users, removing a layer."""

from __future__ import annotations

import numpy as np

from cnncomp.ir.graph import Layer, LayerGraph
from cnncomp.ops.registry import WeightSpec


def weight(ctx, layer: str, suffix: str) -> np.ndarray:
    return ctx.weights[f"{layer}.{suffix}"]


def set_weight(ctx, layer: Layer, suffix: str, value: np.ndarray, learnable: bool = True) -> None:
    """Store a weight array and keep the layer's WeightSpec in step with its shape."""
    value = np.ascontiguousarray(value, dtype=np.float32)
    ctx.weights[f"{layer.name}.{suffix}"] = value
    old = layer.weights.get(suffix)
    layer.weights[suffix] = WeightSpec(tuple(value.shape), learnable if old is None else old.learnable,
                                       old.init if old else "zeros", old.fan_in if old else 1)


def drop_weights(ctx, layer: Layer) -> None:
    for suffix in layer.weights:
        ctx.weights.pop(f"{layer.name}.{suffix}", None)


def only_user(graph: LayerGraph, name: str) -> str | None:
    """The single layer that reads `name`, or None when there are several (or it is an output)."""
    users = graph.users(name)
    if len(users) != 1 or name in graph.outputs:
        return None
    return users[0]


def bypass(ctx, name: str) -> None:
    """Remove a one-input layer, wiring its users to its input."""
    graph = ctx.graph
    (src,) = graph.input_names(name)
    graph.redirect_users(name, src)
    drop_weights(ctx, graph.layer(name))
    graph.remove_layer(name)


def is_pointwise_conv(layer: Layer) -> bool:
    a = layer.attrs
    return (layer.op == "conv" and all(k == 1 for k in a["kernel"]) and all(s == 1 for s in a["stride"])
            and not any(a["pads"]) and a["groups"] == 1)


def record_alias(graph: LayerGraph, layer: str, now_computes: str) -> None:
    """Note that `layer` now computes what the unoptimized graph's `now_computes` did (for per-layer checks)."""
    aliases = graph.meta.setdefault("aliases", {})
    aliases[layer] = aliases.pop(now_computes, now_computes)
