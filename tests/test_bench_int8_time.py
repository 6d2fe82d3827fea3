"""tools/bench_int8_time.py's timing and its --profile breakdown (the ResNet-50 run itself is run by hand)."""

import sys
from pathlib import Path

import onnx
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_int8_time  # noqa: E402


def _chain(length: int) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"r{i}") for i in range(length)]
    info = [helper.make_tensor_value_info(f"t{i}", onnx.TensorProto.FLOAT, [1]) for i in (0, length)]
    return helper.make_model(helper.make_graph(nodes, "chain", info[:1], info[1:]))


def test_timed_returns_the_seconds_and_profile_names_the_parts_that_took_them(capsys):
    from cnncomp.onnx_graph import consumers

    model = _chain(300)
    seconds = bench_int8_time.timed("chain readers", lambda: [consumers(model) for _ in range(20)], profile=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("chain readers") and f"{seconds:.1f} s" in lines[0]
    assert len(lines) == 2  # the largest part of cnncomp's or ONNX Runtime's
    assert "consumers onnx_graph.py:" in lines[1] and "20 calls" in lines[1]


def test_timed_without_profile_prints_one_line(capsys):
    bench_int8_time.timed("nothing", lambda: None)
    assert capsys.readouterr().out.splitlines() == [f"{'nothing':<18}     0.0 s"]
