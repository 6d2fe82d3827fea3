"""tools/bench_int8_zoo.py: a zoo export through int8 as one JSON line, and a name not in the zoo refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests" / "zoo"))

import bench_int8_zoo  # noqa: E402
import zoo  # noqa: E402

TV, TIMM, WHY = zoo.load_zoo()


@pytest.mark.skipif(TV is None, reason=WHY or "torchvision is not importable")
def test_a_zoo_export_is_one_json_line_with_its_int8_figures(capsys):
    assert bench_int8_zoo.main(["--size", "32", "tv:squeezenet1_1"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["ok"] and row["name"] == "tv:squeezenet1_1", row
    assert row["written"] in ("int8", "fp32") and 0 <= row["int8_macs_share"] <= 1
    assert (row["why"] is None) == (row["int8_macs_share"] >= 0.8)


@pytest.mark.skipif(TV is None, reason=WHY or "torchvision is not importable")
def test_a_name_not_in_the_zoo_is_refused(capsys):
    assert bench_int8_zoo.main(["tv:no_such_net"]) == 2
    assert "not in this torchvision/timm: tv:no_such_net" in capsys.readouterr().err
