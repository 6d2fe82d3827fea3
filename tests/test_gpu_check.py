"""tools/gpu_check.py, as far as a machine without a GPU can test it: its arguments, its budget, how it
judges a command, and its report when the GPU, the CUDA provider or TensorRT is missing."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import gpu_check  # noqa: E402


@pytest.mark.parametrize("argv,message", [
    (["--skip", "verify,nap"], "--skip: unknown step 'nap'"),
    (["--specs", "lenet,nonet"], "--specs: no specs/nonet.cnn"),
    (["--budget-s", "0"], "--budget-s takes seconds in (0, 3600]"),
    (["--budget-s", "x"], "invalid float value"),
])
def test_bad_arguments_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_defaults_cover_every_bundled_spec():
    args = gpu_check.parse_args([])
    assert args.specs == sorted(p.stem for p in (gpu_check.ROOT / "specs").glob("*.cnn"))
    assert args.budget_s == 600 and args.skip == [] and not args.no_install


def test_without_a_gpu_every_check_is_listed_as_not_run(capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, "gpu_name", lambda: None)
    code = gpu_check.main(["--specs", "lenet", "--budget-s", "60"])
    out = capsys.readouterr().out
    assert code == 1
    lines = {line.split("  ")[0].strip(): line for line in out.splitlines()}
    assert "FAILED" in lines["NVIDIA GPU"] and "none found" in lines["NVIDIA GPU"]
    for name in ("verify lenet cuda fp32", "verify lenet cuda fp16", "bench resnet50", "bench mobilenet_v2"):
        assert "not run     0.0  no GPU" in lines[name]
    assert "not run     0.0  no GPU" in lines["tensorrt engine resnet18 int8 (QDQ)"]
    assert out.strip().endswith("0 ok, 1 failed, 7 not run")


def test_with_a_gpu_but_no_cuda_provider_or_tensorrt_it_says_which(capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, "gpu_name", lambda: "NVIDIA H100 80GB HBM3, 81559 MiB, 550.54")
    monkeypatch.setattr(gpu_check, "tensorrt_version", lambda env: None)
    code = gpu_check.main(["--no-install", "--specs", "lenet", "--skip", "bench", "--json"])
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert code == 1  # nothing could be checked
    assert checks["NVIDIA GPU"]["status"] == "ok" and "H100" in checks["NVIDIA GPU"]["detail"]
    assert checks["install onnxruntime-gpu"]["detail"].startswith("--no-install")
    assert checks["install tensorrt"]["detail"].startswith("--no-install")
    assert "this onnxruntime has no CUDA provider (it has " in checks["verify lenet cuda fp16"]["detail"]
    assert "TensorRT is not installed" in checks["tensorrt engine resnet18 fp16"]["detail"]
    assert not any(name.startswith("bench") for name in checks)


def test_a_command_is_judged_by_its_exit_status_its_output_and_the_time_left():
    env = dict(__import__("os").environ)
    ok = gpu_check.run(gpu_check.Check("t"), [sys.executable, "-c", "print('{\"ok\": true, \"outputs\": {}}')"],
                       gpu_check.Clock(60), env, gpu_check.verify_judge)
    assert ok.status == "ok" and ok.seconds > 0
    mismatch = gpu_check.run(gpu_check.Check("t"), [sys.executable, "-c", "print('{\"ok\": false}')"],
                             gpu_check.Clock(60), env, gpu_check.verify_judge)
    assert mismatch.status == "FAILED" and mismatch.detail == "verify reports a mismatch"
    failed = gpu_check.run(gpu_check.Check("t"), [sys.executable, "-c", "import sys; sys.exit('boom')"],
                           gpu_check.Clock(60), env)
    assert failed.status == "FAILED" and failed.detail == "boom"
    late = gpu_check.run(gpu_check.Check("t"), [sys.executable, "-c", "pass"], gpu_check.Clock(1), env)
    assert late.status == "not run" and late.detail == "the time budget was spent"
    slow = gpu_check.run(gpu_check.Check("t"), [sys.executable, "-c", "import time; time.sleep(30)"],
                         gpu_check.Clock(6), env)
    assert slow.status == "FAILED" and "timed out" in slow.detail and slow.seconds < 15


def test_summary_of_verify_and_bench_output():
    verify = {"ok": True, "provider": "cuda", "outputs": {"y": {"max_abs_err": 2e-5}, "z": {"max_abs_err": 1e-6}}}
    assert gpu_check.summary_of(json.dumps(verify)) == "cuda, max abs error 2e-05"
    bench = {"winner": {"1": {"runtime": "tensorrt", "precision": "int8"}, "8": None}}
    assert gpu_check.summary_of(json.dumps(bench)) == "batch 1: tensorrt int8; batch 8: none"
