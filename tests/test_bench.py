"""`cnncomp bench` (cnncomp/run/bench.py, pipeline.bench_spec, cli/bench.py): interleaved rounds, medians and
spread, speed-ups and errors against float32 on ONNX Runtime's CPU provider, the winner under the budget,
and choices that cannot run listed with their reason. Tiny spec (lenet), few runs: figures are not judged."""

import json
import sys

import numpy as np
import pytest

from cnncomp.run.bench import Choice, measure, plot_problem
from cnncomp.run.openvino import openvino_problem
from cli_helpers import cli


class FakeSession:
    """Returns `scale * x` and logs which choice ran, so the test sees the order of the rounds."""

    def __init__(self, name, scale, log):
        self.name, self.scale, self.log = name, scale, log

    def run(self, feeds):
        self.log.append(self.name)
        return {"y": feeds["x"] * self.scale}


def _error(outputs, reference):
    return float(np.linalg.norm(outputs["y"] - reference["y"]) / np.linalg.norm(reference["y"]))


def test_rounds_interleave_and_the_winner_is_the_fastest_within_the_budget():
    log = []
    choices = [Choice("cpu", "fp32", lambda: FakeSession("a", 1.0, log)),
               Choice("cpu", "fp16", lambda: FakeSession("b", 1.001, log)),
               Choice("cpu", "int8", lambda: FakeSession("c", 1.5, log)),  # 50% error: over any budget
               Choice("openvino", "bf16", problem="no openvino here")]
    report = measure("net", choices, lambda b: {"x": np.ones((b, 4), np.float32)}, [1, 2], _error, 0.01,
                     rounds=3, runs=2, warmup=1)
    rows = {(r.runtime, r.precision, r.batch): r for r in report.rows}
    assert len(report.rows) == 8
    timed = log[6:]  # after one warm-up run of each choice at each batch
    # each round runs every (choice, batch) once, `runs` times in a row, starting one further along each round
    blocks = [timed[i:i + 2] for i in range(0, len(timed), 2)]
    assert all(len(set(b)) == 1 for b in blocks) and len(blocks) == 3 * 6
    firsts = [blocks[k * 6][0] for k in range(3)]
    assert len(set(firsts)) == 3
    for key in [("cpu", "fp32", 1), ("cpu", "fp16", 2), ("cpu", "int8", 1)]:
        row = rows[key]
        assert len(row.round_ms) == 3 and row.median_ms == pytest.approx(np.median(row.round_ms))
        assert row.spread_pct >= 0
    assert rows["cpu", "fp32", 1].speedup == 1.0 and rows["cpu", "fp32", 1].error == 0.0
    assert rows["cpu", "fp16", 1].error == pytest.approx(0.001, rel=1e-3)
    assert rows["cpu", "int8", 2].error == pytest.approx(0.5)
    assert not rows["openvino", "bf16", 1].ran and rows["openvino", "bf16", 1].problem == "no openvino here"
    for b in (1, 2):
        assert report.winner(b).precision in ("fp32", "fp16")  # never int8: its error is over the budget
    text = report.table()
    assert "not run: openvino bf16: no openvino here" in text
    assert "batch 1: fastest within the error budget 0.01" in text
    data = report.to_json()
    assert data["baseline"] == {"runtime": "cpu", "precision": "fp32"} and len(data["rows"]) == 8
    assert set(data["winner"]) == {"1", "2"}


def test_a_choice_that_fails_to_open_is_reported_not_fatal():
    def broken():
        raise RuntimeError("no kernel for this")

    choices = [Choice("cpu", "fp32", lambda: FakeSession("a", 1.0, [])), Choice("cpu", "int8", broken)]
    report = measure("net", choices, lambda b: {"x": np.ones((b, 4), np.float32)}, [1], _error, 0.01, 1, 1)
    assert report.rows[1].problem == "no kernel for this" and not report.rows[1].ran
    with pytest.raises(ValueError, match="baseline cpu fp32 must run"):
        measure("net", choices[1:], lambda b: {"x": np.ones((b, 4), np.float32)}, [1], _error, 0.01, 1, 1)


def test_bench_cli_json_on_lenet(capsys):
    code, out, err = cli(capsys, "bench", "specs/lenet.cnn", "--runtimes", "cpu", "--precisions", "fp32,fp16,bf16",
                         "--batch", "1,2", "--rounds", "2", "--runs", "2", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["network"] == "lenet" and data["rounds"] == 2 and data["runs"] == 2
    rows = {(r["runtime"], r["precision"], r["batch"]): r for r in data["rows"]}
    assert set(rows) == {(r, p, b) for r in ["cpu"] for p in ["fp32", "fp16", "bf16"] for b in [1, 2]}
    assert rows["cpu", "fp32", 2]["speedup"] == 1.0
    assert 0 < rows["cpu", "fp16", 1]["error"] < 0.01
    assert "bfloat16" in rows["cpu", "bf16", 1]["problem"] and rows["cpu", "bf16", 1]["median_ms"] is None
    assert data["winner"]["1"]["precision"] in ("fp32", "fp16")


def test_bench_table_lists_what_cannot_run(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as on a machine without the extra
    code, out, err = cli(capsys, "bench", "specs/lenet.cnn", "--precisions", "fp32,bf16", "--rounds", "1",
                         "--runs", "1")
    assert code == 0, err
    assert ("not run: openvino fp32: the openvino runtime cannot run: the openvino package is not installed "
            "(pip install 'cnncomp[openvino]')") in out
    assert "not run: cpu bf16: --precision bf16 under the cpu runtime: ONNX Runtime cannot compute bf16" in out
    assert "batch 1: fastest within the error budget 0.01: cpu fp32" in out


@pytest.mark.skipif(openvino_problem() is not None, reason="OpenVINO not installed (pip install 'cnncomp[openvino]')")
def test_bench_openvino_rows_run_and_agree(capsys):
    code, out, err = cli(capsys, "bench", "specs/lenet.cnn", "--precisions", "fp32,bf16,int8", "--rounds", "1",
                         "--runs", "1", "--threads", "1", "--json")
    assert code == 0, err
    rows = {(r["runtime"], r["precision"]): r for r in json.loads(out)["rows"]}
    assert rows["openvino", "fp32"]["error"] < 1e-5  # fp32 is float32 under OpenVINO too
    assert rows["openvino", "int8"]["error"] < 0.01
    if rows["openvino", "bf16"]["problem"] is None:
        assert 1e-6 < rows["openvino", "bf16"]["error"] < 0.01


def test_bench_of_an_onnx_model_refuses_the_converted_precisions_with_the_reason(capsys, tmp_path):
    import cnncomp

    path = tmp_path / "lenet.onnx"
    cnncomp.compile("specs/lenet.cnn", output=str(path))
    code, out, err = cli(capsys, "bench", path, "--runtimes", "cpu", "--precisions", "fp32,fp16,int8",
                         "--rounds", "1", "--runs", "1", "--json")
    assert code == 0, err
    rows = {r["precision"]: r for r in json.loads(out)["rows"]}
    assert rows["fp32"]["speedup"] == 1.0
    for precision in ("fp16", "int8"):
        assert "converted from the network's graph, which an ONNX model lacks" in rows[precision]["problem"]


@pytest.mark.parametrize("args,message", [
    (["--runtimes", "cpu,tpu"], "--runtimes names an unknown runtime 'tpu'; known: cpu"),
    (["--precisions", "fp8"], "--precisions names an unknown precision 'fp8'; known: fp32"),
    (["--batch", "1,x"], "--batch takes sizes like 1,8"),
    (["--batch", "0"], "--batch takes sizes of 1 or more"),
    (["--threads", "-1"], "--threads takes 0 or more"),
    (["--plot", "out.gif"], "--plot takes a .png, .svg or .pdf file"),
])
def test_bad_usage_exits_2_before_any_work(capsys, args, message):
    code, out, err = cli(capsys, "bench", "specs/lenet.cnn", *args)
    assert code == 2 and message in err and out == ""


def test_a_missing_or_broken_onnx_model_is_a_clear_error(capsys, tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    for path in (tmp_path / "missing.onnx", tmp_path / "broken.onnx"):
        code, out, err = cli(capsys, "bench", path, "--runtimes", "cpu")
        assert code == 1 and f"{path}: cannot read the ONNX model" in err


def test_a_static_batch_refuses_other_batch_sizes(capsys, tmp_path):
    spec = tmp_path / "static.cnn"
    spec.write_text("network static\ninput x: [1, 4]\ny = x -> linear(3)\noutput y\n")
    code, out, err = cli(capsys, "bench", spec, "--batch", "1,8", "--runtimes", "cpu")
    assert code == 2 and "static batch size 1" in err


def test_plot_without_matplotlib_is_a_clear_error_before_measuring(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert "pip install 'cnncomp[plot]'" in plot_problem(tmp_path / "b.png")
    code, out, err = cli(capsys, "bench", "specs/lenet.cnn", "--plot", tmp_path / "b.png")
    assert code == 1 and "matplotlib is not installed" in err and out == ""
    assert not (tmp_path / "b.png").exists()


def test_plot_writes_a_picture(capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install 'cnncomp[plot]')")
    out_png = tmp_path / "bench.png"
    code, out, err = cli(capsys, "bench", "specs/lenet.cnn", "--runtimes", "cpu", "--precisions", "fp32,fp16",
                         "--batch", "1,2", "--rounds", "1", "--runs", "1", "--plot", out_png)
    assert code == 0, err
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {out_png}" in out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind
