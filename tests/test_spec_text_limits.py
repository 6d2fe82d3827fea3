"""Spec text at its limits (issue 10, item 4): huge literals are located errors, errors quote a bounded
window of the line, a non-UTF-8 file's error quotes its line, and `import` names what it cannot import."""

from __future__ import annotations

import pytest

from cnncomp.cli import main
from cnncomp.errors import CnnError
from cnncomp.frontend.cnn.loader import load_spec, load_text

HEAD = "network a\ninput x: [N, 3]\n"


def error_of(text: str) -> CnnError:
    with pytest.raises(CnnError) as info:
        load_text(text, "t.cnn")
    return info.value


def test_integer_literal_over_pythons_digit_limit_is_located():
    err = error_of(HEAD + "y = x -> linear(" + "7" * 5000 + ")\noutput y\n")
    assert (err.loc.line, err.loc.col) == (3, 17)
    assert "integer literal of 5000 digits is too long" in err.message


def test_float_literal_overflowing_to_inf_is_located():
    err = error_of(HEAD + "y = x -> leaky_relu(1e999999)\noutput y\n")
    assert (err.loc.line, err.loc.col) == (3, 21)
    assert "1e999999 is too large" in err.message


def test_an_error_quotes_at_most_about_200_characters_of_its_line():
    err = error_of(HEAD + "y = x -> linear(3)" + " " * 1_000_000 + "$\noutput y\n")
    quoted, caret = str(err).splitlines()[1:3]
    assert len(quoted) <= 220 and quoted.strip().endswith("$")
    assert caret.index("^") == quoted.index("$")


def test_non_utf8_error_quotes_the_line_with_a_caret(tmp_path):
    path = tmp_path / "latin1.cnn"
    path.write_bytes(HEAD.encode() + b"y = x -> linear(3)  # caf\xe9\noutput y\n")
    with pytest.raises(CnnError) as info:
        load_spec(path)
    lines = str(info.value).splitlines()
    assert lines[0].endswith("3:26: error: file is not valid UTF-8 (byte 0xe9)")
    assert "y = x -> linear(3)  # caf" in lines[1]
    assert lines[2].index("^") == lines[1].index("caf") + 3


def test_import_of_a_folder_says_so(tmp_path):
    (tmp_path / "blocks.cnn").mkdir()
    path = tmp_path / "main.cnn"
    path.write_text('network a\nimport "blocks.cnn"\ninput x: [N, 3]\noutput x\n')
    with pytest.raises(CnnError, match="is a folder, not a .cnn spec") as info:
        load_spec(path)
    assert info.value.loc.line == 2


def test_import_of_a_non_spec_file_says_so_without_echoing_it(tmp_path):
    secret = "TOKEN=do-not-echo-this\n" * 3
    (tmp_path / "settings.env").write_text(secret)
    path = tmp_path / "main.cnn"
    path.write_text('network a\nimport "settings.env"\ninput x: [N, 3]\noutput x\n')
    with pytest.raises(CnnError, match="not a .cnn spec") as info:
        load_spec(path)
    assert "do-not-echo-this" not in str(info.value)


def test_cli_reports_a_huge_literal_without_traceback(tmp_path, capsys):
    path = tmp_path / "big.cnn"
    path.write_text(HEAD + "y = x -> linear(" + "1" * 5000 + ")\noutput y\n")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "VisitError" not in err and "big.cnn:3:17" in err
