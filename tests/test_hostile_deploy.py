"""Hostile inputs, round two (issue 21): deploy and serve. Names from a repository never become shell or
Python code, an interrupted deploy removes only what it made, stray temporaries do not break serve,
and shared memory is private."""

from __future__ import annotations

import ast
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_helpers import cli

from cnncomp.deployment import serve as serve_module
from cnncomp.deployment import triton
from cnncomp.errors import CnnError

ROOT = Path(__file__).resolve().parents[1]
TINY = "network tiny\ninput x: [N, 3, 8, 8]\ny = x -> conv(4, k=3, p=1) as conv -> relu\noutput y\n"


def spec_file(tmp_path: Path, name: str = "tiny") -> Path:
    path = tmp_path / f"{name}.cnn"
    path.write_text(TINY.replace("network tiny", f"network {name}"))
    return path


# ---- 2. the printed client command ---------------------------------------------------------------------

HOSTILE = "x$(touch PWNED)',__import__('os').system('touch PWNED2'),'\"`id`\\!"


@pytest.mark.parametrize("name", ["x", HOSTILE, "é\n"])
def test_client_example_is_one_shell_word_of_python_literals(name):
    metadata = {"name": name, "inputs": [{"name": name, "datatype": "FP32", "shape": [-1, 3]}],
                "outputs": [{"name": name, "datatype": "FP32", "shape": [-1, 4]}]}
    line = serve_module.client_example("127.0.0.1:9001", metadata)
    argv = shlex.split(line)
    assert argv[:2] == ["python", "-c"] and len(argv) == 3
    tree = ast.parse(argv[2])
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert strings.count(name) == 3  # the input, the output and the model: each one literal
    called = {n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id
              for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert called == {"InferenceServerClient", "InferInput", "set_data_from_numpy", "zeros", "infer", "print",
                      "as_numpy"}


def test_pasting_the_client_command_runs_no_code_from_a_name(tmp_path):
    metadata = {"name": HOSTILE, "inputs": [{"name": HOSTILE, "datatype": "FP32", "shape": [1]}],
                "outputs": [{"name": HOSTILE, "datatype": "FP32", "shape": [1]}]}
    line = serve_module.client_example("127.0.0.1:9001", metadata)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text("#!/bin/sh\nexit 0\n")  # the shell expands the line; nothing runs Python
    (fake / "python").chmod(0o755)
    subprocess.run(["bash", "-c", line], cwd=tmp_path, env={"PATH": f"{fake}:/usr/bin:/bin"}, check=True)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()


# ---- 7. names and config.pbtxt -------------------------------------------------------------------------


def test_a_model_name_with_a_trailing_newline_is_refused(tmp_path, capsys):
    code, _, err = cli(capsys, "deploy", spec_file(tmp_path), "--triton", tmp_path / "repo", "--name", "evil\n")
    assert code == 1 and '"evil\\012" cannot name a Triton model' in err
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_pbtxt_escapes_names():
    from google.protobuf import text_format

    mc = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    name = 'in"put\\\n\x00é'
    config = triton.TritonConfig("m", 0, [triton.TensorConfig(name, "TYPE_FP32", [3])],
                                 [triton.TensorConfig("y", "TYPE_FP32", [3])])
    text = config.to_pbtxt()
    assert 'name: "in\\"put\\\\\\012\\000\\303\\251"' in text
    parsed = text_format.Parse(text, mc.ModelConfig())
    assert parsed.input[0].name == name and parsed.output[0].name == "y"


# ---- 4. interruption -----------------------------------------------------------------------------------


def test_deploy_writes_outside_the_repository_until_the_rename(tmp_path, monkeypatch):
    from cnncomp.emit.onnx import save as onnx_emit

    repo = tmp_path / "repo"
    cli_ok = cnncomp_deploy(tmp_path, repo, "first")
    assert cli_ok
    seen = []
    real = onnx_emit.save_onnx

    def spying(model, path, external_data=None):
        seen.append(sorted(p.name for p in repo.iterdir()))
        return real(model, path, external_data)

    monkeypatch.setattr(onnx_emit, "save_onnx", spying)
    assert cnncomp_deploy(tmp_path, repo, "second")
    assert seen == [["first"]]  # while writing, the repository held only finished models
    assert sorted(p.name for p in repo.iterdir()) == ["first", "second"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".old"))]


def cnncomp_deploy(tmp_path: Path, repo: Path, name: str) -> bool:
    from cnncomp.cli import main

    return main(["deploy", str(spec_file(tmp_path, name)), "--triton", str(repo)]) == 0


def test_an_interrupted_deploy_keeps_a_model_another_deploy_wrote_meanwhile(tmp_path, monkeypatch):
    from cnncomp.emit.onnx import save as onnx_emit

    repo = tmp_path / "new" / "repo"  # A creates it (and its parent)
    real = onnx_emit.save_onnx

    def slow_then_interrupted(model, path, external_data=None):
        if "big" in str(path):
            monkeypatch.setattr(onnx_emit, "save_onnx", real)
            assert cnncomp_deploy(tmp_path, repo, "other")  # B finishes while A writes
            raise KeyboardInterrupt  # then A is interrupted
        return real(model, path, external_data)

    monkeypatch.setattr(onnx_emit, "save_onnx", slow_then_interrupted)
    assert not cnncomp_deploy(tmp_path, repo, "big")  # the command line reports the interruption
    assert sorted(p.name for p in repo.iterdir()) == ["other"]
    assert (repo / "other" / "1" / "model.onnx").is_file()


def test_an_interrupted_deploy_into_a_new_repository_removes_it(tmp_path, monkeypatch):
    from cnncomp.emit.onnx import save as onnx_emit

    def interrupted(model, path, external_data=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_emit, "save_onnx", interrupted)
    assert not cnncomp_deploy(tmp_path, tmp_path / "new" / "repo", "big")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.cnn"]


def test_serve_loads_only_the_models_it_lists(tmp_path):
    repo = tmp_path / "repo"
    assert cnncomp_deploy(tmp_path, repo, "tiny")
    stray = repo / f".tiny.{os.getpid()}.0123abcd.tmp"  # what a kill -9 during deploy left
    (stray / "1").mkdir(parents=True)
    (stray / "config.pbtxt").write_text('name: "half')
    server = serve_module.TritonServer(repo, tritonserver="/bin/true")
    command = server.command(None)
    assert "--model-control-mode=explicit" in command
    assert [c for c in command if c.startswith("--load-model=")] == ["--load-model=tiny"]


def test_a_later_write_removes_the_temporaries_of_a_killed_one_only(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    dead = tmp_path / ".m.onnx.999999999.0123abcd.tmp"  # no such process
    live = tmp_path / f".m.onnx.{os.getppid()}.0123abcd.tmp"  # a process still writing
    other = tmp_path / ".n.onnx.999999999.0123abcd.tmp"  # another output's
    fresh = tmp_path / ".m.onnx.999999998.0123abcd.tmp"  # written a moment ago: maybe another machine's writer
    for p in (dead, live, other, fresh):
        p.write_bytes(b"partial")
        if p is not fresh:
            os.utime(p, (0, 0))
    assert cli(capsys, "compile", spec_file(tmp_path), "-o", out)[0] == 0
    assert not dead.exists() and live.exists() and other.exists() and fresh.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_write_removes_the_temporary(tmp_path, sig):
    program = textwrap.dedent(f"""
        import os, signal, sys, time
        from cnncomp.fileio import atomic_write
        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(b"x" * 1000)
                f.flush()
                os.kill(os.getpid(), {int(sig)})
                time.sleep(10)
        atomic_write(sys.argv[1], write)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", program, str(tmp_path / "out.onnx")], env=env,
                            capture_output=True, timeout=120)
    assert result.returncode != 0
    if sig == signal.SIGTERM:
        assert result.returncode == -signal.SIGTERM  # ended as the signal would have
    assert list(tmp_path.iterdir()) == []


def test_a_signal_during_a_deploy_removes_the_temporary(tmp_path):
    program = textwrap.dedent("""
        import os, signal, sys, time
        from cnncomp.emit.onnx import save
        def stuck(model, path, external_data=None):
            open(path, "wb").write(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        save.save_onnx = stuck
        from cnncomp.cli import main
        main(["deploy", sys.argv[1], "--triton", sys.argv[2]])
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    spec = spec_file(tmp_path)
    result = subprocess.run([sys.executable, "-c", program, str(spec), str(tmp_path / "repo")], env=env,
                            capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.cnn", "repo"] or \
        sorted(p.name for p in tmp_path.iterdir()) == ["repo", "tiny.cnn"]
    assert list((tmp_path / "repo").iterdir()) == []


# ---- 9 and the trust boundary ---------------------------------------------------------------------


def test_the_server_runs_with_umask_077(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    assert cnncomp_deploy(tmp_path, repo, "tiny")
    seen = {}

    def fake_popen(cmd, **kwargs):
        seen.update(kwargs)
        raise CnnError("stopped here (test)")

    monkeypatch.setattr(serve_module.subprocess, "Popen", fake_popen)
    monkeypatch.setattr(serve_module, "check_ports_free", lambda ports: None)
    server = serve_module.TritonServer(repo, tritonserver="/bin/true")
    with pytest.raises(CnnError, match="stopped here"):
        server.start()
    server.cleanup()
    assert seen["umask"] == 0o077


def load_backend(monkeypatch):
    """The stand-in onnxruntime backend, with a stand-in for Triton's utilities module."""
    import importlib.util
    import types

    utils = types.ModuleType("triton_python_backend_utils")

    class TritonModelException(Exception):
        pass

    utils.TritonModelException = TritonModelException
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    path = ROOT / "cnncomp" / "deployment" / "triton_backend" / "onnxruntime" / "model.py"
    spec = importlib.util.spec_from_file_location("stand_in_backend", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("filename", ["../../secret.onnx", "/etc/passwd", "link.onnx", "."])
def test_the_backend_refuses_a_model_file_outside_the_models_folder(tmp_path, monkeypatch, filename):
    backend = load_backend(monkeypatch)
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "secret.onnx").write_bytes(b"")
    (tmp_path / "m" / "1" / "link.onnx").symlink_to(tmp_path / "secret.onnx")
    args = {"model_repository": str(tmp_path / "m"), "model_version": "1"}
    with pytest.raises(backend.pb_utils.TritonModelException, match="leads outside the model's folder"):
        backend._model_file(args, filename)
    assert backend._model_file(args, "model.onnx") == str((tmp_path / "m" / "1" / "model.onnx").resolve())


def test_the_printed_serve_line_quotes_the_repository(tmp_path, capsys):
    repo = tmp_path / "my repo $(touch PWNED)"
    code, out, _ = cli(capsys, "deploy", spec_file(tmp_path), "--triton", repo)
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("serve it with: "))
    assert shlex.split(line[len("serve it with: "):].split(" (or ")[0]) == ["cnncomp", "serve", str(repo)]
