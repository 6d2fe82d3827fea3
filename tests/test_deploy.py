"""cnncomp deploy: Triton model repositories, checked against Triton's own config schema and run
with ONNX Runtime at every batch size up to max_batch_size; and the progress bar."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from cli_helpers import cli

ROOT = Path(__file__).resolve().parents[1]
RESNET18 = str(ROOT / "specs" / "resnet18.cnn")
SMALL = ["-D", "width=8", "-D", "num_classes=10"]  # resnet18 at width 8: fast, same structure
STATIC = "network static_net\ninput x: [1, 3, 16, 16]\ny = x -> conv(4, k=3, p=1) as c -> relu -> gap -> flatten " \
         "-> linear(3) as fc\noutput y\n"
TINY = "network tiny\ninput x: [N, 3, 16, 16]\ny = x -> conv(8, k=3, p=1, bias=false) as conv -> bn as bn -> relu " \
       "-> gap as pool -> flatten as flat -> linear(4) as fc\noutput y\n"


def model_config_pb2():
    """Triton's ModelConfig schema from tritonclient, or a skip saying what is missing."""
    try:
        from tritonclient.grpc import model_config_pb2 as mc
    except (ImportError, RuntimeError) as exc:  # tritonclient.grpc raises RuntimeError without grpcio
        pytest.skip(f"tritonclient[grpc] is not installed ({exc}); pip install 'tritonclient[grpc]'")
    return mc


def parse_config(path: Path):
    from google.protobuf import text_format

    mc = model_config_pb2()
    return text_format.Parse(path.read_text(), mc.ModelConfig()), mc


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# ---- the repository and its config --------------------------------------------------------


def test_repository_layout_and_config_follow_triton_schema(tmp_path, capsys):
    repo = tmp_path / "repo"
    code, out, _ = cli(capsys, "deploy", RESNET18, *SMALL, "--triton", repo, "--max-batch", 8, "--instances", 2)
    assert code == 0, out
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == \
        ["resnet18", "resnet18/1", "resnet18/1/model.onnx", "resnet18/config.pbtxt"]
    config, mc = parse_config(repo / "resnet18" / "config.pbtxt")
    assert config.name == "resnet18"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("x", mc.TYPE_FP32, [3, 224, 224])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("logits", mc.TYPE_FP32, [10])]
    assert config.HasField("dynamic_batching")
    # no --kind: the instance kind is left to Triton (KIND_AUTO), so the repository loads on CPU and GPU servers
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, mc.ModelInstanceGroup.KIND_AUTO)]
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator
    assert "tritonserver --model-repository=" in out


def test_fp16_tensorrt_config(tmp_path, capsys):
    repo = tmp_path / "repo"
    code, out, err = cli(capsys, "deploy", RESNET18, *SMALL, "--triton", repo, "--precision", "fp16", "--tensorrt")
    assert code == 0, err
    config, mc = parse_config(repo / "resnet18" / "config.pbtxt")
    assert config.input[0].data_type == mc.TYPE_FP16 and config.output[0].data_type == mc.TYPE_FP16
    (acc,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt"
    assert dict(acc.parameters) == {"precision_mode": "FP16", "max_workspace_size_bytes": "1073741824"}
    model = onnx.load(str(repo / "resnet18" / "1" / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert {t.data_type for t in model.graph.initializer if t.data_type in (1, 10)} == {onnx.TensorProto.FLOAT16}


def test_fp16_keep_io_fp32_declares_fp32(tmp_path, capsys):
    repo = tmp_path / "repo"
    spec = write(tmp_path, "tiny.cnn", TINY)
    code, _, err = cli(capsys, "deploy", spec, "--triton", repo, "--precision", "fp16", "--keep-io-fp32",
                       "--tensorrt")
    assert code == 0, err
    config, mc = parse_config(repo / "tiny" / "config.pbtxt")
    assert config.input[0].data_type == mc.TYPE_FP32 and config.output[0].data_type == mc.TYPE_FP32
    acc = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert acc.parameters["precision_mode"] == "FP16"


def test_max_batch_zero_and_cpu_instances(tmp_path, capsys):
    repo = tmp_path / "repo"
    spec = write(tmp_path, "static.cnn", STATIC)
    code, _, err = cli(capsys, "deploy", spec, "--triton", repo, "--max-batch", 0, "--kind", "cpu",
                       "--instances", 3, "--name", "static-v2")
    assert code == 0, err
    config, mc = parse_config(repo / "static-v2" / "config.pbtxt")
    assert config.name == "static-v2" and config.max_batch_size == 0
    assert list(config.input[0].dims) == [1, 3, 16, 16] and list(config.output[0].dims) == [1, 3]
    assert not config.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in config.instance_group] == [(3, mc.ModelInstanceGroup.KIND_CPU)]


# ---- the model Triton will load --------------------------------------------------------------


def test_model_keeps_dynamic_batch_and_runs_at_every_batch_size(tmp_path, capsys):
    from cnncomp.ir.weights import init_weights
    from cnncomp.pipeline import load as load_graph
    from cnncomp.run.reference import run_reference

    repo = tmp_path / "repo"
    assert cli(capsys, "deploy", RESNET18, *SMALL, "--triton", repo, "--max-batch", 8)[0] == 0
    model_path = repo / "resnet18" / "1" / "model.onnx"
    model = onnx.load(str(model_path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    graph = load_graph(RESNET18, {"width": "8", "num_classes": "10"})
    weights = init_weights(graph, 0)
    sess = session(model_path)
    rng = np.random.default_rng(0)
    for batch in (1, 2, 3, 8):
        x = rng.uniform(-1, 1, (batch, 3, 224, 224)).astype(np.float32)
        (got,) = sess.run(None, {"x": x})
        want = run_reference(graph, weights, {"x": x})["logits"]
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=1e-3)


def test_train_then_deploy(tmp_path, capsys):
    """The docs/deploy.md walk-through: to_torch -> train -> torch.save(state_dict) -> deploy --weights."""
    import cnncomp

    spec = write(tmp_path, "tiny.cnn", TINY)
    module = cnncomp.to_torch(spec)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(4, 3, 16, 16, generator=gen)
        loss = (module(x) - 1.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    torch.save(module.state_dict(), tmp_path / "tiny.pt")
    repo = tmp_path / "repo"
    code, _, err = cli(capsys, "deploy", spec, "--weights", tmp_path / "tiny.pt", "--triton", repo)
    assert code == 0, err
    x = np.random.default_rng(1).standard_normal((5, 3, 16, 16)).astype(np.float32)
    (got,) = session(repo / "tiny" / "1" / "model.onnx").run(None, {"x": x})
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


# ---- errors: clear, located, exit 1, nothing written --------------------------------------


def test_static_batch_is_a_located_error(tmp_path, capsys):
    repo = tmp_path / "repo"
    spec = write(tmp_path, "static.cnn", STATIC)
    code, _, err = cli(capsys, "deploy", spec, "--triton", repo, "--max-batch", 4)
    assert code == 1
    assert "static.cnn:2:7" in err and "static batch dim" in err and "--max-batch 0" in err
    assert "input x: [N, 3, 16, 16]" in err
    assert not repo.exists()


@pytest.mark.parametrize("args, message", [
    (["--kind", "cpu", "--tensorrt"], "--tensorrt needs GPU instances"),
    (["--keep-io-fp32"], "--keep-io-fp32 goes with --precision fp16"),
    (["--max-batch", "-1"], "--max-batch takes 0 or more"),
    (["--instances", "0"], "--instances takes 1 or more"),
])
def test_bad_usage_exits_2(tmp_path, capsys, args, message):
    repo = tmp_path / "repo"
    code, _, err = cli(capsys, "deploy", write(tmp_path, "tiny.cnn", TINY), "--triton", repo, *args)
    assert code == 2 and message in err
    assert not repo.exists()


def test_bad_model_name(tmp_path, capsys):
    code, _, err = cli(capsys, "deploy", write(tmp_path, "tiny.cnn", TINY), "--triton", tmp_path / "r",
                       "--name", "a/b")
    assert code == 1 and "cannot name a Triton model" in err


def test_failure_leaves_no_half_written_repository(tmp_path, capsys, monkeypatch):
    from cnncomp.emit.onnx import save as onnx_emit
    from cnncomp.errors import CnnError

    spec = write(tmp_path, "tiny.cnn", TINY)
    repo = tmp_path / "repo"

    def broken(model, path, external_data=None):
        Path(path).write_bytes(b"half")
        raise CnnError("disk full (simulated)")

    monkeypatch.setattr(onnx_emit, "save_onnx", broken)
    code, _, err = cli(capsys, "deploy", spec, "--triton", repo)
    assert code == 1 and "disk full" in err
    assert not repo.exists()  # created by this run, removed with it

    # an existing model folder survives a failed redeploy untouched
    monkeypatch.undo()
    assert cli(capsys, "deploy", spec, "--triton", repo)[0] == 0
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    monkeypatch.setattr(onnx_emit, "save_onnx", broken)
    assert cli(capsys, "deploy", spec, "--triton", repo, "--max-batch", 2)[0] == 1
    after = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    assert after == before


def test_redeploy_replaces_the_model_folder(tmp_path, capsys):
    spec = write(tmp_path, "tiny.cnn", TINY)
    repo = tmp_path / "repo"
    assert cli(capsys, "deploy", spec, "--triton", repo, "--max-batch", 2)[0] == 0
    (repo / "tiny" / "stale.txt").write_text("old")
    assert cli(capsys, "deploy", spec, "--triton", repo, "--max-batch", 16)[0] == 0
    assert "max_batch_size: 16" in (repo / "tiny" / "config.pbtxt").read_text()
    assert not (repo / "tiny" / "stale.txt").exists()
    assert [p.name for p in repo.iterdir()] == ["tiny"]  # no temporary folders left


def test_refuses_to_replace_a_folder_that_is_not_a_model(tmp_path, capsys):
    spec = write(tmp_path, "tiny.cnn", TINY)
    (tmp_path / "repo" / "tiny").mkdir(parents=True)
    (tmp_path / "repo" / "tiny" / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "deploy", spec, "--triton", tmp_path / "repo")
    assert code == 1 and "not a Triton model folder" in err
    assert (tmp_path / "repo" / "tiny" / "notes.txt").read_text() == "mine"


# ---- the progress bar ----------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_silent_when_not_a_terminal(monkeypatch):
    from cnncomp.progress import progress

    monkeypatch.delenv("CNNCOMP_NO_PROGRESS", raising=False)
    stream = io.StringIO()
    assert list(progress(range(5), label="x", stream=stream)) == [0, 1, 2, 3, 4]
    assert stream.getvalue() == ""


def test_progress_draws_and_erases_on_a_terminal(monkeypatch):
    from cnncomp.progress import format_bar, progress

    monkeypatch.delenv("CNNCOMP_NO_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    stream = FakeTerminal()
    assert list(progress(iter(range(3)), total=3, label="verify", stream=stream)) == [0, 1, 2]
    text = stream.getvalue()
    assert "verify [" in text and "3/3" in text and text.endswith("\r")
    assert format_bar(5, 10, "x", 2.0).startswith("x [############............] 5/10 0:02<0:02")
    assert format_bar(7, None, "", 65.0) == "7 1:05"
    monkeypatch.setenv("CNNCOMP_NO_PROGRESS", "1")
    stream = FakeTerminal()
    assert list(progress([1, 2], stream=stream)) == [1, 2] and stream.getvalue() == ""


def test_progress_erases_when_the_loop_breaks(monkeypatch):
    from cnncomp.progress import progress

    monkeypatch.delenv("CNNCOMP_NO_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    stream = FakeTerminal()
    gen = progress(range(10), stream=stream)
    for i in gen:
        if i == 2:
            break
    gen.close()
    assert stream.getvalue().endswith("\r")
