"""The op registry: every op defines every facet itself, once."""

import pytest

from cnncomp.ops.registry import FACETS, Op, all_ops

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
    if specs_method is not Op.weight_specs and name not in ("bn", "gn", "prelu"):
        assert getattr(type(op), "macs") is not Op.macs, f"{name} has weights but counts no MACs"


def test_the_language_table_ops_are_all_registered():
    table = {"conv", "deform_conv", "linear", "bn", "gn", "relu", "sigmoid", "tanh", "silu", "gelu", "hardswish",
             "hardsigmoid", "elu", "relu6", "leaky_relu", "prelu", "rrelu", "softmax", "log_softmax", "maxpool",
             "avgpool", "minpool", "lppool", "gap", "gmp", "kmaxpool", "flatten", "dropout", "identity", "shuffle",
             "upsample", "concat", "add", "mul", "conv_transpose", "mish", "selu", "pixel_shuffle", "pixel_unshuffle",
             "pad"}
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
