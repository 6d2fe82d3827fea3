"""Lint warnings: each code fires on a spec that has the mistake, and not on one that does not."""

import pytest

from cnncomp.analysis.advice import hdc_violation, lint
from cnncomp.frontend.cnn.loader import load_text

H = "network n\ninput x: [N, 64, 64, 64]\n"


def codes(text: str) -> list[tuple[str, int]]:
    return [(w.code, w.loc.line) for w in lint(load_text(text, "lint.cnn"))]


@pytest.mark.parametrize("rates, kernel, bad", [
    ((1, 2, 5), 3, False), ((1, 2, 3), 3, False), ((2, 4, 8), 3, True), ((2, 2, 2), 3, True),
    ((1, 2, 9), 3, True), ((3, 3), 3, True), ((1, 1), 3, False)])
def test_hdc_rule(rates, kernel, bad):
    assert (hdc_violation(list(rates), kernel) is not None) == bad


def test_gridding_fires_on_a_stack_sharing_a_factor():
    text = H + "y = x -> conv(64, k=3, p=2, d=2) -> relu -> conv(64, k=3, p=4, d=4, bias=false) -> bn -> conv(64, k=3, p=8, d=8)\noutput y\n"
    assert codes(text) == [("gridding", 3)]


def test_gridding_respects_resolution_changes_and_repeated_groups():
    after_stride = "network n\ninput x: [N, 3, 128, 128]\ny = x -> conv(64, k=3, s=2, p=1) -> conv(64, k=3, p=2, d=2)" \
                   " -> conv(64, k=3, p=4, d=4) -> conv(64, k=3, p=8, d=8)\noutput y\n"
    assert codes(after_stride) == [("gridding", 3)]
    repeated = H + ("y = x -> conv(64, k=3, p=1) -> conv(64, k=3, p=2, d=2) -> conv(64, k=3, p=5, d=5)\n"
                    "      -> conv(64, k=3, p=1) -> conv(64, k=3, p=2, d=2) -> conv(64, k=3, p=5, d=5)\noutput y\n")
    assert codes(repeated) == []


def test_asymmetric_padding():
    assert codes(H + "y = x -> conv(8, k=4, p=same)\noutput y\n") == [("asymmetric-padding", 3)]
    assert codes(H + "y = x -> conv(8, k=3, p=same)\noutput y\n") == []


def test_dropped_border():
    assert codes("network n\ninput x: [N, 3, 224, 224]\ny = x -> conv(8, k=3, s=2)\noutput y\n") == \
        [("dropped-border", 3)]
    assert codes("network n\ninput x: [N, 3, 225, 225]\ny = x -> conv(8, k=3, s=2)\noutput y\n") == []
    # a 1x1 conv at stride 2 skips every other row by design: not a border problem
    assert codes("network n\ninput x: [N, 3, 56, 56]\ny = x -> conv(8, k=1, s=2)\noutput y\n") == []


def test_redundant_bias():
    assert codes(H + "y = x -> conv(8, k=3, p=1) -> bn\noutput y\n") == [("redundant-bias", 3)]
    assert codes(H + "y = x -> conv(8, k=3, p=1, bias=false) -> bn\noutput y\n") == []


def test_dense_heavy():
    assert codes(H + "y = x -> flatten -> linear(10)\noutput y\n") == [("dense-heavy", 3)]
    assert codes(H + "y = x -> conv(256, k=3, p=1) -> gap -> flatten -> linear(10)\noutput y\n") == []


def test_spelled_out():
    assert codes(H + "y = x -> mean(axes=(2, 3), keepdims=true)\nz = x -> clip(min=0, max=6)\noutput y, z\n") == \
        [("spelled-out", 3), ("spelled-out", 4)]
    # a spatial mean that drops the axes (a head), a mean over channels and other bounds are what they say
    assert codes(H + "y = x -> mean(axes=(2, 3))\nz = x -> mean(axes=1, keepdims=true) -> clip(min=0, max=1)\n"
                 "output y, z\n") == []


def test_warnings_in_standard_blocks_point_at_the_spec_line():
    text = H + "a = x -> conv(64, k=3, p=1)\ny = a -> sepconv(64, k=4, p=same)\noutput y\n"
    assert codes(text) == [("asymmetric-padding", 4)]


def test_gridding_checks_each_spatial_axis_and_names_it():
    # dilated only along the width: the height rates are all 1, the width rates (2, 4, 8) grid
    text = H + ("y = x -> conv(64, k=3, p=(1, 2), d=(1, 2)) -> relu -> conv(64, k=3, p=(1, 4), d=(1, 4))\n"
                "      -> conv(64, k=3, p=(1, 8), d=(1, 8))\noutput y\n")
    warnings = lint(load_text(text, "lint.cnn"))
    assert [(w.code, w.layer) for w in warnings] == [("gridding", "y.0")]
    assert "along width;" in warnings[0].message and "(2, 4, 8)" in warnings[0].message
    both = H + "y = x -> conv(64, k=3, p=2, d=2) -> conv(64, k=3, p=4, d=4) -> conv(64, k=3, p=8, d=8)\noutput y\n"
    (warning,) = lint(load_text(both, "lint.cnn"))
    assert "along height and width;" in warning.message
    # HDC-clean along the height (1, 2, 5), gridded along the width (2, 4, 8)
    mixed = H + ("y = x -> conv(64, k=3, p=(1, 2), d=(1, 2)) -> conv(64, k=3, p=(2, 4), d=(2, 4))\n"
                 "      -> conv(64, k=3, p=(5, 8), d=(5, 8))\noutput y\n")
    (warning,) = lint(load_text(mixed, "lint.cnn"))
    assert "along width;" in warning.message


def test_a_conv_one_wide_along_an_axis_keeps_that_axis_grid():
    # the 1x3 conv in the middle does not break the height stack (2, 4, 8); along the width it
    # starts a new group (1, 4, 8), which leaves holes too
    text = H + ("y = x -> conv(64, k=3, p=2, d=2) -> conv(64, k=(1, 3), p=(0, 1))\n"
                "      -> conv(64, k=3, p=4, d=4) -> conv(64, k=3, p=8, d=8)\noutput y\n")
    messages = sorted(w.message for w in lint(load_text(text, "lint.cnn")))
    assert len(messages) == 2
    assert messages[0].startswith("dilation rates (1, 4, 8) leave holes") and "along width; layers y.1 .. y.3" in messages[0]
    assert messages[1].startswith("dilation rates (2, 4, 8) share the factor 2") and \
        messages[1].endswith("along height; layers y.0 .. y.3")
