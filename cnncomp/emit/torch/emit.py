"""--emit torch: readable PyTorch source for a spec, with no dependency on cnncomp.

The generated file holds one `nn.Module` class per block definition the spec
uses (standard blocks included) and one class for the network. Each class is
a translation of the block's statements, not of one elaborated instance:

- `__init__(self, x_shape, *params)` takes the block's parameters and the
  shape of its input, and builds the submodules in statement order, tracking
  every tensor by its shape (`y_shape`), so that `channels(in) * t`, `if
  stride != 1 or channels(in) != out` and repeats are plain Python. It ends
  with `self.out_shape`, the shape of what the block returns; the caller
  passes it on to the next layer.
- `forward(self, x)` evaluates the same statements on tensors. Conditions are
  evaluated again there (on `x.shape` and the parameters `__init__` stored),
  so a block called with and without a downsample branch is one class.

Submodules sit at the layer names, so `state_dict()` keys are exactly the
spec's weight names: `as conv1` is `self.conv1`, a dotted name or a numbered
stage goes through `Modules` containers (`self.downsample[0]`,
`self.features.denseblock1[f"denselayer{i + 1}"]`), and stage numbers follow
the elaborator's statement counter (cnncomp/frontend/cnn/elaborate.py), also across
repeats (`self.features[5 + 2 * i]`) and conditional stages. Layers with
weights are torch modules built by small factories (`conv(x_shape, 64, k=3)`
returns an nn.Conv2d with an `out_shape`); weight-free layers are calls in
forward (`F.relu`, `maxpool(y, k=3, s=2, p=1)`); each op writes its layers
itself, through its `torch_source` facet (layers.py). Helpers that carry the exact
semantics of the op registry (asymmetric `same` padding, avgpool's
count_pad, minpool, lppool, kmaxpool, shuffle, deform_conv, ...) are emitted
into the file, only those the network uses.

Batch norm is nn.BatchNorm1d/2d/3d (a standard module, in train() mode it uses
batch statistics like any PyTorch model). It holds `num_batches_tracked`,
which cnncomp's weights do not have: the `bn` factory registers a
load_state_dict pre-hook that sets it to 0 when a state dict lacks it, so both
cnncomp's weights and torchvision-style state dicts load with strict=True.

Comments of the spec go with the code: the file's header comment opens the
module docstring, a block's leading comment becomes its class docstring, and
a statement's comments are written above its code in `__init__` and `forward`.

A graph that passes rewrote (fold-bn, ...) no longer follows its spec: it is
translated, with a notice, through the program that the one .cnn writer
(cnncomp.emit.cnn) makes of the graph itself, in its flat form (every layer
named with `as`, one statement per chain): one class, no blocks, and no text
printed and parsed again. The same happens for the few constructs the
translation of a spec does not cover (NotSupported): a repeat whose number of
stages depends on its own loop variable, channels()/spatial()/rank() of an
unnamed tensor expression, an `if` with a tensor in one branch and a value in
the other. Every emitted source is
checked before it is returned: built on the meta device, its state_dict keys
and shapes must be the graph's weights.

The modules of this package, one role each, are listed in
docs/architecture.md (emit/torch/); this one is the driver.

The generated module is float32 (cast it with .half() or .double()); it
computes what cnncomp's reference computes in eval() mode. In train() mode it
is an ordinary PyTorch model: batch norm uses batch statistics, dropout drops.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cnncomp.emit.torch.module import ModuleEmitter
from cnncomp.emit.torch.unsupported import NotSupported
from cnncomp.errors import CnnError
from cnncomp.frontend.cnn import ast
from cnncomp.ir.graph import LayerGraph

__all__ = ["NotSupported", "check_source", "emit_torch", "format_source"]


def emit_torch(spec, overrides: dict[str, str] | None = None, *, notices: list[str] | None = None,
               format: bool = True, check: bool = True) -> str:
    """PyTorch source (needing only torch) for a spec path or a LayerGraph: one nn.Module per block used."""
    from cnncomp.frontend.cnn.loader import elaborate_program
    from cnncomp.frontend.cnn.parser import parse_file

    notices = notices if notices is not None else []
    if isinstance(spec, LayerGraph):
        graph = spec
        program = _program_of(graph)
        overrides = graph.meta.get("overrides") or None
    else:
        program = parse_file(spec)
        graph = elaborate_program(program, overrides)
    why = None
    if program is None:
        passes = ", ".join(graph.meta.get("passes", []))
        why = (f"the passes rewrote the graph ({passes}): emitting it as one class without blocks; use -O0 "
               "for one class per block of the spec") if passes else \
            "the graph's spec is not available: emitting it as one class without blocks"
    else:
        try:
            emitter = ModuleEmitter(program, graph, overrides)
            source = emitter.emit()
        except NotSupported as err:
            why = f"{err.message} ({err.loc}): emitting the network as one class without blocks"
    if why is not None:
        notices.append(why)
        emitter, source = _translate_graph(graph)
    if format:
        source = format_source(source)
    if check:
        try:
            import torch  # noqa: F401
        except ImportError:
            notices.append("torch is not installed: the generated module was not checked")
        else:
            check_source(source, graph, emitter.network_class)
    return source


def _translate_graph(graph: LayerGraph) -> tuple[ModuleEmitter, str]:
    """The graph translated through the program the .cnn writer makes of it (no text is parsed): its flat
    listing, one class whose layers keep their names. (The program is also written out, so that its
    locations and header comment are lines of a text, as a spec's are.)"""
    from cnncomp.emit.cnn.spec import identifier_inputs
    from cnncomp.emit.cnn.syntax import unparse
    from cnncomp.emit.cnn.writer import spec_program

    passes = ", ".join(graph.meta.get("passes", []))
    header = f"{graph.name}, layer by layer" + (f" after the passes ({passes})" if passes else "")
    graph = identifier_inputs(graph)  # an input's layer is its variable
    program = spec_program(graph, f"<{graph.name} layer by layer>", blocks=False)
    unparse(program, header)
    emitter = ModuleEmitter(program, graph, None)
    return emitter, emitter.emit()


def _program_of(graph: LayerGraph) -> ast.Program | None:
    """The parsed spec of a graph that the passes left as elaborated, or None."""
    from cnncomp.errors import SOURCES
    from cnncomp.frontend.cnn.loader import elaborate_program
    from cnncomp.frontend.cnn.parser import parse, parse_file

    file = graph.meta.get("file")
    if graph.meta.get("passes") or not file:
        return None
    try:
        if Path(file).is_file():
            program = parse_file(file)
        elif file in SOURCES.texts:  # a spec given as text (load_text)
            program = parse("\n".join(SOURCES.texts[file]) + "\n", file)
        else:
            return None
        again = elaborate_program(program, graph.meta.get("overrides") or None)
    except CnnError:
        return None
    same = [(x.name, x.op, x.shape, tuple(x.weights)) for x in again.layers()] == \
           [(x.name, x.op, x.shape, tuple(x.weights)) for x in graph.layers()]
    return program if same and again.output_names == graph.output_names else None


def format_source(source: str) -> str:
    """The source through `ruff format` when ruff is installed (default settings), else as it is."""
    try:
        done = subprocess.run([sys.executable, "-m", "ruff", "format", "--isolated", "-"], input=source,
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return source
    return done.stdout if done.returncode == 0 and done.stdout else source


def check_source(source: str, graph: LayerGraph, class_name: str) -> None:
    """Build the emitted network on the meta device: its state_dict must hold exactly the graph's weights."""
    import torch

    from cnncomp.ir.weights import expected_weights

    namespace: dict = {"__name__": "cnncomp_emitted"}
    try:
        exec(compile(source, f"<{graph.name}.py>", "exec"), namespace)  # noqa: S102 - our own output
        with torch.device("meta"):
            net = namespace[class_name]()
    except Exception as exc:  # an emitter bug: say so with the cause
        raise CnnError(f"--emit torch: the generated module does not build ({type(exc).__name__}: {exc})") from exc
    got = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith(".num_batches_tracked")}
    want = {k: tuple(spec.shape) for k, spec in expected_weights(graph).items()}
    if got != want:
        missing = sorted(set(want) - set(got))[:5]
        extra = sorted(set(got) - set(want))[:5]
        wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])[:5]
        raise CnnError(f"--emit torch: the generated module's weights differ from the spec's (missing {missing}, "
                       f"unexpected {extra}, wrong shape {wrong})")

