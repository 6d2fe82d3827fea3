"""`cnncomp serve` refusals and lifecycle, and deploy's config-against-model check.

The refusals that come before a server starts (not a repository, port in use, no binary, bad usage) and
the config check run everywhere; a model that fails to load and serving a spec directly need the `serve`
extra and skip with the reason without it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from cli_helpers import cli

from cnncomp.cli import main
from cnncomp.deployment import serve as serve_module
from cnncomp.deployment.serve import (
    HOST,
    free_ports,
    processes_under,
    serve_extra_missing,
)
from cnncomp.deployment.triton import (
    TensorConfig,
    config_problems,
    triton_config,
    write_repository,
)
from cnncomp.errors import CnnError
from cnncomp.pipeline import emit_model, optimize

ROOT = Path(__file__).resolve().parents[1]
LENET = str(ROOT / "specs" / "lenet.cnn")
needs_server = pytest.mark.skipif(serve_extra_missing() is not None,
                                  reason=f"no Triton server to test against: {serve_extra_missing()}")


def fake_repository(tmp_path: Path) -> Path:
    (tmp_path / "repo" / "m").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text('name: "m"\n')
    return tmp_path / "repo"


def ports_args() -> list[str]:
    http, grpc, metrics = free_ports()
    return ["--http-port", http, "--grpc-port", grpc, "--metrics-port", metrics]


# ---- refusals before a server starts ----------------------------------------------------------


def test_a_folder_without_models_is_not_a_repository(tmp_path, capsys):
    code, _, err = cli(capsys, "serve", tmp_path, *ports_args())
    assert code == 1 and f"'{tmp_path}' is not a Triton model repository: no MODEL/config.pbtxt inside" in err
    code, _, err = cli(capsys, "serve", tmp_path / "absent", *ports_args())
    assert code == 1 and "is not a Triton model repository: no such folder" in err


def test_a_port_in_use_is_named_with_its_flag(tmp_path, capsys):
    repo = fake_repository(tmp_path)
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        http, _, metrics = free_ports()
        code, _, err = cli(capsys, "serve", repo, "--http-port", http, "--grpc-port", port, "--metrics-port", metrics)
    assert code == 1
    assert f"cannot serve gRPC on 127.0.0.1:{port}" in err and "pick another with --grpc-port" in err


def test_no_server_binary_names_the_extra_to_install(tmp_path, capsys, monkeypatch):
    repo = fake_repository(tmp_path)
    monkeypatch.setattr(serve_module.importlib.util, "find_spec", lambda name: None)
    code, _, err = cli(capsys, "serve", repo, *ports_args())
    assert code == 1 and "the `serve` extra provides one" in err and "pip install 'cnncomp[serve]'" in err
    assert serve_extra_missing() is not None


def test_a_missing_tritonserver_path(tmp_path, capsys):
    repo = fake_repository(tmp_path)
    code, _, err = cli(capsys, "serve", repo, "--tritonserver", tmp_path / "bin" / "tritonserver", *ports_args())
    assert code == 1 and "bin/tritonserver: no such executable" in err


@pytest.mark.parametrize("args, message", [
    (["--http-port", "0"], "--http-port takes a port from 1 to 65535"),
    (["-D", "width=8"], "-D and --max-batch go with a spec"),
])
def test_bad_usage_exits_2(tmp_path, capsys, args, message):
    code, _, err = cli(capsys, "serve", fake_repository(tmp_path), *args)
    assert code == 2 and message in err


def test_ports_must_differ(tmp_path, capsys):
    code, _, err = cli(capsys, "serve", fake_repository(tmp_path), "--http-port", 18123, "--grpc-port", 18123)
    assert code == 1 and "ports must differ" in err


def test_load_errors_quote_tritons_reasons_without_the_noise():
    log = "\n".join([
        'I1201 14:16:19.346190 12820 model_lifecycle.cc:472] "loading: lenet:1"',
        "Error: Failed to initialize NVML",
        'E1201 14:16:20.1 12820 model_lifecycle.cc:642] "failed to load \'lenet\' version 1: Internal: boom"',
        "| lenet     | 1       | UNAVAILABLE: Internal: TritonModelException: boom\\n\\nAt:\\n  model.py(9) |",
        ("| resnet18  | 1       | UNAVAILABLE: Invalid argument: instance group resnet18_0 of model resnet18 has kind "
         "KIND_GPU but no GPUs are available |"),
        "| tiny      | 1       | READY  |",
        "error: creating server: Internal - failed to load all models",
    ])
    assert serve_module.load_errors(log) == [
        "model 'lenet' version 1 failed to load: Internal: TritonModelException: boom",
        ("model 'resnet18' version 1 failed to load: Invalid argument: instance group resnet18_0 of model resnet18 "
         "has kind KIND_GPU but no GPUs are available"),
        "error: creating server: Internal - failed to load all models",
        "hint: this server has no GPU; redeploy without --kind gpu (Triton then picks the CPU)",
    ]


def test_client_example_sends_zeros_of_every_input():
    metadata = {"name": "two", "inputs": [{"name": "a", "datatype": "FP16", "shape": [-1, 3]},
                                          {"name": "b", "datatype": "FP32", "shape": [2]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]}
    line = serve_module.client_example("127.0.0.1:9001", metadata)
    assert line.startswith("python -c \"import numpy as np, tritonclient.grpc as g; "
                           "c = g.InferenceServerClient('127.0.0.1:9001'); ")
    assert "g.InferInput('a', [1, 3], 'FP16'); i0.set_data_from_numpy(np.zeros((1, 3), np.float16))" in line
    assert "g.InferInput('b', [2], 'FP32'); i1.set_data_from_numpy(np.zeros((2,), np.float32))" in line
    assert line.endswith("r = c.infer('two', [i0, i1]); print(r.as_numpy('y').shape)\"")


# ---- with a server ----------------------------------------------------------------------------


@needs_server
def test_a_model_that_fails_to_load_reports_tritons_reason(tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["deploy", LENET, "--triton", str(repo)]) == 0
    config = repo / "lenet" / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 1, 28, 28 ]", "dims: [ 1, 28, 27 ]"))
    gpu_less = not Path("/dev/nvidiactl").exists()
    if gpu_less:  # and GPU instances on a server without a GPU
        assert main(["deploy", LENET, "--triton", str(repo), "--kind", "gpu", "--name", "lenet_gpu"]) == 0
    code, _, err = cli(capsys, "serve", repo, *ports_args())
    assert code == 1
    assert "model 'lenet' version 1 failed to load" in err
    assert "input 'x' has shape [-1, 1, 28, 28] in the model but the configuration gives [-1, 1, 28, 27]" in err
    if gpu_less:
        assert "model 'lenet_gpu' version 1 failed to load" in err and "KIND_GPU but no GPUs are available" in err
        assert "hint: this server has no GPU; redeploy without --kind gpu" in err
    assert not [p for p in processes_under(os.getpid()) if "tritonserver" in _cmdline(p)]


@needs_server
def test_a_server_not_ready_in_time_is_stopped(tmp_path):
    repo = tmp_path / "repo"
    assert main(["deploy", LENET, "--triton", str(repo)]) == 0
    server = serve_module.TritonServer(repo, serve_module.Ports(*free_ports()))
    with pytest.raises(CnnError, match=r"Triton was not ready after 0 s \(models not ready: lenet\)"):
        server.start(timeout=0)
    assert not server.running() and server.process is None
    server.cleanup()


@needs_server
def test_serving_a_spec_deploys_it_and_sigint_stops_everything(tmp_path):
    spec = tmp_path / "tiny.cnn"
    spec.write_text("network tiny\nlet classes = 4\ninput x: [N, 3, 8, 8]\n"
                    "y = x -> conv(4, k=3, p=1) as c -> relu -> gap -> flatten -> linear(classes) as fc\noutput y\n")
    http, grpc, metrics = free_ports()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "cnncomp", "serve", str(spec), "-D", "classes=3", "--http-port",
                             str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:  # bounded: serve gives up on its own after --timeout
            lines.append(line)
            if line.startswith("try: "):
                break
        assert lines and lines[0].startswith("serving tiny from ") and lines[-1].startswith("try: "), lines
        import tritonclient.http as httpclient

        metadata = httpclient.InferenceServerClient(f"{HOST}:{http}").get_model_metadata("tiny")
        assert metadata["outputs"][0]["shape"] == [-1, 3]  # -D reached deploy
        children = processes_under(proc.pid)
        assert any("tritonserver" in _cmdline(p) for p in children)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped" in out, err
    assert not [p for p in children if Path(f"/proc/{p}").exists() and _cmdline(p)]
    for port in (http, grpc, metrics):  # nothing listens any more
        with socket.socket() as s:
            assert s.connect_ex((HOST, port)) != 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# ---- deploy: the config must match the model ---------------------------------------------------


@pytest.fixture(scope="module")
def lenet():
    compiled = optimize(LENET)
    model = emit_model(compiled)
    return model, triton_config(model, compiled.graph, max_batch=8)


def test_the_generated_config_matches_its_model(lenet):
    model, config = lenet
    assert config_problems(config, model) == []
    assert config_problems(dataclasses.replace(config, max_batch_size=0, inputs=[
        TensorConfig("x", "TYPE_FP32", [-1, 1, 28, 28])], outputs=[TensorConfig("logits", "TYPE_FP32", [-1, 10])]),
        model) == []


@pytest.mark.parametrize("change, problem", [
    ({"inputs": [TensorConfig("image", "TYPE_FP32", [1, 28, 28])]},
     ["the model's input 'x' is missing from the config", "config input 'image' is not a model input (the model has x)"]),
    ({"inputs": [TensorConfig("x", "TYPE_FP16", [1, 28, 28])]},
     ["input 'x' is TYPE_FP16 in the config but FLOAT in the model"]),
    ({"outputs": [TensorConfig("logits", "TYPE_FP32", [12])]},
     [("output 'logits' has shape [-1, 10] in the model but [-1, 12] in the config (max_batch_size 8: a dynamic "
       "batch dim, then the config's dims)")]),
    ({"inputs": [TensorConfig("x", "TYPE_FP32", [-1, 1, 28, 28])]},  # the batch dim written twice
     [("input 'x' has shape [-1, 1, 28, 28] in the model but [-1, -1, 1, 28, 28] in the config (max_batch_size 8: "
       "a dynamic batch dim, then the config's dims)")]),
    ({"max_batch_size": 0}, ["input 'x' has shape [-1, 1, 28, 28] in the model but [1, 28, 28] in the config",
                             "output 'logits' has shape [-1, 10] in the model but [10] in the config"]),
])
def test_a_mismatched_config_is_refused_and_nothing_written(lenet, tmp_path, change, problem):
    model, config = lenet
    bad = dataclasses.replace(config, **change)
    assert config_problems(bad, model) == problem
    with pytest.raises(CnnError, match="does not match its model, so Triton would refuse to load it"):
        write_repository(model, bad, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_a_static_batch_dim_under_batching_is_a_mismatch(lenet):
    model, config = lenet
    static = onnx.ModelProto()
    static.CopyFrom(model)
    static.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    assert config_problems(config, static) == [
        ("input 'x' has shape [1, 1, 28, 28] in the model but [-1, 1, 28, 28] in the config (max_batch_size 8: a "
         "dynamic batch dim, then the config's dims)")]


def test_instance_kind_left_to_triton_unless_given(tmp_path, capsys):
    from google.protobuf import text_format

    mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is not installed")
    kinds = {}
    for name, args in (("auto", []), ("gpu", ["--kind", "gpu"]), ("cpu", ["--kind", "cpu"]), ("trt", ["--tensorrt"])):
        code, out, err = cli(capsys, "deploy", LENET, "--triton", tmp_path / "repo", "--name", name, *args)
        assert code == 0, err
        config = text_format.Parse((tmp_path / "repo" / name / "config.pbtxt").read_text(), mc.ModelConfig())
        kinds[name] = [g.kind for g in config.instance_group]
        assert "serve it with: cnncomp serve" in out
    group = mc.ModelInstanceGroup
    assert kinds == {"auto": [group.KIND_AUTO], "gpu": [group.KIND_GPU], "cpu": [group.KIND_CPU],
                     "trt": [group.KIND_GPU]}
