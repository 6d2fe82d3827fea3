"""-O3's per-layer search runs through the pass manager: lint, --verify-each and --stats see its rewrites."""

import pathlib

import pytest

from cnncomp.cli import main
from cnncomp.passes import PassContext, PassRunner
from cnncomp.passes.search import apply_within_budget
from cnncomp.pipeline import (
    CheckOptions,
    PassChecker,
    check_inputs,
    load,
    optimize,
    weights_for,
)

LENET = pathlib.Path(__file__).resolve().parents[1] / "specs" / "lenet.cnn"

SPEC = ("network n\ninput x: [N, 16, 16, 16]\n"
        "y = x -> conv(64, k=3, p=1) as c1 -> bn -> relu -> conv(64, k=3, p=1) as c2 -> relu -> gap -> flatten\n"
        "    -> linear(10) as fc\noutput y\n")


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "n.cnn"
    path.write_text(SPEC)
    return str(path)


def test_each_kept_rewrite_goes_through_the_step_runner(spec):
    seen = []
    compiled = optimize(spec, opt_level=3, max_error=0.2, lint=True, after_each=lambda step, ctx: seen.append(str(step)))
    kept = [line for line in compiled.log if ": kept " in line]
    approximate = [s for s in seen if s.startswith(("bottleneck(", "depthwise(")) and "only=" in s]
    assert kept and len(approximate) == len(kept)
    assert [r.step for r in compiled.records if "only=" in r.step] == approximate
    assert all(r.rewrites == 1 and r.macs_after < r.macs_before for r in compiled.records if "only=" in r.step)


def test_verify_each_checks_a_rewrite_the_search_misjudged(spec):
    """A meter that says every rewrite is free lets the search keep one; the after-each check catches it."""
    graph = load(spec)
    weights = weights_for(graph)
    options = CheckOptions(max_error=1e-6)
    checker = PassChecker(graph, weights, check_inputs(graph, options), options)
    runner = PassRunner(PassContext(graph.copy(), dict(weights)), lint=True, after_each=checker)
    kept = apply_within_budget(runner, output_error=lambda graph, weights: 0.0, max_error=1e-6)
    assert kept == 2
    assert checker.broken is not None and "only=c2" in checker.broken
    assert checker.notes() == [f"the first pass that broke agreement: {checker.broken}"]


def test_verify_O3_verify_each_reports_the_approximate_rewrites_checked(spec, capsys):
    assert main(["verify", spec, "-O3", "--max-error", "0.2", "--verify-each"]) == 0
    out = capsys.readouterr().out
    note = next(line for line in out.splitlines() if "verify-each:" in line)
    assert "all agree" in note and "approximate rewrites checked: depthwise(m=2, only=c1)" in note


def test_compile_O3_stats_lists_each_approximate_rewrite(spec, tmp_path, capsys):
    assert main(["compile", spec, "-O3", "--max-error", "0.2", "--stats", "-o", str(tmp_path / "n.onnx")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "only=" in line]
    assert rows and rows[0].startswith("depthwise(m=2, only=c1)")
    assert "depthwise: c1: kept depthwise(m=2), network relative error" in out


def test_jobs_measure_a_layers_trials_in_parallel_and_keep_the_same_rewrites():
    spec = str(LENET)
    one = optimize(spec, opt_level=3, max_error=0.05)
    two = optimize(spec, opt_level=3, max_error=0.05, jobs=2)
    assert one.graph.meta["passes"] == two.graph.meta["passes"] and any("@" in p for p in one.graph.meta["passes"])
    assert [line for line in one.log if "kept" in line] == [line for line in two.log if "kept" in line]


def test_jobs_below_one_is_a_usage_error(capsys):
    spec = str(LENET)
    assert main(["verify", spec, "-O3", "--jobs", "0"]) == 2
    assert "--jobs takes 1 or more, got 0" in capsys.readouterr().err
