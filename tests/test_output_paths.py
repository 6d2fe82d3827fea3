"""Output paths (issue 10, item 2): every writer goes through one helper, so that a link is written
through, a FIFO or device is written directly, `-o -` is standard output, and a missing folder, a
folder, or an input given as the output is a one-line error that leaves every file as it was."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import cli

from cnncomp.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPEC = "network n\ninput x: [N, 3, 8, 8]\ny = x -> conv(4, k=3, p=1) -> bn -> relu -> gap -> flatten -> linear(2)\n" \
       "output y\n"


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "n.cnn"
    path.write_text(SPEC)
    return path


def test_symlink_is_written_through(tmp_path, spec, capsys):
    target, link = tmp_path / "real.onnx", tmp_path / "link.onnx"
    link.symlink_to(target.name)
    code, _, err = cli(capsys, "compile", spec, "-o", link)
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == "real.onnx"
    onnx.checker.check_model(onnx.load(str(target)))


def test_fifo_is_written_directly_not_replaced(tmp_path, spec, capsys):
    fifo = tmp_path / "out.cnn"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(Path(fifo).read_text()), daemon=True)
    reader.start()
    code, _, err = cli(capsys, "compile", spec, "--emit", "cnn", "-o", fifo)
    reader.join(timeout=30)
    assert code == 0, err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the FIFO was replaced by a regular file"
    assert received and "network n" in received[0]


def test_dash_prints_text_output_and_nothing_else_on_stdout(spec, capsys):
    code, out, err = cli(capsys, "compile", spec, "--emit", "cnn", "-o", "-")
    assert code == 0, err
    assert out.startswith("# n after passes: fold-bn") and "network n" in out
    assert "wrote" not in out  # the message went to standard error


def test_graph_dash_prints_dot_text(spec, capsys):
    code, out, err = cli(capsys, "graph", spec, "-o", "-")
    assert code == 0, err
    assert out.startswith('digraph "n"') and "wrote" in err


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_binary_output_to_a_terminal_is_refused(spec, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", FakeTerminal())
    code = main(["compile", str(spec), "-o", "-"])
    err = capsys.readouterr().err
    assert code == 1 and "not writing binary output to a terminal" in err
    assert sys.stdout.getvalue() == ""


def test_binary_output_to_a_pipe(spec):
    result = subprocess.run([sys.executable, "-m", "cnncomp", "compile", str(spec), "-o", "-"], capture_output=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    model = onnx.load_from_string(result.stdout)
    assert model.graph.output[0].name == "y"


@pytest.mark.parametrize("command", ["compile", "init", "graph"])
def test_missing_folder_is_a_one_line_error(tmp_path, spec, capsys, command):
    name = {"compile": "m.onnx", "init": "w.safetensors", "graph": "g.dot"}[command]
    code, _, err = cli(capsys, command, spec, "-o", tmp_path / "missing" / name)
    assert code == 1
    assert err.strip().count("\n") == 0 and "does not exist" in err


def test_existing_folder_is_a_one_line_error(tmp_path, spec, capsys):
    (tmp_path / "out.onnx").mkdir()
    code, _, err = cli(capsys, "compile", spec, "-o", tmp_path / "out.onnx")
    assert code == 1 and "is a folder" in err and err.strip().count("\n") == 0


def test_output_equal_to_the_spec_is_refused_and_the_spec_kept(spec, capsys):
    code, _, err = cli(capsys, "compile", spec, "-o", spec)
    assert code == 1 and "it is an input of this command" in err
    assert spec.read_text() == SPEC
    code, _, err = cli(capsys, "compile", spec, "--emit", "cnn", "-o", spec)
    assert code == 1 and spec.read_text() == SPEC


def test_output_equal_to_the_weights_is_refused(tmp_path, spec, capsys):
    weights = tmp_path / "w.safetensors"
    assert cli(capsys, "init", spec, "-o", weights)[0] == 0
    before = weights.read_bytes()
    code, _, err = cli(capsys, "compile", spec, "--weights", weights, "-o", weights)
    assert code == 1 and "it is an input of this command" in err
    assert weights.read_bytes() == before


def test_save_outputs_over_the_loaded_inputs_is_refused(tmp_path, spec, capsys):
    inputs = tmp_path / "in.npz"
    assert cli(capsys, "verify", spec, "--save-inputs", inputs)[0] == 0
    code, _, err = cli(capsys, "verify", spec, "--load-inputs", inputs, "--save-outputs", inputs)
    assert code == 1 and "it is an input" in err


@pytest.mark.parametrize("name", ["w.safetensors", "w.pt"])
def test_outputs_get_the_usual_file_mode(tmp_path, spec, capsys, name):
    old = os.umask(0o022)
    try:
        assert cli(capsys, "init", spec, "-o", tmp_path / name)[0] == 0
        assert cli(capsys, "compile", spec, "-o", tmp_path / "m.onnx")[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "m.onnx").st_mode) == 0o644


def test_init_writes_what_the_name_says_or_refuses(tmp_path, spec, capsys):
    code, _, err = cli(capsys, "init", spec, "-o", tmp_path / "w.npz")
    assert code == 1 and "cannot tell the weights format" in err
    assert not (tmp_path / "w.npz").exists()
    assert cli(capsys, "init", spec, "-o", tmp_path / "w.pt")[0] == 0
    code, _, err = cli(capsys, "compile", spec, "--weights", tmp_path / "w.pt", "-o", tmp_path / "m.onnx")
    assert code == 0, err


def test_npy_output_holds_one_array_or_is_refused(tmp_path):
    from cnncomp.errors import CnnError
    from cnncomp.fileio import save_arrays

    with pytest.raises(CnnError, match="a .npy holds one array"):
        save_arrays(tmp_path / "y.npy", {"a": np.zeros(2), "b": np.ones(2)})
    save_arrays(tmp_path / "y.npy", {"a": np.arange(3.0)})
    assert np.load(tmp_path / "y.npy").tolist() == [0.0, 1.0, 2.0]


def test_a_failed_write_is_a_one_line_error(tmp_path, spec, capsys, monkeypatch):
    # (a device is written directly, like the FIFO above; a full one, /dev/full, fails like this)
    import errno

    import cnncomp.fileio as fileio

    def disk_full(target, write):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio, "_replace_atomically", disk_full)
    code, _, err = cli(capsys, "compile", spec, "--emit", "cnn", "-o", tmp_path / "out.cnn")
    assert code == 1 and err.strip() == f"error: cannot write '{tmp_path / 'out.cnn'}': No space left on device"


def test_compile_never_writes_a_model_onnx_runtime_cannot_load(tmp_path, capsys):
    # language.md's padding_extensions example: float64 Conv has no ONNX Runtime kernel
    path = tmp_path / "pe.cnn"
    path.write_text("network pe\ninput x: float64[N, 3, 8, 8]\ny = x -> conv(4, k=3)\noutput y\n")
    code, _, err = cli(capsys, "compile", path, "-o", tmp_path / "pe.onnx")
    assert code == 1 and "not writing" in err and "Conv" in err
    assert not (tmp_path / "pe.onnx").exists()


def test_dev_stdout_redirected_to_a_file_holds_the_output_alone(tmp_path, spec):
    target = tmp_path / "out.cnn"
    with open(target, "w") as out:
        result = subprocess.run([sys.executable, "-m", "cnncomp", "compile", str(spec), "--emit", "cnn", "-o",
                                 "/dev/stdout"], stdout=out, stderr=subprocess.PIPE, timeout=300,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert target.read_text().startswith("# n after passes") and b"wrote /dev/stdout" in result.stderr


def test_a_reader_that_leaves_early_gets_no_traceback():
    result = subprocess.run(f"'{sys.executable}' -m cnncomp summary '{ROOT / 'specs' / 'resnet50.cnn'}' | head -1",
                            shell=True, capture_output=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.count(b"\n") == 1 and b"Traceback" not in result.stderr


def test_a_hard_link_to_the_spec_is_the_spec(tmp_path, spec, capsys):
    link = tmp_path / "same.cnn"
    os.link(spec, link)
    code, _, err = cli(capsys, "compile", spec, "--emit", "cnn", "-o", link)
    assert code == 1 and "it is an input of this command" in err and spec.read_text() == SPEC
