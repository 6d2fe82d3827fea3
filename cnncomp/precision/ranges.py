"""Activation ranges for int8 chosen per tensor to minimise its quantization error (`--calibration-method mse`).

ONNX Runtime's calibrators set every activation's range by one global rule (the observed min/max, a
percentile of |x|, the KL-optimal threshold). Here each tensor gets the range [lo, hi] that minimises the
mean squared error between the tensor and its int8 version, estimated from the tensor's histogram on the
calibration samples:

    error(lo, hi) = sum over values below lo of (x - lo)^2 + sum over values above hi of (x - hi)^2
                    + (values inside, exact zeros excepted) * step^2 / 12,     step = (hi - lo) / 255

(clipping error plus uniform rounding noise; an exact zero, which a ReLU makes of half its outputs, is
represented exactly by the zero point). Clipping a rare outlier makes the step of every other value
smaller, which is why the chosen range often lies well inside the observed one; for a distribution
without tails (a uniform) it stays at the observed range. uint8 activations (ONNX Runtime's CPU kernels)
search lo and hi separately (lo <= 0 <= hi, as the quantizer requires); int8 symmetric ones (TensorRT)
search one threshold t, range [-t, t], step 2t / 255.

The tensors and their observed extremes come from a min-max pass over the calibration samples, written as
the range cache quantize_static's MinMax calibrator would write (`write_minmax_cache`); one more pass over the
float model's intermediate outputs fills a histogram of HISTOGRAM_BINS bins per tensor over those extremes
(samples of different sizes run one at a time), and the chosen ranges are written back into the same cache,
which quantize_static then uses as they are.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from cnncomp.errors import CnnError

HISTOGRAM_BINS = 2048
CANDIDATES = 256  # clipping points tried on each side of zero
LEVELS = 255  # uint8 and int8 both have 256 levels: 255 steps between the ends of the range


@dataclass
class Histogram:
    """A tensor's values binned over [low, high] of its observed range; `zeros` counts the exact zeros."""

    counts: np.ndarray
    low: float
    high: float
    zeros: int = 0

    @property
    def centers(self) -> np.ndarray:
        edges = np.linspace(self.low, self.high, len(self.counts) + 1)
        return (edges[:-1] + edges[1:]) / 2

    def add(self, values: np.ndarray) -> None:
        values = np.ravel(values)
        self.zeros += int(np.count_nonzero(values == 0))
        width = (self.high - self.low) or 1.0
        # in the values' own float32 (a bin is 1/2048 of the range, far above float32's resolution): a float64
        # copy of every activation made the histogram pass of ResNet-50 twice as long
        kind = values.dtype if values.dtype in (np.float32, np.float64) else np.float64
        index = ((values - kind.type(self.low)) * kind.type(len(self.counts) / width)).astype(np.int32)
        np.clip(index, 0, len(self.counts) - 1, out=index)
        self.counts += np.bincount(index, minlength=len(self.counts))


def _tail_errors(centers: np.ndarray, counts: np.ndarray, cuts: np.ndarray, above: bool) -> np.ndarray:
    """For each cut, the squared clipping error of the values beyond it (above it, or below it)."""
    n, s1, s2 = (np.concatenate([[0.0], np.cumsum(counts * centers ** p)]) for p in (0, 1, 2))
    k = np.searchsorted(centers, cuts, side="right" if above else "left")
    if above:  # bins k.. lie above the cut
        N, S1, S2 = n[-1] - n[k], s1[-1] - s1[k], s2[-1] - s2[k]
    else:  # bins ..k-1 lie below it
        N, S1, S2 = n[k], s1[k], s2[k]
    return np.maximum(S2 - 2 * cuts * S1 + cuts ** 2 * N, 0.0)


def mse_range(histogram: Histogram, symmetric: bool = False) -> tuple[float, float]:
    """The range [lo, hi] that minimises the estimated int8 quantization error of the histogram's values
    (uint8 with a zero point: lo <= 0 <= hi chosen separately; symmetric: [-t, t])."""
    counts = histogram.counts.astype(np.float64)
    centers = histogram.centers
    low, high = min(histogram.low, 0.0), max(histogram.high, 0.0)
    if high - low <= 0 or counts.sum() == 0:
        return low, high
    inside_total = counts.sum() - histogram.zeros
    if symmetric:
        bound = max(-low, high)
        t = np.linspace(bound / CANDIDATES, bound, CANDIDATES)
        clip = _tail_errors(centers, counts, t, True) + _tail_errors(centers, counts, -t, False)
        error = clip + inside_total * (2 * t / LEVELS) ** 2 / 12
        best = t[int(np.argmin(error))]
        return -float(best), float(best)
    his = np.linspace(high / CANDIDATES, high, CANDIDATES) if high > 0 else np.zeros(1)
    los = np.linspace(low / CANDIDATES, low, CANDIDATES) if low < 0 else np.zeros(1)
    above = _tail_errors(centers, counts, his, True)
    below = _tail_errors(centers, counts, los, False)
    step = (his[None, :] - los[:, None]) / LEVELS
    error = below[:, None] + above[None, :] + inside_total * step ** 2 / 12
    i, j = np.unravel_index(int(np.argmin(error)), error.shape)
    return float(los[i]), float(his[j])


def tensor_histograms(model: onnx.ModelProto, extremes: dict[str, tuple[float, float]], calibration: dict,
                      batch: int = 1, bins: int = HISTOGRAM_BINS, taps=None) -> dict[str, Histogram]:
    """One histogram per named tensor of the float model over its observed [min, max], filled in one pass
    over the calibration samples (a graph input is binned from the samples themselves; `taps`: the model's
    float_taps.FloatTaps). The tensors of a run are binned in threads (numpy's array operations release the GIL;
    each histogram is filled by one thread at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    from cnncomp.passes.budget import batches
    from cnncomp.precision.float_taps import FloatTaps
    from cnncomp.run.parallel import in_worker

    taps = taps or FloatTaps(model)
    histograms = {name: Histogram(np.zeros(bins, np.int64), float(lo), float(hi))
                  for name, (lo, hi) in extremes.items()}
    threads = 1 if in_worker() else min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        for feeds in batches(calibration, batch):
            values = taps.run(feeds, list(histograms))
            work = [(histograms[name], value) for name, value in values.items()]
            list(pool.map(lambda item: item[0].add(np.asarray(item[1])), work))
    return histograms


def write_mse_ranges(cache: Path, model: onnx.ModelProto, calibration: dict, batch: int = 1,
                     symmetric: bool = False, taps=None) -> dict[str, tuple[float, float]]:
    """Replace the ranges of the min-max calibration cache at `cache` by those that minimise each tensor's
    quantization error on `calibration`; returns them."""
    return rewrite_cache(cache, lambda extremes: {
        name: mse_range(h, symmetric)
        for name, h in tensor_histograms(model, extremes, calibration, batch, taps=taps).items()})


def calibrated_tensors(model: onnx.ModelProto) -> list[str]:
    """The tensors ONNX Runtime's calibrator measures: the inputs and outputs of the nodes its quantizer has int8
    kernels for (CalibraterBase.select_tensors_to_calibrate with quantize_static's op types), less initializers;
    of these, it keeps the float ones (`write_minmax_cache` skips the others by their values)."""
    from cnncomp.precision.int8_support import quantizable_ops

    ops = quantizable_ops()
    initializers = {t.name for t in model.graph.initializer}
    return list(dict.fromkeys(name for node in model.graph.node if node.op_type in ops
                              for name in (*node.input, *node.output) if name and name not in initializers))


def write_minmax_cache(cache: Path, model: onnx.ModelProto, calibration: dict, batch: int = 1, taps=None) -> None:
    """The range cache quantize_static would write calibrating `model` on `calibration` with CalibrationMethod.MinMax
    (each float tensor of `calibrated_tensors`: its least and greatest value over the samples, a sample's NaN
    ignored as the calibrator's nanmin/nanmax do), computed from one pass of the model's float_taps.FloatTaps
    instead of the calibrator's own augmented model: on ResNet-50 2.3 s -> 1.2 s, and the session is the one the
    histograms and gptq's Hessians read next."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data

    from cnncomp.passes.budget import batches
    from cnncomp.precision.float_taps import FloatTaps

    taps = taps or FloatTaps(model)
    names = calibrated_tensors(model)
    lows: dict[str, list] = {}
    highs: dict[str, list] = {}
    for feeds in batches(calibration, batch):
        for name, value in taps.run(feeds, names).items():
            value = np.asarray(value)
            if value.dtype not in (np.float32, np.float16) or value.size == 0:
                continue
            lows.setdefault(name, []).append(value.min())
            highs.setdefault(name, []).append(value.max())
    ranges = {name: (np.array([np.nanmin(lows[name])], lows[name][0].dtype),
                     np.array([np.nanmax(highs[name])], highs[name][0].dtype)) for name in names if name in lows}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), cache)


def rewrite_cache(cache: Path, choose) -> dict[str, tuple[float, float]]:
    """Replace ranges of the min-max calibration cache at `cache` (written by quantize_static) by those
    `choose({tensor: its observed (min, max)})` returns for the tensors it names; returns them."""
    payload = json.loads(Path(cache).read_text())
    extremes = {name: (cache_number(entry["lowest"]), cache_number(entry["highest"])) for name, entry in payload["data"].items()
                if "lowest" in entry and "highest" in entry}
    bad = [name for name, pair in extremes.items() if not np.all(np.isfinite(pair))]
    if bad:  # the quantizer finds the layer and says where it is (int8.py, "not finite")
        raise CnnError(f"int8: the range of {bad[0]} is not finite on the calibration data")
    chosen = choose(extremes)
    for name, (lo, hi) in chosen.items():
        entry = payload["data"][name]
        entry["lowest"] = _like(entry["lowest"], lo)
        entry["highest"] = _like(entry["highest"], hi)
    tmp = Path(cache).with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(cache)
    return chosen


def cache_number(value) -> float:
    """A float from a cache entry: a number, or ONNX Runtime's {"CLS": "numpy.array", "data": ...}."""
    if isinstance(value, dict):
        return float(np.asarray(value["data"]).reshape(-1)[0])
    return float(value)


def _like(template, value: float):
    """`value` in the encoding of the cache entry it replaces."""
    if isinstance(template, dict):
        data = template["data"]
        return {**template, "data": [value] if isinstance(data, list) else value}
    return value
