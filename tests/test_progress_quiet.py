"""Progress on standard error (issue 10, item 9): the rewrite passes and reference runs draw a bar on a
terminal, only the outermost loop draws, `--quiet` silences it, and `--json` standard output never
holds any of it."""

from __future__ import annotations

import io
import json
import sys

import pytest

from cnncomp.cli import main
from cnncomp.progress import progress, silenced

SPEC = "network n\ninput x: [N, 3, 8, 8]\ny = x -> conv(4, k=3, p=1) -> bn -> relu -> gap -> flatten -> linear(2)\n" \
       "output y\n"


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def terminal(monkeypatch):
    monkeypatch.delenv("CNNCOMP_NO_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    return FakeTerminal()


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "n.cnn"
    path.write_text(SPEC)
    return str(path)


def test_verify_shows_passes_and_reference_progress_on_a_terminal(spec, terminal, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stderr", terminal)  # in the test body: capsys sets sys.stderr when the test starts
    assert main(["verify", spec, "--json"]) == 0
    drawn = terminal.getvalue()
    assert "passes (round 1) [" in drawn and "reference [" in drawn
    json.loads(capsys.readouterr().out)  # standard output holds the JSON object alone


def test_quiet_silences_progress(spec, terminal, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["--quiet", "verify", spec]) == 0
    assert main(["verify", spec, "--quiet"]) == 0
    assert "[" not in terminal.getvalue()
    assert "verify: ok" in capsys.readouterr().out


def test_only_the_outermost_loop_draws(terminal):
    for _ in progress(range(2), label="outer", stream=terminal):
        assert list(progress(range(3), label="inner", stream=terminal)) == [0, 1, 2]
    assert "outer [" in terminal.getvalue() and "inner" not in terminal.getvalue()
    assert list(progress(range(2), label="after", stream=terminal)) == [0, 1]
    assert "after [" in terminal.getvalue()  # the outer bar's end lets later loops draw


def test_silenced_nests_and_restores(terminal):
    with silenced():
        with silenced(False):  # an inner "not quiet" does not undo an outer quiet
            assert list(progress(range(2), label="hidden", stream=terminal)) == [0, 1]
    assert "hidden" not in terminal.getvalue()
    assert list(progress(range(2), label="shown", stream=terminal)) == [0, 1]
    assert "shown [" in terminal.getvalue()
