"""The op registry: every op defines every facet itself, once."""

import pytest

from cnncomp.ops.registry import CATEGORIES, FACETS, REQUIRED, Op, all_ops

OPS = sorted(all_ops())


@pytest.mark.parametrize("name", OPS)
def test_every_op_defines_every_facet(name):
    op = all_ops()[name]
    assert op.name == name and op.doc, f"{name}: give the op a name and a one-line doc"
    for facet in FACETS:
        assert getattr(type(op), facet) is not getattr(Op, facet), f"{name} does not define {facet}"
    # the optional facets fall back to Op's: no weights, no MACs, point-wise; the ones that have
    # weights count MACs, except the per-channel ones
    specs_method = getattr(type(op), "weight_specs")
    if specs_method is not Op.weight_specs and name not in ("bn", "gn", "prelu", "layer_norm", "scale", "shift"):
        assert getattr(type(op), "macs") is not Op.macs, f"{name} has weights but counts no MACs"


def test_the_language_table_ops_are_all_registered():
    table = {"conv", "deform_conv", "linear", "bn", "gn", "relu", "sigmoid", "tanh", "silu", "gelu", "hardswish",
             "hardsigmoid", "elu", "relu6", "leaky_relu", "prelu", "rrelu", "softmax", "log_softmax", "maxpool",
             "avgpool", "minpool", "lppool", "gap", "gmp", "kmaxpool", "flatten", "dropout", "identity", "shuffle",
             "upsample", "concat", "add", "mul", "conv_transpose", "mish", "selu", "pixel_shuffle", "pixel_unshuffle",
             "pad", "mean", "sum", "split", "permute", "layer_norm", "scale", "shift", "clip", "sub", "div", "neg"}
    assert table <= set(OPS)


# Ops that --emit torch cannot write, each with the reason (none today). Such an op keeps Op's
# torch_source, which stops the translation with an error located at the layer.
WITHOUT_TORCH_SOURCE: dict[str, str] = {}


@pytest.mark.parametrize("name", OPS)
def test_every_op_has_a_pytorch_source_translation_or_a_reason(name):
    has_one = type(all_ops()[name]).torch_source is not Op.torch_source
    if name in WITHOUT_TORCH_SOURCE:
        assert not has_one and WITHOUT_TORCH_SOURCE[name], f"{name}: translated, or give the reason it is not"
    else:
        assert has_one, f"{name}: define torch_source (see cnncomp/emit/torch/layers.py) or list it with a reason"


def test_an_op_without_translation_stops_emit_torch_at_its_layer(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from cnncomp.emit.torch.emit import emit_torch
    from cnncomp.errors import CnnError

    gelu = type(all_ops()["gelu"])
    monkeypatch.setattr(gelu, "torch_source", Op.torch_source)
    spec = tmp_path / "untranslated.cnn"
    spec.write_text("network untranslated\ninput x: [N, 4, 8, 8]\ny = x -> relu -> gelu\noutput y\n")
    with pytest.raises(CnnError, match="the layer 'gelu' has no translation") as err:
        emit_torch(spec, check=False)
    assert (err.value.loc.line, err.value.loc.col) == (3, 18)  # the gelu stage
# ---- the facts other parts of the compiler ask the registry ------------------------------

def _sample_input(op, rank: int = 4) -> tuple:
    return ("N", 8) + (12,) * (rank - 2) if rank > 2 else ("N", 8)


@pytest.mark.parametrize("name", OPS)
def test_every_op_has_a_known_category(name):
    assert all_ops()[name].category in CATEGORIES, f"{name}: category must be one of {CATEGORIES}"


@pytest.mark.parametrize("name", OPS)
def test_merges_are_the_variadic_ops(name):
    op = all_ops()[name]
    assert (op.category == "merge") == op.variadic, f"{name}: a merge takes any number of tensors, and only a merge"


@pytest.mark.parametrize("name", [n for n in OPS if all_ops()[n].folds_bn or all_ops()[n].folds_bn_before])
def test_ops_that_fold_bn_have_a_channel_axis_and_a_weight_on_it(name):
    op = all_ops()[name]
    for rank in range(max(op.min_rank, 3 if op.spatial_only else 2), 6 if op.spatial_only else 5):
        axis = op.channel_axis({}, rank)
        assert isinstance(axis, int) and 0 < axis < rank, f"{name}: channel_axis({rank}) = {axis}"
    assert op.weight_specs is not Op.weight_specs and any(p.name == "bias" for p in op.params), \
        f"{name}: folding needs a weight and a bias"


@pytest.mark.parametrize("name", [n for n in OPS if not (all_ops()[n].folds_bn or all_ops()[n].folds_bn_before)])
def test_ops_that_do_not_fold_bn_have_no_channel_axis(name):
    assert all_ops()[name].channel_axis({}, 4) is None


@pytest.mark.parametrize("name", [n for n in OPS if all_ops()[n].sliding_window])
def test_sliding_window_ops_have_window_attributes_and_a_window(name):
    op = all_ops()[name]
    assert op.spatial_only and any(p.name == "k" for p in op.params)
    args = {"out": 4, "k": 3, "offsets": None} if any(p.name == "out" for p in op.params) else {"k": 3}
    if name == "deform_conv":
        shapes = [("N", 8, 12, 12), ("N", 18, 10, 10)]
    else:
        shapes = [_sample_input(op)]
    attrs, shape, _ = op.instantiate({k: v for k, v in args.items() if k != "offsets"}, shapes)
    assert {"kernel", "stride", "pads", "dilation"} <= set(attrs)
    window = op.window(attrs, shapes)
    assert window is not None and window.kernel == (3, 3) and tuple(window.stride) == tuple(attrs["stride"])


@pytest.mark.parametrize("name", [n for n in OPS if all_ops()[n].keeps_grid])
def test_ops_that_keep_the_grid_keep_the_shape_and_have_no_window(name):
    op = all_ops()[name]
    args = {p.name: 2 for p in op.params if p.default is REQUIRED}
    shapes = [_sample_input(op)]
    attrs, shape, _ = op.instantiate(args, shapes)
    assert shape == shapes[0], f"{name} keeps the grid but changes the shape"
    assert op.window(attrs, shapes) is None


def test_axis_arguments_normalize_alike():
    from cnncomp.errors import CnnError
    from cnncomp.ops.registry import normalize_axis

    assert [normalize_axis("t", a, 4) for a in (-4, -1, 0, 3)] == [0, 3, 0, 3]
    assert normalize_axis("t", 4, 4, allow_end=True) == 4
    with pytest.raises(CnnError, match="t: axis 4 is out of range for rank 4"):
        normalize_axis("t", 4, 4)
    # flatten follows ONNX Flatten: a negative axis counts from the back
    flatten = all_ops()["flatten"]
    assert flatten.instantiate({"axis": -1}, [(2, 3, 4, 5)])[1] == (24, 5)
    assert flatten.instantiate({"axis": 4}, [(2, 3, 4, 5)])[1] == (120, 1)


def test_pools_share_one_window_base():
    sliding_pools = [op for op in all_ops().values() if op.category == "pool" and op.sliding_window]
    assert {op.name for op in sliding_pools} >= {"maxpool", "avgpool", "minpool", "lppool"}
    assert len({type(op).infer_shape for op in sliding_pools}) == 1
    assert len({type(op).window for op in sliding_pools}) == 1


def test_constant_affine_ops_compute_x_times_s_plus_t():
    import numpy as np
    import torch

    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    vector = np.linspace(-1.0, 2.0, 5)
    affine_ops = [n for n in OPS if type(all_ops()[n]).constant_affine is not Op.constant_affine]
    assert set(affine_ops) == {"scale", "shift"}
    for name in affine_ops:
        op = all_ops()[name]
        attrs, _, specs = op.instantiate({}, [tuple(x.shape)])
        weights = {k: vector for k in specs}
        s, t = op.constant_affine(attrs, weights)
        got = op.torch_ref(attrs, [x], {k: torch.from_numpy(v) for k, v in weights.items()})
        want = x * torch.from_numpy(s).reshape(1, -1, 1, 1) + torch.from_numpy(t).reshape(1, -1, 1, 1)
        torch.testing.assert_close(got, want)
