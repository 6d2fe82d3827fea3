"""Hostile inputs, round two (issue 21): -D values that try to become code, specs and files whose
small size asks for huge work, and names that would break the text cnncomp writes."""

from __future__ import annotations

import time

import pytest

from cli_helpers import cli
from cnncomp.errors import CnnError
from cnncomp.frontend.cnn.loader import load_text

HEAD = "network a\ninput x: [N, 4, 8, 8]\n"
TAIL = "y = x -> relu\noutput y\n"
LET_SPEC = HEAD + "let width = 8\n" + TAIL


def error_of(text: str, overrides: dict | None = None) -> CnnError:
    with pytest.raises(CnnError) as info:
        load_text(text, "t.cnn", overrides)
    return info.value


# ---- 1. a -D value is one expression and never reaches generated code raw ----------------------------


@pytest.mark.parametrize("value", ["8\n# \rimport os; os.system('touch PWNED')", "8\rimport os", "8\u2028import os",
                                   "8\nlet other = 3"])
def test_a_define_with_a_line_break_is_refused(value):
    err = error_of(LET_SPEC, {"width": value})
    assert "one expression on one line" in err.message
    assert "\n" not in err.message and "\r" not in err.message


def test_a_define_cannot_inject_code_into_emitted_torch(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "n.cnn"
    spec.write_text(LET_SPEC)
    code, _, err = cli(capsys, "compile", spec, "-o", tmp_path / "n.py", "--emit", "torch",
                       "-D", "width=8\n# \rimport os; open('PWNED', 'w')")
    assert code == 1 and "one expression on one line" in err
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "n.py").exists()


def test_a_define_comment_in_emitted_torch_is_one_line():
    from cnncomp.emit.torch.comments import one_line

    assert one_line("-D w=8\r\nimport os\u2028x") == "-D w=8\\r\\nimport os\\u2028x"
    assert one_line("-D w=(1, 2)  # é") == "-D w=(1, 2)  # é"


def test_a_define_name_must_be_an_identifier(capsys, tmp_path):
    spec = tmp_path / "n.cnn"
    spec.write_text(LET_SPEC)
    code, _, err = cli(capsys, "check", spec, "-D", "wid\nth=8")
    assert code == 2 and "wid\\nth=8" in err


# ---- 3. small inputs, huge cost ------------------------------------------------------------------------


def test_repeated_integer_products_stop_at_the_int_limit():
    lets = "let a = " + "*".join(["2"] * 900) + "\n"
    start = time.perf_counter()
    err = error_of(HEAD + lets + TAIL)
    assert time.perf_counter() - start < 5
    assert "over the limit of 9,223,372,036,854,775,807 for an int" in err.message and err.loc.line == 3


def test_string_doubling_stops_at_the_string_limit():
    lets = 'let s0 = "' + "x" * 100 + '"\n' + "".join(f"let s{i} = s{i - 1} + s{i - 1}\n" for i in range(1, 30))
    err = error_of(HEAD + lets + TAIL)
    assert "string of 12,800 characters, over the limit of 10,000" in err.message
    assert err.loc.line == 10


def test_tuple_doubling_stops_at_the_tuple_limit():
    lets = "let t0 = (1, 2, 3, 4)\n" + "".join(f"let t{i} = t{i - 1} + t{i - 1}\n" for i in range(1, 30))
    assert "over the limit of 10,000" in error_of(HEAD + lets + TAIL).message


def test_values_at_the_limits_are_accepted():
    lets = f"let big = {2**62} + ({2**62} - 1)\nlet s = \"{'x' * 5000}\" + \"{'y' * 5000}\"\n"
    graph = load_text(HEAD + lets + TAIL, "t.cnn")
    assert graph.meta["lets"]["big"] == 2**63 - 1 and len(graph.meta["lets"]["s"]) == 10_000


def test_weights_over_the_limit_are_refused_by_check_before_allocating(capsys, tmp_path):
    spec = tmp_path / "huge.cnn"
    spec.write_text("network huge\ninput x: [N, 3, 8, 8]\n"
                    "y = x -> conv(46000, k=3, p=1) -> conv(46000, k=3, p=1)\noutput y\n")
    for command in (["check", spec], ["compile", spec, "-o", tmp_path / "huge.onnx"]):
        code, _, err = cli(capsys, *command)
        assert code == 1
        assert "huge.cnn:3:35: error: the network's weights take 70.9 GiB as float32, over the limit of 16.0 GiB; " \
               "the largest layer, y.1, takes 70.9 GiB" in err
    assert not (tmp_path / "huge.onnx").exists()


def _timed_load(text: str) -> float:
    start = time.perf_counter()
    load_text(text, "t.cnn")
    return time.perf_counter() - start


def test_loading_is_linear_in_the_lets():
    def spec(n):
        return HEAD + "".join(f"let c{i} = {i}\n" for i in range(n)) + TAIL

    small, large = _timed_load(spec(2000)), _timed_load(spec(8000))
    # quadratic code took 16x (and 8,000 lets 4 s); parsing is linear, so 4x plus noise
    assert large < 8 * small + 0.5, (small, large)


def test_emit_torch_is_linear_in_a_chain_of_statements():
    from cnncomp.emit.torch.emit import emit_torch

    def chain(n):
        lines = [f"t{i} = {'x' if i == 0 else f't{i - 1}'} -> relu" for i in range(n)]
        return HEAD + "\n".join(lines) + f"\noutput t{n - 1}\n"

    times = []
    for n in (500, 2000):
        graph = load_text(chain(n), f"chain{n}.cnn")
        start = time.perf_counter()
        emit_torch(graph, format=False, check=False)
        times.append(time.perf_counter() - start)
    assert times[1] < 8 * times[0] + 0.5, times  # quadratic: 16x (2k statements took 11 s)
