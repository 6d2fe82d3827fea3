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
