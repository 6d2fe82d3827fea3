"""equalize: cross-layer equalization of conv channels (Nagel et al. 2019, data-free quantization). Exact.

A *stream* is a set of tensors whose channel c is scaled by the same positive factor wherever it goes:
the outputs of convs (its producers), joined by adds and passed through ops f that commute with a
positive per-channel factor (f(x / s) = f(x) / s: relu, leaky_relu, prelu, identity, dropout, max and
average pooling), and read by convs (its consumers). Dividing output channel c of every producer
(weights and bias) by s[c] and multiplying every consumer weight that reads channel c by s[c] leaves the
network's function unchanged (zero padding scales to zero too). With r1[c] the largest |weight| of
output channel c over the producers and r2[c] the largest |weight| reading channel c over the consumers,

    s[c] = sqrt(r1[c] / r2[c])

makes both sqrt(r1 r2). The paper's conv1 -> relu -> conv2 pair is the smallest stream; a MobileNetV2
linear bottleneck (the project convs of a stage, their adds, the expand convs that read them) and a
ResNet stage (conv3s and the downsample conv, the adds and relus, the next conv1s) are larger ones.
Scales are computed in float64; as a conv is the consumer of one stream and the producer of the next,
the streams are swept until the scales settle (at most MAX_SWEEPS times).

Refused, silently or with the reason logged: a stream read by anything else (a graph output, a flatten,
a concat, a batch norm that was not folded; relu6/clip/hardtanh, which clip at a fixed bound, so that
relu6(x / s) != relu6(x) / s, are logged), a stream fed by anything but convs (an input, a concat), an add
that broadcasts over channels, a conv that is both producer and consumer of one stream, a channel whose
weights are all zero on either side. Run it after fold-bn (`--passes fold-bn,equalize`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cnncomp.passes._rewrite import set_weight, weight
from cnncomp.passes.manager import register_pass

# f(x / s) = f(x) / s for every per-channel s > 0 (a registry facet would say this per op)
CHANNEL_HOMOGENEOUS = ("relu", "leaky_relu", "prelu", "identity", "dropout", "maxpool", "avgpool", "gap")
CLIPPING = ("relu6", "clip", "hardtanh")
MAX_SWEEPS = 20
SETTLED = 1e-3  # a stream counts as changed when some channel's scale moves by more than this


@dataclass
class Stream:
    """Tensors (layer names) carrying the same channels, the convs writing them and the convs reading them."""

    members: list[str] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)

    def describe(self, graph) -> str:
        via = [m for m in self.members if graph.layer(m).op != "conv"]
        return (", ".join(self.producers) + (f" -> {', '.join(via)}" if via else "") + " -> "
                + ", ".join(self.consumers))


def _channels(graph, name: str):
    shape = graph.layer(name).shape
    return shape[1] if shape is not None and len(shape) > 1 else None


def stream_from(ctx, conv: str) -> Stream | None:
    """The stream that conv `conv` writes into, or None (refused) when some tensor of it cannot be rescaled."""
    graph = ctx.graph
    stream, seen, queue = Stream(), {conv}, [conv]
    channels = _channels(graph, conv)
    passing = CHANNEL_HOMOGENEOUS + ("add",)
    while queue:
        name = queue.pop()
        op = graph.layer(name).op
        if name in graph.outputs or _channels(graph, name) != channels or op not in passing + ("conv",):
            return None  # an output, a channel broadcast, or fed by something that is not a conv (input, concat, bn)
        stream.members.append(name)
        if op == "conv":
            stream.producers.append(name)
        else:
            upstream = graph.input_names(name) if op == "add" else graph.input_names(name)[:1]
            queue += [i for i in upstream if i not in seen]
            seen.update(upstream)
        for user in graph.users(name):
            kind = graph.layer(user).op
            if kind == "conv" and graph.input_names(user) == [name]:
                if user not in stream.consumers:
                    stream.consumers.append(user)
            elif kind in CLIPPING:
                ctx.refuse("equalize", conv, f"{kind} {user} reads {name} and is not positively homogeneous "
                                             "(it clips at a fixed bound)")
                return None
            elif kind not in passing:
                return None
            elif user not in seen:
                seen.add(user)
                queue.append(user)
    if set(stream.producers) & set(stream.consumers) or not stream.consumers:
        return None
    order = {layer.name: i for i, layer in enumerate(graph.layers())}
    for names in (stream.members, stream.producers, stream.consumers):
        names.sort(key=order.__getitem__)
    return stream


def streams(ctx) -> list[Stream]:
    """Every stream that can be equalized, each once."""
    found, covered = [], set()
    for layer in list(ctx.graph.layers()):
        if layer.op != "conv" or layer.name in covered:
            continue
        stream = stream_from(ctx, layer.name)
        if stream is not None:
            covered.update(stream.producers)
            found.append(stream)
    return found


def _channel_map(w2: np.ndarray, groups: int) -> np.ndarray:
    """c(o, i): the input channel that weight W2[o, i] reads."""
    out, per_group = w2.shape[0], w2.shape[1]
    group_of_out = np.arange(out) // (out // groups)
    return group_of_out[:, None] * per_group + np.arange(per_group)[None, :]


def equalize_stream(ctx, stream: Stream) -> float:
    """Rescale one stream in place; return the largest |log s| (0 when already equal)."""
    graph = ctx.graph
    produced = [weight(ctx, p, "weight").astype(np.float64) for p in stream.producers]
    channels = produced[0].shape[0]
    r1 = np.max([np.abs(w).reshape(channels, -1).max(axis=1) for w in produced], axis=0)
    r2 = np.zeros(channels)
    maps = {}
    for consumer in stream.consumers:
        w2 = weight(ctx, consumer, "weight").astype(np.float64)
        maps[consumer] = _channel_map(w2, graph.layer(consumer).attrs.get("groups", 1))
        np.maximum.at(r2, maps[consumer].ravel(),
                      np.abs(w2).reshape(w2.shape[0], w2.shape[1], -1).max(axis=2).ravel())
    usable = (r1 > 0) & (r2 > 0)
    s = np.ones(channels)
    s[usable] = np.sqrt(r1[usable] / r2[usable])
    if np.all(np.abs(np.log(s)) <= SETTLED):
        return 0.0
    for name, w1 in zip(stream.producers, produced):
        layer = graph.layer(name)
        set_weight(ctx, layer, "weight", w1 / s.reshape((-1,) + (1,) * (w1.ndim - 1)))
        if layer.attrs["bias"]:
            set_weight(ctx, layer, "bias", weight(ctx, name, "bias").astype(np.float64) / s)
    for consumer, channel in maps.items():
        w2 = weight(ctx, consumer, "weight").astype(np.float64)
        set_weight(ctx, graph.layer(consumer), "weight",
                   w2 * s[channel].reshape(channel.shape + (1,) * (w2.ndim - 2)))
    return float(np.abs(np.log(s)).max())


@register_pass("equalize", exact=True, level=0)
def equalize(ctx) -> int:
    """Cross-layer equalization of conv channel streams (conv -> adds/relu/pools -> convs), for int8."""
    found = streams(ctx)
    changed: set[int] = set()
    for _ in range(MAX_SWEEPS):
        moved = False
        for index, stream in enumerate(found):
            if equalize_stream(ctx, stream) > SETTLED:
                changed.add(index)
                moved = True
        if not moved:
            break
    for index in sorted(changed):
        ctx.note("equalize", f"{found[index].describe(ctx.graph)}: channel ranges equalized")
    return len(changed)
