"""Bad usage exits 2 with one `cnncomp COMMAND: error:` line and no traceback (issue 10)."""

import pytest

from cnncomp.cli import main

SPEC = "network n\ninput x: [N, 4, 10, 10]\ny = x -> conv(8, k=3, p=1) as c1 -> relu -> gap -> flatten " \
       "-> linear(3) as fc\noutput y\n"


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "n.cnn"
    path.write_text(SPEC)
    return str(path)


@pytest.mark.parametrize("flags, message", [
    (["--atol", "z=1e-3"], "--atol z=...: the network has no output 'z' (its outputs: y)"),
    (["--rtol", "logits=1e-3"], "--rtol logits=...: the network has no output 'logits'"),
    (["--atol=-1e-3"], "--atol takes a number 0 or more, got -0.001"),
    (["--rtol", "y=nan"], "--rtol takes a number 0 or more, got nan"),
    (["--max-error", "0"], "--max-error takes a number greater than 0 and finite, got 0"),
    (["--max-error=-0.5"], "--max-error takes a number greater than 0 and finite"),
    (["--max-error", "inf"], "--max-error takes a number greater than 0 and finite, got inf"),
    (["--max-error", "nan"], "--max-error takes a number greater than 0 and finite, got nan"),
    (["--batch", "0"], "--batch takes 1 or more, got 0"),
    (["--batch=-3"], "--batch takes 1 or more, got -3"),
    (["--passes", "fold-bn,("], "--passes: cannot read"),
    (["--passes", "fold-bn,no-such-pass"], "--passes: unknown pass 'no-such-pass'"),
    (["--passes", "bottleneck(ratio=0)"], "--passes: bottleneck(ratio=...) needs a number in (0, 1], got '0'"),
    (["--passes", "bottleneck(ratio=1.5)"], "--passes: bottleneck(ratio=...) needs a number in (0, 1], got '1.5'"),
    (["--passes", "bottleneck(energy=0)"], "--passes: bottleneck(energy=...) needs a number in (0, 1], got '0'"),
    (["--passes", "depthwise(energy=2)"], "--passes: depthwise(energy=...) needs a number in (0, 1], got '2'"),
    (["--passes", "depthwise(energy=nan)"], "--passes: depthwise(energy=...) needs a number in (0, 1], got 'nan'"),
    (["--passes", "bottleneck(ratio=half)"], "--passes: bottleneck(ratio=...) needs a number in (0, 1], got 'half'"),
])
def test_verify_usage_errors_exit_2(spec, capsys, flags, message):
    assert main(["verify", spec, *flags]) == 2
    err = capsys.readouterr().err
    assert f"cnncomp verify: error: {message}" in err and "Traceback" not in err


@pytest.mark.parametrize("flags", [["--atol", "z=1", "--verify"], ["--batch", "0", "--verify"],
                                   ["--max-error", "0"], ["--passes", "depthwise(energy=0)"]])
def test_compile_usage_errors_exit_2_and_write_nothing(spec, tmp_path, capsys, flags):
    target = tmp_path / "n.onnx"
    assert main(["compile", spec, "-o", str(target), *flags]) == 2
    assert "cnncomp compile: error:" in capsys.readouterr().err
    assert not target.exists()


def test_in_range_pass_options_still_run(spec, capsys):
    assert main(["verify", spec, "--passes", "bottleneck(ratio=1),depthwise(energy=1.0)", "--max-error", "1e-3"]) == 0
