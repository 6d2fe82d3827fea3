"""OpenVINO as a runtime (cnncomp/run/openvino.py): the same ONNX file, an explicit precision hint, outputs by
name, and a clear message when the package is missing. Skipped, with the reason, without `openvino`."""

import sys

import numpy as np
import pytest

from cnncomp.errors import CnnError
from cnncomp.run.openvino import INSTALL_HINT, OpenVinoSession, openvino_problem, precision_problem

needs_openvino = pytest.mark.skipif(openvino_problem() is not None,
                                    reason=f"OpenVINO not installed ({INSTALL_HINT})")


@pytest.fixture(scope="module")
def lenet():
    import cnncomp

    model = cnncomp.compile("specs/lenet.cnn")
    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, 28, 28)).astype(np.float32)
    from cnncomp.run.session import Session

    return model, x, Session(model, "cpu").run({"x": x})


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@needs_openvino
def test_fp32_means_fp32_and_outputs_come_by_onnx_name(lenet, tmp_path):
    model, x, expected = lenet
    path = tmp_path / "lenet.onnx"
    path.write_bytes(model.SerializeToString())
    for source in (model, model.SerializeToString(), path, str(path)):
        session = OpenVinoSession(source)
        assert session.input_names == ["x"] and session.output_names == ["logits"]
        assert session.inference_precision == "f32"  # not OpenVINO's default (bf16 on a CPU that has it)
        got = session.run({"x": x})
        assert list(got) == ["logits"]
        assert _rel(got["logits"], expected["logits"]) < 1e-5


@needs_openvino
def test_named_output_of_a_compiled_model_keeps_its_onnx_name():
    """OpenVINO may merge an output's tensor names when it compiles (ResNet-50's `logits` answered as `fc`)."""
    import cnncomp

    model = cnncomp.compile("specs/resnet18.cnn", passes=["fold-bn"])
    session = OpenVinoSession(model, threads=1)
    assert session.output_names == [o.name for o in model.graph.output]


@needs_openvino
@pytest.mark.skipif(precision_problem("bf16") is not None, reason="this CPU has no native bf16")
def test_bf16_hint_computes_in_bfloat16_within_the_budget(lenet):
    model, x, expected = lenet
    session = OpenVinoSession(model, "bf16")
    assert session.inference_precision == "bf16"
    error = _rel(session.run({"x": x})["logits"], expected["logits"])
    assert 1e-6 < error < 0.01  # it really is bfloat16 (not f32), and close


@needs_openvino
def test_a_dynamic_batch_model_is_compiled_for_the_shapes_it_runs_on(lenet):
    """OpenVINO runs a dynamic-shape model slower (shape inference on every call): each input shape run gets
    its own static compilation, kept for the next run of that shape."""
    model, x, expected = lenet
    session = OpenVinoSession(model)
    assert session.compiled is None  # the batch is dynamic: nothing is compiled before the shapes are known
    compiled = {}
    for batch in (1, 3, 1):
        got = session.run({"x": x[:batch]})["logits"]
        assert _rel(got, expected["logits"][:batch]) < 1e-5
        shape = session.compiled.inputs[0].get_partial_shape()
        assert shape.is_static and list(shape.to_shape()) == [batch, 1, 28, 28]
        assert compiled.setdefault(batch, session.compiled) is session.compiled  # compiled once per shape
    assert session.inference_precision == "f32"


@needs_openvino
def test_the_compile_settings_are_those_for_latency_with_the_threads_asked(lenet):
    model, x, _ = lenet
    session = OpenVinoSession(model, threads=1)
    session.run({"x": x[:1]})
    assert str(session.compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
    assert int(session.compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert int(session.compiled.get_property("NUM_STREAMS")) == 1  # what the latency hint means


@needs_openvino
def test_a_shape_the_model_cannot_take_is_a_clear_error(lenet):
    model, x, _ = lenet
    with pytest.raises(CnnError, match="OpenVINO failed to run the model"):
        OpenVinoSession(model).run({"x": x[:, :, :20]})


@needs_openvino
def test_missing_input_and_unknown_output_are_errors(lenet):
    model, x, _ = lenet
    session = OpenVinoSession(model)
    with pytest.raises(CnnError, match="missing inputs: x"):
        session.run({"y": x})
    with pytest.raises(CnnError, match="no output nope"):
        session.run({"x": x}, ["nope"])


@needs_openvino
def test_a_model_openvino_cannot_read_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(CnnError, match="OpenVINO could not load the model"):
        OpenVinoSession(bad)


def test_missing_package_names_the_extra(monkeypatch, lenet):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    assert INSTALL_HINT in openvino_problem()
    assert INSTALL_HINT in precision_problem("bf16")
    with pytest.raises(CnnError, match=r"pip install 'cnncomp\[openvino\]'"):
        OpenVinoSession(lenet[0])


# ---- Triton: the config asks for the OpenVINO accelerator, the stand-in backend honours it ----------------


def test_triton_config_asks_for_the_openvino_cpu_accelerator(lenet):
    from cnncomp.deployment.triton import triton_config
    from cnncomp.pipeline import load

    model, graph = lenet[0], load("specs/lenet.cnn")
    text = triton_config(model, graph, runtime="openvino").to_pbtxt()
    assert "cpu_execution_accelerator : [" in text and 'name : "openvino"' in text
    assert "kind: KIND_CPU" in text  # the accelerator applies to CPU instances only
    assert "execution_accelerators" not in triton_config(model, graph).to_pbtxt()
    for kwargs, message in [({"kind": "gpu"}, "--kind gpu"), ({"tensorrt": True}, "--tensorrt")]:
        with pytest.raises(CnnError, match=f"--runtime openvino runs CPU instances; it cannot go with {message}"):
            triton_config(model, graph, runtime="openvino", **kwargs)


class _TritonModelException(Exception):
    pass


@pytest.fixture
def backend(monkeypatch, tmp_path, lenet):
    """The stand-in backend's model.py, imported with a stand-in for Triton's triton_python_backend_utils,
    and a repository folder holding lenet: initialize(accelerators) returns the TritonPythonModel."""
    import importlib.util
    import json
    import types

    from cnncomp.deployment.triton import triton_config
    from cnncomp.pipeline import load

    utils = types.ModuleType("triton_python_backend_utils")
    utils.TritonModelException = _TritonModelException
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    path = "cnncomp/deployment/triton_backend/onnxruntime/model.py"
    spec = importlib.util.spec_from_file_location("cnncomp_test_backend", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_bytes(lenet[0].SerializeToString())
    config = triton_config(lenet[0], load("specs/lenet.cnn"), max_batch=8)

    def initialize(accelerators=()):
        # the model config as Triton hands it to a Python backend: the protobuf's JSON form
        as_json = {"max_batch_size": 8, "input": [{"name": t.name, "data_type": t.data_type, "dims": t.dims}
                                                  for t in config.inputs],
                   "output": [{"name": t.name, "data_type": t.data_type, "dims": t.dims} for t in config.outputs],
                   "optimization": {"execution_accelerators": {
                       "gpu_execution_accelerator": [],
                       "cpu_execution_accelerator": [{"name": a, "parameters": {}} for a in accelerators]}}}
        m = module.TritonPythonModel()
        m.initialize({"model_config": json.dumps(as_json), "model_repository": str(tmp_path), "model_version": "1",
                      "model_instance_kind": "CPU", "model_instance_device_id": "0"})
        return m

    return module, initialize


@needs_openvino
def test_stand_in_backend_runs_through_openvino_when_the_config_says_so(backend, lenet):
    module, initialize = backend
    _, x, expected = lenet
    plain, accelerated = initialize(), initialize(["openvino"])
    assert not isinstance(plain.session, module.OpenVinoSession)
    assert isinstance(accelerated.session, module.OpenVinoSession)
    (got,) = accelerated.session.run(["logits"], {"x": x})
    assert _rel(got, expected["logits"]) < 1e-5  # float32, as `cnncomp run --runtime openvino`
    direct = OpenVinoSession(lenet[0]).run({"x": x})["logits"]
    np.testing.assert_allclose(got, direct, rtol=0, atol=0)


def test_stand_in_backend_without_openvino_refuses_to_load(backend, monkeypatch):
    _, initialize = backend
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(_TritonModelException, match=r"openvino package is not installed.*cnncomp\[openvino\]"):
        initialize(["openvino"])


# ---- --runtime openvino on run, verify, deploy ---------------------------------------------------------------


@needs_openvino
def test_run_verify_and_deploy_take_runtime_openvino(capsys, tmp_path):
    from cli_helpers import cli

    x = np.random.default_rng(1).uniform(-1, 1, (2, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    outputs = {}
    for runtime in ("cpu", "openvino"):
        code, out, err = cli(capsys, "run", "specs/lenet.cnn", "--input", tmp_path / "x.npy", "--runtime", runtime,
                             "-o", tmp_path / f"{runtime}.npy")
        assert code == 0, err
        outputs[runtime] = np.load(tmp_path / f"{runtime}.npy")
    assert _rel(outputs["openvino"], outputs["cpu"]) < 1e-5  # fp32 means fp32 under OpenVINO too
    code, out, err = cli(capsys, "verify", "specs/lenet.cnn", "--runtime", "openvino", "--json")
    report = __import__("json").loads(out)
    assert code == 0 and report["ok"] and report["provider"] == "openvino", err
    code, out, err = cli(capsys, "deploy", "specs/lenet.cnn", "--triton", tmp_path / "repo", "--runtime", "openvino")
    assert code == 0, err
    assert 'name : "openvino"' in (tmp_path / "repo" / "lenet" / "config.pbtxt").read_text()
    code, out, err = cli(capsys, "deploy", "specs/lenet.cnn", "--triton", tmp_path / "repo2", "--runtime",
                         "openvino", "--kind", "gpu")
    assert code == 2 and "--runtime openvino runs CPU instances; it cannot go with --kind gpu" in err
    assert not (tmp_path / "repo2").exists()


def test_runtime_openvino_without_the_package_is_a_clear_error(capsys, monkeypatch, tmp_path):
    from cli_helpers import cli

    monkeypatch.setitem(sys.modules, "openvino", None)
    code, out, err = cli(capsys, "verify", "specs/lenet.cnn", "--runtime", "openvino")
    assert code == 1 and "pip install 'cnncomp[openvino]'" in err
