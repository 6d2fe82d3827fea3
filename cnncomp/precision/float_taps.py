"""The float32 model with every tensor it makes as an output, in one ONNX Runtime session shared by the passes of
int8 quantization that look inside it.

Int8 runs the float32 model over its samples several times, each pass reading other tensors: the extremes of
the activations (the range cache of the refined methods, ranges.write_minmax_cache), their histograms (mse and
layer ranges), the inputs of the convs (gptq's Hessians, rounding.py) and, on the held-out samples, every tensor
(the sensitivity search's boundaries, sensitivity.py). Each pass made its own session of a copy of the model with
its tensors as outputs, and ONNX Runtime's calibrator its own augmented model for the extremes: on ResNet-50
0.3-0.8 s to create each session, 2.3 s for the calibrator's pass. One `FloatTaps` serves them all. Its weights
are the float32 model's initializers handed to ONNX Runtime as shared arrays (`shared_values`), so the copy of
the model it loads holds no weights to serialize and parse.
"""

from __future__ import annotations

import numpy as np
import onnx

from cnncomp.onnx_graph import add_outputs

SHARED_ELEMENTS = 1024  # initializers this large and floating-point are shared, not copied into each model


def shareable(tensor: onnx.TensorProto) -> bool:
    """A weight (float, large), not a shape, axes or scales constant: ONNX Runtime reads those while loading
    the model (a Reshape's shape), where external data it has not been given yet cannot be read."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    return tensor.data_type in floats and int(np.prod(tensor.dims)) >= SHARED_ELEMENTS


def shared_placeholder(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """The float32 model's initializer as external data without its bytes: every derived model's session gets the
    same OrtValue (`shared_values`) instead of a copy of the weights in each model."""
    placeholder = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                   data_location=onnx.TensorProto.EXTERNAL)
    entry = placeholder.external_data.add()
    entry.key, entry.value = "location", "shared"
    return placeholder


def shared_values(float_model: onnx.ModelProto) -> dict:
    """{initializer: OrtValue} of the float32 model's initializers, for the derived models' sessions."""
    import onnxruntime as ort
    from onnx import numpy_helper

    return {t.name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(numpy_helper.to_array(t)))
            for t in float_model.graph.initializer if shareable(t)}


def without_weights(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """The model with `outputs` added to its graph outputs and its shareable initializers as placeholders (graph and
    small constants copied, weights not)."""
    graph = onnx.GraphProto(name=model.graph.name)
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    graph.initializer.extend(shared_placeholder(t) if shareable(t) else t for t in model.graph.initializer)
    add_outputs(graph, outputs)
    copy = onnx.ModelProto()
    copy.CopyFrom(onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version))
    copy.functions.extend(model.functions)
    return copy


class FloatTaps:
    """`model` (float32) run by ONNX Runtime's CPU provider with every tensor its nodes make as an output; the
    session is made on the first run and kept until `close`."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.inputs = {i.name for i in model.graph.input}
        self.tensors = list(dict.fromkeys(o for n in model.graph.node for o in n.output if o))
        self._made = set(self.tensors)
        self._session = None
        self._weights = None  # the OrtValues the sessions read: alive as long as they are

    def run(self, feeds: dict, names=None) -> dict:
        """{name: value} of the tensors `names` (default: every tensor the nodes make) on `feeds`; a graph input
        among them is taken from `feeds`, a name the model does not have is left out."""
        from cnncomp.run.session import Session

        names = self.tensors if names is None else list(dict.fromkeys(names))
        produced = [n for n in names if n in self._made and n not in self.inputs]
        values = {}
        if produced:
            if self._session is None:
                # no spinning: the passes compute on the outputs between runs, on the cores it would hold
                self._session = Session(without_weights(self.model, self.tensors), "cpu", quiet=True,
                                        spinning=False, shared=self.weights())
            values = self._session.run(feeds, produced)
        return {n: feeds[n] if n in self.inputs else values[n] for n in names
                if (n in self.inputs and n in feeds) or n in values}

    def weights(self) -> dict:
        """`shared_values` of the model, made once: for other sessions of models derived from it."""
        if self._weights is None:
            self._weights = shared_values(self.model)
        return self._weights

    def close(self) -> None:
        self._session = self._weights = None
