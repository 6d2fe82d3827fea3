"""Weight rounding for int8 that minimises each layer's output error (precision/rounding.py, --weight-rounding)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")

from cnncomp.precision.int8 import ErrorProbe, Quantizer  # noqa: E402
from cnncomp.precision.rounding import GRAM_BLOCK, _patches, gram, layer_hessians, round_columns  # noqa: E402


def _quantized(model, calibration, rounding: str) -> onnx.ModelProto:
    # every conv in int8 (no placement rules: ONNX Runtime would run the 1-channel first conv in float32)
    quantizer = Quantizer(model, calibration, "percentile", weight_rounding=rounding, runtime=None)
    try:
        return quantizer.quantize()
    finally:
        quantizer.close()


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """{initializer: value} of a QDQ model."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_gathered_patches_are_im2col():
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 9, 11)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 0, 2, 1], strides=[2, 1],
                            dilations=[1, 2], group=2)
    got = _patches(x, node, 2, rng, 10**6)
    cols = torch.nn.functional.unfold(torch.nn.functional.pad(torch.from_numpy(x), [0, 1, 1, 2]), [3, 3],
                                      dilation=[1, 2], stride=[2, 1])
    want = cols.permute(0, 2, 1).reshape(-1, 54).numpy()
    np.testing.assert_array_equal(got, want.reshape(len(want), 2, -1).transpose(1, 0, 2))


def test_round_columns_lowers_the_output_error_on_correlated_inputs():
    """Inputs like image patches (neighbouring pixels correlated): the output error ||(w - q) X^T|| of the
    up/down choice is below nearest rounding's, and every level is the floor or the ceiling."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4000, 1))
    x = base + 0.3 * rng.standard_normal((4000, 27))  # strongly correlated columns
    w = rng.standard_normal((1, 16, 27)) * 20
    h = (x.T @ x)[None]
    q = round_columns(w, h)
    assert np.all((q == np.floor(w)) | (q == np.ceil(w)))

    def error(levels):
        return float(np.linalg.norm((w[0] - levels[0]) @ x.T))

    assert error(q) < 0.7 * error(np.round(w))


def _unblocked_gptq(w, h, low, high):
    """The reference: GPTQ as published (columns first to last, H^-1 inverted outright, every later column
    updated after each one), float64, run on the columns in reverse order (round_columns rounds the last first)."""
    w, h, low, high = w[0][:, ::-1], h[0][::-1, ::-1].copy(), low[0][:, ::-1], high[0][:, ::-1]
    diag = np.diag(h).copy()
    diag[diag <= 0] = 1.0
    np.fill_diagonal(h, diag + 0.01 * diag.mean())
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: U^T U = H^-1
    w, q = w.copy(), np.zeros_like(w)
    for i in range(w.shape[1]):
        q[:, i] = np.clip(np.round(w[:, i]), low[:, i], high[:, i])
        error = (w[:, i] - q[:, i]) / hinv[i, i]
        w[:, i:] -= np.outer(error, hinv[i, i:])
    return q[None, :, ::-1]


@pytest.mark.parametrize("columns", [70, 2500])  # 2500: three block rows, the last one narrower
def test_gram_is_each_groups_x_transpose_x(columns):
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((2, 300, columns)).astype(np.float32)
    got = gram(rows)
    assert got.shape == (2, columns, columns) and got.dtype == np.float32
    want = np.einsum("gri,grj->gij", rows.astype(np.float64), rows.astype(np.float64))
    upper = np.triu(np.ones((columns, columns), bool))
    np.testing.assert_allclose(got[:, upper], want[:, upper], rtol=1e-4, atol=1e-3)


def test_only_the_upper_triangle_of_h_is_read():
    """gram leaves zeros below the diagonal blocks: the rounding must not depend on them (it factorizes H from
    its upper triangle; torch's Cholesky with upper=True reads nothing else)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((500, 1)) + 0.5 * rng.standard_normal((500, 60))
    h = x.T @ x
    w = rng.standard_normal((1, 8, 60)) * 20
    for dtype in ("float64", "float32"):
        full = round_columns(w, h[None], dtype=dtype)
        np.testing.assert_array_equal(round_columns(w, np.triu(h)[None], dtype=dtype), full)
        np.testing.assert_array_equal(round_columns(w, (np.triu(h) + 50 * np.tril(rng.random((60, 60)), -1))[None],
                                                    dtype=dtype), full)


def test_blocked_float32_rounding_matches_the_unblocked_float64_one():
    """300 columns: three blocks of 128 (the lazy updates cross two block edges). In float64 the blocked
    rounding is the unblocked one (and the default there, 300 columns); in float32 (the default above
    FLOAT64_COLUMNS) all but a few near-ties agree, at the same output error."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 1)) + 0.5 * rng.standard_normal((2000, 300))
    x[:, 7] = 0  # a dead input
    h = (x.T @ x)[None]
    w = rng.standard_normal((1, 48, 300)) * 20
    low, high = np.floor(w), np.ceil(w)
    reference = _unblocked_gptq(w, h, low, high)
    np.testing.assert_array_equal(round_columns(w, h, dtype="float64"), reference)
    np.testing.assert_array_equal(round_columns(w, h), reference)  # 300 columns: float64 by default
    fast = round_columns(w, h, dtype="float32")
    assert np.mean(fast == reference) > 0.99

    def error(levels):
        return float(np.einsum("mi,ij,mj->", w[0] - levels[0], h[0], w[0] - levels[0]))

    assert error(fast) == pytest.approx(error(reference), rel=0.01)
    assert error(fast) < 0.5 * error(np.round(w))


def test_trained_digits_net_rounding_keeps_scales_stays_within_a_step_and_lowers_the_error():
    from ptq_helpers import trained_digits

    model, calibration, held = trained_digits()
    nearest, rounded = _quantized(model, calibration, "nearest"), _quantized(model, calibration, "gptq")
    before, after = _weights(nearest), _weights(rounded)
    assert before.keys() == after.keys()
    changed = 0
    for name, value in before.items():
        if value.dtype == np.int8 and value.ndim > 1:  # a conv/linear weight
            assert np.abs(after[name].astype(int) - value.astype(int)).max() <= 1, name
            changed += int(np.count_nonzero(after[name] != value))
        else:  # scales, zero points, biases: as the quantizer set them
            np.testing.assert_array_equal(after[name], value, err_msg=name)
    assert changed > 0
    # each conv's output error on held-out images (their own Hessians) is lower than nearest's
    float_inits = _weights(model)
    for node in (n for n in rounded.graph.node if n.op_type == "Conv"):
        dq = next(n for n in rounded.graph.node if n.output[0] == node.input[1])
        h = layer_hessians(model, [(node, next(n for n in model.graph.node if n.name == node.name), dq)], held)
        weight = float_inits[next(n for n in model.graph.node if n.name == node.name).input[1]].astype(np.float64)
        scale = after[dq.input[1]].astype(np.float64).reshape(-1, 1)

        def output_error(levels):
            e = (weight.reshape(len(weight), -1) - levels.reshape(len(weight), -1) * scale)[None]
            return float(np.einsum("gmi,gij,gmj->", e, h[node.name], e))

        assert output_error(after[dq.input[0]]) < output_error(before[dq.input[0]]), node.name
    probe = ErrorProbe(held, ErrorProbe(held, {o.name: None for o in model.graph.output}).outputs(model))
    assert probe.error(rounded) < 0.95 * probe.error(nearest)


def test_an_unknown_weight_rounding_is_a_usage_error(tmp_path, capsys):
    from cnncomp.cli import main

    spec = tmp_path / "net.cnn"
    spec.write_text("network n\ninput x: [N, 3, 8, 8]\ny = x -> conv(4, k=3, p=1)\noutput y\n")
    assert main(["compile", str(spec), "--precision", "int8", "--weight-rounding", "up",
                 "-o", str(tmp_path / "bad.onnx")]) == 2
    assert "unknown weight rounding 'up'" in capsys.readouterr().err
    assert not (tmp_path / "bad.onnx").exists()
