"""Task metrics: what int8's error budget judges each output by (docs/precision.md, "Task metrics").

Relative L2 on raw outputs is the wrong currency for a classifier: quantized whole, a trained text-direction
classifier moved its scores by 0.1 relative L2 and kept 199 of 200 decisions. So every output gets a metric and a
threshold, and the budget is met when each output's metric is within its threshold:

- `rel-l2`     ||y - y_ref|| / ||y_ref||, threshold --max-error (today's budget; the default for every output not
               known as class scores);
- `max-abs`    max |y - y_ref|, threshold --max-error x max|y_ref| unless given;
- `top1`       decisions (argmax along the class axis) changed, a fraction: 0.01 = one point (default 0.01);
               [N, C] scores and per-pixel class maps [N, C, H, W] (each pixel a decision);
- `topK`, `topk(K)`  the reference's top-1 class missing from the output's top K (default 0.01);
- `iou(T)`     1 - IoU of the maps thresholded at T (default 0.5; error default 0.02): probability maps of
               segmentation and detection heads;
- `psnr`       peak signal-to-noise ratio in dB, higher is better (the peak: the reference's range; default 40);
- `accuracy`   with --labels: points of accuracy lost against the labels, int8 against the float reference.

Few samples: 4 held-out samples make a raw agreement count useless (one flip is 25 points, none proves nothing).
`top1`, `topK` and `accuracy` therefore report an estimate that blends the observed flips with the flips expected
from each sample's margin: sample i, whose reference puts its top-1 class m_i above the runner-up, flips with
probability p_i = P(noise > m_i) under Gaussian noise on the score difference with standard deviation sqrt(2) s,
where s is the output's measured noise (the RMS of y - y_ref per score, each sample's common shift removed: it
changes no decision). The estimate is (flips + PRIOR_SAMPLES * mean p_i) / (n + PRIOR_SAMPLES): the margin model
counts as PRIOR_SAMPLES (32) samples, so it carries a handful of samples and the observed flips carry hundreds.

The budget error (`MetricPlan.budget_error`) is the worst over outputs of value / threshold (psnr: the RMS error over
the RMS error its threshold allows, 10^((threshold - psnr) / 20)), so 1.0 is the edge, NaN never fits, and with
rel-l2 everywhere it is exactly relative_output_error / --max-error (the budget of before).

The spelling, shared by `--metric` and the API's `metric=` (`parse_metric`):

    spec   := item ("," item)*
    item   := [OUTPUT "="] metric [("<=" | ">=") NUMBER]
    metric := "auto" | "rel-l2" | "max-abs" | "top1" | "top" K | "topk(" K ")" | "iou" ["(" T ")"] | "psnr" | "accuracy"

An item without OUTPUT sets the metric of every output no other item names; outputs left unnamed get `auto`.
`<=` bounds an error metric, `>=` a higher-is-better one (psnr). The API also takes a callable
`fn(reference_outputs: dict, outputs: dict) -> float` (lower is better, judged against --max-error), or a
`(fn, threshold)` pair.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cnncomp.errors import CnnError, UsageError

# how many samples the margin model of the few-samples estimate counts as: on synthetic scores (10 classes, Gaussian
# or Student-t noise, a 4% flip rate) 32 gave the lowest mean error against the true rate at 16 and 64 samples among
# 0 (counting alone), 16, 32 and 64, short of the model alone, which a real noise unlike the model's would mislead
PRIOR_SAMPLES = 32
TIE = 1e-6  # scores this close to the top one (a share of the output's largest |score|) are tied with it
DECISION_THRESHOLD = 0.01  # top1/topk/accuracy: one point of decisions
# an output of a classifier head whose name says it regresses something is not class scores
REGRESSION_NAMES = re.compile(r"box|loc|landmark|lmk|keypoint|kpt|offset|delta|coord|regress|pose|depth", re.I)


@dataclass
class Measured:
    """One metric's value on one output (in the metric's unit) and the words that show it."""

    value: float
    text: str


def _flat(values) -> np.ndarray:
    """All values of an output as one float64 vector (a SampleList's samples concatenated)."""
    if isinstance(values, list):
        return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in values])
    return np.ravel(np.asarray(values, np.float64))


def decision_rows(values, axis: int) -> np.ndarray:
    """The decisions of an output as rows [decisions, classes]: `axis` moved last (one row per sample, or per
    pixel of a class map); a SampleList's samples each so."""
    if isinstance(values, list):
        return np.concatenate([decision_rows(v, axis) for v in values])
    values = np.asarray(values, np.float64)
    return np.moveaxis(values, axis, -1).reshape(-1, values.shape[axis])


def tied_with_top(reference: np.ndarray) -> np.ndarray:
    """Per row [decisions, classes], the classes tied with the top one: within TIE x the output's largest |score|
    (a relu'd head gives exact ties; float32 may break them either way, which changes no decision)."""
    tolerance = TIE * float(np.abs(reference).max(initial=0.0))
    return reference >= reference.max(axis=1, keepdims=True) - tolerance


def changed_decisions(reference: np.ndarray, output: np.ndarray, k: int = 1) -> np.ndarray:
    """Per row, whether the output's top k holds no class tied for the reference's top one."""
    top = np.argsort(-output, axis=1, kind="stable")[:, :k]
    return ~np.take_along_axis(tied_with_top(reference), top, axis=1).any(axis=1)


def flip_probabilities(reference: np.ndarray, output: np.ndarray, k: int = 1) -> np.ndarray:
    """Per row, the chance that the reference's top class leaves the top k under the measured noise: its margin
    over the k-th best class not tied with it, over sqrt(2) x the RMS noise per score (each row's common shift
    removed)."""
    noise = output - reference
    noise = noise - noise.mean(axis=1, keepdims=True)
    sigma = float(np.sqrt(np.mean(noise ** 2))) if noise.size else 0.0
    competitors = -np.sort(-np.where(tied_with_top(reference), -np.inf, reference), axis=1)
    if reference.shape[1] <= k or sigma == 0.0:
        return np.zeros(len(reference))
    margins = reference.max(axis=1) - competitors[:, k - 1]  # inf where fewer than k classes compete
    return np.array([0.5 * math.erfc(m / (2 * sigma)) for m in margins])  # P(N(0, 2 s^2) > m)


def _points(rate: float) -> str:
    """A rate in points for people: two significant digits, and "<0.001" below what any sample count resolves."""
    return "<0.001" if 0 < rate * 100 < 0.001 else f"{rate * 100:.2g}"


def blended_rate(observed: float, expected: float, count: int) -> float:
    """The few-samples estimate: observed and expected rates blended, the expected counting as PRIOR_SAMPLES."""
    return (observed * count + expected * PRIOR_SAMPLES) / (count + PRIOR_SAMPLES)


class Metric:
    """One task metric on one output. `measure` gives its value (error metrics: lower is better),
    `normalized` that value against a threshold (<= 1 fits), `default_threshold` the threshold unless given."""

    name = ""
    higher_is_better = False
    takes = ""  # the parameter in parentheses, in words ("" takes none)
    help = ""

    def __init__(self, arg: float | None = None, axis: int = 1):
        self.arg, self.axis = arg, axis

    @property
    def label(self) -> str:
        return f"{self.name}({self.arg:g})" if self.takes and self.arg is not None else self.name

    def default_threshold(self, max_error: float, reference) -> float:
        return DECISION_THRESHOLD

    def measure(self, reference, output) -> Measured:
        raise NotImplementedError

    def normalized(self, value: float, threshold: float) -> float:
        if math.isnan(value):
            return math.nan
        if self.higher_is_better:  # psnr: the RMS error over the one its threshold allows
            return 0.0 if value == math.inf else 10 ** ((threshold - value) / 20)
        return value / threshold if threshold > 0 else (0.0 if value <= 0 else math.inf)

    def bound(self, threshold: float) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {threshold:g}"


class RelL2(Metric):
    name = "rel-l2"
    help = "relative L2 error, threshold --max-error"

    def default_threshold(self, max_error, reference):
        return max_error

    def measure(self, reference, output):
        ref, out = _flat(reference), _flat(output)
        value = float(np.linalg.norm(out - ref) / max(float(np.linalg.norm(ref)), 1e-30))
        return Measured(value, f"relative L2 {value:.3g}")


class MaxAbs(Metric):
    name = "max-abs"
    help = "largest absolute difference, threshold --max-error x max|reference| unless given"

    def default_threshold(self, max_error, reference):
        return max_error * max(float(np.abs(_flat(reference)).max(initial=0.0)), 1e-30)

    def measure(self, reference, output):
        value = float(np.abs(_flat(output) - _flat(reference)).max(initial=0.0))
        return Measured(value, f"max abs {value:.3g}")


class TopK(Metric):
    """Top-1 agreement (k = 1) or the reference's top-1 class within the output's top k, as the few-samples
    estimate of the rate of changed decisions."""

    name = "topk"
    takes = "K, the classes allowed"
    help = "decisions changed: the reference's top-1 class outside the output's top K (0.01 = one point)"

    def __init__(self, arg=None, axis=1):
        super().__init__(int(arg) if arg is not None else 1, axis)

    @property
    def label(self) -> str:
        return f"top{self.arg}"

    def measure(self, reference, output):
        ref, out = decision_rows(reference, self.axis), decision_rows(output, self.axis)
        k = self.arg
        n, flips = len(ref), int(changed_decisions(ref, out, k).sum())
        value = blended_rate(flips / max(n, 1), float(flip_probabilities(ref, out, k).mean()) if n else 0.0, n)
        return Measured(value, f"{flips} of {n} decisions changed (estimate {_points(value)}%)")


class Accuracy(Metric):
    """Points of accuracy against true labels lost by the output against the float reference (few-samples
    estimate: the observed loss blended with the expected one, the reference-correct samples' flip chances)."""

    name = "accuracy"
    help = "with --labels: points of accuracy lost against the float reference (0.01 = one point)"

    def __init__(self, labels: np.ndarray, axis: int = 1):
        super().__init__(None, axis)
        self.labels = np.asarray(labels)

    def measure(self, reference, output):
        ref, out = decision_rows(reference, self.axis), decision_rows(output, self.axis)
        if len(ref) != len(self.labels):
            raise CnnError(f"accuracy: {len(self.labels)} labels for {len(ref)} decisions (labels name one class "
                           "per sample of [N, classes] scores)")
        right_ref, right_out = np.argmax(ref, 1) == self.labels, np.argmax(out, 1) == self.labels
        n = len(ref)
        expected = float((right_ref * flip_probabilities(ref, out)).mean()) if n else 0.0
        value = blended_rate(float(right_ref.mean() - right_out.mean()) if n else 0.0, expected, n)
        return Measured(value, f"accuracy {right_out.mean():.1%} against the reference's {right_ref.mean():.1%} "
                               f"(loss estimate {_points(value)} points)")


class IoU(Metric):
    name = "iou"
    takes = "T, the binarisation threshold"
    help = "1 - IoU of the maps thresholded at T (default 0.5), error threshold 0.02"

    def __init__(self, arg=None, axis=1):
        super().__init__(0.5 if arg is None else float(arg), axis)

    def default_threshold(self, max_error, reference):
        return 0.02

    def measure(self, reference, output):
        ref, out = _flat(reference) > self.arg, _flat(output) > self.arg
        union = int((ref | out).sum())
        iou = int((ref & out).sum()) / union if union else 1.0
        return Measured(1.0 - iou, f"IoU {iou:.4g} at {self.arg:g}")


class Psnr(Metric):
    name = "psnr"
    higher_is_better = True
    help = "peak signal-to-noise ratio in dB, the peak the reference's range; higher is better (default >= 40)"

    def default_threshold(self, max_error, reference):
        return 40.0

    def measure(self, reference, output):
        ref, out = _flat(reference), _flat(output)
        mse = float(np.mean((out - ref) ** 2)) if ref.size else 0.0
        peak = float(ref.max() - ref.min()) if ref.size else 0.0
        peak = peak or float(np.abs(ref).max(initial=0.0)) or 1.0
        value = math.inf if mse == 0 else (math.nan if math.isnan(mse) else 10 * math.log10(peak ** 2 / mse))
        return Measured(value, f"PSNR {value:.3g} dB")


METRICS: dict[str, type[Metric]] = {m.name: m for m in (RelL2, MaxAbs, TopK, IoU, Psnr, Accuracy)}
KNOWN = "auto, rel-l2, max-abs, top1, topK (top5), topk(K), iou(T), psnr, accuracy (with --labels)"


# ---- the spelling ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricItem:
    """One item of a --metric spec: the output it names (None: the others), the metric, its argument, threshold."""

    output: str | None
    name: str
    arg: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class MetricSpec:
    """A parsed --metric (its items), or the API's callable with its threshold (None: --max-error)."""

    items: tuple[MetricItem, ...] = ()
    function: Callable | None = None
    threshold: float | None = None


_ITEM = re.compile(r"\s*(?:(?P<output>[^=<>(),]+?)\s*=(?!=))?\s*(?P<name>[A-Za-z][A-Za-z0-9_-]*)\s*"
                   r"(?:\(\s*(?P<arg>[^()]*?)\s*\)\s*)?(?:(?P<cmp><=|>=|<|>)\s*(?P<threshold>[^,]*?))?\s*")


def _located(text: str, column: int, problem: str) -> UsageError:
    """A usage error that shows the spec with a caret under the column (0-based) it is about."""
    return UsageError(f"--metric: {problem} at column {column + 1}\n  {text}\n  {' ' * column}^")


def _items(text: str):
    """(item text, its column) for every comma-separated item of `text` (commas inside parentheses kept)."""
    depth, start = 0, 0
    for i, ch in enumerate(text + ","):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth <= 0:
            yield text[start:i], start
            start, depth = i + 1, 0


def parse_metric(text: str) -> MetricSpec:
    """`--metric` text as a MetricSpec (grammar in the module docstring); a bad spec is a UsageError with a caret."""
    items = []
    if not str(text).strip():
        raise UsageError(f"--metric takes a metric such as top1, logits=top1,boxes=rel-l2 or psnr>=40; got '{text}'")
    for part, column in _items(str(text)):
        match = _ITEM.fullmatch(part)
        if match is None or not part.strip():
            raise _located(text, column + len(part) - len(part.lstrip()),
                           f"cannot read '{part.strip()}' as [OUTPUT=]METRIC[<=NUMBER]")
        items.append(_item(text, column, match))
    seen = set()
    for item in items:
        if item.output in seen:
            raise UsageError(f"--metric: {'output ' + repr(item.output) if item.output else 'the default metric'} "
                             f"is given twice in '{text}'")
        seen.add(item.output)
    return MetricSpec(tuple(items))


def _item(text: str, column: int, match) -> MetricItem:
    name, arg, cmp = match["name"].lower(), match["arg"], match["cmp"]
    where = column + match.start("name")
    top = re.fullmatch(r"top(\d+)", name)
    if top:
        if arg is not None:
            raise _located(text, where, f"'{name}' takes no argument (topk({arg}) does)")
        name, arg = "topk", top[1]
    if name != "auto" and name not in METRICS:
        raise _located(text, where, f"unknown metric '{match['name']}'; known: {KNOWN}")
    metric = METRICS.get(name)
    value = None
    if arg is not None:
        if metric is None or not metric.takes:
            raise _located(text, column + match.start("arg"), f"'{name}' takes no argument")
        try:
            value = float(arg)
        except ValueError:
            value = math.nan
        if name == "topk" and not (value >= 1 and value == int(value)):
            raise _located(text, column + match.start("arg"), f"topk takes a whole number of classes 1 or more, "
                                                              f"got '{arg}'")
        if not math.isfinite(value):
            raise _located(text, column + match.start("arg"), f"{name} takes a number ({metric.takes}), got '{arg}'")
    elif name == "topk":
        raise _located(text, where, "topk needs its K: topk(5) or top5")
    threshold = None
    if cmp is not None:
        at = column + match.start("cmp")
        if name == "auto":
            raise _located(text, at, "auto takes no threshold (give the metric: top1<=0.02)")
        wanted = ">=" if metric.higher_is_better else "<="
        if cmp != wanted:
            raise _located(text, at, f"{match['name']} is bounded with {wanted} ({'higher' if wanted == '>=' else 'lower'} is "
                                     f"better), not {cmp}")
        try:
            threshold = float(match["threshold"])
        except ValueError:
            threshold = math.nan
        if not math.isfinite(threshold) or (threshold < 0 and not metric.higher_is_better):
            raise _located(text, column + match.start("threshold"), f"bad threshold '{match['threshold']}': a finite "
                                                                    "number (0 or more for an error)")
    output = match["output"].strip() if match["output"] else None
    return MetricItem(output, name, value, threshold)


def metric_spec(value) -> MetricSpec:
    """The `metric` option's value (text, a callable, a (callable, threshold) pair, a MetricSpec) as a MetricSpec."""
    if isinstance(value, MetricSpec):
        return value
    if value is None:
        return MetricSpec()
    if isinstance(value, str):
        return parse_metric(value)
    if callable(value):
        return MetricSpec(function=value)
    if isinstance(value, tuple) and len(value) == 2 and callable(value[0]) and \
            isinstance(value[1], (int, float)) and not isinstance(value[1], bool) and value[1] > 0:
        return MetricSpec(function=value[0], threshold=float(value[1]))
    raise UsageError(f"--metric takes a metric spec (top1, logits=top1,boxes=rel-l2, psnr>=40), a callable "
                     f"fn(reference_outputs, outputs) -> float, or (fn, threshold > 0); got {value!r}")


def metric_problem(value) -> str | None:
    """The Option check: what is wrong with a `metric` value, or None."""
    try:
        metric_spec(value)
    except UsageError as e:
        return e.message.removeprefix("--metric").lstrip(": ")
    return None


# ---- which metric each output gets ---------------------------------------------------------------------


def class_scores(graph, output: str) -> tuple[int | None, str]:
    """(the class axis, or None, and why) for one output of `graph`: class scores are the output of a classifier
    head (an op whose `decision_axis` facet names an axis: softmax, linear), or of layers that only reshape its
    values (`keeps_values`: flatten, identity) keeping the class axis, with more than one score along it, unless
    the output's name says it regresses something (boxes, landmarks, offsets)."""
    layer = graph.layer(graph.outputs[graph.output_names.index(output)])
    shape = "[" + ", ".join(map(str, layer.shape)) + "]"
    head, axis = _head(graph, layer)
    if head is None:
        return None, f"regression: {layer.op} {layer.name} {shape} is no classifier head"
    through = f" (through {layer.op} {layer.name})" if head is not layer else ""
    said = f"{head.op} {head.name} {shape}{through}"
    if REGRESSION_NAMES.search(output):
        return None, f"regression: {said}, but its name says it regresses values"
    if not (isinstance(layer.shape[axis], int) and layer.shape[axis] > 1):
        return None, f"regression: {said} has one score along axis {axis}"
    return axis, f"class scores: {said} along axis {axis}"


def _head(graph, layer):
    """(the classifier head behind `layer`, the class axis in `layer`'s output), looking back through layers that
    only reshape values as long as the class axis stays whole (the same shape, or the head's last axis kept last);
    (None, None) when there is none."""
    from cnncomp.ops.registry import get_op

    head = layer
    while True:
        op = get_op(head.op)
        axis = op.decision_axis(head.attrs, len(head.shape)) if op is not None else None
        if axis is not None:
            break
        if op is None or not op.keeps_values or len(graph.input_names(head.name)) != 1:
            return None, None
        head = graph.inputs_of(head.name)[0]
    if head is layer or tuple(head.shape) == tuple(layer.shape):
        return head, axis
    if axis == len(head.shape) - 1 and layer.shape[-1] == head.shape[-1]:
        return head, len(layer.shape) - 1
    return None, None


@dataclass
class Assignment:
    """One output's metric and threshold in a plan, and why it got that metric; a callable covers all outputs."""

    output: str  # the output, or "*" for the API's callable over all outputs
    metric: Metric | None
    threshold: float
    why: str
    function: Callable | None = None

    @property
    def label(self) -> str:
        return self.metric.label if self.metric is not None else getattr(self.function, "__name__", "callable")

    def measure(self, reference: dict, outputs: dict) -> Measured:
        if self.function is None:
            return self.metric.measure(reference[self.output], outputs[self.output])
        try:
            value = float(self.function(reference, outputs))
        except Exception as e:  # the user's function: say whose error it is
            raise CnnError(f"the metric function {self.label} failed: {type(e).__name__}: {e}") from None
        return Measured(value, f"{self.label} {value:.4g}")

    def normalized(self, value: float) -> float:
        if self.metric is None:
            return math.nan if math.isnan(value) else value / self.threshold
        return self.metric.normalized(value, self.threshold)

    def bound(self) -> str:
        return self.metric.bound(self.threshold) if self.metric is not None else f"<= {self.threshold:g}"


@dataclass
class MetricResult:
    """One output's metric on the float32 model and on the converted one, against its threshold."""

    output: str
    metric: str
    threshold: float
    bound: str
    why: str
    float32: Measured
    converted: Measured
    budget_error: float  # the converted model's value / threshold (<= 1 fits)

    @property
    def fits(self) -> bool:
        return self.budget_error <= 1.0

    def line(self) -> str:
        return (f"{self.output}: {self.metric} ({self.why}): {self.converted.text}, float32 {self.float32.text}; "
                f"{self.metric} {self.bound} {'fits' if self.fits else 'MISSES'}")

    def to_json(self) -> dict:
        def number(v):
            return v if math.isfinite(v) else None

        return {"metric": self.metric, "threshold": self.threshold, "bound": self.bound, "why": self.why,
                "float32": number(self.float32.value), "int8": number(self.converted.value),
                "float32_text": self.float32.text, "int8_text": self.converted.text,
                "budget_error": number(self.budget_error), "fits": self.fits}


def worst_budget_error(budget_errors) -> float:
    """Several outputs' budget errors taken together: the worst, 0 for none, NaN as soon as one is NaN (NaN
    never fits)."""
    worst = 0.0
    for error in budget_errors:
        if math.isnan(error):
            return math.nan
        worst = max(worst, error)
    return worst


@dataclass
class MetricPlan:
    """Every output's metric and threshold: the budget error of a model's outputs, and the per-output results."""

    assignments: list[Assignment] = field(default_factory=list)

    def budget_error(self, reference: dict, outputs: dict) -> float:
        """The worst over outputs of metric / threshold (<= 1 fits); NaN when any is NaN."""
        return worst_budget_error(a.normalized(a.measure(reference, outputs).value) for a in self.assignments)

    def results(self, reference: dict, float32: dict, converted: dict) -> list[MetricResult]:
        out = []
        for a in self.assignments:
            got = a.measure(reference, converted)
            out.append(MetricResult(a.output, a.label, a.threshold, a.bound(), a.why, a.measure(reference, float32),
                                    got, a.normalized(got.value)))
        return out

    def coarse_decisions(self, reference: dict) -> list[str]:
        """Warnings for the decision outputs (top-k, accuracy) whose held-out decisions are too few for their
        threshold: one changed decision is more than the threshold allows, so the verdict leans on the margin
        model of the few-samples estimate, not on observed flips."""
        warnings = []
        for a in self.assignments:
            if not isinstance(a.metric, (TopK, Accuracy)) or a.output not in reference:
                continue
            count = len(decision_rows(reference[a.output], a.metric.axis))
            if count and 1 / count > a.threshold:
                wanted = math.ceil(1 / a.threshold)
                warnings.append(
                    f"{a.output}: {count} held-out decisions, so one changed decision is {100 / count:.2g} points "
                    f"against the {a.label} threshold of {100 * a.threshold:.2g} point{'' if 100 * a.threshold == 1 else 's'}; "
                    f"the budget leans on the margin "
                    f"estimate. A quarter of the calibration samples is held out: give at least {4 * wanted} "
                    f"samples for {wanted} held-out decisions to count flips")
        return warnings

    def class_axes(self) -> dict[str, int]:
        """{output: class axis} of the outputs judged by decisions (top-k, accuracy)."""
        return {a.output: a.metric.axis for a in self.assignments if isinstance(a.metric, (TopK, Accuracy))}

    def describe(self) -> list[str]:
        """One line per output: the metric it is judged by, and why."""
        return [f"{a.output}: {a.label} {a.bound()} ({a.why})" for a in self.assignments]


def plan_metrics(spec, graph, max_error: float, reference: dict, labels: np.ndarray | None = None) -> MetricPlan:
    """Each output of `graph` with its metric and threshold, from the `metric` option's value (`spec`), the
    budget `max_error` (rel-l2's threshold), the reference outputs (max-abs's default scale) and the labels of
    the held-out samples (accuracy). An unknown output, accuracy without labels, labels without an output to
    label are UsageErrors."""
    spec = metric_spec(spec)
    names = list(graph.output_names)
    if spec.function is not None:
        threshold = spec.threshold if spec.threshold is not None else max_error
        label = getattr(spec.function, "__name__", "callable")
        return MetricPlan([Assignment("*", None, threshold, f"the given function {label}", spec.function)])
    by_output = {item.output: item for item in spec.items}
    for name in by_output:
        if name is not None and name not in names:
            raise UsageError(f"--metric names output '{name}'; the network's outputs are {', '.join(names)}")
    default = by_output.get(None, MetricItem(None, "auto"))
    plan = MetricPlan()
    for name in names:
        item = by_output.get(name, default)
        metric, why = _choose(item, graph, name, labels)
        threshold = item.threshold if item.threshold is not None else metric.default_threshold(max_error,
                                                                                              reference[name])
        plan.assignments.append(Assignment(name, metric, threshold, why))
    if labels is not None and not any(isinstance(a.metric, Accuracy) for a in plan.assignments):
        raise UsageError("--labels: no output is judged by accuracy (no class scores found; name the output: "
                         "--metric NAME=accuracy)")
    if sum(isinstance(a.metric, Accuracy) for a in plan.assignments) > 1:
        raise UsageError("--labels label one output; several are class scores: name it with --metric NAME=accuracy")
    return plan


def _choose(item: MetricItem, graph, name: str, labels) -> tuple[Metric, str]:
    """The metric of one output for one spec item, and why."""
    axis, why = class_scores(graph, name)
    if item.name == "auto":
        if axis is None:
            return RelL2(), why
        if labels is not None:
            return Accuracy(labels, axis), why + ", with --labels"
        return TopK(1, axis), why
    given = f"given; {why}"
    if item.name == "accuracy":
        if labels is None:
            raise UsageError(f"--metric {name}=accuracy needs --labels (the true class of every calibration sample)")
        return Accuracy(labels, axis if axis is not None else 1), given
    if item.name == "topk":
        return TopK(item.arg, axis if axis is not None else 1), given
    return METRICS[item.name](item.arg), given


# ---- labels --------------------------------------------------------------------------------------------


def load_labels(labels, count: int) -> np.ndarray:
    """The true class of each of `count` calibration samples: a .npy of integers, a .txt with one per line, or
    (API) a sequence; a wrong count or a value that is not a class index is a CnnError naming the file and line."""
    from pathlib import Path

    if isinstance(labels, (str, Path)):
        path = Path(labels)
        if not path.is_file():
            raise CnnError(f"--labels {path}: no such file (a .npy of integers or a .txt with one per line)")
        if path.suffix.lower() == ".npy":
            try:
                values = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise CnnError(f"{path}: not a .npy array of labels ({e})") from None
            where = str(path)
        else:
            values, where = _text_labels(path), str(path)
    else:
        values, where = np.asarray(labels), "the labels given"
    values = np.asarray(values)
    if values.ndim != 1 or (values.size and not np.issubdtype(values.dtype, np.integer)):
        raise CnnError(f"{where}: labels are one integer class index per sample, got an array of {values.dtype} "
                       f"shaped {list(values.shape)}")
    if len(values) != count:
        raise CnnError(f"{where}: {len(values)} labels for {count} calibration samples (one per sample, in order)")
    if values.size and values.min() < 0:
        raise CnnError(f"{where}: label {int(values.min())} at sample {int(np.argmin(values))} is negative")
    return values.astype(np.int64)


def _text_labels(path) -> np.ndarray:
    values = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        text = line.split("#")[0].strip()
        if not text:
            continue
        try:
            values.append(int(text))
        except ValueError:
            raise CnnError(f"{path}:{number}:1: a label is one integer class index per line, got '{text}'") from None
    return np.array(values, np.int64)
