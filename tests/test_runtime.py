"""ONNX Runtime providers: explicit choice, clear errors naming what to install, TensorRT options passed through."""

import pytest

from cnncomp.run.session import TensorRTOptions, available_providers, resolve_providers
from cnncomp.cli import main
from cnncomp.errors import CnnError

SPEC = "network n\ninput x: [N, 3, 8, 8]\ny = x -> conv(4, k=3) -> relu\noutput y\n"


def test_cpu_is_always_there():
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]


@pytest.mark.skipif("TensorrtExecutionProvider" in available_providers(), reason="TensorRT is installed here")
def test_missing_tensorrt_names_what_to_install():
    with pytest.raises(CnnError, match=r"the tensorrt provider .* cnncomp\[gpu\] .*TensorRT"):
        resolve_providers("tensorrt", TensorRTOptions(fp16=True))


@pytest.mark.skipif("CUDAExecutionProvider" in available_providers(), reason="CUDA is installed here")
def test_auto_falls_back_to_the_cpu_and_says_so(capsys):
    assert resolve_providers("auto") == ["CPUExecutionProvider"]
    assert "running on the CPU" in capsys.readouterr().err


def test_unknown_provider():
    with pytest.raises(CnnError, match="unknown provider 'npu'"):
        resolve_providers("npu")


def test_tensorrt_options_map_to_onnxruntime_names():
    options = TensorRTOptions(fp16=True, engine_cache="/tmp/engines", workspace_bytes=1 << 28).as_provider_options()
    assert options == {"trt_fp16_enable": True, "trt_max_workspace_size": 1 << 28,
                       "trt_engine_cache_enable": True, "trt_engine_cache_path": "/tmp/engines"}


def test_verify_with_auto_runs_on_the_cpu(tmp_path, capsys):
    spec = tmp_path / "n.cnn"
    spec.write_text(SPEC)
    assert main(["verify", str(spec), "--provider", "auto", "--trt-fp16", "--trt-engine-cache", str(tmp_path)]) == 0
    assert "verify: ok (cpu" in capsys.readouterr().out
