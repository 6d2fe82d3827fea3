"""Symbolic sizes (issue 18): `input x: [N, 3, H, W]` through every layer, merges proven under the
spec's `where` constraints, -D pins, MACs as expressions, dim_params in ONNX, and verification at
several sizes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

import cnncomp
from cnncomp.analysis.summary import summarize
from cnncomp.errors import CnnError
from cnncomp.frontend.cnn.loader import load_text
from cnncomp.ops import dims
from cnncomp.run.session import Session
from cli_helpers import cli

SPECS = Path(__file__).resolve().parents[1] / "specs"


@pytest.fixture
def run_cli(capsys):
    def run(*args):
        code, out, err = cli(capsys, *args)
        return SimpleNamespace(code=code, stdout=out, stderr=err)

    return run


def shape_of(graph, name):
    return [str(d) for d in graph.layer(name).shape]


def test_output_sizes_follow_each_layers_rule():
    g = load_text("network t\ninput x: [N, 3, H, W]\n"
                  "a = x -> conv(8, k=7, s=2, p=3) -> maxpool(k=3, s=2, p=1)\n"  # resnet stem: ceil(H/4)
                  "b = x -> conv(8, k=3, s=2)\n"                                  # no padding
                  "c = x -> maxpool(k=2)\n"                                       # floor
                  "d = x -> maxpool(k=3, s=2, ceil=true)\n"                       # ceil mode
                  "e = c -> conv_transpose(8, k=2, s=2) -> pad(1)\n"
                  "f = x -> upsample(scale=0.5) -> pixel_shuffle(1)\n"
                  "output a, b, c, d, e, f\n")
    assert shape_of(g, "a.1")[2:] == ["ceil(H/4)", "ceil(W/4)"]
    assert shape_of(g, "b.0")[2:] == ["ceil(H/2) - 1", "ceil(W/2) - 1"]
    assert shape_of(g, "c.0")[2:] == ["floor(H/2)", "floor(W/2)"]
    assert shape_of(g, "d.0")[2:] == ["floor(H/2)", "floor(W/2)"]  # ceil((H - 3)/2) + 1
    assert shape_of(g, "e.1")[2:] == ["2*floor(H/2) + 2", "2*floor(W/2) + 2"]
    assert shape_of(g, "f.0")[2:] == ["floor(H/2)", "floor(W/2)"]
    # at a size the expressions agree with the static rules (-D pins the symbols)
    pinned = load_text("network t\ninput x: [N, 3, 37, 20]\n"
                       "a = x -> conv(8, k=7, s=2, p=3) -> maxpool(k=3, s=2, p=1)\n"
                       "d = x -> maxpool(k=3, s=2, ceil=true)\noutput a, d\n")
    for name in ("a.1", "d.0"):
        want = pinned.layer(name).shape[2:]
        assert tuple(dims.evaluate(d, {"H": 37, "W": 20}) for d in g.layer(name).shape[2:]) == want


def test_static_specs_keep_python_ints():
    g = cnncomp.load(SPECS / "resnet18.cnn")
    assert all(type(d) is int for layer in g.layers() for d in layer.shape[1:])
    assert type(summarize(g).total_macs) is int


def test_summary_prints_expressions_and_json_keeps_them_as_strings(run_cli, tmp_path):
    spec = tmp_path / "net.cnn"
    spec.write_text("network net\ninput x: [N, 3, H, W]\ny = x -> conv(64, k=3, s=2, p=1) -> relu\noutput y\n")
    out = run_cli("summary", str(spec))
    assert out.code == 0 and "[N, 64, ceil(H/2), ceil(W/2)]" in out.stdout
    assert "total MACs:   1728*ceil(H/2)*ceil(W/2)" in out.stdout
    data = json.loads(run_cli("summary", str(spec), "--json").stdout)
    assert data["outputs"]["y"] == ["N", 64, "ceil(H/2)", "ceil(W/2)"]
    assert data["total_macs"] == "1728*ceil(H/2)*ceil(W/2)"
    at = json.loads(run_cli("summary", str(spec), "--json", "--shape", "x=1x3x512x512").stdout)
    assert at["total_macs"] == 1728 * 256 * 256 and at["outputs"]["y"] == [1, 64, 256, 256]


def test_compile_stats_writes_symbolic_macs_as_expressions(run_cli, tmp_path):
    """The passes' --stats table on symbolic sizes: MACs as the language writes them (it raised a ValueError
    formatting an expression with thousands separators)."""
    spec = tmp_path / "net.cnn"
    spec.write_text("network net\ninput x: [N, 3, H, W]\ny = x -> conv(64, k=3, s=2, p=1) -> relu\noutput y\n")
    out = run_cli("compile", str(spec), "--stats", "-o", str(tmp_path / "net.onnx"))
    assert out.code == 0, out.stderr
    stats = out.stdout + out.stderr
    assert "1728*ceil(H/2)*ceil(W/2)" in stats and "1,792" in stats  # MACs an expression, params a number


def test_merge_of_sizes_not_provably_equal_states_the_condition():
    text = ("network u\ninput x: [N, 3, H, W]\n"
            "d = x -> maxpool(k=2) -> maxpool(k=2) -> maxpool(k=2) -> maxpool(k=2)\n"
            "u = d -> upsample(scale=16)\n"
            "y = x + u\noutput y\n")
    with pytest.raises(CnnError) as err:
        load_text(text, "u.cnn")
    assert (err.value.loc.line, err.value.loc.col) == (5, 7)
    assert "differ in height (equal only when H is divisible by 16: state it as `where H % 16 == 0`" \
        in err.value.message
    graph = load_text(text.replace("[N, 3, H, W]", "[N, 3, H, W] where H % 16 == 0, W % 16 == 0"))
    assert shape_of(graph, "d.3")[2:] == ["H/16", "W/16"] and shape_of(graph, "y")[2:] == ["H", "W"]
    # not every failure has a modulus: a condition on the residues, or none
    with pytest.raises(CnnError, match="differ in height"):
        load_text("network v\ninput x: [N, 3, H, W]\ny = concat(x, x -> conv(3, k=3))\noutput y\n")


def test_where_constraints_pins_and_their_errors():
    base = "network p\ninput x: [N, 3, H, W] where H % 8 == 0, H >= 64\ny = x -> maxpool(k=8)\noutput y\n"
    graph = load_text(base)
    assert graph.meta["symbols"]["H"] == {"multiple_of": 8, "remainder": 0, "min": 64}
    assert load_text(base, overrides={"H": "128"}).layer("y.0").shape[2] == 16
    with pytest.raises(CnnError, match=r"-D H=100: breaks the spec's constraint H % 8 == 0, H >= 64"):
        load_text(base, overrides={"H": "100"})
    with pytest.raises(CnnError, match="'Q' is not a symbol of an input's dims"):
        load_text(base.replace("H >= 64", "Q >= 64"))
    with pytest.raises(CnnError) as err:
        load_text(base.replace("H >= 64", "H < 64"), "p.cnn")
    assert "a `where` constraint has the form" in err.value.message and err.value.loc.line == 2
    # continued on the next line, a let constant as the modulus
    text = "network q\nlet m = 4\ninput x: [N, 3, H, W]\n    where H % m == 0\ny = x -> maxpool(k=4)\noutput y\n"
    assert shape_of(load_text(text), "y.0")[2:] == ["H/4", "floor(W/4)"]


def test_symbols_are_values_in_expressions():
    g = load_text("network s\ninput x: [N, 3, H, W] where H % 2 == 0\n"
                  "y = x -> maxpool(k=2) -> upsample(size=(H, (W + 1) // 2))\noutput y\n")
    assert shape_of(g, "y.1")[2:] == ["H", "ceil(W/2)"]
    with pytest.raises(CnnError, match="'>' compares numbers, got a symbolic size and an int"):
        load_text("network s\ninput x: [N, 3, H, W]\nlet k = 3\ny = x -> conv(8, k = if H > 4 then 3 else 1)\n"
                  "output y\n")
    with pytest.raises(CnnError, match="does not divide exactly"):
        load_text("network s\ninput x: [N, 3, H, W]\ny = x -> upsample(size=(H / 2, W))\noutput y\n")


def test_onnx_has_dim_params_and_runs_at_any_size(tmp_path):
    spec = tmp_path / "seg.cnn"
    spec.write_text("network seg\ninput x: [N, 3, H, W] where H % 4 == 0, W % 4 == 0\n"
                    "d = x -> conv(8, k=3, s=2, p=1) -> relu -> maxpool(k=2, s=2, ceil=true)\n"
                    "g = d -> gap -> conv(8, k=1) -> upsample(size=spatial(d))\n"
                    "u = (d + g) -> pixel_shuffle(2) -> upsample(scale=2, mode=\"linear\")\n"
                    "y = concat(x, u) -> pixel_unshuffle(2)\noutput y\n")
    model = cnncomp.compile(spec, output=tmp_path / "seg.onnx")
    dims_of = [[d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
               for vi in (model.graph.input[0], model.graph.output[0])]
    assert dims_of == [["N", 3, "H", "W"], ["N", 20, "H/2", "W/2"]]
    session = Session(str(tmp_path / "seg.onnx"), "cpu")
    graph = cnncomp.load(spec)
    weights = cnncomp.pipeline.weights_for(graph)
    from cnncomp.run.reference import run_reference

    for shape in ((1, 3, 16, 24), (2, 3, 40, 12)):
        x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
        got = session.run({"x": x})["y"]
        want = run_reference(graph, weights, {"x": x})["y"]
        assert got.shape == (shape[0], 20, shape[2] // 2, shape[3] // 2)
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=1e-3)
    onnx.checker.check_model(model, full_check=True)


def test_verify_checks_three_default_sizes_and_every_shape(run_cli, tmp_path):
    spec = tmp_path / "v.cnn"
    spec.write_text("network v\ninput x: [N, 3, H, W] where H % 8 == 0, W % 8 == 0\n"
                    "y = x -> conv(8, k=3, s=2, p=1) -> bn -> relu -> conv_transpose(8, k=2, s=2)\n"
                    "z = concat(x, y) -> pad(1) -> conv(4, k=3)\noutput z\n")
    out = run_cli("verify", str(spec), "--json", "--shape", "x=1x3x40x24", "--verify-each", "-O2")
    report = json.loads(out.stdout)
    assert out.code == 0 and report["ok"]
    sizes = [c["sizes"] for c in report["sizes"]]
    assert sizes == [{"N": 2, "H": 8, "W": 8}, {"N": 2, "H": 16, "W": 24}, {"N": 2, "H": 24, "W": 32},
                     {"N": 1, "H": 40, "W": 24}]
    assert all(c["ok"] and c["outputs"]["z"]["max_abs_err"] < 1e-4 for c in report["sizes"])
    assert "verify-each: checked after each of" in " ".join(report["notes"])
    bad = run_cli("verify", str(spec), "--shape", "x=1x3x40x20")
    assert bad.code == 1 and "W=20 breaks the constraint W % 8 == 0" in bad.stderr


def test_verify_sizes_catch_a_size_dependent_bug(monkeypatch, tmp_path):
    # a lowering that is right at the first size only must fail at another one
    from cnncomp.ops import resize

    spec = tmp_path / "b.cnn"
    spec.write_text("network b\ninput x: [N, 2, H, W]\ny = x -> upsample(scale=2)\noutput y\n")
    assert cnncomp.verify(spec).ok
    original = resize.Upsample.torch_ref

    def wrong_on_wide(self, attrs, inputs, weights):
        out = original(self, attrs, inputs, weights)
        return out + (inputs[0].shape[3] > 28)

    monkeypatch.setattr(resize.Upsample, "torch_ref", wrong_on_wide)
    report = cnncomp.verify(spec)
    assert not report.ok and [c.ok for c in report.sizes] == [True, True, False]


def test_fp16_and_int8_verify_a_dynamic_model(tmp_path):
    spec = tmp_path / "p.cnn"
    spec.write_text("network p\ninput x: [N, 3, H, W] where H % 4 == 0, W % 4 == 0\n"
                    "y = x -> pad(1) -> conv(8, k=3) -> bn -> relu -> maxpool(k=2) -> conv(8, k=1) -> relu\n"
                    "    -> conv_transpose(3, k=2, s=2)\nz = (x + y) -> relu\noutput z\n")
    for precision in ("fp16", "int8"):
        report = cnncomp.verify(spec, precision=precision, opt_level=2)
        assert report.ok and len(report.sizes) == 3, (precision, report.format())
    assert "fold-pad" in cnncomp.verify(spec, opt_level=2).passes


def test_run_takes_any_size_and_refuses_one_the_constraints_forbid(run_cli, tmp_path):
    spec = tmp_path / "r.cnn"
    spec.write_text("network r\ninput x: [N, 1, H, W] where H % 2 == 0\ny = x -> conv(4, k=3, p=1) "
                    "-> pixel_unshuffle(2)\noutput y\n")
    run = run_cli("run", str(spec), "--shape", "x=1x1x6x10")
    assert run.code == 1 and "W=10" not in run.stderr and "pixel_unshuffle" in run.stderr  # W unconstrained
    spec.write_text(spec.read_text().replace("H % 2 == 0", "H % 2 == 0, W % 2 == 0"))
    assert "y: shape [1, 16, 3, 5]" in run_cli("run", str(spec), "--shape", "x=1x1x6x10").stdout
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 7, 10), np.float32))
    bad = run_cli("run", str(spec), "--input", str(tmp_path / "x.npy"))
    assert bad.code == 1 and "H=7 breaks the constraint H % 2 == 0" in bad.stderr


@pytest.mark.parametrize("name", ["unet", "espcn", "hdc_segnet", "deeplabv3_resnet50"])
def test_bundled_dynamic_specs_verify_at_three_sizes(name):
    defines = {"width": "16"} if name in ("unet", "hdc_segnet") else {"num_classes": "3"} \
        if name == "deeplabv3_resnet50" else None
    report = cnncomp.verify(SPECS / f"{name}.cnn", defines=defines)
    assert report.ok, report.format()
    assert len(report.sizes) == 3 and len({tuple(c.sizes.items()) for c in report.sizes}) == 3


def test_the_newer_layers_take_symbolic_sizes(tmp_path):
    spec = tmp_path / "n.cnn"
    spec.write_text("network n\ninput x: [N, 8, H, W]\n"
                    "a = x -> layer_norm -> scale -> shift -> clip(min=0, max=6)\n"
                    "m = a -> mean(axes=(2, 3), keepdims=true)\n"
                    "b = sub(a, m) -> neg -> permute((0, 1, 3, 2)) -> permute((0, 1, 3, 2))\n"
                    "s = x -> sum(axes=(2,), keepdims=true) -> clip(min=1)\n"
                    "c = div(b, s)\noutput c\n")
    graph = cnncomp.load(spec)
    assert shape_of(graph, "b.1") == ["N", "8", "W", "H"] and shape_of(graph, "s.0") == ["N", "8", "1", "W"]
    report = cnncomp.verify(spec)
    assert report.ok and len(report.sizes) == 3


def test_layers_of_a_dynamic_model_are_timed_at_a_verify_size():
    # -O3 --autotune times rewrites on the layers alone: symbolic sizes become the largest default size
    from cnncomp.run.timing import extract

    graph = cnncomp.load(SPECS / "unet.cnn")
    names = [layer.name for layer in graph.layers()][1:4]
    sub = extract(graph, names)
    assert sub.layer("x").shape == (1, 3, 48, 64) and sub.layer(names[-1]).shape == (1, 64, 48, 64)
