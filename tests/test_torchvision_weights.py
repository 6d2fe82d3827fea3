"""torchvision-layout weights load into the bundled specs and compute what torchvision's model computes.

The models of tests/torchvision_models.py are hand-written copies of torchvision's
resnet18, resnet50 and mobilenet_v2 (plain torch.nn, independent of cnncomp). Their
seeded state_dicts are saved as a `.pt` state_dict (with `num_batches_tracked`), as
`.safetensors` (without), and as a checkpoint nested under "state_dict"; each file is
loaded into the matching spec, compiled at -O1 (batch norms folded), run under ONNX
Runtime on a seeded batch of 2 at 224x224, and compared with the eager model.

Tolerance: |ort - eager| <= ATOL_SCALE * max|eager| + RTOL * |eager| elementwise, the
eager output computed in float64 (the error measured is then the compiled model's
float32 arithmetic alone) and also in float32 (what a user compares against).

A weights file that does not fit the spec (missing keys, unexpected keys, wrong
shapes) makes `cnncomp compile` exit 1 with one message listing every problem, no
traceback, and no output file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("safetensors")

import cnncomp  # noqa: E402
from cnncomp.run.session import Session  # noqa: E402
from cnncomp.ir.weights import expected_weights  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torchvision_models as tvm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
MODELS = ("resnet50", "mobilenet_v2", "resnet18")
FORMATS = ("pt", "safetensors", "nested")
ATOL_SCALE = 1e-4  # atol = 1e-4 * max|eager output|
RTOL = 1e-4
BATCH = 2
SIZE = 224  # the specs declare 224x224 inputs


# ---- fixtures: one hand-written model, its files and its eager outputs per network ----


class Network:
    def __init__(self, name: str, folder: Path):
        self.name = name
        self.spec = SPECS / f"{name}.cnn"
        model = tvm.BUILDERS[name](seed=0)
        self.params = sum(p.numel() for p in model.parameters())
        self.state_dict = {k: v.clone() for k, v in model.state_dict().items()}
        self.files = save_formats(self.state_dict, folder / name)
        x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1234))
        self.input = x.numpy()
        with torch.no_grad():
            self.eager32 = model(x).numpy()
            self.eager64 = model.double()(x.double()).numpy()


def save_formats(state_dict: dict, stem: Path) -> dict[str, Path]:
    """The state_dict as .pt (buffers included), .safetensors (without num_batches_tracked) and nested .pt."""
    from safetensors.torch import save_file

    stem.parent.mkdir(parents=True, exist_ok=True)
    files = {"pt": stem.with_suffix(".pt"), "safetensors": stem.with_suffix(".safetensors"),
             "nested": stem.with_name(stem.name + "_checkpoint.pth")}
    torch.save(state_dict, files["pt"])
    save_file({k: v.contiguous() for k, v in state_dict.items() if not k.endswith("num_batches_tracked")},
              str(files["safetensors"]))
    torch.save({"epoch": 90, "arch": stem.name, "state_dict": state_dict}, files["nested"])
    return files


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tv_weights")
    cache: dict[str, Network] = {}

    def get(name: str) -> Network:
        if name not in cache:
            cache[name] = Network(name, folder)
        return cache[name]

    return get


def assert_close(actual: np.ndarray, reference: np.ndarray, what: str) -> None:
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} != {reference.shape}"
    assert np.isfinite(actual).all(), f"{what}: non-finite outputs"
    scale = float(np.abs(reference).max())
    atol = ATOL_SCALE * scale
    err = np.abs(actual.astype(np.float64) - reference.astype(np.float64))
    bound = atol + RTOL * np.abs(reference)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), (f"{what}: max abs err {err.max():.3g} (at {worst}: {actual[worst]} vs "
                                  f"{reference[worst]}) exceeds atol {atol:.3g} + rtol {RTOL:g} * |ref|")


def ort_output(model, x: np.ndarray) -> np.ndarray:
    session = Session(model, "cpu")
    outputs = session.run({session.input_names[0]: x})
    assert len(outputs) == 1
    return next(iter(outputs.values()))


# ---- the tests -------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_spec_weights_are_torchvision_keys(networks, name):
    """The spec asks for exactly torchvision's state_dict keys (minus num_batches_tracked), same shapes."""
    net = networks(name)
    sd = net.state_dict
    assert len(sd) == tvm.STATE_DICT_KEYS[name]
    assert net.params == tvm.PARAMS[name]
    wanted = {k: tuple(s.shape) for k, s in expected_weights(cnncomp.load(SPECS / f"{name}.cnn")).items()}
    have = {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert wanted == have
    assert sum(1 for k in sd if k.endswith("num_batches_tracked")) > 0


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", MODELS)
def test_compiled_matches_eager(networks, name, fmt):
    net = networks(name)
    model = cnncomp.compile(net.spec, opt_level=1, weights=net.files[fmt])
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node), "-O1 should fold batch norms"
    y = ort_output(model, net.input)
    # Not vacuous: the outputs depend on the input and are not all tiny.
    assert np.abs(net.eager64).max() > 0.5
    assert np.abs(net.eager64[0] - net.eager64[1]).max() > 1e-2
    assert_close(y, net.eager64, f"{name} ({fmt}) vs eager float64")
    assert_close(y, net.eager32, f"{name} ({fmt}) vs eager float32")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnncomp", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.parametrize("name,fmt", [("resnet50", "pt"), ("mobilenet_v2", "nested")])
def test_cli_compile_with_weights(networks, tmp_path, name, fmt):
    net = networks(name)
    out = tmp_path / f"{name}.onnx"
    proc = run_cli("compile", str(net.spec), "-o", str(out), "-O1", "--weights", str(net.files[fmt]))
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    assert_close(ort_output(str(out), net.input), net.eager64, f"{name} via the CLI vs eager float64")


def assert_clean_failure(proc: subprocess.CompletedProcess, out: Path) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists(), "a failed compile must not write its output"
    assert not list(out.parent.glob(f".{out.name}*")), "no temporary file left behind"
    # One message: a single headline, then the listed problems.
    lines = proc.stderr.strip().splitlines()
    assert "does not match network" in lines[0]
    assert sum("does not match network" in line for line in lines) == 1
    return proc.stderr


def test_cli_resnet18_weights_into_resnet50(networks, tmp_path):
    out = tmp_path / "resnet50.onnx"
    proc = run_cli("compile", str(SPECS / "resnet50.cnn"), "-o", str(out), "--weights",
                   str(networks("resnet18").files["pt"]))
    err = assert_clean_failure(proc, out)
    assert "missing" in err and "layer1.0.conv3.weight" in err
    # resnet18's 3x3 conv where resnet50 has a 1x1 one, and its 512-wide fc.
    assert "mismatch: layer1.0.conv1.weight is [64, 64, 3, 3], the spec expects [64, 64, 1, 1]" in err
    assert "165 missing, 24 with the wrong shape or type" in err.splitlines()[0]
    assert "... and 153 more missing" in err  # long lists are cut, with the count of the rest


def test_cli_missing_unexpected_and_wrong_shape(networks, tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.clone() for k, v in networks("resnet50").state_dict.items() if not k.endswith("num_batches_tracked")}
    del sd["layer3.2.bn2.running_var"]
    sd["layer5.0.conv1.weight"] = torch.zeros(8, 8, 1, 1)
    sd["fc.weight"] = torch.zeros(10, 2048)
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad))
    out = tmp_path / "resnet50.onnx"
    proc = run_cli("compile", str(SPECS / "resnet50.cnn"), "-o", str(out), "--weights", str(bad))
    err = assert_clean_failure(proc, out)
    assert "1 missing, 1 unexpected, 1 with the wrong shape" in err
    assert "missing: layer3.2.bn2.running_var [256]" in err
    assert "unexpected: layer5.0.conv1.weight" in err
    assert "mismatch: fc.weight is [10, 2048], the spec expects [1000, 2048]" in err


def test_api_wrong_weights_raise_cnn_error(networks):
    from cnncomp.errors import CnnError

    with pytest.raises(CnnError, match="does not match network 'mobilenet_v2'"):
        cnncomp.compile(SPECS / "mobilenet_v2.cnn", weights=networks("resnet18").files["safetensors"])
