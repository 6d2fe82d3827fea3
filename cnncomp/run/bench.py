"""`cnncomp bench`'s measuring engine: runtime x precision x batch choices side by side in one process.

Every choice that can run is opened once; then each round times every choice
in turn (`runs` runs each, in an order that rotates from round to round), so a
load that comes and goes on a shared machine falls on all of them alike. A
choice's figure is the median of its rounds' medians; its spread is half the
range of those round medians, as a percentage of the figure. Speed-ups and
errors are against the baseline (float32 on the default runtime) at the same
batch: the error is the outputs' relative L2 distance from the baseline's
outputs on the same inputs, measured by the meter the caller hands in, and the
budget error is what the caller's judge makes of those outputs (each output's
task metric over its threshold, the worst of them: <= 1 fits; without a judge,
the relative error over the budget). The winner at a batch is the fastest row
whose budget error is <= 1 (this layer does not choose metrics). A choice that cannot run here (a runtime not installed,
a CPU without bf16, a conversion that failed) is kept in the report with its
reason instead of a figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cnncomp.progress import progress
from cnncomp.run.timing import median_run_seconds

BASELINE = ("cpu", "fp32")


@dataclass
class MetricValue:
    """One output's task metric on one row against the baseline: the metric, its value and words, its bound,
    and the value over its threshold (<= 1 fits)."""

    output: str
    metric: str
    value: float | None
    text: str
    bound: str
    budget_error: float | None

    def to_json(self) -> dict:
        return {"output": self.output, "metric": self.metric, "value": self.value, "text": self.text,
                "bound": self.bound, "budget_error": self.budget_error}


# judge(batch) -> (outputs, baseline outputs) -> (budget error, the metric values): the caller's task metrics
Judge = Callable[[int], Callable[[dict, dict], tuple[float, list[MetricValue]]]]


def _finite(value) -> float | None:
    return value if value is not None and np.isfinite(value) else None


@dataclass
class Choice:
    """One way to run the network: a runtime, a precision, and how to open it (None with the reason it
    cannot run here)."""

    runtime: str
    precision: str
    open: Callable[[], object] | None = None  # () -> a session with run(feeds) -> {output: array}
    problem: str | None = None

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision}"


@dataclass
class Row:
    """A choice at one batch size: its median milliseconds, spread (+-%), speed-up and error against the
    baseline, or the reason it did not run."""

    runtime: str
    precision: str
    batch: int
    median_ms: float | None = None
    spread_pct: float | None = None
    speedup: float | None = None
    error: float | None = None
    problem: str | None = None
    round_ms: list[float] = field(default_factory=list)
    budget_error: float | None = None  # the judge's worst metric / threshold (<= 1 fits; NaN misses)
    metrics: list[MetricValue] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        return self.median_ms is not None

    @property
    def fits(self) -> bool:
        """Ran, and its budget error is within the budget (NaN never fits)."""
        return self.ran and self.budget_error is not None and self.budget_error <= 1.0

    def to_json(self) -> dict:
        return {"runtime": self.runtime, "precision": self.precision, "batch": self.batch,
                "median_ms": self.median_ms, "spread_pct": self.spread_pct, "speedup": self.speedup,
                "error": self.error, "problem": self.problem, "round_ms": self.round_ms,
                "budget_error": _finite(self.budget_error), "fits": self.fits,
                "metrics": [m.to_json() for m in self.metrics]}


@dataclass
class BenchReport:
    """Every row, the budget the winner is chosen under (`budget`: rel-l2's threshold, --max-error; `judged_by`:
    each output's metric and bound), and the conditions of the measurement."""

    network: str
    rows: list[Row]
    budget: float
    threads: int
    rounds: int
    runs: int
    baseline: tuple[str, str] = BASELINE
    judged_by: list[str] = field(default_factory=list)  # "OUTPUT: METRIC BOUND (why)", one per output

    def winner(self, batch: int) -> Row | None:
        """The fastest row at `batch` whose budget error is within the budget (<= 1)."""
        fit = [r for r in self.rows if r.batch == batch and r.fits]
        return min(fit, key=lambda r: r.median_ms) if fit else None

    @property
    def judge_text(self) -> str:
        return "; ".join(line.split(" (")[0] for line in self.judged_by) or f"rel-l2 <= {self.budget:g}"

    @property
    def batches(self) -> list[int]:
        return sorted({r.batch for r in self.rows})

    def to_json(self) -> dict:
        winners = {str(b): (lambda w: w and {"runtime": w.runtime, "precision": w.precision,
                                             "budget_error": _finite(w.budget_error),
                                             "judged_by": self.judge_text})(self.winner(b))
                   for b in self.batches}
        return {"network": self.network, "baseline": {"runtime": self.baseline[0], "precision": self.baseline[1]},
                "budget": self.budget, "threads": self.threads, "rounds": self.rounds, "runs": self.runs,
                "judged_by": self.judged_by, "rows": [r.to_json() for r in self.rows], "winner": winners}

    def table(self) -> str:
        """The rows as an aligned text table, then one line per batch naming the winner."""
        head = ("runtime", "precision", "batch", "ms", "spread", "speed-up", "rel. error", "budget", "task metric")
        lines = [head]
        for r in self.rows:
            if not r.ran:
                lines.append((r.runtime, r.precision, str(r.batch)) + ("-",) * (len(head) - 3))
                continue
            lines.append((r.runtime, r.precision, str(r.batch), f"{r.median_ms:.2f}", f"+-{r.spread_pct:.0f}%",
                          f"{r.speedup:.2f}x" if r.speedup is not None else "-",
                          f"{r.error:.2g}" if r.error is not None else "-",
                          _budget_text(r.budget_error),
                          "; ".join(f"{m.output}: {m.text}" for m in r.metrics if m.metric != "rel-l2") or "-"))
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        text = ["  ".join(c.ljust(w) if i < 3 or i == len(head) - 1 else c.rjust(w)
                          for i, (c, w) in enumerate(zip(line, widths))).rstrip()
                for line in lines]
        skipped = [r for r in self.rows if not r.ran]
        for label, problem in dict.fromkeys((f"{r.runtime} {r.precision}", r.problem) for r in skipped):
            text.append(f"not run: {label}: {problem}")
        text.append("budget (the worst output's metric over its bound, <= 1 fits): "
                    + ("; ".join(self.judged_by) or f"rel-l2 <= {self.budget:g}"))
        for b in self.batches:
            text.append(self.verdict(b))
        return "\n".join(text)

    def verdict(self, batch: int) -> str:
        w = self.winner(batch)
        if w is None:
            return f"batch {batch}: no choice ran within the error budget {self.budget:g} (judged by {self.judge_text})"
        return (f"batch {batch}: fastest within the error budget {self.budget:g}: {w.runtime} {w.precision}, "
                f"{w.median_ms:.2f} ms, {w.speedup:.2f}x {' '.join(self.baseline)} (error {w.error:.2g}, budget "
                f"error {_budget_text(w.budget_error)}; judged by {self.judge_text})")


def _budget_text(budget_error: float | None) -> str:
    """A budget error as the table shows it: two decimals (1.00 is the edge), larger ones in 3 digits."""
    if budget_error is None:
        return "-"
    return f"{budget_error:.2f}" if budget_error < 100 else f"{budget_error:.3g}"


def _relative_spread(values: list[float]) -> float:
    median = float(np.median(values))
    return 100.0 * (max(values) - min(values)) / 2 / median if median > 0 else 0.0


def measure(network: str, choices: list[Choice], feeds_for: Callable[[int], dict], batches: list[int],
            error_of: Callable[[dict, dict], float], budget: float, rounds: int = 5, runs: int = 10,
            warmup: int = 2, threads: int = 0, baseline: tuple[str, str] = BASELINE, judge: Judge | None = None,
            judged_by: list[str] | None = None) -> BenchReport:
    """Time every choice at every batch in interleaved rounds; errors (by `error_of(outputs, baseline
    outputs)`) and speed-ups against the `baseline` choice, which must be among the choices and run; budget
    errors by `judge(batch)(outputs, baseline outputs)` (without one: error / budget), whose metrics
    `judged_by` describes."""
    rows: dict[tuple[int, int], Row] = {}
    sessions: dict[int, object] = {}
    for i, c in enumerate(choices):
        if c.problem is None:
            try:
                sessions[i] = c.open()
            except Exception as e:  # a runtime that refuses this model is reported, not fatal
                c.problem = getattr(e, "message", None) or str(e)
    base = next((i for i, c in enumerate(choices) if (c.runtime, c.precision) == baseline), None)
    if base is None or base not in sessions:
        why = choices[base].problem if base is not None else "not among the choices"
        raise ValueError(f"the baseline {' '.join(baseline)} must run: {why}")
    feeds = {b: feeds_for(b) for b in batches}
    outputs: dict[tuple[int, int], dict] = {}
    for b in batches:
        for i, c in enumerate(choices):
            rows[i, b] = Row(c.runtime, c.precision, b, problem=c.problem)
            if i in sessions:
                try:
                    outputs[i, b] = sessions[i].run(feeds[b])
                    for _ in range(warmup - 1):
                        sessions[i].run(feeds[b])
                except Exception as e:
                    rows[i, b].problem = getattr(e, "message", None) or str(e)
    live = [(i, b) for b in batches for i in sessions if (i, b) in outputs]
    steps = [(r, k) for r in range(rounds) for k in range(len(live))]
    for r, k in progress(steps, label="bench"):
        i, b = live[(k + r) % len(live)]  # the order rotates, so no choice always follows the same neighbour
        rows[i, b].round_ms.append(1e3 * median_run_seconds(sessions[i], feeds[b], runs, warmup=0))
    for (i, b), row in rows.items():
        if row.round_ms:
            row.median_ms = float(np.median(row.round_ms))
            row.spread_pct = _relative_spread(row.round_ms)
    for (i, b), row in rows.items():
        if row.ran:
            row.speedup = rows[base, b].median_ms / row.median_ms
            try:
                row.error = float(error_of(outputs[i, b], outputs[base, b]))
                if judge is None:
                    row.budget_error = row.error / budget if budget > 0 else (0.0 if row.error <= 0 else np.inf)
                else:
                    row.budget_error, row.metrics = judge(b)(outputs[i, b], outputs[base, b])
            except KeyError as e:  # an output the baseline has and this choice lacks: no error to judge
                row.problem = f"its outputs lack {e} (the baseline's outputs: {', '.join(outputs[base, b])})"
    ordered = [rows[i, b] for b in batches for i in range(len(choices))]
    return BenchReport(network, ordered, budget, threads, rounds, runs, baseline, list(judged_by or []))


def plot_problem(path) -> str | None:
    """Why a chart cannot be drawn (matplotlib missing), or None; asked before any measuring, so that nobody
    waits for a picture that will not come (the job checked the file's suffix)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return (f"cannot draw {path}: matplotlib is not installed (pip install 'cnncomp[plot]'); without "
                "--plot, bench prints the same figures as a table")
    return None


def plot(report: BenchReport, path) -> None:
    """A bar chart of the speed-ups (one bar group per choice, one bar per batch; gray bars: budget error over
    1, the rule the winner is chosen by), written atomically to `path` (.png, .svg, .pdf)."""
    from cnncomp.errors import CnnError
    from cnncomp.fileio import atomic_write

    problem = plot_problem(path)
    if problem:
        raise CnnError(problem)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [r for r in report.rows if r.ran]
    labels = list(dict.fromkeys(f"{r.runtime}\n{r.precision}" for r in ran))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(labels) * len(report.batches)), 3.6))
    width = 0.8 / max(1, len(report.batches))
    for k, b in enumerate(report.batches):
        by_label = {f"{r.runtime}\n{r.precision}": r for r in ran if r.batch == b}
        shown = [label for label in labels if label in by_label]
        xs = [labels.index(label) + k * width for label in shown]
        ys = [by_label[label].speedup for label in shown]
        colors = ["tab:blue" if by_label[label].fits else "tab:gray" for label in shown]
        bars = ax.bar(xs, ys, width, label=f"batch {b}", color=colors, alpha=1.0 - 0.35 * k)
        ax.bar_label(bars, [f"{y:.2f}x" for y in ys], fontsize=8)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + width * (len(report.batches) - 1) / 2 for j in range(len(labels))], labels, fontsize=8)
    ax.set_ylabel(f"speed-up vs {' '.join(report.baseline)}")
    ax.set_title(f"{report.network}: speed-up per choice (gray: over the budget, {report.judge_text})",
                 fontsize=9)
    if len(report.batches) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fmt = str(path).rpartition(".")[2].lower()
    try:
        atomic_write(path, lambda name: fig.savefig(name, format=fmt))
    finally:
        plt.close(fig)
