"""One request, two doors, one job: every option of every command that has an API function exists on both
the command line and the API, with the same name and default, and gives the same job description."""

import argparse

import numpy as np
import onnx
import pytest

import cnncomp
import cnncomp.pipeline as pipeline
from cnncomp.cli import build_parser, main
from cnncomp.errors import UsageError
from cnncomp.job import job_from_keywords, options_of
from cnncomp.precision.convert import precisions

SPEC = ("network small\ninput x: [N, 3, 16, 16]\n"
        "y = x -> conv(8, k=3, p=1) as c1 -> bn -> relu -> conv(8, k=3, p=1, g=2) as c2 -> relu\n"
        "      -> gap -> flatten -> linear(10) as fc\noutput y\n")
DEEP = ("network deep\ninput x: [N, 32]\ny = x -> linear(64) as l1 -> tanh -> linear(64) as l2 -> tanh\n"
        "      -> linear(64) as l3 -> tanh -> linear(64) as l4 -> tanh -> linear(4) as l5\noutput y\n")

# The job function each command's API door and CLI door both call.
JOB_OF = {"compile": "compile_job", "verify": "verify_job", "deploy": "deploy_job", "serve": "serve_job",
          "bench": "bench_job"}
# CLI flags with no API keyword, each with the reason.
CLI_ONLY = {("verify", "json"): "how the report is printed; the API returns the report itself",
            ("bench", "json"): "how the report is printed; the API returns the report itself"}
# API keywords that are not options, each with the CLI's counterpart.
API_ONLY = {"log": "the CLI passes standard error", "inputs": "arrays cannot be given on a command line "
            "(--load-inputs reads them from a file)"}
# Commands without an API function of their own, each with the reason.
WITHOUT_API = {"check": "cnncomp.load", "summary": "cnncomp.load, then analysis.summary", "run": "pipeline.infer",
               "init": "pipeline.write_seeded_weights", "graph": "pipeline.draw_job",
               "import": "cnncomp.import_onnx (MODEL, -o, --weights-out)"}


class Captured(Exception):
    def __init__(self, job):
        self.job = job


@pytest.fixture
def capture(monkeypatch):
    def capturing(job, *args, **kwargs):
        raise Captured(job)

    for name in JOB_OF.values():
        monkeypatch.setattr(pipeline, name, capturing)

    def via(call):
        with pytest.raises(Captured) as caught:
            call()
        return caught.value.job
    return via


@pytest.fixture
def files(tmp_path):
    (tmp_path / "small.cnn").write_text(SPEC)
    (tmp_path / "cal.npz").write_bytes(b"")
    (tmp_path / "w.safetensors").write_bytes(b"")
    return tmp_path


def subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def cli_options(command: str) -> dict[str, argparse.Action]:
    """The command's optional flags by dest (-O0..-O3 as one, opt_level)."""
    out = {}
    for action in subparser(command)._actions:
        if action.option_strings and action.dest not in ("help", "debug", "quiet"):
            out.setdefault(action.dest, action)
    return out


def api_call(command, spec, files, **keywords):
    if command == "compile":
        return lambda: cnncomp.compile(spec, **keywords)
    if command == "verify":
        return lambda: cnncomp.verify(spec, **keywords)
    if command == "deploy":
        return lambda: cnncomp.deploy(spec, keywords.pop("triton", files / "repo"), **keywords)
    if command == "bench":
        return lambda: cnncomp.bench(spec, **keywords)

    def serving():
        with cnncomp.serve(spec, **keywords):
            pass
    return serving


def required_cli(command, files) -> list[str]:
    return {"compile": ["-o", str(files / "o.onnx")], "deploy": ["--triton", str(files / "repo")]}.get(command, [])


def required_api(command, files) -> dict:
    return {"compile": {"output": str(files / "o.onnx")}, "deploy": {"triton": str(files / "repo")}}.get(command, {})


def sample(name, option, files):
    """A value other than the default, as command-line words and as an API value."""
    if option.action == "store_true":
        return [], True
    paths = {"weights": "w.safetensors", "calibration": "cal.npz", "output": "other.onnx", "triton": "repo2",
             "load_inputs": "cal.npz", "save_inputs": "in.npz", "save_outputs": "out.npz",
             "tritonserver": "tritonserver", "trt_engine_cache": "engines", "labels": "labels.npy"}
    if name in paths:
        return [str(files / paths[name])], str(files / paths[name])
    special = {"defines": (["width=3"], {"width": "3"}), "atol": (["0.5"], 0.5), "rtol": (["y=0.25"], {"y": 0.25}),
               "val_range": (["0,2"], (0.0, 2.0)), "passes": (["fold-bn"], "fold-bn"), "opt_level": (None, 2),
               "name": (["other"], "other"), "title": (["a title"], "a title"),
               "shape": (["x=1x3x16x16"], [{"x": (1, 3, 16, 16)}]),
               "shape_range": (["x=1x3x16x16:2x3x16x16:4x3x16x16"],
                               {"x": ((1, 3, 16, 16), (2, 3, 16, 16), (4, 3, 16, 16))}),
               "runtimes": (["cpu,cuda"], ("cpu", "cuda")), "precisions": (["int8"], ("int8",)),
               "batches": (["1,8"], (1, 8)), "plot": ([str(files / "b.png")], str(files / "b.png")),
               "metric": (["y=top1<=0.02"], "y=top1<=0.02")}
    if name in special:
        return special[name]
    allowed = option.allowed()
    if allowed:
        value = next(v for v in reversed(allowed) if v != option.default)
        return [str(value)], value
    if option.type is int:
        return ["3"], 3
    if option.type is float:
        return ["0.5"], 0.5
    raise AssertionError(f"no sample value for {name}; add one here")


@pytest.mark.parametrize("command", sorted(JOB_OF))
def test_every_cli_flag_is_an_api_keyword_with_the_same_default_and_meaning(command, capture, files):
    spec = str(files / "small.cnn")
    declared = options_of(command)
    plain_cli = capture(lambda: main([command, spec, *required_cli(command, files)]))
    plain_api = capture(api_call(command, spec, files, **required_api(command, files)))
    assert plain_cli == plain_api, f"{command}: the defaults differ between the CLI and the API"
    for dest, action in cli_options(command).items():
        if (command, dest) in CLI_ONLY:
            continue
        assert dest in declared, f"{command} {action.option_strings}: not declared in cnncomp/job.py, so the API " \
                                 "lacks it; declare it there"
        words, value = sample(dest, declared[dest], files)
        flag = ["-O2"] if dest == "opt_level" else [action.option_strings[-1], *words]
        if dest == "passes":
            flag = ["--passes", *words]
        keywords = {**required_api(command, files), dest: value}
        owner = next((p.name for p in precisions().values() if dest in {o.name for o in p.options}), None)
        if owner and "precision" in declared:  # a precision's own option goes with that precision (bench, which
            # takes int8's --metric and --labels to judge every choice by, has no --precision)
            flag += ["--precision", owner]
            keywords["precision"] = owner
        cli = capture(lambda: main([command, spec, *required_cli(command, files), *flag]))
        api = capture(api_call(command, spec, files, **keywords))
        assert cli == api, f"{command} {flag} and {dest}={value!r} give different jobs"
        assert cli != plain_cli, f"{command} {flag}: the sample value is the default; pick another"


@pytest.mark.parametrize("command", sorted(JOB_OF))
def test_every_api_keyword_is_a_cli_flag(command):
    flags = cli_options(command)
    for name in options_of(command):
        assert name in flags, f"cnncomp.{command}(..., {name}=) has no flag on `cnncomp {command}`"


def test_commands_without_an_api_function_are_listed():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(JOB_OF) | set(WITHOUT_API)


def test_provider_is_an_alias_of_runtime_on_both_doors(capture, files):
    spec = str(files / "small.cnn")
    cli = capture(lambda: main(["verify", spec, "--provider", "auto"]))
    assert cli == capture(lambda: cnncomp.verify(spec, provider="auto")) == \
        capture(lambda: cnncomp.verify(spec, runtime="auto"))
    assert cli.check.runtime == "auto"


@pytest.mark.parametrize("keywords, flags, message", [
    ({"max_error": 0}, ["--max-error", "0"], "--max-error takes a number greater than 0 and finite, got 0"),
    ({"jobs": 0}, ["--jobs", "0"], "--jobs takes 1 or more, got 0"),
    ({"precision": "int3"}, ["--precision", "int3"], "--precision: unknown precision 'int3'; known: fp32"),
    ({"runtime": "npu"}, ["--runtime", "npu"], "--runtime: unknown runtime 'npu'; known: cpu"),
    ({"val_range": (1.0, 0.0)}, ["--val-range", "1,0"], "--val-range needs LO < HI"),
    ({"keep_io_fp32": True}, ["--keep-io-fp32"], "--keep-io-fp32 goes with --precision fp16"),
])
def test_a_bad_value_is_the_same_error_on_both_doors(files, capsys, keywords, flags, message):
    spec = str(files / "small.cnn")
    with pytest.raises(UsageError) as caught:
        cnncomp.compile(spec, **keywords)
    assert message in str(caught.value)
    assert main(["compile", spec, "-o", str(files / "o.onnx"), *flags]) == 2
    assert f"cnncomp compile: error: {caught.value.message}" in capsys.readouterr().err


def test_an_unknown_keyword_names_the_known_ones(files):
    with pytest.raises(UsageError, match=r"cnncomp.verify\(\) has no option 'max_err'; it takes .*max_error"):
        cnncomp.verify(str(files / "small.cnn"), max_err=0.1)


def test_the_max_error_default_is_the_same_everywhere():
    from cnncomp.verification.tolerances import DEFAULT_MAX_ERROR

    for command in ("compile", "verify", "deploy"):
        assert cnncomp.options(command)["max_error"] == DEFAULT_MAX_ERROR
        assert job_from_keywords(command, "x.cnn", {}).optimize.max_error == DEFAULT_MAX_ERROR


def test_int8_writes_the_same_model_through_both_doors(tmp_path):
    """The API's max_error defaulted to None (full int8, no budget) while the CLI's was 0.01 (layers kept in
    float32 to stay within it): the same request gave two models."""
    spec = tmp_path / "deep.cnn"
    spec.write_text(DEEP)  # in full int8 its error (about 0.05) exceeds the default budget 0.01
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "cal.npz", x=rng.uniform(-1, 1, (8, 32)).astype(np.float32))
    by_cli, by_api = tmp_path / "cli.onnx", tmp_path / "api.onnx"
    assert main(["compile", str(spec), "--precision", "int8", "--calibration", str(tmp_path / "cal.npz"),
                 "-o", str(by_cli), "--keep-slower-int8"]) == 0
    cnncomp.compile(str(spec), output=by_api, precision="int8", calibration=str(tmp_path / "cal.npz"),
                    keep_slower_int8=True)
    model = onnx.load(str(by_api))
    assert onnx.load(str(by_cli)).SerializeToString() == model.SerializeToString()
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def test_emit_torch_defaults_to_O0_on_both_doors(capture, files):
    spec = str(files / "small.cnn")
    cli = capture(lambda: main(["compile", spec, "--emit", "torch", "-o", str(files / "m.py")]))
    assert cli.optimize.opt_level == 0
    assert cli == capture(lambda: cnncomp.compile(spec, output=str(files / "m.py"), emit="torch"))
