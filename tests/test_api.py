"""The Python API does what the commands do: fp16 and checks through compile, Triton repositories through deploy."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import cnncomp
from cnncomp.api import CheckFailed
from cnncomp.errors import UsageError
from cnncomp.precision.fp16 import model_precision

TINY = ("network tiny\ninput x: [N, 3, 16, 16]\ny = x -> conv(8, k=3, p=1, bias=false) as conv -> bn as bn -> relu "
        "-> gap as pool -> flatten as flat -> linear(4) as fc\noutput y\n")


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "tiny.cnn"
    path.write_text(TINY)
    return str(path)


def run(model, x):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_compile_fp16_converts_weights_and_compute(spec):
    fp32 = cnncomp.compile(spec)
    fp16 = cnncomp.compile(spec, precision="fp16")
    assert model_precision(fp32) == "fp32" and model_precision(fp16) == "fp16"
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    want = run(fp32, x)
    got = run(fp16, x.astype(np.float16)).astype(np.float32)
    np.testing.assert_allclose(got, want, atol=1e-2 * np.abs(want).max(), rtol=1e-2)


def test_compile_fp16_keep_io_fp32_verified_and_written(spec, tmp_path):
    target = tmp_path / "tiny16.onnx"
    lines = []
    model = cnncomp.compile(spec, output=target, precision="fp16", keep_io_fp32=True, verify=True, log=lines.append)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model_precision(onnx.load(str(target))) == "fp16"


def test_compile_verify_failure_raises_and_writes_nothing(spec, tmp_path):
    target = tmp_path / "tiny.onnx"
    with pytest.raises(CheckFailed) as caught:
        cnncomp.compile(spec, output=target, verify=True, atol=1e-12, rtol=0.0)
    assert not caught.value.report.ok and "MISMATCH" in str(caught.value)
    assert not target.exists()


def test_compile_emits_text(spec):
    text = cnncomp.compile(spec, emit="cnn")
    assert text.startswith("#") and "network tiny" in text and "bn" not in text.split("network tiny")[1]


@pytest.mark.parametrize("options, message", [
    (dict(emit="cnn", precision="fp16"), "--precision fp16 converts the ONNX model"),
    (dict(keep_io_fp32=True), "--keep-io-fp32 goes with --precision fp16"),
    (dict(target="tensorrt", emit="dot"), "--target tensorrt builds from the ONNX model"),
    (dict(precision="int3"), "unknown precision 'int3'"),
    (dict(passes="bottleneck(ratio=2)"), "needs a number in (0, 1]"),
])
def test_compile_bad_options_are_usage_errors(spec, options, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cnncomp.compile(spec, **options)


def test_deploy_writes_a_triton_repository(spec, tmp_path):
    repo = tmp_path / "repo"
    folder = cnncomp.deploy(spec, repo, max_batch=4, precision="fp16", keep_io_fp32=True, kind="cpu")
    assert folder == repo / "tiny"
    config = (folder / "config.pbtxt").read_text()
    assert 'name: "tiny"' in config and "max_batch_size: 4" in config and "KIND_CPU" in config
    model = onnx.load(str(folder / "1" / "model.onnx"))
    assert model_precision(model) == "fp16"
    x = np.zeros((4, 3, 16, 16), np.float32)
    assert run(model, x).shape == (4, 4)


def test_deploy_bad_options_are_usage_errors(spec, tmp_path):
    with pytest.raises(UsageError, match="--tensorrt needs GPU instances"):
        cnncomp.deploy(spec, tmp_path / "repo", tensorrt=True, kind="cpu")
    assert not (tmp_path / "repo").exists()


def test_verify_each_through_the_api(spec):
    report = cnncomp.verify(spec, verify_each=True)
    assert report.ok and any(n.startswith("verify-each: checked after each of") for n in report.notes)


def test_serve_refuses_bad_usage_before_starting_anything(spec, tmp_path):
    from cnncomp.errors import CnnError

    with pytest.raises(UsageError, match="-D and --max-batch go with a spec"):
        with cnncomp.serve(tmp_path, defines={"width": "8"}):
            pass
    with pytest.raises(UsageError, match="--http-port takes a port from 1 to 65535, got 0"):
        with cnncomp.serve(tmp_path, http_port=0):
            pass
    with pytest.raises(CnnError, match="is not a Triton model repository"):
        with cnncomp.serve(tmp_path / "absent"):
            pass


def test_serve_a_spec_yields_the_endpoints_and_stops_the_server(spec):
    import urllib.request

    from cnncomp.deployment.serve import free_ports, serve_extra_missing

    missing = serve_extra_missing()
    if missing:
        pytest.skip(f"no Triton server to test against: {missing}")
    http, grpc, metrics = free_ports()
    lines = []
    with cnncomp.serve(spec, http_port=http, grpc_port=grpc, metrics_port=metrics, max_batch=4,
                       log=lines.append) as serving:
        assert serving.models == ["tiny"] and serving.endpoints["gRPC"] == f"127.0.0.1:{grpc}"
        with urllib.request.urlopen(f"{serving.endpoints['HTTP']}/v2/models/tiny/ready", timeout=10) as r:
            assert r.status == 200
        server = serving.server
    assert not server.running() and any("max_batch_size 4" in line for line in lines)
