"""The verify and compile commands: exit status, JSON keys, per-layer blame, per-pass blame, golden data."""

import json

import numpy as np
import pytest

from cnncomp.cli import main
from cnncomp.run.session import available_providers

SPEC = "network n\ninput x: [N, 4, 10, 10]\ny = x -> conv(8, k=3, p=1, bias=false) as c1 -> bn as b1 -> relu\n" \
       "    -> conv(8, k=3, p=1) as c2 -> relu -> gap -> flatten -> linear(3) as fc\noutput y\n"


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "n.cnn"
    path.write_text(SPEC)
    return str(path)


@pytest.fixture
def broken_pass(breaking_pass):
    """A deliberately wrong pass: it scales the second conv's weights by 1.5."""
    return breaking_pass("c2")


def test_verify_json_keys(spec, capsys):
    assert main(["verify", spec, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"ok", "passes", "provider", "outputs", "first_divergent_layer"} <= set(out)
    assert out["ok"] is True and out["provider"] == "cpu" and out["passes"] == ["fold-bn"]
    assert {"max_abs_err", "max_rel_err"} <= set(out["outputs"]["y"])


def test_verify_each_names_the_pass_that_broke_agreement(spec, broken_pass, capsys):
    status = main(["verify", spec, "--passes", f"fold-bn,{broken_pass},dce", "--verify-each"])
    out = capsys.readouterr().out
    assert status == 1
    assert f"the first pass that broke agreement: {broken_pass}" in out


def test_per_layer_names_the_first_divergent_layer(spec, broken_pass, capsys):
    assert main(["verify", spec, "--passes", broken_pass, "--per-layer", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["first_divergent_layer"] == "c2"
    assert out["first_divergent_location"].endswith("n.cnn:4:8")


def test_compile_verify_refuses_to_write_a_wrong_model(tmp_path, spec, broken_pass, capsys):
    target = tmp_path / "out.onnx"
    assert main(["compile", spec, "-o", str(target), "--passes", broken_pass, "--verify"]) == 1
    assert not target.exists()


def test_golden_inputs_and_outputs_round_trip(tmp_path, spec, capsys):
    inputs, outputs = tmp_path / "in.npz", tmp_path / "out.npz"
    assert main(["verify", spec, "--save-inputs", str(inputs), "--save-outputs", str(outputs), "--seed", "3"]) == 0
    assert main(["verify", spec, "--load-inputs", str(inputs), "--seed", "3"]) == 0
    with np.load(inputs) as x, np.load(outputs) as y:
        assert x["x"].shape == (2, 4, 10, 10) and y["y"].shape == (2, 3)


def test_tolerance_flags(spec, capsys):
    assert main(["verify", spec, "--atol", "y=1e-12", "--rtol", "0", "--json"]) == 1
    assert main(["verify", spec, "--atol", "nonsense"]) == 2


@pytest.mark.skipif("CUDAExecutionProvider" in available_providers(), reason="CUDA is installed here")
def test_unavailable_provider_is_a_clear_error(spec, capsys):
    assert main(["verify", spec, "--provider", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "the cuda provider" in err and "cnncomp[gpu]" in err and "Traceback" not in err


def test_compile_writes_checked_onnx_and_emit_cnn_round_trips(tmp_path, spec, capsys):
    import onnx

    target = tmp_path / "n.onnx"
    assert main(["compile", spec, "-o", str(target), "--verify", "--stats"]) == 0
    model = onnx.load(str(target))
    onnx.checker.check_model(model, full_check=True)
    assert [n.name for n in model.graph.node][0] == "c1"
    emitted = tmp_path / "n_opt.cnn"
    assert main(["compile", spec, "-O2", "--emit", "cnn", "-o", str(emitted)]) == 0
    assert main(["check", str(emitted)]) == 0


def test_unreadable_npz_inputs_exit_1_with_the_file_named(tmp_path, spec, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_text("not an npz")
    assert main(["verify", spec, "--load-inputs", str(bad)]) == 1
    assert main(["compile", spec, "-O3", "--calibration", str(bad), "-o", str(tmp_path / "o.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.count(f"cannot read {bad}") == 2 and "Traceback" not in err
    assert not (tmp_path / "o.onnx").exists()
