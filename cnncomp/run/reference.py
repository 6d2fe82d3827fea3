"""The PyTorch reference: an interpreter of the unoptimized LayerGraph.

Each layer runs its op's `torch_ref`, written independently of the ONNX
lowering, so that comparing the two checks the compiler. Like torch.fx's
Interpreter, a failure inside a layer is re-raised as a CnnError that says
"while executing layer X (file:line:col)" and points at the spec line.
Every layer's output is checked against the shape the spec inferred.

`ReferenceModule` is the same interpreter as a trainable torch.nn.Module:
its state_dict keys are exactly the weight names (`features.0.weight`,
`layer1.0.bn1.running_var`), learnable weights are Parameters and batch-norm
running statistics are buffers. In eval() mode layers compute their inference
form; in train() mode each op's `torch_train` form (batch norm normalizes with
batch statistics and updates its running ones, dropout drops, rrelu samples its
slope), as the matching torch.nn modules do; gradients flow to every Parameter.
A real PyTorch state_dict loads with strict=True: the `num_batches_tracked` of
a layer (nn.BatchNorm's, which cnncomp's weights lack and the interpreter never
reads) is accepted and dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from cnncomp.ir.weights import IGNORED_SUFFIXES, check_weights, init_weights, load_weights
from cnncomp.errors import CnnError
from cnncomp.ops.dims import bind_symbols, concrete, evaluate, has_symbolic, symbols_of
from cnncomp.ops.registry import all_ops, fmt_shape
from cnncomp.progress import progress

WeightGetter = Callable[[str, str], torch.Tensor]  # (layer name, suffix) -> tensor


def execute(graph, feeds: Mapping[str, torch.Tensor], weight: WeightGetter,
            training: bool = False, label: str = "") -> dict[str, torch.Tensor]:
    """Run every layer in order on torch tensors (training form if asked); return every layer's output.
    With a `label`, a progress bar counts the layers (on a terminal)."""
    ops = all_ops()
    values: dict[str, torch.Tensor] = {}
    sizes = input_sizes(graph, {name: tuple(feeds[name].shape) for name in graph.inputs if name in feeds})
    layers = progress(list(graph.layers()), label=label) if label else graph.layers()
    for layer in layers:
        if layer.op == "input":
            values[layer.name] = feeds[layer.name]
            continue
        values[layer.name] = run_layer(ops, graph, layer, values, weight, training, sizes)
    return values


def input_sizes(graph, shapes: Mapping[str, tuple]) -> dict[str, int]:
    """The values of the graph's symbols (N, H, W) in these input shapes; an error when a shape breaks
    the spec's dims or constraints."""
    minimums = {name: rule.get("min", 1) for name, rule in graph.meta.get("symbols", {}).items()}
    return bind_symbols({n: tuple(graph.layer(n).shape) for n in graph.inputs}, dict(shapes), minimums)


def run_layer(ops, graph, layer, values: Mapping[str, torch.Tensor], weight: WeightGetter,
              training: bool = False, sizes: Mapping[str, int] | None = None) -> torch.Tensor:
    """One layer's output from its inputs' outputs in `values` (a failure names the layer and its spec line)."""
    try:
        op = ops[layer.op]
        ins = [values[u] for u in graph.input_names(layer.name)]
        ws = {suffix: weight(layer.name, suffix) for suffix in layer.weights}
        attrs = concrete(layer.attrs, sizes) if sizes and has_symbolic(layer.attrs) else layer.attrs
        out = (op.torch_train if training else op.torch_ref)(attrs, ins, ws)
        _check_shape(layer, out, sizes)
    except Exception as exc:
        detail = exc.message if isinstance(exc, CnnError) else f"{type(exc).__name__}: {exc}"
        raise CnnError(f"while executing layer '{layer.name}' ({layer.where or 'no location'}): {detail}",
                       layer.loc, layer.chain) from exc
    return out


def _check_shape(layer, out, sizes: Mapping[str, int] | None = None) -> None:
    """The output's shape against the inferred one; symbolic sizes at the inputs' values of the symbols."""
    got = tuple(out.shape)
    want = tuple(layer.shape)
    expected = tuple(evaluate(w, sizes) if not isinstance(w, int) and sizes and symbols_of(w) <= set(sizes)
                     else w for w in want)
    if len(got) != len(want) or any(isinstance(w, int) and w != g for g, w in zip(got, expected)):
        at = f" (at {', '.join(f'{k}={v}' for k, v in sizes.items())})" if sizes and expected != want else ""
        raise CnnError(f"the reference computed shape {fmt_shape(got)}, the spec infers {fmt_shape(want)}{at}")


def _feeds(graph, inputs: Mapping[str, np.ndarray], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    unknown = sorted(set(inputs) - set(graph.inputs))
    if unknown:
        raise CnnError(f"unknown input '{unknown[0]}'; the network's inputs are {', '.join(graph.inputs)}")
    feeds = {}
    for name in graph.inputs:
        if name not in inputs:
            raise CnnError(f"missing input '{name}' (shape {fmt_shape(graph.layer(name).shape)})")
        value = inputs[name]
        t = value.detach() if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
        want = tuple(graph.layer(name).shape)
        if t.dim() != len(want) or any(isinstance(w, int) and w != g for g, w in zip(t.shape, want)):
            raise CnnError(f"input '{name}' has shape {fmt_shape(tuple(t.shape))}, the spec declares {fmt_shape(want)}")
        feeds[name] = t.to(dtype)
    return feeds


def run_reference(graph, weights: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
                  dtype: torch.dtype = torch.float32, capture: bool = False):
    """Run the graph with each op's PyTorch reference; return {output name: array} (and every layer's output if capture)."""
    if dtype not in (torch.float32, torch.float64):
        raise CnnError(f"the reference runs in float32 or float64, not {dtype}")
    arrays = check_weights(weights, graph, "the weights dict", allow_unexpected=True)
    tensors = {name: torch.from_numpy(np.ascontiguousarray(a)).to(dtype) for name, a in arrays.items()}
    with torch.no_grad():
        values = execute(graph, _feeds(graph, inputs, dtype), lambda layer, suffix: tensors[f"{layer}.{suffix}"],
                         label="reference")
    outputs = {out: values[layer].numpy() for out, layer in zip(graph.output_names, graph.outputs)}
    if capture:
        return outputs, {name: t.numpy() for name, t in values.items()}
    return outputs


class ReferenceModule(torch.nn.Module):
    """A trainable nn.Module that interprets a LayerGraph; state_dict keys are the weight names."""

    def __init__(self, graph, weights: Mapping[str, np.ndarray]):
        super().__init__()
        arrays = check_weights(weights, graph, "the weights dict", allow_unexpected=True)
        object.__setattr__(self, "_cnn_graph", graph)  # not a submodule, not in state_dict
        owners: dict[str, torch.nn.Module] = {}
        for layer in graph.layers():
            if not layer.weights:
                continue
            owner = self._module_at(layer.name)
            owners[layer.name] = owner
            for suffix, spec in layer.weights.items():
                tensor = torch.from_numpy(np.array(arrays[f"{layer.name}.{suffix}"], dtype=np.float32))
                try:
                    if spec.learnable:
                        owner.register_parameter(suffix, torch.nn.Parameter(tensor))
                    else:
                        owner.register_buffer(suffix, tensor)
                except KeyError as exc:
                    raise _clash(layer, suffix, exc) from None
        object.__setattr__(self, "_owners", owners)
        self.register_load_state_dict_pre_hook(_drop_unused_buffers)

    def _module_at(self, path: str) -> torch.nn.Module:
        module: torch.nn.Module = self
        for part in path.split("."):
            child = module._modules.get(part)
            if child is None:
                child = torch.nn.Module()
                try:
                    module.add_module(part, child)
                except KeyError as exc:
                    raise _clash(self._cnn_graph.layer(path), part, exc) from None
            module = child
        return module

    @property
    def graph(self):
        """The LayerGraph this module interprets."""
        return self._cnn_graph

    def forward(self, *inputs: torch.Tensor):
        """Run the network on its inputs, in spec order; one output, or a tuple of them."""
        graph = self._cnn_graph
        if len(inputs) != len(graph.inputs):
            raise CnnError(f"the network takes {len(graph.inputs)} input(s) ({', '.join(graph.inputs)}), "
                           f"got {len(inputs)}")
        feeds = dict(zip(graph.inputs, inputs))
        owners = self._owners
        values = execute(graph, feeds, lambda layer, suffix: getattr(owners[layer], suffix), training=self.training)
        outs = tuple(values[layer] for layer in graph.outputs)
        return outs[0] if len(outs) == 1 else outs


def _drop_unused_buffers(module: ReferenceModule, state_dict, prefix: str, *args) -> None:
    """A PyTorch state_dict's buffers the interpreter never reads (nn.BatchNorm's
    num_batches_tracked) are dropped for the network's own layers, so that it loads with
    strict=True; under any other name they stay unexpected keys."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        layer, _, suffix = key[len(prefix):].rpartition(".")
        if suffix in IGNORED_SUFFIXES and layer in module._owners and suffix not in module._owners[layer]._buffers:
            del state_dict[key]


def _clash(layer, part: str, exc: KeyError) -> CnnError:
    return CnnError(f"layer name '{layer.name}' cannot be a PyTorch module path: '{part}' clashes with an "
                    f"attribute of torch.nn.Module or with a weight ({exc.args[0] if exc.args else exc}); "
                    "rename the layer with `as`", layer.loc, layer.chain)


def to_torch(graph, weights: Mapping[str, np.ndarray] | str | Path | None = None, seed: int = 0) -> ReferenceModule:
    """A trainable PyTorch module for the graph, with the given weights (a dict or a file) or seeded ones."""
    if weights is None:
        weights = init_weights(graph, seed)
    elif isinstance(weights, (str, Path)):
        weights = load_weights(weights, graph)
    return ReferenceModule(graph, weights)
