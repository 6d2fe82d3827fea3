"""Inputs, weights and file kinds (issue 10, item 3): non-finite inputs refused naming the input, NaN/Inf
weights an error for verify and a warning for compile, .npy wherever .npz is for one-input networks,
and a file of the wrong kind named for what it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli

SPEC = "network n\ninput x: [N, 3, 8, 8]\ny = x -> conv(4, k=3, p=1) -> bn -> relu -> conv(8, k=3, p=1)\n" \
       "    -> gap -> flatten -> linear(2)\noutput y\n"


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "n.cnn"
    path.write_text(SPEC)
    return path


def inputs(value=0.5, shape=(2, 3, 8, 8)):
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    x[0, 1, 2, 3] = value
    return x


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_load_inputs_are_refused_naming_the_input(tmp_path, spec, capsys, bad):
    np.savez(tmp_path / "in.npz", x=inputs(bad))
    code, _, err = cli(capsys, "verify", spec, "--load-inputs", tmp_path / "in.npz")
    assert code == 1 and "input 'x'" in err and "(0, 1, 2, 3)" in err and "must be finite" in err


def test_all_nan_calibration_is_refused(tmp_path, spec, capsys):
    np.savez(tmp_path / "cal.npz", x=np.full((2, 3, 8, 8), np.nan, np.float32))
    code, _, err = cli(capsys, "compile", spec, "-O3", "--calibration", tmp_path / "cal.npz", "-o", tmp_path / "m.onnx")
    assert code == 1 and "--calibration" in err and "input 'x'" in err and "NaN" in err
    assert not (tmp_path / "m.onnx").exists()


def test_run_input_with_inf_is_refused(tmp_path, spec, capsys):
    np.save(tmp_path / "x.npy", inputs(-np.inf))
    code, _, err = cli(capsys, "run", spec, "--input", tmp_path / "x.npy")
    assert code == 1 and "--input" in err and "1 Inf" in err


def test_npy_is_accepted_for_load_inputs_and_calibration(tmp_path, spec, capsys):
    np.save(tmp_path / "x.npy", inputs())
    code, _, err = cli(capsys, "verify", spec, "--load-inputs", tmp_path / "x.npy", "--save-outputs",
                       tmp_path / "y.npz")
    assert code == 0, err
    code, _, err = cli(capsys, "compile", spec, "-O3", "--calibration", tmp_path / "x.npy", "-o", tmp_path / "m.onnx")
    assert code == 0, err


def test_npy_for_a_two_input_network_says_to_use_npz(tmp_path, capsys):
    path = tmp_path / "two.cnn"
    path.write_text("network two\ninput a: [N, 4]\ninput b: [N, 4]\ny = add(a, b) -> linear(2)\noutput y\n")
    np.save(tmp_path / "x.npy", np.zeros((2, 4), np.float32))
    code, _, err = cli(capsys, "verify", path, "--load-inputs", tmp_path / "x.npy")
    assert code == 1 and "2 inputs" in err and ".npz keyed by input name" in err


def nan_weights(tmp_path, spec, capsys) -> Path:
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "w.safetensors"
    assert cli(capsys, "init", spec, "-o", path)[0] == 0
    weights = load_file(str(path))
    weights["y.0.weight"][0, 0, 0, 0] = np.nan
    save_file(weights, str(path))
    return path


def test_nan_weights_are_an_error_for_verify(tmp_path, spec, capsys):
    weights = nan_weights(tmp_path, spec, capsys)
    code, _, err = cli(capsys, "verify", spec, "--weights", weights)
    assert code == 1 and "not finite" in err and "y.0.weight holds 1 NaN" in err


def test_nan_weights_are_a_warning_for_compile(tmp_path, spec, capsys):
    weights = nan_weights(tmp_path, spec, capsys)
    code, _, err = cli(capsys, "compile", spec, "--weights", weights, "-o", tmp_path / "m.onnx")
    assert code == 0
    assert "warning: weights not finite: y.0.weight holds 1 NaN" in err


def test_summary_of_an_onnx_model_says_what_it_is(tmp_path, spec, capsys):
    assert cli(capsys, "compile", spec, "-o", tmp_path / "m.onnx")[0] == 0
    code, _, err = cli(capsys, "summary", tmp_path / "m.onnx")
    assert code == 1 and "is an ONNX model, not a .cnn spec" in err
    renamed = tmp_path / "model.bin"  # told apart by its bytes, not only its name
    renamed.write_bytes((tmp_path / "m.onnx").read_bytes())
    code, _, err = cli(capsys, "check", renamed)
    assert code == 1 and "is an ONNX model, not a .cnn spec" in err


def test_weights_of_the_wrong_kind(tmp_path, spec, capsys):
    code, _, err = cli(capsys, "compile", spec, "--weights", spec, "-o", tmp_path / "m.onnx")
    assert code == 1 and "is a .cnn spec, not a weights file" in err
    np.savez(tmp_path / "x.npz", x=inputs())
    code, _, err = cli(capsys, "compile", spec, "--weights", tmp_path / "x.npz", "-o", tmp_path / "m.onnx")
    assert code == 1 and "is a NumPy .npz archive, not a weights file" in err


def test_load_inputs_of_the_wrong_kind(tmp_path, spec, capsys):
    assert cli(capsys, "init", spec, "-o", tmp_path / "w.safetensors")[0] == 0
    code, _, err = cli(capsys, "verify", spec, "--load-inputs", tmp_path / "w.safetensors")
    assert code == 1 and "is a safetensors weights file, not an inputs file for --load-inputs" in err


def test_O3_keeps_no_rewrite_when_nan_weights_make_the_error_nan(tmp_path, spec, capsys):
    from cnncomp.pipeline import optimize

    weights = nan_weights(tmp_path, spec, capsys)
    seeded = optimize(str(spec), opt_level=3, max_error=1.0)
    assert any("@" in p for p in seeded.graph.meta["passes"])  # the rewrites fit with finite weights
    compiled = optimize(str(spec), weights=str(weights), opt_level=3, max_error=1.0)
    assert not any("@" in p for p in compiled.graph.meta["passes"])
    assert any("weights not finite" in w for w in compiled.warnings)
