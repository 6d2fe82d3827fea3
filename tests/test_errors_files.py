"""Errors that involve files and the command line: encoding, imports, -D, exit status."""

import subprocess
import sys

import pytest

from cnncomp.cli import main
from cnncomp.frontend.cnn.loader import load_spec
from cnncomp.errors import CnnError

GOOD = "network n\ninput x: [N, 3, 8, 8]\ny = x -> relu\noutput y\n"


def test_non_utf8_file_is_located(tmp_path):
    spec = tmp_path / "latin1.cnn"
    spec.write_bytes(b"network n\n# caf\xe9\ninput x: [N, 3, 8, 8]\n")
    with pytest.raises(CnnError) as info:
        load_spec(spec)
    assert (info.value.loc.line, info.value.loc.col) == (2, 6)
    assert "not valid UTF-8" in info.value.message


def test_missing_file():
    with pytest.raises(CnnError, match="no such file"):
        load_spec("/nonexistent/spec.cnn")


def test_import_brings_blocks_and_constants(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "parts.cnn").write_text(
        "network parts\nlet width = 12\nblock stem(c) {\n    return in -> conv(c, k=3, p=1) as conv -> relu\n}\n")
    spec = tmp_path / "main.cnn"
    spec.write_text('network n\nimport "lib/parts.cnn"\ninput x: [N, 3, 8, 8]\ny = x -> stem(width)\noutput y\n')
    graph = load_spec(spec)
    assert graph.layer("y.0.conv").shape == ("N", 12, 8, 8)


def test_import_cycle_is_located(tmp_path):
    (tmp_path / "a.cnn").write_text('network a\nimport "b.cnn"\n')
    (tmp_path / "b.cnn").write_text('network b\n\nimport "a.cnn"\n')
    spec = tmp_path / "main.cnn"
    spec.write_text('network n\nimport "a.cnn"\n' + GOOD.split("\n", 1)[1])
    with pytest.raises(CnnError) as info:
        load_spec(spec)
    assert info.value.message == "import cycle: a.cnn -> b.cnn -> a.cnn"
    assert info.value.loc.file.endswith("b.cnn") and (info.value.loc.line, info.value.loc.col) == (3, 1)


def test_syntax_error_in_import_names_the_imported_file(tmp_path):
    (tmp_path / "lib.cnn").write_text("network lib\nlet a = (1,\n")
    spec = tmp_path / "main.cnn"
    spec.write_text('network n\nimport "lib.cnn"\n' + GOOD.split("\n", 1)[1])
    with pytest.raises(CnnError) as info:
        load_spec(spec)
    assert info.value.loc.file.endswith("lib.cnn")


def test_defines_override_lets_and_derived_lets(tmp_path):
    spec = tmp_path / "w.cnn"
    spec.write_text("network w\nlet width = 8\nlet wide = width * 2\ninput x: [N, 3, 8, 8]\n"
                    "y = x -> conv(wide, k=1)\noutput y\n")
    assert load_spec(spec).layer("y.0").shape[1] == 16
    assert load_spec(spec, {"width": "32"}).layer("y.0").shape[1] == 64
    with pytest.raises(CnnError, match="-D depth: the spec has no top-level `let depth`"):
        load_spec(spec, {"depth": "3"})
    with pytest.raises(CnnError, match="not a value"):
        load_spec(spec, {"width": "3 +"})


def test_cli_exit_status_and_no_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.cnn"
    bad.write_text("network n\ninput x: [N, 3, 8, 8]\ny = x -> conv(8, k=9)\noutput y\n")
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}:3:10: error: conv: kernel 9 is larger than the padded input size 8")
    assert "Traceback" not in err
    good = tmp_path / "good.cnn"
    good.write_text(GOOD)
    assert main(["check", str(good)]) == 0
    assert capsys.readouterr().out.startswith("ok")
    assert main(["check", str(good), "-D", "nonsense"]) == 2


def test_cli_usage_error_exits_2():
    proc = subprocess.run([sys.executable, "-m", "cnncomp", "check"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_defines_reach_lets_of_imported_files(tmp_path):
    (tmp_path / "lib.cnn").write_text("network lib\nlet base = 16\n")
    spec = tmp_path / "main.cnn"
    spec.write_text('network m\nimport "lib.cnn"\ninput x: [N, 3, 8, 8]\ny = x -> conv(base, k=1)\noutput y\n')
    assert load_spec(spec).layer("y.0").shape[1] == 16
    assert load_spec(spec, {"base": "8"}).layer("y.0").shape[1] == 8


def test_name_templates_write_values_as_the_language_does(tmp_path):
    from cnncomp.frontend.cnn.loader import load_text

    graph = load_text('network n\ninput x: [N, 3, 8, 8]\ny = x -> repeat 2 as i { relu as "r{i == 0}" }\noutput y\n')
    assert {"rtrue", "rfalse"} <= {layer.name for layer in graph.layers()}
