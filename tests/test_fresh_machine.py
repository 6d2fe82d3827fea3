"""A fresh machine without optional tools (issue 10, item 8): what needs no Graphviz works without it,
and README says how to get the CPU build of PyTorch."""

from __future__ import annotations

from pathlib import Path

from cnncomp.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_graph_names_a_missing_folder_before_asking_for_graphviz(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` here
    code = main(["graph", str(ROOT / "specs" / "lenet.cnn"), "-o", str(tmp_path / "missing" / "model.svg")])
    err = capsys.readouterr().err
    assert code == 1 and "does not exist" in err and "Graphviz" not in err


def test_readme_does_not_claim_the_extras_pin_the_cpu_build():
    readme = (ROOT / "README.md").read_text()
    assert "pin the CPU build" not in readme
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in readme
