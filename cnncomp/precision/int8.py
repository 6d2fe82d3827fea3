"""Int8 models: calibrated QDQ quantization of an emitted float32 ONNX model, within an error budget.

The quantization runs on the ONNX model after the passes (batch norms are folded into the convs
first, in float64, so only the folded weights are quantized). The QDQ model is standard ONNX:
float32 inputs and outputs, QuantizeLinear/DequantizeLinear pairs around every quantized tensor,
int8 weights quantized per output channel and symmetrically, activations per tensor (uint8 with
a zero point for ONNX Runtime's CPU kernels; int8 symmetric for TensorRT, which takes no zero
point). ONNX Runtime's QDQ quantizer places the pairs (`onnxruntime.quantization.quantize_static`,
QuantFormat.QDQ); it drops a Relu/Clip whose output range the uint8 zero point already clips, so
ONNX Runtime fuses Conv + activation into one QLinearConv (`session_kernels` shows the kernels of
the optimized session graph). The layers the target runtime runs faster in float32 (int8_support's
placement rules: under ONNX Runtime CPU a conv before a hard-swish, a squeeze-excite gate, a 5x5
depthwise conv) are left out of it: no Q/DQ around them.

Calibration (ranges of every activation) runs once per `Quantizer`, with a method from METHODS:
`minmax` (the observed range), `percentile` (99.999th percentile of |x|, ignoring outliers) or
`entropy` (the threshold minimizing the KL divergence of the int8 histogram), `mse` (per tensor, the
range minimizing its own quantization error, ranges.py) or `layer` (per tensor, the candidate range that
minimizes the output error of the layers reading it, layer_ranges.py). Its ranges are cached, so that the budget
search re-quantizes without recalibrating, and its latest models too (bias correction and weight rounding
only rewrite initializers afterwards).

The error budget judges each output by its task metric (verification/metrics.py, `--metric`): class
scores by the decisions that change (top1), other outputs by the relative L2 error ||y - y_ref|| /
||y_ref|| against `max_error`, all against the float64 reference of the unoptimized graph, on
held-out inputs. The budget error is the worst over outputs of metric / threshold, so 1.0 is the edge.
When full int8 misses it, each conv/linear layer's relative L2 error contribution with only it in int8 is
measured ("error alone", a continuous ranking even where the budget counts decisions, since one layer
alone rarely flips one; sensitivity.py derives each such model from the full int8 one and runs only
what the layer changes), and layers are kept in float32 in the order of the error each removes
per millisecond it adds (int8_speed.py times them under ONNX Runtime), as few as meet the budget (a
binary search over the ordered list, checked once more at the end), and the kept layers that int8 runs
faster are tried back in int8 where the budget still fits (back_to_int8). Then the islands rule puts back
in float32 any int8 island between float32 layers that buys no time, and the final model is timed
against float32 (Int8.convert writes float32 when int8 is not faster, unless --keep-slower-int8). Under
80% of the MACs in int8, the report says why in one line (Int8Report.shortfall).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from cnncomp.errors import CnnError, UsageError
from cnncomp.inputs import collate, is_mixed, same_size_samples
from cnncomp.ir.graph import LayerGraph
from cnncomp.onnx_graph import consumers, opset_of, producers
from cnncomp.passes.budget import fewest_within
from cnncomp.verification.meters import ModelErrorMeter as ErrorProbe  # int8's meter: the QDQ model under ONNX Runtime
from cnncomp.verification.metrics import load_labels, plan_metrics
from cnncomp.precision.bias_correction import DEFAULT_MODE, MODES as BIAS_CORRECTION_MODES, apply_bias_corrections
from cnncomp.precision.bias_correction import bias_corrections
from cnncomp.precision.float_taps import FloatTaps
from cnncomp.precision.int8_report import Int8Report, LayerSensitivity
from cnncomp.precision.int8_support import failing_node, known_unsupported, neighbourhood, nonfinite_activations
from cnncomp.precision.int8_hardswish import rewrite_if_within_budget
from cnncomp.precision.int8_support import int8_weight_scales, quantizable_ops, short_reason, slower_in_int8
from cnncomp.precision.rounding import DEFAULT_MODE as DEFAULT_ROUNDING, MODES as ROUNDING_MODES, apply_rounded_weights

METHODS = ("minmax", "percentile", "entropy", "mse", "layer")
DEFAULT_METHOD = "percentile"

REFINED = ("mse", "layer")  # cnncomp's own methods: a min-max calibration, then its range cache rewritten
# ops that pass their input's quantization through (no new scale): kept with the layer that feeds them
PASS_THROUGH_OPS = ("Relu", "Clip", "MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Pad",
                    "Slice", "Split", "Gather", "GatherElements", "Where", "TopK", "Identity", "Resize")
MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear
QUANTIZED_KEPT = 2  # quantize_static's latest models kept for asking again (a ResNet-50 one is 25-100 MB)


@contextlib.contextmanager
def quiet_quantizer():
    """ONNX Runtime's quantizer logs advice through the root logger and its calibrators print progress to
    standard output; keep both out of ours."""
    import io

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def ragged_histograms(active: bool):
    """While `active`, ONNX Runtime's histogram collector (percentile, entropy) gets each tensor's values of all
    runs flattened into one array: it stacks the runs with np.asarray, which fails on samples of different
    sizes, and flattens the stack anyway, so the histogram is the same."""
    if not active:
        yield
        return
    from onnxruntime.quantization.calibrate import HistogramCollector

    original = HistogramCollector.collect

    def collect(self, name_to_arr):
        flat = {name: [np.concatenate([np.ravel(a) for a in arrays])] if isinstance(arrays, list) else arrays
                for name, arrays in name_to_arr.items()}
        return original(self, flat)

    HistogramCollector.collect = collect
    try:
        yield
    finally:
        HistogramCollector.collect = original


class FeedReader:
    """An onnxruntime CalibrationDataReader over samples: one sample per get_next()."""

    def __init__(self, feeds: dict[str, np.ndarray], batch: int = 1):
        from cnncomp.passes.budget import batches

        self._batches = list(batches(feeds, batch))
        self._next = 0

    def get_next(self):
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return self._batches[self._next - 1]

    def __len__(self):
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int):  # the reader protocol of CalibStridedMinMax
        self._next = start_index


class Quantizer:
    """A float32 model calibrated once; `quantize` then gives its QDQ int8 model with any layers left in float32."""

    def __init__(self, model: onnx.ModelProto, calibration: dict[str, np.ndarray], method: str = DEFAULT_METHOD,
                 activations: str = "uint8", batch: int = 1, locate=None, weight_rounding: str = DEFAULT_ROUNDING,
                 runtime: str | None = "onnxruntime-cpu"):
        if method not in METHODS:
            raise CnnError(f"unknown calibration method '{method}'; choose one of {', '.join(METHODS)}")
        if weight_rounding not in ROUNDING_MODES:
            raise CnnError(f"unknown weight rounding '{weight_rounding}'; choose one of {', '.join(ROUNDING_MODES)}")
        if activations not in ("uint8", "int8"):
            raise CnnError(f"activations are quantized to uint8 or int8, not {activations}")
        opset = opset_of(model, 0)
        if opset < MIN_OPSET:
            raise CnnError(f"int8 needs opset {MIN_OPSET} or later (per-channel QuantizeLinear); got --opset {opset}")
        self.model = model
        self.groups = layer_groups(model)
        self.kept_float: dict[str, str] = {}  # layer group -> why ONNX Runtime cannot run it in int8 here
        self._float_nodes: set[str] = set()  # nodes never quantized: those of kept_float and their neighbours
        self.notes: list[str] = []
        for node, why in known_unsupported(model).items():
            group = self._group_of(node)
            if group is not None:
                self.kept_float[group] = why
                self._float_nodes |= set(self.groups[group])
        # where `runtime` runs a group faster in float32 (int8_support.PLACEMENT_RULES): no Q/DQ around it at all,
        # once the first quantization (calibration, kernel refusals, weight rounding) has seen every layer
        self.slower_in_int8: dict[str, str] = {}
        self._placement = {g: why for g, why in slower_in_int8(model, self.groups, runtime).items()
                           if g not in self.kept_float}
        self.runtime = runtime
        self.method = method
        self.locate = locate or (lambda layer: "")  # a layer's place in the spec (file:line:col), for errors
        self.activations = activations
        self.batch = batch  # samples per calibration run (an input's fixed batch dim, else 1)
        self._tmp = tempfile.TemporaryDirectory(prefix="cnncomp-int8-")
        self._cache = Path(self._tmp.name) / "ranges.json"
        self.bias_shifts: dict[str, np.ndarray] = {}  # bias correction per node (see bias_correction.py)
        self.weight_rounding = weight_rounding
        self.rounded: dict[str, np.ndarray] = {}  # int8 weights per node rounded by rounding.py (not nearest)
        self._weight_scales: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # _conv_weight_scales
        # quantize_static's models (serialized) by the nodes excluded and quantized: bias correction and rounding
        # change only initializers afterwards, so a model asked for again is not quantized again; emptied when the
        # range cache changes (mse ranges)
        self._quantized: dict[tuple, bytes] = {}
        # a path, not the ModelProto: quantize_static moves a proto's weights into external files it then deletes
        self._float_path = Path(self._tmp.name) / "float32.onnx"
        self._owner = os.getpid()
        self.taps = FloatTaps(model)  # the float32 model's tensors, for the passes that read them (float_taps.py)
        copy = onnx.ModelProto.FromString(model.SerializeToString())  # saving to external data edits the proto
        onnx.save(copy, str(self._float_path), save_as_external_data=True, location="float32.data")
        if not self.groups:
            self.notes.append("int8: no layer of this network has an int8 kernel in ONNX Runtime: it stays float32")
        else:
            self._first_quantization(calibration)  # fills the range cache
        self.slower_in_int8 = {g: why for g, why in self._placement.items() if g not in self.kept_float}

    def drop_placement(self) -> None:
        """Quantize the layers the placement rules kept in float32 again, and measure bias corrections anew:
        the fallback search times and judges every layer on this machine itself, and a layer the static rules
        took from it could neither be timed nor won back (on PP-OCRv4's text detector the rules cost a tenth
        of the MACs in int8 and were slower: docs/precision.md)."""
        self.slower_in_int8 = {}
        self.bias_shifts = {}

    def close(self) -> None:
        self.taps.close()
        self._tmp.cleanup()

    @property
    def always_float(self) -> set[str]:
        """The groups no search puts in int8: those without a usable int8 kernel and those faster in float32."""
        return set(self.kept_float) | set(self.slower_in_int8)

    def _model_path(self) -> Path:
        """The float model's file for this process: the quantizer writes a shape-inferred copy beside it, so a
        forked worker of a search gets its own name (a hard link to the same file)."""
        if os.getpid() == self._owner:
            return self._float_path
        path = self._float_path.with_name(f"float32-{os.getpid()}.onnx")
        if not path.exists():
            os.link(self._float_path, path)
        return path

    def _group_of(self, node: str) -> str | None:
        return next((group for group, members in self.groups.items() if node in members), None)

    def _first_quantization(self, calibration: dict) -> None:
        """Calibrate (filling the range cache) and make sure ONNX Runtime loads and runs the result: a node it
        refuses is kept in float32 (with the reason) and the model quantized again (int8_support.py)."""
        from cnncomp.passes.budget import batches

        try:
            if self.method in REFINED:  # the min-max cache names the tensors and their extremes; refine it
                from cnncomp.precision.layer_ranges import write_layer_ranges
                from cnncomp.precision.ranges import write_minmax_cache, write_mse_ranges

                write_minmax_cache(self._cache, self.model, calibration, self.batch, self.taps)
                write = write_mse_ranges if self.method == "mse" else write_layer_ranges
                write(self._cache, self.model, calibration, self.batch, self.activations == "int8", self.taps)
                self.ranges_changed()
                quantized = self.quantize()
            else:
                quantized = self.quantize(calibration=calibration)
            if self.weight_rounding != "nearest":
                from cnncomp.precision.rounding import rounded_weights

                self.rounded = rounded_weights(self.model, quantized, calibration, self.batch, self.taps)
                quantized = self.quantize()
        except CnnError as e:
            if "Histogram has not been collected" in str(e) and self.method != "minmax":
                # the histogram calibrators collect no graph input or output: a network that is one layer deep
                self.notes.append(f"int8: {self.method} calibration has nothing to collect in this network; "
                                  "used minmax")
                self.method = "minmax"
                quantized = self.quantize(calibration=calibration)
            elif "not finite" in str(e):
                self._raise_for_nonfinite(calibration, e)
            else:
                raise
        sample = next(batches(calibration, self.batch))
        refused: dict[str, int] = {}
        known = {n.name for n in self.model.graph.node}
        for _ in range(len(known)):
            failure = failing_node(quantized, sample)
            if failure is None:
                break
            node, message = failure
            if node not in known:
                raise CnnError(f"int8: ONNX Runtime cannot run the quantized model: {message.splitlines()[0]}")
            # ONNX Runtime fuses DequantizeLinear -> node -> QuantizeLinear into its int8 kernel even when the
            # quantizer left the node alone, so its neighbours stay float32 too, one more hop at each refusal
            refused[node] = refused.get(node, 0) + 1
            self._float_nodes |= neighbourhood(self.model, node, refused[node])
            group = self._group_of(node) or node
            self.kept_float.setdefault(group, short_reason(message))
            quantized = self.quantize()
        else:
            raise CnnError("int8: ONNX Runtime cannot run the quantized model with any layer in int8")
        if self.kept_float:
            self.notes.append("int8: kept in float32, no usable ONNX Runtime int8 kernel for them here: " + "; ".join(
                f"{group} ({why})" for group, why in self.kept_float.items()))

    def placement_note(self) -> str | None:
        """One line on the layers the placement rules keep in float32 (None: none)."""
        names = list(self.slower_in_int8)
        if not names:
            return None
        return (f"int8: {len(names)} layer{'s' if len(names) > 1 else ''} kept in float32, faster there than in "
                f"int8 under {self.runtime} ({', '.join(names[:6])}" + (", ..." if len(names) > 6 else "")
                + "; --stats says why)")

    def _raise_for_nonfinite(self, calibration: dict, error: Exception) -> None:
        from cnncomp.passes.budget import batches

        for feeds in list(batches(calibration, self.batch))[:8]:
            found = nonfinite_activations(self.model, feeds)
            if found:
                node, what = found[0]
                layer = node.split("/")[0]
                place = f" ({self.locate(layer)})" if self.locate(layer) else ""
                where = (f"the output of layer {node}{place}" if "/" not in node else
                         f"a tensor of layer {layer}{place}, ONNX node {node},")
                raise CnnError(f"int8: {where} is {what} on the calibration data; int8 needs a finite range for "
                               "every activation") from None
        raise CnnError(f"int8 quantization failed: {error}") from None

    def quantize(self, exclude=(), only=None, calibration: dict | None = None) -> onnx.ModelProto:
        """The QDQ model; layers in `exclude` (and those ONNX Runtime cannot run in int8) stay float32; with
        `only`, just those layers are quantized."""
        if not self.groups:
            return onnx.ModelProto.FromString(self.model.SerializeToString())
        excluded = [n for name in exclude for n in self.groups[name]]
        placed = {n for group in self.slower_in_int8 for n in self.groups[group]}
        excluded += sorted((self._float_nodes | placed) - set(excluded))
        key = (tuple(sorted(excluded)), tuple(sorted(only)) if only else None)
        if calibration is None and key in self._quantized:
            return self._finished(onnx.ModelProto.FromString(self._quantized[key]))
        out = self._quantize_static(excluded, [n for name in only for n in self.groups[name]] if only else None,
                                    calibration)
        quantized = float_outputs(onnx.load(str(out)), self.model)
        self._quantized[key] = quantized.SerializeToString()  # calibrated or from the cache: the same ranges
        while len(self._quantized) > QUANTIZED_KEPT:  # a search's candidates are each asked for once
            self._quantized.pop(next(iter(self._quantized)))
        return self._finished(quantized)

    def _quantize_static(self, excluded: list[str], only: list[str] | None, calibration: dict | None) -> Path:
        """The file of quantize_static's QDQ model with the nodes `excluded` left float32 (with `only`, just those nodes
        quantized), calibrating on `calibration` into the range cache, else reading it (the refined methods write
        the cache themselves: ranges.write_minmax_cache)."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                   "entropy": CalibrationMethod.Entropy, "mse": CalibrationMethod.MinMax,
                   "layer": CalibrationMethod.MinMax}  # mse, layer: REFINED's writers rewrite the min-max ranges
        symmetric = self.activations == "int8"
        out = Path(self._tmp.name) / f"int8-{os.getpid()}.onnx"  # one per process: the searches fork workers
        extra = {"WeightSymmetric": True, "ActivationSymmetric": symmetric,
                 "TensorQuantOverrides": {name: [dict(axis=0, scale=s, zero_point=z) if c == 0 else
                                                 dict(scale=s, zero_point=z) for c, (s, z) in enumerate(zip(*pair))]
                                          for name, pair in self._conv_weight_scales().items()}}
        with quiet_quantizer(), ragged_histograms(calibration is not None and is_mixed(calibration)):
            try:
                reader = FeedReader(calibration, self.batch) if calibration is not None else None
                quantize_static(self._model_path(), out, reader,
                                quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                                weight_type=QuantType.QInt8,
                                nodes_to_exclude=excluded, nodes_to_quantize=only,
                                calibrate_method=methods[self.method], extra_options=extra,
                                calibration_cache_path=self._cache)
            except (ValueError, RuntimeError, onnx.checker.ValidationError) as e:
                raise CnnError(f"int8 quantization failed: {e}") from None
        return out

    def _conv_weight_scales(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{weight: (scale, zero point) per output channel} of each float32 Conv weight (read by convs only), as
        quantize_static computes them for per-channel symmetric int8 weights (int8_support.int8_weight_scales;
        zero point 0), vectorized. Handed to it as
        TensorQuantOverrides, they replace its Python loop over channels (27,560 on ResNet-50: 1.7 s of each
        quantization, and a search quantizes many times); the models it writes are the same, to the byte
        (tests/test_int8_weight_scales.py)."""
        if self._weight_scales is None:
            from onnx import numpy_helper

            readers = consumers(self.model)
            inits = {t.name: t for t in self.model.graph.initializer}
            self._weight_scales = {}
            for node in self.model.graph.node:
                name = node.input[1] if node.op_type == "Conv" and len(node.input) > 1 else None
                tensor = inits.get(name)
                if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) < 3 \
                        or any(r.op_type != "Conv" or list(r.input[1:2]) != [name] for r in readers.get(name, [])):
                    continue
                scale = int8_weight_scales(numpy_helper.to_array(tensor))
                self._weight_scales[name] = (scale, np.zeros(len(scale), np.int8))
        return self._weight_scales

    def _finished(self, quantized: onnx.ModelProto) -> onnx.ModelProto:
        """quantize_static's model with the rounded weights and bias corrections written in (in place)."""
        if self.rounded:
            apply_rounded_weights(quantized, self.rounded)
        return apply_bias_corrections(quantized, self.bias_shifts) if self.bias_shifts else quantized

    def ranges_changed(self) -> None:
        """The range cache was rewritten: the models quantized from the old ranges are stale."""
        self._quantized.clear()


def quantized_for_timing(model: onnx.ModelProto, samples: int = 2, seed: int = 0) -> onnx.ModelProto:
    """The model as `--precision int8` emits it (per-channel int8 weights, uint8 activations, fused kernels),
    calibrated on seeded normal inputs: for timing a few layers (-O3 --autotune), not for its accuracy."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {i.name: rng.standard_normal((samples,) + tuple(max(d.dim_value, 1) for d in
                                                             i.type.tensor_type.shape.dim[1:])).astype(np.float32)
             for i in model.graph.input if i.name not in initializers}
    quantizer = Quantizer(model, feeds, "minmax")
    try:
        return quantizer.quantize()
    finally:
        quantizer.close()


def layer_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """{node: [node, the pass-through nodes after it]} for every node that sets a new quantization scale
    (conv, gemm, add, pools, ...), in graph order: the unit that the budget search keeps in float32 or not.

    A pass-through node (relu, max pool, reshape) joins the group of the node that feeds it, so that keeping
    a layer in float32 keeps its activation in float32 too instead of rounding it through a lone Q/DQ pair."""
    quantizable = quantizable_ops()
    weights = {t.name for t in model.graph.initializer}
    readers = consumers(model)
    groups = {}
    for node in model.graph.node:
        if node.op_type not in quantizable or node.op_type in PASS_THROUGH_OPS:
            continue
        members, frontier = [node.name], list(node.output)
        while frontier:
            for user in readers.get(frontier.pop(), []):
                if user.op_type in PASS_THROUGH_OPS and user.name not in members and \
                        sum(1 for i in user.input if i and i not in weights) == 1:
                    members.append(user.name)
                    frontier += list(user.output)
        groups[node.name] = members
    return groups


def quantizable_layers(model: onnx.ModelProto) -> list[str]:
    """The nodes a sensitivity search ranks (those that set a new scale), in graph order."""
    return list(layer_groups(model))


def float_outputs(model: onnx.ModelProto, float_model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the QuantizeLinear -> DequantizeLinear pair in front of a graph output (also when an Identity that
    gives the output its spec name follows it): the output is float32 anyway, and the pair would only round it
    (and clip the logits a percentile calibration cut). ONNX Runtime's QGemm and OpenVINO's int8 FullyConnected
    then write float32 directly; on MobileNetV2 the relative L2 error halves (0.0088 -> 0.0048).

    Not where the quantizer folded a Relu/Clip into the pair (the tensor it quantizes is made by another op
    than in `float_model`, the model it quantized): there the pair's clipping is the activation."""
    producer = producers(model)
    float_producer = producers(float_model)
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    drop, renames = set(), {}
    for output in model.graph.output:
        dq = producer.get(output.name)
        if dq is not None and dq.op_type == "Identity" and uses.get(dq.input[0], 0) == 1:
            dq = producer.get(dq.input[0])  # the Identity stays: it keeps the output's name
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or uses.get(dq.input[0], 0) != 1:
            continue
        # the quantizer renames a graph output's tensor to `{output}_QuantizeLinear_Input`
        float_name = q.input[0] if q.input[0] in float_producer else dq.output[0]
        made_by, was_made_by = producer.get(q.input[0]), float_producer.get(float_name)
        if made_by is None or was_made_by is None or made_by.op_type != was_made_by.op_type:
            continue
        drop |= {dq.name, q.name}
        if dq.output[0] == output.name:
            renames[q.input[0]] = output.name
        else:
            renames[dq.output[0]] = q.input[0]
    if not drop:
        return model
    kept = [n for n in model.graph.node if n.name not in drop]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    read = {name for node in kept for name in node.input} | {v.name for v in model.graph.input} | {
        v.name for v in model.graph.output}
    unused = [t for t in model.graph.initializer if t.name not in read]  # the dropped pair's scale, zero point
    for tensor in unused:
        model.graph.initializer.remove(tensor)
    return model


def session_kernels(model: onnx.ModelProto) -> dict[str, int]:
    """Op types (and counts) of ONNX Runtime's optimized CPU session graph: shows which int8 kernels run."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="cnncomp-int8-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no layout (Nchwc) changes
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    counts: dict[str, int] = {}
    for node in optimized.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def top1_agreement(outputs: dict, reference: dict, axes: dict[str, int]) -> dict[str, float]:
    """For the outputs that are class scores (`axes`: output -> class axis, verification/metrics.py says which):
    the fraction of decisions (samples, or pixels of a class map) whose argmax agrees, as observed."""
    from cnncomp.verification.metrics import decision_rows

    out = {}
    for name, axis in axes.items():
        ref, got = decision_rows(reference[name], axis), decision_rows(outputs[name], axis)
        out[name] = float(np.mean(np.argmax(got, axis=1) == np.argmax(ref, axis=1)))
    return out


def metric_judge(plan):
    """A check's verdict on the outputs a task metric judges (not rel-l2): {output: (ok, words)} for a check's
    outputs and reference, measured by the same plan (an accuracy output by top-1 agreement: the check's inputs
    have no labels). None when every output is judged by rel-l2 (the check's own rule)."""
    from cnncomp.verification.metrics import Accuracy, Assignment, RelL2, TopK

    judged = [a for a in plan.assignments if not isinstance(a.metric, RelL2)]
    if not judged:
        return None
    judged = [Assignment(a.output, TopK(1, a.metric.axis), a.threshold, a.why) if isinstance(a.metric, Accuracy)
              else a for a in judged]

    def judge(outputs: dict, reference: dict) -> dict[str, tuple[bool, str]]:
        verdicts = {}
        for a in judged:
            got = a.measure(reference, outputs)
            ok = a.normalized(got.value) <= 1.0
            for name in (list(reference) if a.output == "*" else [a.output]):
                verdicts[name] = (ok, f"{a.label} {got.text}, {a.label} {a.bound()}")
        return verdicts
    return judge


def quantize_int8(model: onnx.ModelProto, graph: LayerGraph, ref_graph: LayerGraph, ref_weights: dict,
                  calibration=None, preprocess: str | None = None, method: str = DEFAULT_METHOD,
                  max_error: float | None = None, sensitivity: bool = False, seed: int = 0,
                  activations: str = "uint8", bias_correction: str = DEFAULT_MODE, jobs: int = 1,
                  metric="auto", labels=None, timed: bool = True, threads: int = 1, keep_slower: bool = False,
                  weight_rounding: str = DEFAULT_ROUNDING, runtime: str = "onnxruntime-cpu"
                  ) -> tuple[onnx.ModelProto, Int8Report]:
    """Quantize an emitted float32 model (of `graph`) to QDQ int8, keeping layers in float32 to meet the budget.

    `calibration` is a path (.npz, .npy, image folder), a dict of arrays, or None (seeded stand-ins, with a
    warning). Each output is judged by its task metric (`metric`: the --metric spelling, a callable or a
    (callable, threshold) pair; verification/metrics.py), rel-l2's threshold being `max_error`, against the
    float64 reference of `ref_graph` on held-out samples; `labels` (a file or a sequence, one class per
    calibration sample) give `accuracy`. Without `max_error` no layer is kept in float32.
    With `sensitivity`, every layer's error alone is measured even when full int8 meets the budget.
    `bias_correction`: auto (where it lowers the error on the calibration samples), on or off. The sensitivity
    search derives each layer's model from the full int8 one (sensitivity.py), in `jobs` processes. Layers go
    back to float32 for the error each removes per
    millisecond it adds (int8_speed.py times them, `threads` threads), then the islands rule runs (with
    `keep_slower`, only its accuracy half: islands without a conv); with `timed`, the final model is timed
    against float32 (the report's float_ms, int8_ms; Int8.convert applies the not-faster rule).
    `weight_rounding`: nearest, or gptq (rounding.py: each weight up or down to minimise its layer's output
    error on the calibration samples). `runtime` (int8_support.RUNTIMES) picks the placement rules: the layers it
    runs faster in float32 get no Q/DQ nodes in the whole-int8 model (with `keep_slower`, none: every layer with an int8
    kernel is int8); when that misses the budget, the search starts from every layer in int8 and times each itself."""
    from cnncomp.passes.budget import DEFAULT_MAX_ERROR, batches, split_held_out
    from cnncomp.precision.int8_speed import fallback_order, time_models
    from cnncomp.precision.calibration import (
        NOT_REPRESENTATIVE, SEEDED_SAMPLES, fixed_batch, load_calibration, seeded_calibration,
    )

    if bias_correction not in BIAS_CORRECTION_MODES:
        raise UsageError(f"unknown bias correction '{bias_correction}'; choose one of {', '.join(BIAS_CORRECTION_MODES)}")
    if weight_rounding not in ROUNDING_MODES:
        raise UsageError(f"unknown weight rounding '{weight_rounding}'; choose one of {', '.join(ROUNDING_MODES)}")
    warnings = []
    batch = fixed_batch(ref_graph)
    if calibration is None:
        feeds, source = seeded_calibration(ref_graph, seed, SEEDED_SAMPLES * (batch or 1)), "seeded uniform inputs"
        warnings.append(NOT_REPRESENTATIVE)
    else:
        feeds = load_calibration(calibration, ref_graph, preprocess)
        source = str(calibration) if not isinstance(calibration, dict) else "the given arrays"
    count = len(next(iter(feeds.values())))
    if labels is not None and calibration is None:
        raise UsageError("--labels name the classes of the --calibration samples; give --calibration too")
    held_labels = load_labels(labels, count) if labels is not None else None
    calib, held, split_warnings = split_held_out(feeds, batch or 1)
    warnings += [f"int8: {w}" for w in split_warnings]
    reference = reference_outputs(ref_graph, ref_weights, held)
    if held_labels is not None:
        held_labels = held_labels[count - len(next(iter(held.values()))):]
    plan = plan_metrics(metric, ref_graph, max_error if max_error is not None else DEFAULT_MAX_ERROR, reference,
                        held_labels)
    probe = ErrorProbe(held, reference, batch, plan)
    report = Int8Report(method, source, len(next(iter(calib.values()))), len(next(iter(held.values()))),
                        max_error=max_error, warnings=warnings)
    quantizer = Quantizer(model, calib, method, activations, batch or 1,
                          locate=lambda layer: graph.layer(layer).where if layer in graph else "",
                          weight_rounding=weight_rounding, runtime=None if keep_slower else runtime)
    report.method = quantizer.method
    report.notes += quantizer.notes
    report.group_macs = macs_shares(graph, quantizer.groups)
    report.no_int8_kernel = dict(quantizer.kept_float)
    try:
        quantized, bias_note = _whole_int8(quantizer, probe, report, calib, batch or 1, bias_correction)
        misses = max_error is not None and not report.budget_error <= 1.0  # NaN misses
        if misses and quantizer.slower_in_int8:
            # the search below times every layer itself: it starts from every layer in int8 (drop_placement)
            quantizer.drop_placement()
            quantized, bias_note = _whole_int8(quantizer, probe, report, calib, batch or 1, bias_correction)
        report.slower_in_int8 = dict(quantizer.slower_in_int8)
        report.notes += [note for note in (bias_note, quantizer.placement_note()) if note]
        one_batch = next(batches(calib, batch or 1))
        speed, back = None, []
        if sensitivity or misses:
            report.layers = rank_layers(quantizer, probe, graph, quantized, jobs)
            speed = _layer_speed(quantizer, quantized, one_batch, bias_correction, threads)
            report.layers = fallback_order(report.layers, speed.layers)
        if misses:
            quantized, report.budget_error, report.float_layers = keep_sensitive_in_float(
                quantizer, probe.budget_error, report.layers, 1.0)
            quantized, report.budget_error, report.float_layers, back = back_to_int8(
                quantizer, probe.budget_error, report.layers, report.float_layers, quantized, report.budget_error)
            report.error = probe.error(quantized)
        if report.float_layers or quantizer.always_float:
            quantized = _islands_back_to_float(quantizer, quantized, report, probe,
                                               1.0 if max_error is not None else None, one_batch,
                                               None if keep_slower else speed, bias_correction, threads,
                                               timed=not keep_slower)
        if runtime == "onnxruntime-cpu":  # its hard-swishes in int8 (the other runtimes fuse their own)
            quantized = rewrite_if_within_budget(quantized, probe, report)
        back = [name for name in back if name not in report.float_layers]  # the islands rule may take some again
        if back:
            report.notes.append(f"int8: back in int8 after the search, the budget still met: {', '.join(back)}")
        for entry in report.layers:
            entry.precision = "float32" if entry.layer in report.float_layers else "int8"
        report.nothing_quantized = not any(n.op_type in ("QuantizeLinear", "DequantizeLinear")
                                           for n in quantized.graph.node)
        if report.nothing_quantized:  # every layer float32: the float32 model is the answer (Int8.convert)
            report.notes.append("int8: no layer is left in int8 (each is kept in float32: faster there, or by the "
                                "budget); the model is the float32 one")
        if timed:
            report.float_ms, report.int8_ms, cached = time_models(model, quantized, one_batch, threads)
            shape = "x".join(map(str, np.shape(next(iter(one_batch.values())))))
            report.timing = (f"ONNX Runtime CPU, {threads} thread{'s' if threads != 1 else ''}, input {shape}, "
                             f"interleaved medians{', cached' if cached else ''}")
        float32 = probe.outputs(quantizer.model)
    finally:
        quantizer.close()
    report.inputs = same_size_samples(held)  # the check runs at one size; the budget covered all
    int8 = probe.outputs(quantized)
    report.metrics = plan.results(reference, float32, int8)
    report.metric_choices = plan.describe()
    report.warnings += [f"int8: {w}" for w in plan.coarse_decisions(reference)]
    report.judge = metric_judge(plan)
    report.top1_agreement = top1_agreement(int8, reference, plan.class_axes())
    report.kernels = {k: v for k, v in session_kernels(quantized).items()
                      if k.startswith(("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "Conv", "Gemm"))}
    return quantized, report


def reference_outputs(ref_graph: LayerGraph, ref_weights: dict, held: dict) -> dict:
    """The float64 reference outputs of the held-out samples: all at once, or one batch at a time when the
    network fixes its batch (a Reshape to [1, C, -1]: one sample a run) or the samples differ in size (one
    sample a run; each output then one array if its sizes agree, else a SampleList)."""
    import torch

    from cnncomp.passes.budget import batches
    from cnncomp.precision.calibration import fixed_batch
    from cnncomp.run.reference import run_reference

    batch = fixed_batch(ref_graph)
    count = len(next(iter(held.values())))
    if not is_mixed(held) and batch in (None, count):
        return run_reference(ref_graph, ref_weights, held, dtype=torch.float64)
    parts = [run_reference(ref_graph, ref_weights, feeds, dtype=torch.float64)
             for feeds in batches(held, batch or 1)]
    return {name: collate([p[name] for p in parts]) for name in parts[0]}


def _whole_int8(quantizer: Quantizer, probe: ErrorProbe, report: Int8Report, calibration: dict, batch: int,
                bias_correction: str) -> tuple[onnx.ModelProto, str | None]:
    """Every layer the quantizer may quantize in int8, bias-corrected as asked, its error and budget error
    recorded in `report` as the full-int8 figures: (model, bias correction's note)."""
    quantized, note = quantizer.quantize(), None
    if bias_correction != "off":
        quantized, note = correct_biases(quantizer, quantized, calibration, batch, bias_correction == "auto")
    outputs = probe.outputs(quantized)  # one run judged both ways
    report.full_int8_error = report.error = probe.error(quantized, outputs)
    report.full_int8_budget_error = report.budget_error = probe.budget_error(quantized, outputs)
    return quantized, note


def correct_biases(quantizer: Quantizer, quantized: onnx.ModelProto, calibration: dict, batch: int,
                   only_if_better: bool) -> tuple[onnx.ModelProto, str | None]:
    """Bias correction (bias_correction.py) on the quantizer, for this and every later quantize(); with
    `only_if_better`, kept only where it lowers the error against the float32 model on calibration samples
    other than those its means were measured on."""
    from cnncomp.precision.bias_correction import MAX_SAMPLES

    count = len(next(iter(calibration.values())))
    half = max(batch, count // 2 // batch * batch) if only_if_better and count >= 2 * batch else count
    cap = max(batch, MAX_SAMPLES // batch * batch)
    estimate = {k: v[:min(half, cap)] for k, v in calibration.items()}
    check = {k: v[half:half + cap] if half < count else v[:cap] for k, v in calibration.items()}
    shifts = bias_corrections(quantizer.model, quantized, estimate, batch)
    if not shifts:
        return quantized, None  # no quantized conv/gemm: nothing to say
    quantizer.bias_shifts = shifts
    corrected = quantizer.quantize()
    if not only_if_better:
        return corrected, f"int8: bias correction applied to {len(shifts)} layers"
    names = dict.fromkeys(o.name for o in quantizer.model.graph.output)
    float_probe = ErrorProbe(check, ErrorProbe(check, names, batch).outputs(quantizer.model), batch)
    before, after = float_probe.error(quantized), float_probe.error(corrected)
    if after < before:
        return corrected, (f"int8: bias correction applied to {len(shifts)} layers (error against float32 on "
                           f"calibration samples {before:.3g} -> {after:.3g})")
    quantizer.bias_shifts = {}
    return quantized, (f"int8: bias correction not applied: it does not lower the error against float32 on "
                       f"calibration samples ({before:.3g} -> {after:.3g})")


def macs_shares(graph: LayerGraph, groups) -> dict[str, float]:
    """{layer group: its head layer's share of the network's MACs (batch 1)}; {} when the sizes are symbolic."""
    from cnncomp.ir.cost import graph_cost, layer_macs

    try:
        total = float(graph_cost(graph)[1])
        shares = {name: float(layer_macs(graph, graph.layer(name))) / total if name in graph else 0.0
                  for name in groups}
    except (TypeError, ValueError, ZeroDivisionError):  # a symbolic size has no number of MACs
        return {}
    return shares


def rank_layers(quantizer: Quantizer, probe: ErrorProbe, graph: LayerGraph, full_int8: onnx.ModelProto,
                jobs: int = 1) -> list[LayerSensitivity]:
    """Every conv/linear layer's int8 error alone (the relative L2 error of the outputs with only it in int8, on
    the probe's held-out samples; sensitivity.py derives each such model from `full_int8` and runs only what the
    layer changes, in `jobs` forked processes), most sensitive first."""
    from cnncomp.precision.sensitivity import errors_alone

    layers = [name for name in quantizable_layers(quantizer.model) if name not in quantizer.always_float]
    errors = errors_alone(quantizer.model, full_int8, quantizer.groups, layers, probe, jobs, quantizer.taps)
    shares = macs_shares(graph, layers)  # {} for symbolic sizes: no share known
    ranked = [LayerSensitivity(name, graph.layer(name).where if name in graph else "", errors[name],
                               shares.get(name)) for name in layers]
    return sorted(ranked, key=lambda l: -l.error_alone)


def keep_sensitive_in_float(quantizer: Quantizer, budget_error, ranked: list[LayerSensitivity],
                            budget: float = 1.0) -> tuple[onnx.ModelProto, float, list[str]]:
    """The fewest layers, first in `ranked`'s order, to keep in float32 so that `budget_error(model)` (the
    meter's, <= 1.0 fits) is within `budget`: (model, its budget error, layers).

    `ranked` comes in the order layers should go back (int8_speed.fallback_order: the error each removes per
    millisecond it adds). The budget engine's `fewest_within` searches the count (a binary search, checked,
    then one more layer at a time if the errors were not monotone; all in float32 always fits)."""
    names = [l.layer for l in ranked]
    models: dict[int, onnx.ModelProto] = {}

    def error_of(k: int) -> float:
        models[k] = quantizer.quantize(exclude=names[:k])
        return budget_error(models[k])

    k, error = fewest_within(len(names), error_of, budget)
    return models[k], error, names[:k]


BACK_TO_INT8_TRIES = 8  # layers tried back in int8 after the search, the largest time saved first


def back_to_int8(quantizer: Quantizer, budget_error, ranked: list[LayerSensitivity], float_layers: list[str],
                 model: onnx.ModelProto, error: float, budget: float = 1.0
                 ) -> tuple[onnx.ModelProto, float, list[str], list[str]]:
    """After the count search, the layers it kept in float32 that int8 runs faster are tried back in int8, the
    most time saved first (at most BACK_TO_INT8_TRIES), each left in int8 when `budget_error` of the model still
    fits `budget`: (model, its budget error, the layers still in float32, those put back).

    The search keeps a prefix of the fallback order, so a layer early in it (much error for its time) stays in
    float32 even when the layers after it, also in float32, already leave room for it: on PP-OCRv4's text
    detector the search ends at half its budget. A layer no faster in int8 is not tried (float32 costs it
    nothing), nor one without a time."""
    entries = {l.layer: l for l in ranked}

    def saving(name: str) -> float:
        saves = entries[name].int8_saves_ms if name in entries else None
        return saves if saves is not None else 0.0

    tried = sorted((n for n in float_layers if saving(n) > 0), key=lambda n: -saving(n))[:BACK_TO_INT8_TRIES]
    kept, back = list(float_layers), []
    for name in tried:
        trial = [n for n in kept if n != name]
        candidate = quantizer.quantize(exclude=trial)
        candidate_error = budget_error(candidate)
        if candidate_error <= budget:
            model, error, kept = candidate, candidate_error, trial
            back.append(name)
    return model, error, kept, back


def _layer_speed(quantizer: Quantizer, full_int8: onnx.ModelProto, feeds: dict, bias_correction: str,
                 threads: int):
    """Every layer group's float32 and int8 time (int8_speed.layer_speed, cached under the int8 settings)."""
    from cnncomp.precision.int8_speed import layer_speed

    settings = {"method": quantizer.method, "activations": quantizer.activations, "bias_correction": bias_correction,
                "kept_float": sorted(quantizer.always_float)}
    return layer_speed(quantizer.model, full_int8, quantizer.groups, feeds, settings, threads)


def _islands_back_to_float(quantizer: Quantizer, quantized: onnx.ModelProto, report: Int8Report, probe: ErrorProbe,
                           budget: float | None, feeds: dict, speed, bias_correction: str, threads: int,
                           timed: bool = True):
    """Apply the islands rule (int8_speed.quantized_islands) to the chosen model: the islands go to float32
    in report.float_layers, the model is quantized again and its budget error (`probe.budget_error`) measured:
    kept when within `budget` or no worse than the chosen model's. Without
    `timed`, only the islands without a conv go back (nothing is timed)."""
    from cnncomp.precision.int8_speed import boundary_times, cached_node_times, quantized_islands

    floats = set(report.float_layers) | quantizer.always_float
    islands = quantized_islands(quantizer.model, quantizer.groups, floats)  # those without a conv: no timing
    if timed and speed is None and any(g not in floats for g in quantizer.groups):
        # no search ran (it measures the times): `quantized` is the full int8 model, the one to profile
        speed = _layer_speed(quantizer, quantized, feeds, bias_correction, threads)
    if speed is not None:
        boundary = boundary_times(quantized, quantizer.groups, cached_node_times(quantized, feeds, threads))
        islands = quantized_islands(quantizer.model, quantizer.groups, floats, speed.layers, boundary)
    if not islands:
        return quantized
    float_layers = report.float_layers + [g for island in islands for g in island]
    candidate = quantizer.quantize(exclude=[g for g in float_layers if g in quantizer.groups])
    outputs = probe.outputs(candidate)
    error = probe.budget_error(candidate, outputs)
    if budget is not None and not error <= budget and not error <= report.budget_error:  # that of `quantized`
        added = ", ".join(float_layers[len(report.float_layers):])
        report.notes.append(f"int8: islands rule not applied: putting {added} back in float32 raises the error to "
                            f"{error:.3g}")
        return quantized
    report.islands, report.float_layers = islands, float_layers
    report.budget_error, report.error = error, probe.error(candidate, outputs)
    return candidate


def largest_error_jump(layers) -> tuple[str, float, float] | None:
    """From verify --per-layer checks (in graph order): the layer whose relative L2 error rises most above the
    largest error of the layers before it, as (layer, error before, error after)."""
    best, previous = None, 0.0
    for check in layers:
        error = check.comparison.rel_l2_err
        if best is None or error - previous > best[2] - best[1]:
            best = (check.reference_layer, previous, error)
        previous = max(previous, error)
    return best
