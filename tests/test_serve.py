"""`cnncomp serve` against a real Triton Inference Server (the `serve` extra's tritonserver with cnncomp's
Python-based onnxruntime backend), end to end over HTTP and gRPC.

One server per module, started as `cnncomp serve REPO` on free 127.0.0.1 ports over one repository that
holds every model the tests need; every request carries a timeout, every loop is bounded, and the server
is stopped (SIGTERM) at the end, with a check that none of its processes outlived it.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnncomp.cli import main
from cnncomp.deployment.serve import HOST, free_ports, processes_under, serve_extra_missing
from cnncomp.run.openvino import openvino_problem

ROOT = Path(__file__).resolve().parents[1]
missing = serve_extra_missing()
pytestmark = pytest.mark.skipif(missing is not None, reason=f"no Triton server to test against: {missing}")

REQUEST_TIMEOUT_S = 30
START_TIMEOUT_S = 120
SPECS = {
    "twohead.cnn": "network twohead\ninput x: [N, 3, 16, 16]\nf = x -> conv(8, k=3, p=1) as conv -> relu\n"
                   "cls = f -> gap -> flatten -> linear(4) as fc\nseg = f -> conv(2, k=1) as head\noutput cls, seg\n",
    # c3d's layout (3-D convs over [N, C, frames, H, W]) at a size that loads in a second
    "clip3d.cnn": "network clip3d\ninput x: [N, 3, 4, 8, 8]\ny = x -> conv(4, k=3, p=1) as conv1 -> relu "
                  "-> maxpool(k=(1, 2, 2), s=(1, 2, 2)) -> conv(8, k=3, p=1) as conv2 -> relu -> gap -> flatten "
                  "-> linear(5) as fc\noutput y\n",
    # symbolic height and width: one model, any size its constraint allows
    "dynseg.cnn": "network dynseg\ninput x: [N, 3, H, W] where H % 4 == 0, W % 4 == 0\n"
                  "d = x -> conv(8, k=3, s=2, p=1) as down -> relu -> maxpool(k=2)\n"
                  "y = d -> conv_transpose(2, k=4, s=4) as up\noutput y\n",
}
SMALL_RESNET = ["-D", "width=8", "-D", "num_classes=10"]
INT8_DEPLOY_FAILURE: list[str | None] = []
OPENVINO_MISSING = openvino_problem()  # lenet_openvino (deploy --runtime openvino) is served where it is installed


def deploy(repo: Path, spec: str, *args: str) -> None:
    code = main(["deploy", spec, "--triton", str(repo), *args])
    assert code == 0, f"deploy {spec} {args} failed"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve")
    repo = folder / "repo"
    for name, text in SPECS.items():
        (folder / name).write_text(text)
    deploy(repo, str(ROOT / "specs" / "lenet.cnn"))
    deploy(repo, str(ROOT / "specs" / "lenet.cnn"), "--precision", "fp16", "--name", "lenet_fp16")
    deploy(repo, str(ROOT / "specs" / "resnet18.cnn"), *SMALL_RESNET, "--max-batch", "8")
    deploy(repo, str(folder / "twohead.cnn"), "--max-batch", "4")
    deploy(repo, str(folder / "clip3d.cnn"))
    deploy(repo, str(folder / "dynseg.cnn"), "--max-batch", "4")
    if OPENVINO_MISSING is None:
        deploy(repo, str(ROOT / "specs" / "lenet.cnn"), "--runtime", "openvino", "--name", "lenet_openvino")
    # a failure here fails the int8 tests alone, not the module
    calibration = folder / "calibration.npz"
    np.savez(calibration, x=np.random.default_rng(7).standard_normal((16, 1, 28, 28)).astype(np.float32))
    code = main(["deploy", str(ROOT / "specs" / "lenet.cnn"), "--triton", str(repo), "--precision", "int8",
                 "--calibration", str(calibration), "--name", "lenet_int8", "--keep-slower-int8"])
    INT8_DEPLOY_FAILURE.append(None if code == 0 else f"deploy --precision int8 exited {code}")
    return repo


@pytest.fixture(scope="module")
def server(repo):
    http, grpc, metrics = free_ports()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "cnncomp", "serve", str(repo), "--http-port", str(http),
                             "--grpc-port", str(grpc), "--metrics-port", str(metrics),
                             "--timeout", str(START_TIMEOUT_S)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    banner = []
    try:
        for line in proc.stdout:  # ends when serve exits; serve itself gives up after START_TIMEOUT_S
            banner.append(line)
            if line.startswith("try: "):
                break
        assert banner and banner[-1].startswith("try: "), \
            f"cnncomp serve did not come up:\n{''.join(banner)}{proc.stderr.read() if proc.poll() is not None else ''}"
        yield {"http": f"{HOST}:{http}", "grpc": f"{HOST}:{grpc}", "banner": "".join(banner), "proc": proc}
    finally:
        children = processes_under(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        leftover = [pid for pid in children if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
        assert proc.returncode == 0 and "stopped" in out, (proc.returncode, out, err)
        assert not leftover, f"processes outlived cnncomp serve: {leftover}"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def client(server, protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    url = server[protocol]
    kwargs = {} if protocol == "grpc" else {"connection_timeout": REQUEST_TIMEOUT_S,
                                            "network_timeout": REQUEST_TIMEOUT_S}
    return module, module.InferenceServerClient(url, **kwargs)


def infer(server, protocol: str, model: str, inputs: dict[str, np.ndarray], datatype: str | None = None):
    module, c = client(server, protocol)
    requests = []
    for name, x in inputs.items():
        i = module.InferInput(name, list(x.shape), datatype or {np.float32: "FP32", np.float16: "FP16",
                                                                np.float64: "FP64"}[x.dtype.type])
        i.set_data_from_numpy(x)
        requests.append(i)
    kwargs = {"client_timeout": REQUEST_TIMEOUT_S} if protocol == "grpc" else {}
    return c.infer(model, requests, **kwargs)


def cnncomp_run(repo: Path, model: str, x: np.ndarray, tmp_path: Path, *args: str) -> dict[str, np.ndarray]:
    """What `cnncomp run` (with `args`, e.g. --runtime openvino) returns for the deployed model.onnx."""
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(repo / model / "1" / "model.onnx"), "--input", str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "y.npz"), *args]) == 0
    with np.load(tmp_path / "y.npz") as y:
        return {k: y[k] for k in y.files}


def inputs_for(model: str, batch: int, seed: int = 0) -> np.ndarray:
    shape = {"lenet": (1, 28, 28), "lenet_fp16": (1, 28, 28), "lenet_int8": (1, 28, 28),
             "resnet18": (3, 224, 224), "twohead": (3, 16, 16), "clip3d": (3, 4, 8, 8)}[model]
    dtype = np.float16 if model.endswith("fp16") else np.float32
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(dtype)


def assert_close(served: np.ndarray, expected: np.ndarray) -> None:
    assert served.shape == expected.shape and served.dtype == expected.dtype
    # the same model and ONNX Runtime on both sides: equal up to summation order (seen bit-identical here)
    scale = float(np.abs(expected.astype(np.float64)).max()) or 1.0
    tol = 1e-2 if expected.dtype == np.float16 else 1e-5
    np.testing.assert_allclose(served.astype(np.float64), expected.astype(np.float64), rtol=tol, atol=tol * scale)


OUTPUTS = {"lenet": ["logits"], "lenet_fp16": ["logits"], "lenet_int8": ["logits"], "resnet18": ["logits"],
           "twohead": ["cls", "seg"], "clip3d": ["y"]}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["lenet", "lenet_fp16", "lenet_int8", "twohead", "clip3d"])
def test_outputs_equal_cnncomp_run(server, repo, tmp_path, protocol, model):
    if model == "lenet_int8" and INT8_DEPLOY_FAILURE and INT8_DEPLOY_FAILURE[0]:
        pytest.fail(INT8_DEPLOY_FAILURE[0])
    x = inputs_for(model, 3)
    expected = cnncomp_run(repo, model, x, tmp_path)
    result = infer(server, protocol, model, {"x": x})
    assert sorted(expected) == sorted(OUTPUTS[model])
    for name in OUTPUTS[model]:
        assert_close(result.as_numpy(name), expected[name])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_one_dynamic_model_serves_two_image_sizes(server, repo, tmp_path, protocol):
    config = (repo / "dynseg" / "config.pbtxt").read_text()
    assert "dims: [ 3, -1, -1 ]" in config and "dims: [ 2, -1, -1 ]" in config
    for height, width in ((32, 48), (64, 20)):
        x = np.random.default_rng(height).standard_normal((2, 3, height, width)).astype(np.float32)
        expected = cnncomp_run(repo, "dynseg", x, tmp_path)["y"]
        got = infer(server, protocol, "dynseg", {"x": x}).as_numpy("y")
        assert got.shape == (2, 2, height, width)
        assert_close(got, expected)


@pytest.mark.skipif(OPENVINO_MISSING is not None, reason=f"OpenVINO not installed: {OPENVINO_MISSING}")
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_deploy_runtime_openvino_is_served_through_openvino(server, repo, tmp_path, protocol):
    """The same network deployed both ways: the OpenVINO one answers what `cnncomp run --runtime openvino`
    computes, and both agree with `cnncomp run` (float32 either way)."""
    module, c = client(server, protocol)
    config = c.get_model_config("lenet_openvino", **({"as_json": True} if protocol == "grpc" else {}))
    config = config.get("config", config)
    accelerators = config["optimization"]["execution_accelerators"]["cpu_execution_accelerator"]
    assert [a["name"] for a in accelerators] == ["openvino"]
    x = inputs_for("lenet", 3)
    served = infer(server, protocol, "lenet_openvino", {"x": x}).as_numpy("logits")
    assert_close(served, cnncomp_run(repo, "lenet_openvino", x, tmp_path, "--runtime", "openvino")["logits"])
    assert_close(served, cnncomp_run(repo, "lenet", x, tmp_path)["logits"])
    assert_close(infer(server, protocol, "lenet", {"x": x}).as_numpy("logits"), served)


def test_every_batch_size_up_to_max_batch(server, repo, tmp_path):
    x = inputs_for("lenet", 8, seed=1)
    expected = cnncomp_run(repo, "lenet", x, tmp_path)["logits"]
    for batch in range(1, 9):
        assert_close(infer(server, "grpc", "lenet", {"x": x[:batch]}).as_numpy("logits"), expected[:batch])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_batch_over_the_limit_gets_tritons_error(server, protocol):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match=r"batch[- ]size must be <= 4"):
        infer(server, protocol, "twohead", {"x": inputs_for("twohead", 5)})


def test_concurrent_requests_are_coalesced_by_dynamic_batching(server, repo, tmp_path):
    import tritonclient.grpc as grpcclient

    x = inputs_for("resnet18", 8, seed=2)
    expected = cnncomp_run(repo, "resnet18", x, tmp_path)["logits"]
    c = grpcclient.InferenceServerClient(server["grpc"])

    def one(k: int) -> np.ndarray:
        i = grpcclient.InferInput("x", [1, 3, 224, 224], "FP32")
        i.set_data_from_numpy(x[k:k + 1])
        return c.infer("resnet18", [i], client_timeout=REQUEST_TIMEOUT_S).as_numpy("logits")

    def batch_sizes() -> dict[int, int]:
        stats = c.get_inference_statistics("resnet18", as_json=True)["model_stats"][0]
        return {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in stats.get("batch_stats", [])}

    coalesced = False
    for _ in range(3):  # bounded: 8 requests a round; one round has always been enough here
        before = batch_sizes()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8), timeout=REQUEST_TIMEOUT_S))
        for k, y in enumerate(results):
            assert_close(y, expected[k:k + 1])
        after = batch_sizes()
        grown = {b: after[b] - before.get(b, 0) for b in after if after[b] > before.get(b, 0)}
        assert sum(b * n for b, n in grown.items()) == 8, grown  # every sample served once
        if any(b > 1 for b in grown):
            coalesced = True
            break
    assert coalesced, "8 concurrent requests never shared a batch"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_malformed_requests_get_clear_errors_and_the_server_keeps_serving(server, repo, tmp_path, protocol):
    from tritonclient.utils import InferenceServerException

    good = inputs_for("lenet", 2)
    with pytest.raises(InferenceServerException, match=r"unexpected shape.*\[-1,1,28,28\]"):
        infer(server, protocol, "lenet", {"x": good[:, :, :, :27].copy()})
    with pytest.raises(InferenceServerException, match=r"FP64.*FP32|FP32.*FP64"):
        infer(server, protocol, "lenet", {"x": good.astype(np.float64)})
    with pytest.raises(InferenceServerException, match=r"unexpected inference input 'y'"):
        infer(server, protocol, "lenet", {"y": good})
    expected = cnncomp_run(repo, "lenet", good, tmp_path)["logits"]
    assert_close(infer(server, protocol, "lenet", {"x": good}).as_numpy("logits"), expected)


def test_banner_names_every_model_and_its_example_runs(server):
    banner = server["banner"]
    for model in ("lenet", "lenet_fp16", "resnet18", "twohead", "clip3d"):
        assert model in banner.splitlines()[0]
    assert f"gRPC     {server['grpc']}" in banner and f"HTTP     http://{server['http']}" in banner
    command = banner.splitlines()[-1].removeprefix("try: ")
    started = time.monotonic()
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=REQUEST_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and time.monotonic() - started < REQUEST_TIMEOUT_S
