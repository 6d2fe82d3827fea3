"""Precisions, runtimes and targets are registries, as ops are: every entry defines every facet itself, the
command line takes its choices from them, and no other file branches on their names."""

import re
from pathlib import Path

import pytest

from cnncomp.cli import main
from cnncomp.deployment.targets import Target, compile_targets, targets
from cnncomp.job import options_of
from cnncomp.options import Option
from cnncomp.precision.convert import PRECISIONS, Precision, precisions, register_precision
from cnncomp.run.runtime import RUNTIMES, Runtime, runtime_choices, runtimes

PACKAGE = Path(__file__).resolve().parents[1] / "cnncomp"


@pytest.mark.parametrize("name", sorted(precisions()))
def test_every_precision_defines_every_facet(name):
    precision = precisions()[name]
    assert precision.name == name and precision.help
    for facet in Precision.FACETS:
        assert facet in vars(type(precision)), f"{name} does not define {facet}"
    assert len(precision.tolerances) == 2 and all(t > 0 for t in precision.tolerances)
    assert precision.triton_mode in ("FP32", "FP16", "INT8", "BF16")
    assert 0 < precision.o3_budget_share <= 1
    for option in precision.options:
        assert option.group == "precision" and set(option.commands) <= {"compile", "verify", "deploy"}


@pytest.mark.parametrize("name", sorted(runtimes()))
def test_every_runtime_defines_every_facet(name):
    runtime = runtimes()[name]
    assert runtime.name == name and runtime.help and runtime.provider.endswith("ExecutionProvider")
    assert runtime.name == "cpu" or runtime.install_hint, f"{name}: say what to install when it is missing"
    assert all(isinstance(o, Option) for o in runtime.options)


@pytest.mark.parametrize("name", sorted(targets()))
def test_every_target_defines_every_facet(name):
    target = targets()[name]
    assert target.name == name and target.help and target.writes
    assert type(target).write is not Target.write, f"{name} does not define write"


def test_the_command_line_takes_its_choices_from_the_registries():
    assert options_of("compile")["precision"].allowed() == tuple(PRECISIONS)
    assert options_of("verify")["runtime"].allowed() == runtime_choices() == (*RUNTIMES, "auto")
    assert options_of("compile")["target"].allowed() == tuple(compile_targets()) == ("onnx", "tensorrt")


def test_a_new_precision_is_one_registered_class(tmp_path, capsys):
    """Registering a precision is all it takes for --precision to take it and for its options to exist."""
    @register_precision
    class Halfish(Precision):
        name = "halfish"
        help = "float32 under another name, for this test"
        options = (Option("halfish_level", int, 2, "how halfish", ("compile",), group="precision"),)
        tolerances = (1e-4, 1e-3)
        triton_mode = "FP32"

        def convert(self, model, graph, request, log):
            from dataclasses import replace

            return replace(PRECISIONS["fp32"].convert(model, graph, request, log), precision="halfish")

        def for_timing(self):
            return None

    try:
        spec = tmp_path / "n.cnn"
        spec.write_text("network n\ninput x: [N, 3, 8, 8]\ny = x -> conv(4, k=3) as c -> relu\noutput y\n")
        assert "halfish_level" in options_of("compile") and "halfish_level" not in options_of("verify")
        assert main(["compile", str(spec), "-o", str(tmp_path / "n.onnx"), "--precision", "halfish",
                     "--halfish-level", "3", "--verify"]) == 0
        assert "verify: ok (cpu, halfish" in capsys.readouterr().out
        assert main(["compile", str(spec), "-o", str(tmp_path / "m.onnx"), "--halfish-level", "3"]) == 2
        assert "--halfish-level goes with --precision halfish" in capsys.readouterr().err
    finally:
        del PRECISIONS["halfish"]


def test_a_precision_without_a_facet_is_refused():
    with pytest.raises(ValueError, match="without"):
        @register_precision
        class Nameless(Precision):
            name = "nameless"
            help = "misses its converter"


def test_a_new_runtime_is_one_registered_class():
    class Fake(Runtime):
        name = "fakert"
        help = "a runtime for this test"
        provider = "FakeExecutionProvider"
        install_hint = "install nothing"

    from cnncomp.run.runtime import register_runtime
    from cnncomp.errors import CnnError
    from cnncomp.run.session import resolve_providers

    register_runtime(Fake)
    try:
        assert "fakert" in options_of("verify")["runtime"].allowed()
        with pytest.raises(CnnError, match="the fakert provider .*install nothing"):
            resolve_providers("fakert")
    finally:
        del RUNTIMES["fakert"]


# Where a precision's, runtime's or target's name may appear in a comparison: the registries themselves.
NAME_BRANCH = re.compile(r"""(precision|provider|runtime|target)\w*\s*(==|!=|in)\s*\(?["'](fp16|fp32|int8|bf16|cpu|"""
                         r"""cuda|tensorrt|onnx|triton)["']""")
ALLOWED = {"run/runtime.py", "deployment/targets.py"}  # and precision/, where each precision's module lives


def test_no_module_branches_on_a_registered_name():
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in ALLOWED or rel.startswith("precision/"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if NAME_BRANCH.search(line):
                found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "ask the registry instead:\n" + "\n".join(found)


def test_a_precision_this_machine_cannot_run_says_what_it_lacks(tmp_path, capsys):
    @register_precision
    class Needy(Precision):
        name = "needy"
        help = "needs a CPU feature this test pretends is missing"
        tolerances = (1e-4, 1e-3)
        triton_mode = "FP32"

        def convert(self, model, graph, request, log):
            raise AssertionError("never converted here")

        def for_timing(self):
            return None

        def missing(self):
            return ["a CPU with avx512_bf16 (this one has avx2)"]

    try:
        spec = tmp_path / "n.cnn"
        spec.write_text("network n\ninput x: [N, 3, 8, 8]\ny = x -> conv(4, k=3) as c -> relu\noutput y\n")
        out = tmp_path / "n.onnx"
        assert main(["compile", str(spec), "-o", str(out), "--precision", "needy"]) == 1
        assert "--precision needy needs what this machine lacks: a CPU with avx512_bf16" in capsys.readouterr().err
        assert not out.exists()
    finally:
        del PRECISIONS["needy"]
