"""What int8 quantization did, for the user: the report of one quantization (`Int8Report`: method, data,
errors against the budget, each output's task metric, the layers kept in float32 and why, times against
float32) and its per-layer rows (`LayerSensitivity`). The summary and the `--stats` table are printed from
it, `--json` writes its `to_json()`, and `shortfall()` is the one line that says why under INT8_MACS_GOAL of
the MACs run in int8.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cnncomp.verification.metrics import MetricResult

# issue 19's goal: at least this share of the MACs in int8; under it the summary says why (Int8Report.shortfall)
INT8_MACS_GOAL = 0.8


@dataclass
class LayerSensitivity:
    """One conv/linear layer's int8 error alone, and the precision the budget search gave it."""

    layer: str
    location: str
    error_alone: float
    macs_share: float | None  # of the network's MACs (None: not known, symbolic sizes)
    precision: str = "int8"
    float_ms: float | None = None  # its time per run in float32 and in int8 (int8_speed.py), when measured
    int8_ms: float | None = None

    @property
    def int8_saves_ms(self) -> float | None:
        """What int8 saves per run against float32 (negative: slower in int8); None where not timed."""
        if self.float_ms is None or self.int8_ms is None or self.float_ms <= 0:
            return None
        return self.float_ms - self.int8_ms


@dataclass
class Int8Report:
    """What int8 quantization did: the method, the data, the errors, the layers kept in float32."""

    method: str
    calibration: str
    samples: int
    held_out: int
    error: float = 0.0  # relative L2 of the final model on the held-out inputs
    full_int8_error: float = 0.0
    max_error: float | None = None
    layers: list[LayerSensitivity] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)
    top1_agreement: dict[str, float] = field(default_factory=dict)
    kernels: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    inputs: dict = field(default_factory=dict, repr=False)  # the held-out samples the error was measured on
    no_int8_kernel: dict[str, str] = field(default_factory=dict)  # layer -> why ONNX Runtime runs it in float32
    slower_in_int8: dict[str, str] = field(default_factory=dict)  # layer -> why the runtime is faster in float32
    budget_error: float = 0.0  # the final model's worst metric / threshold over outputs (<= 1 fits)
    full_int8_budget_error: float = 0.0
    metrics: list[MetricResult] = field(default_factory=list)  # per output: float32 and int8 against the threshold
    metric_choices: list[str] = field(default_factory=list)  # per output: its metric and why it got it
    judge: object = field(default=None, repr=False)  # the plan's verdict on a check's outputs (metric_judge)
    islands: list[list[str]] = field(default_factory=list)  # int8 islands the islands rule put back in float32
    float_ms: float | None = None  # the whole float32 and final int8 models' median times per run (not-faster rule)
    int8_ms: float | None = None
    timing: str = ""  # how they were timed, in words
    written: str = "int8"  # the precision of the model written: fp32 when int8 is not faster (Int8.convert)
    nothing_quantized: bool = False  # every layer ended in float32 (the model has no Q/DQ node)
    group_macs: dict[str, float] = field(default_factory=dict, repr=False)  # every layer group's share of the MACs

    @property
    def faster(self) -> bool | None:
        """Whether the int8 model is measurably faster than float32 (None: not timed; False: nothing quantized,
        whatever the timing's noise says)."""
        from cnncomp.precision.int8_speed import int8_is_faster

        if self.nothing_quantized:
            return False
        return None if self.float_ms is None else int8_is_faster(self.float_ms, self.int8_ms)

    @property
    def ok(self) -> bool:
        return self.max_error is None or self.budget_error <= 1.0  # NaN fails

    def to_json(self) -> dict:
        """The --json part of int8: errors, budget, the layers kept in float32 and every output's metric."""
        def number(v):
            return v if v is not None and np.isfinite(v) else None

        return {"method": self.method, "calibration": self.calibration, "samples": self.samples,
                "held_out": self.held_out, "error": number(self.error), "full_int8_error": number(self.full_int8_error),
                "max_error": self.max_error, "budget_error": number(self.budget_error),
                "full_int8_budget_error": number(self.full_int8_budget_error), "ok": self.ok,
                "float_layers": self.float_layers, "metrics": {m.output: m.to_json() for m in self.metrics},
                "islands": self.islands, "float_ms": self.float_ms, "int8_ms": self.int8_ms, "written": self.written,
                "int8_macs_share": number(self.int8_macs_share), "shortfall": self.shortfall()}

    @property
    def int8_macs_share(self) -> float | None:
        """The share of the network's MACs that the written model runs in int8 (None: not known, e.g. symbolic
        sizes; 0 when float32 was written)."""
        return 0.0 if self.written != "int8" else self.int8_model_macs_share

    @property
    def int8_model_macs_share(self) -> float | None:
        """The share of the MACs that the int8 model runs in int8, whether or not it was written (None: not
        known)."""
        if not self.group_macs:
            return None
        floats = set(self.float_layers) | set(self.no_int8_kernel) | set(self.slower_in_int8)
        return max(0.0, 1.0 - sum(share for group, share in self.group_macs.items() if group in floats))

    def float32_reasons(self) -> dict[str, list[str]]:
        """Why each layer group of the int8 model runs in float32, by reason: "no-kernel" (ONNX Runtime has no
        usable int8 kernel for it), "slower" (the fallback search put it back first since ONNX Runtime runs it
        slower in int8 here), "metric" (the budget needed it in float32), "islands" (the islands rule),
        "placement" (int8_support's placement rules: the runtime runs it faster in float32)."""
        island = {g for members in self.islands for g in members}
        entries = {l.layer: l for l in self.layers}

        def slower(name):
            saves = entries[name].int8_saves_ms if name in entries else None
            return saves is not None and saves <= 0

        reasons = {"no-kernel": list(self.no_int8_kernel), "placement": list(self.slower_in_int8), "slower": [],
                   "metric": [], "islands": []}
        for name in self.float_layers:
            reasons["islands" if name in island else "slower" if slower(name) else "metric"].append(name)
        return reasons

    def shortfall(self) -> str | None:
        """One line on why the written model runs under INT8_MACS_GOAL of its MACs in int8 (None: it does not,
        or the shares are not known): int8 not faster (both times), then the float32 layers by reason, each with
        its share of the MACs and its costliest layers."""
        share = self.int8_macs_share
        if share is None or share >= INT8_MACS_GOAL:
            return None
        if self.written != "int8" and not self.nothing_quantized:  # else: the reasons every layer is float32
            from cnncomp.precision.int8_speed import NOT_FASTER_MARGIN

            # int8 a little faster still reads "not faster": say the margin the times were judged by
            times = (f": float32 {self.float_ms:.3g} ms, int8 {self.int8_ms:.3g} ms per run (it must be at least "
                     f"{NOT_FASTER_MARGIN:.0%} faster to count)" if self.float_ms else "")
            tried = self.int8_model_macs_share
            model = f"the int8 model ({tried:.0%} of its MACs in int8)" if tried is not None else "int8"
            return (f"int8: 0% of the MACs run in int8: {model} is not faster than float32 on ONNX Runtime CPU "
                    f"here{times}, so float32 was written (--keep-slower-int8 keeps int8)")
        entries = {l.layer: l for l in self.layers}
        label = ", ".join(dict.fromkeys(m.metric for m in self.metrics)) or "error"

        def macs(names):
            return sum(self.group_macs.get(n, 0.0) for n in names)

        known = bool(self.group_macs)  # no shares where sizes are symbolic: the layers are named without them

        def costliest(names, detail):
            top = sorted(names, key=lambda n: -self.group_macs.get(n, 0.0))[:3]
            return ", ".join(f"{n}{f' {self.group_macs.get(n, 0.0):.1%}' if known else ''}{detail(n)}"
                             for n in top) + (", ..." if len(names) > 3 else "")

        def times(name):
            entry = entries.get(name)
            return f" {entry.float_ms:.3g} -> {entry.int8_ms:.3g} ms" if entry and entry.float_ms is not None else ""

        def error(name):
            entry = entries.get(name)
            return f" error alone {entry.error_alone:.2g}" if entry else ""

        words = {"slower": ("ONNX Runtime runs {n} slower in int8 here, so the fallback took them first", times),
                 "metric": (f"the {label} budget could not afford {{n}} in int8", error),
                 "islands": ("the islands rule put back {n} whose Q/DQ nodes cost more than they save", lambda n: ""),
                 "placement": ("ONNX Runtime runs {n} faster in float32 (placement rules; --stats says why)",
                               lambda n: ""),
                 "no-kernel": ("ONNX Runtime has no usable int8 kernel for {n}",
                               lambda n: f" ({self.no_int8_kernel[n]})")}
        parts = []
        for reason, names in sorted(self.float32_reasons().items(), key=lambda item: -macs(item[1])):
            if names:
                text, detail = words[reason]
                count = f"{len(names)} layer{'s' if len(names) > 1 else ''}"
                shares = f"{macs(names):.1%} of the MACs: " if known else ""
                parts.append(f"{text.format(n=count)} ({shares}{costliest(names, detail)})")
        return f"int8: {share:.0%} of the MACs run in int8, under {INT8_MACS_GOAL:.0%}: " + "; ".join(parts)

    def summary(self) -> str:
        """One paragraph for stderr: method, data, error against the budget, kernels, agreement."""
        budget = ""
        if self.max_error is not None and all(m.metric == "rel-l2" for m in self.metrics):
            budget = f" (budget {self.max_error:g})"
        elif self.max_error is not None:  # the task metrics below decide, each against its threshold
            budget = f" (task metrics: budget error {self.budget_error:.3g}, 1 fits)"
        count = len(self.float_layers)
        kept = (f"; {count} layer{'s' if count > 1 else ''} kept in float32 ({', '.join(self.float_layers[:6])}"
                + (", ..." if len(self.float_layers) > 6 else "") + ")") if self.float_layers else ""
        lines = [f"int8: {self.method} calibration on {self.samples} samples ({self.calibration}), "
                 f"relative L2 error {self.error:.3g} on {self.held_out} held-out samples{budget}{kept}"]
        if self.float_layers:
            lines.append(f"int8: full int8 would be off by {self.full_int8_error:.3g} (budget error "
                         f"{self.full_int8_budget_error:.3g}, 1 fits)")
        lines += [f"int8: {m.line()}" for m in self.metrics]
        if self.kernels:
            lines.append("int8: ONNX Runtime CPU kernels: " + ", ".join(f"{k} {v}" for k, v in
                                                                       sorted(self.kernels.items())))
        for island in self.islands:
            lines.append(f"int8: islands rule: {', '.join(island)} back to float32 (a quantized island between "
                         "float32 layers without a conv/gemm, or saving less than its Q/DQ nodes cost)")
        if self.float_ms is not None and not self.nothing_quantized:  # no int8 layer: no int8 time to judge
            lines.append(self.speed_line())
        why = self.shortfall()
        return "\n".join(lines + ([why] if why else []) + self.notes)

    def speed_line(self) -> str:
        """The not-faster rule's verdict: both times and what was written."""
        from cnncomp.precision.int8_speed import NOT_FASTER_MARGIN

        times = f"float32 {self.float_ms:.3g} ms, int8 {self.int8_ms:.3g} ms per run ({self.timing})"
        if self.faster:
            return f"int8: {times}: int8 is {self.float_ms / self.int8_ms:.2f}x as fast"
        verdict = (f"int8: {times}: int8 is not faster (it must be at least {NOT_FASTER_MARGIN:.0%} faster to "
                   "count)")
        if self.written == "fp32":
            return verdict + "; wrote the float32 model (--keep-slower-int8 keeps int8)"
        return verdict + "; kept int8 as asked (--keep-slower-int8)"

    def table(self) -> str:
        """The --stats part: each output's metric and why, then the sensitivity table (layer, error alone,
        precision kept, MACs share)."""
        metrics = "\n".join(["int8 metrics (the budget judges each output by its own):"]
                            + [f"  {line}" for line in self.metric_choices])
        return metrics + "\n" + self._sensitivity() if self.metric_choices else self._sensitivity()

    def _sensitivity(self) -> str:
        if not self.layers:
            return "int8 sensitivity: not measured (full int8 met the budget; --stats with --max-error measures it)"
        fixed = {**{name: f"no int8 kernel: {why}" for name, why in self.no_int8_kernel.items()},
                 **{name: f"faster in float32: {why}" for name, why in self.slower_in_int8.items()}}
        width = max(len(name) for name in [l.layer for l in self.layers] + list(fixed))

        def ms(value):
            return f"{value:>8.3f}" if value is not None else f"{'-':>8}"

        lines = [f"{'layer':<{width}}  {'error alone':>11}  {'kept':>7}  {'MACs':>6}  {'ms fp32':>8}  {'ms int8':>8}"]
        for l in self.layers:
            share = f"{l.macs_share:>6.1%}" if l.macs_share is not None else f"{'-':>6}"
            lines.append(f"{l.layer:<{width}}  {l.error_alone:>11.3g}  {l.precision:>7}  {share}  "
                         f"{ms(l.float_ms)}  {ms(l.int8_ms)}")
        for name, why in fixed.items():
            lines.append(f"{name:<{width}}  {'-':>11}  {'float32':>7}  {'':>6}  {'':>8}  {'':>8}  {why}")
        int8_layers = [l for l in self.layers if l.precision == "int8"]
        share = ("the share of the MACs unknown (symbolic sizes)" if any(l.macs_share is None for l in self.layers)
                 else f"{sum(l.macs_share for l in int8_layers):.1%} of the MACs")
        total = len(self.layers) + len(fixed)
        lines.append(f"{len(self.layers) - len(self.float_layers)} of {total} layers in int8, {share}")
        return "\n".join(lines)
