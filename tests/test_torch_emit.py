"""--emit torch: the generated PyTorch source builds, loads the spec's weights strictly, and computes
what the reference computes.

Every bundled spec is emitted from its file and executed in a fresh namespace (no cnncomp inside).
Built on the meta device at the spec's own input size, its state_dict keys are the graph's weight
names exactly (batch norms may add num_batches_tracked). The numeric comparison with
`run_reference` uses the spec's input size for the small networks, and for the large ones the same
generated class built for a smaller input (its `x_shape` argument) against the reference of the
spec elaborated at that input size (or a -D-reduced variant where the spec has the lets for it).
Outputs agree within 1e-5 of the output's scale (fp32 against fp32, the same torch kernels in
different order: errors seen are about 3e-7).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cnncomp.run.reference import run_reference  # noqa: E402
from cnncomp.emit.torch.emit import emit_torch  # noqa: E402
from cnncomp.ir.weights import expected_weights, init_weights  # noqa: E402
from cnncomp.frontend.cnn.loader import load_spec, load_text  # noqa: E402
from cnncomp.ops.registry import all_ops  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.cnn"))
REL_TOL = 1e-5  # of max|reference|
HELPER_CLASSES = {"LayerNorm", "ChannelVector", "ShapedPReLU", "Modules", "PadFirst", "PaddedConv1d", "PaddedConv2d", "PaddedConv3d", "DeformConv2d", "CropAfter",
                  "CroppedConvTranspose1d", "CroppedConvTranspose2d", "CroppedConvTranspose3d"}

# How the large specs are compared: (-D overrides for emitting and the reference, smaller input shape).
REDUCED = {
    "alexnet": ({}, (2, 3, 64, 64)),
    "c3d": ({"width": "8", "size": "32"}, None),
    "deeplabv3_resnet50": ({}, (2, 3, 48, 40)),  # symbolic H and W: the class is built once, run at this size
    "espcn": ({}, (2, 1, 16, 12)),
    "unet": ({}, (2, 3, 32, 48)),
    "densenet121": ({}, (1, 3, 64, 64)),
    "googlenet": ({}, (2, 3, 64, 64)),
    "hdc_segnet": ({"width": "32"}, (2, 3, 64, 48)),
    "mobilenet_v2": ({}, (2, 3, 64, 64)),
    "resnet18": ({}, (2, 3, 64, 64)),
    "resnet50": ({}, (1, 3, 64, 64)),
    "se_resnet50": ({}, (1, 3, 64, 64)),
    "shufflenet_v2_x1_0": ({}, (2, 3, 64, 64)),
    "squeezenet1_0": ({}, (2, 3, 64, 64)),
    "vgg16": ({}, (1, 3, 32, 32)),
}


# ---- helpers ------------------------------------------------------------------------------------

def execute(source: str) -> dict:
    """Run generated source in a fresh namespace."""
    namespace: dict = {"__name__": "generated_network"}
    exec(compile(source, "<generated>", "exec"), namespace)  # noqa: S102 - the source under test
    return namespace


def network_class(source: str, namespace: dict):
    name = re.search(r"`(\w+)\(\)` builds the network", source.replace("\n", " ")).group(1)
    return namespace[name]


def tensors(weights: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}


def seeded_inputs(graph, shapes: dict | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in graph.inputs:
        shape = (shapes or {}).get(name) or tuple(2 if isinstance(d, str) else d for d in graph.layer(name).shape)
        out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


def assert_matches_reference(net, graph, weights, inputs) -> None:
    """Outputs of the generated module (eval mode) against run_reference: shapes, then values."""
    want = run_reference(graph, weights, inputs)
    with torch.no_grad():
        got = net.eval()(*[torch.from_numpy(inputs[n]) for n in graph.inputs])
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(graph.output_names)
    for name, value in zip(graph.output_names, got):
        assert tuple(value.shape) == want[name].shape, name
        scale = max(float(np.abs(want[name]).max()), 1e-6)
        np.testing.assert_allclose(value.numpy(), want[name], rtol=0, atol=REL_TOL * scale, err_msg=name)


def compare(path, overrides=None, shapes=None, seed: int = 0) -> str:
    """Emit a spec file, build the network, load seeded weights strictly, compare with the reference."""
    notices: list[str] = []
    source = emit_torch(path, overrides, notices=notices)
    assert notices == []
    graph = load_spec(path, overrides)
    net = network_class(source, execute(source))()
    weights = init_weights(graph, seed)
    net.load_state_dict(tensors(weights), strict=True)
    assert_matches_reference(net, graph, weights, seeded_inputs(graph, shapes, seed))
    return source


def block_names(graph) -> set[str]:
    return {site.block for layer in graph.layers() for site in layer.chain}


def camel(name: str) -> str:
    out = ""
    for part in filter(None, name.split("_")):
        if out and out[-1].isdigit() and part[0].isdigit():
            out += "_"
        out += part[0].upper() + part[1:]
    return out


def defined_classes(source: str) -> set[str]:
    return set(re.findall(r"^class (\w+)\(", source, flags=re.MULTILINE))


def with_input_shape(text: str, shape: tuple) -> str:
    """The spec text with its (single) input declared at another shape; the batch dim stays N."""
    dims = ", ".join(["N"] + [str(d) for d in shape[1:]])
    return re.sub(r"^(input \w+: \w*)\[[^\]]*\]", lambda m: f"{m.group(1)}[{dims}]", text, count=1, flags=re.MULTILINE)


@pytest.fixture(scope="module")
def emitted():
    """Generated source per bundled spec (with its -D reduction), emitted once."""
    cache: dict[str, str] = {}

    def get(path: Path) -> str:
        if path.stem not in cache:
            notices: list[str] = []
            cache[path.stem] = emit_torch(path, REDUCED.get(path.stem, ({}, None))[0] or None, notices=notices)
            assert notices == [], notices
        return cache[path.stem]

    return get


# ---- the bundled specs ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_bundled_spec(path, emitted):
    overrides, small = REDUCED.get(path.stem, ({}, None))
    overrides = overrides or None
    source = emitted(path)
    assert not re.search(r"^\s*(import|from)\s+cnncomp", source, flags=re.MULTILINE)
    graph = load_spec(path, overrides)

    # one class per block definition used, and one for the network
    namespace = execute(source)
    cls = network_class(source, namespace)
    assert cls.__name__ == camel(graph.name)
    assert defined_classes(source) - HELPER_CLASSES == {camel(b) for b in block_names(graph)} | {cls.__name__}

    # at the spec's input size: the state_dict keys are the weight names, with their shapes
    with torch.device("meta"):
        full = cls()
    bn_layers = {layer.name for layer in graph.layers() if layer.op == "bn"}
    keys = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    extra = {k for k in keys if k.endswith(".num_batches_tracked")}
    assert {k.rsplit(".", 1)[0] for k in extra} <= bn_layers
    assert {k: s for k, s in keys.items() if k not in extra} == \
        {name: tuple(spec.shape) for name, spec in expected_weights(graph).items()}

    # numbers: at the spec's size, or the same class built for a smaller input
    if small is not None and any(isinstance(d, str) for d in graph.layer("x").shape[1:]):
        net = cls()  # a dynamic spec: its module takes any size
    elif small is not None:
        text = with_input_shape(path.read_text(), small)
        graph = load_text(text, str(path), overrides)
        net = cls(x_shape=("N",) + small[1:])
    else:
        net = cls()
    weights = init_weights(graph, 0)
    net.load_state_dict(tensors(weights), strict=True)
    assert_matches_reference(net, graph, weights, seeded_inputs(graph, {"x": small} if small else None))


def test_generated_sources_are_ruff_formatted(tmp_path, emitted):
    if subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True, check=False).returncode != 0:
        pytest.skip("ruff is not installed")
    for path in SPECS:
        (tmp_path / f"{path.stem}.py").write_text(emitted(path))
    done = subprocess.run([sys.executable, "-m", "ruff", "format", "--isolated", "--check", str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F,E9",
                           "--output-format", "concise", str(tmp_path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr  # no undefined or unused names


def test_resnet50_reads_like_pytorch(emitted):
    source = emitted(ROOT / "specs" / "resnet50.cnn")
    block = source[source.index("class Bottleneck("):source.index("class Resnet50(")]
    assert '"""ResNet bottleneck (v1.5: the stride is on the 3x3 conv).' in block  # the block's comment
    for line in ("self.conv1 = conv(x_shape, mid, k=1, bias=False)",
                 "if stride != 1 or x_shape[1] != out:",
                 "self.downsample[0] = conv(x_shape, out, k=1, s=stride, bias=False)",
                 "y = F.relu(self.bn1(self.conv1(x)))",
                 "if self.stride != 1 or x.shape[1] != self.out:",
                 "return F.relu(y + skip)"):
        assert line in block, line
    net = source[source.index("class Resnet50("):]
    assert "for i in range(4):" in net and "layer2 = self.layer2[i](layer2)" in net


# ---- every standard block, every op, the naming rules ------------------------------------------

ALL_BLOCKS = """network all_blocks
input x: [N, 16, 32, 32]
a = x -> dwconv(3, p=1) -> sepconv(24, 3, p=1) -> basic_block(24) -> basic_block(32, stride=2)
b = a -> inception(8, 8, 16, 4, 8, 8) -> se(4) -> inverted_residual(40, 1) -> inverted_residual(40, 6)
      -> inverted_residual(48, 6, stride=2)
c = b -> shuffle_unit(48, 4) -> shuffle_unit(96, 4, stride=2) -> dense_layer(8) -> fire(8, 16, 16)
      -> deformable(16, 3) -> bottleneck(8, 32) -> basic_conv(8, k=3, p=1)
output c
"""

OPS_2D = """network ops2d
input x: [N, 8, 12, 12]
a = x -> conv(8, k=4, p=same) -> gn(4) -> prelu -> elu(alpha=0.5) -> leaky_relu(0.2) -> rrelu
      -> hardswish -> hardsigmoid -> silu -> gelu -> tanh -> relu6 -> sigmoid -> prelu(shared=true)
b = x -> avgpool(k=3, s=2, p=1, ceil=true, count_pad=true) -> minpool(k=2, s=1, p=1)
      -> lppool(k=2) -> upsample(scale=2) -> pad(p=(1, 0, 0, 2), value=0.5) -> maxpool(k=2, p=same)
      -> avgpool(k=2, s=1, p=same) -> avgpool(k=2, s=1, p=same, count_pad=true)
      -> upsample(scale=(2, 1.5), mode="linear") -> maxpool(k=3, s=2, ceil=true, d=2, p=2)
c = x -> conv(6, k=3, s=2, p=same, d=1, g=2, bias=false) -> bn(eps=0.001) -> shuffle(3) -> dropout(0.3)
      -> identity -> slice(1, 5) -> softmax -> log_softmax(axis=2) -> gmp -> flatten -> linear(3, bias=false)
d = concat(x, x -> slice(0, 3, axis=2) -> pad(p=(0, 0, 9, 0)), axis=1) -> avgpool(k=(2, 3), s=(1, 2), p=(1, 0))
e = add(x, x -> relu, x -> gap) * (x -> gmp)
f = x -> conv_transpose(8, k=3, s=2, p=1, output_padding=1) -> pixel_unshuffle(2) -> pixel_shuffle(2) -> selu
      -> mish -> gelu(approximate="tanh") -> pad(2, mode="reflect") -> pad(1, mode="circular")
      -> pad((1, 0, 0, 1), mode="replicate") -> upsample(size=(9, 11), mode="cubic", align_corners=true)
      -> lppool(k=3, s=2, p=1, ceil=true) -> avgpool(k=2, s=1, d=2) -> conv_transpose(4, k=2, p=(1, 0, 0, 1), g=2)
off = x -> conv(18, k=3, p=1)
m = x -> conv(9, k=3, p=1) -> sigmoid
g = x -> deform_conv(off, 8, k=3, p=1, mask=m) -> upsample(scale=0.5, mode="linear")
lo, hi = x -> split((3, 5))
h = sub(lo -> layer_norm -> scale -> shift, lo -> mean(axes=1, keepdims=true)) -> clip(min=-1) -> neg
      -> hardsigmoid(alpha=0.2) -> permute((0, 3, 1, 2)) -> layer_norm(axes=(2, 3), eps=1e-6) -> clip
i = div(hi -> sum(axes=(2, 3), keepdims=true), hi -> split((2, 3), part=1) -> mean(axes=1, keepdims=true))
      -> clip(max=2) -> prelu(shape=(5, 1, 1)) -> prelu(shape=(1, 1))
      -> upsample(scale=1.5, mode="linear", coordinates="half_pixel_symmetric") -> upsample(mode="nearest-exact")
      -> upsample(size=(5, 7), coordinates="asymmetric", rounding="ceil") -> mean(axes=(2, 3))
j = x -> slice(1, 12, axis=2, step=2) -> slice(0, 11, axis=-1, step=3) -> flatten(axis=2, keep_leading=true)
output a, b, c, d, e, f, g, h, i, j
"""

OPS_1D_3D = """network ops13d
input t: [N, 6, 10]
input v: [N, 4, 6, 8, 8]
one = t -> conv(4, k=4, p=same) -> bn -> kmaxpool(3) -> upsample(scale=3, mode="linear") -> flatten
        -> linear(5) -> softmax
three = v -> conv(4, k=3, p=1) -> bn -> maxpool(k=2) -> avgpool(k=(1, 2, 2), p=(0, 1, 1), ceil=true) -> gap
          -> flatten -> linear(2)
one_up = t -> conv_transpose(3, k=3, s=2, p=(1, 2), bias=false) -> pad(2, mode="replicate") -> lppool(k=2, d=2)
three_up = v -> conv_transpose(2, k=2, s=2, d=1, g=2) -> upsample(size=(7, 9, 9), mode="linear")
             -> pad(1, mode="reflect")
output one, three, one_up, three_up
"""

NAMING = """# Naming corner cases.
network naming
let w = 8
let half = w / 2   # the language's exact division
input x: [N, 4, 16, 16]
input y: [N, 4, 16, 16]

# Stage numbers that depend on a condition.
block cond_stages(out, down=false) {
    z = (if down then in -> avgpool(k=2) -> conv(out, k=1) else in -> conv(out, k=1)) -> bn -> relu
    return z -> conv(out, k=3, p=1) -> bn
}

block nested(n, c) {
    return in -> repeat n as i { repeat 2 { conv(c, k=1) -> relu } -> bn as "stage{i}.norm" }
}

block scaled(c, s=2) {
    h = channels(in) * s / 2     # `/` on ints
    g = in -> conv(h, k=1) as proj.a.b -> shuffle(min(h, 2)) -> slice(0, c, axis=1)
          -> slice(0, c, axis=s - 1, step=s - 1)
    return concat(g, in -> conv(c, k=1), axis=1) * (in -> gap -> conv(2 * c, k=1) -> sigmoid)
}

block ident() {
    return in
}

block late(a=1, b) {
    return in -> conv(b, k=a)
}

block clash(conv, pool=2, x=1) {
    flatten = in -> avgpool(k=pool) -> conv(conv, k=x) as eval_ -> relu
    x_shape = flatten -> bn
    return x_shape
}

s = x + y
t = (x + y) * x -> conv(w, k=3, p=1) as head.conv -> cond_stages(w, down=true) -> cond_stages(w) as second
u = t -> nested(2, w) -> scaled(half) -> ident -> repeat 3 as k { conv(w, k=1) as "rep.{k}" } -> late(1, 6)
      -> clash(5)
v = concat(s -> relu -> maxpool(k=2), t -> conv(4, k=1) -> relu) -> conv(w, k=1)
output u, v
"""


@pytest.fixture
def spec_file(tmp_path):
    def write(text: str, name: str = "case.cnn") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def test_every_standard_block(spec_file):
    source = compare(spec_file(ALL_BLOCKS))
    for block in ("Dwconv", "Sepconv", "BasicBlock", "Inception", "Se", "InvertedResidual", "ShuffleUnit",
                  "DenseLayer", "Fire", "Deformable", "Bottleneck", "BasicConv"):
        assert f"class {block}(" in source, block


def test_every_op(spec_file):
    used = set()
    for text in (OPS_2D, OPS_1D_3D):
        source = compare(spec_file(text))
        graph = load_text(text, "ops.cnn")
        used |= {layer.op for layer in graph.layers()}
        # each op's torch_source: a layer with weights is a torch module at its layer name
        with torch.device("meta"):
            net = network_class(source, execute(source))()
        for layer in graph.layers():
            if layer.weights:
                assert isinstance(net.get_submodule(layer.name), torch.nn.Module), layer.name
    used |= {layer.op for layer in load_text(ALL_BLOCKS, "blocks.cnn").layers()}
    assert set(all_ops()) - used == set(), "add the new op to these specs"


def test_naming_rules(spec_file):
    source = compare(spec_file(NAMING))
    # a stage number that depends on a compile-time condition, in __init__ and in forward
    assert "self.z[2 if down else 1] = bn(z_shape)" in source
    assert "z = F.relu(self.z[2 if self.down else 1](z))" in source
    # nested repeats count stages per iteration; string templates become f-strings
    assert "self[5 * i + 2 * i_] = conv(" in source and 'self[f"stage{i}"].norm = bn(' in source
    # a parameter after one with a default, names that clash with the helpers
    assert "def __init__(self, x_shape, a=1, b=None):" in source
    assert "def __init__(self, x__shape, conv_, pool=2, x=1):" in source


def test_symbolic_spatial_dims(spec_file):
    path = spec_file("network seq\ninput x: [N, 8, L]\n"
                     "y = x -> conv(8, k=3, p=same) -> relu -> conv(4, k=5, p=2) -> gmp -> flatten -> linear(3)\n"
                     "output y\n")
    for length in (7, 12):
        compare(path, shapes={"x": (2, 8, length)})
    assert 'x_shape=("N", 8, "L")' in emit_torch(path)


def test_overrides_and_imports(spec_file):
    spec_file("let depth = 2\nblock unit(c) {\n    return in -> conv(c, k=3, p=1) -> relu\n}\n", "lib.cnn")
    path = spec_file('network imported\nimport "lib.cnn"\nlet width = 4\ninput x: [N, 3, 8, 8]\n'
                     "y = x -> repeat depth { unit(width) }\noutput y\n")
    source = compare(path, {"width": "6"})
    assert "width = 6  # -D width=6" in source and "depth = 2" in source and "class Unit(Modules):" in source


def test_comments_go_with_the_code(spec_file):
    path = spec_file("""# Header line.
network commented

# The width of everything.
let width = 8   # trailing

input x: [N, 3, 16, 16]   # the image

# A conv, a batch norm, a relu.
block cbr(out) {
    # the only statement
    return in -> conv(out, k=3, p=1, bias=false)   # conv
              -> bn -> relu
}

# The stem.
stem = x -> cbr(width) -> cbr(width * 2)
head = stem -> gap -> flatten -> linear(10) as fc   # the classifier
output head
""")
    source = compare(path)
    assert source.startswith('"""commented in PyTorch, generated by cnncomp (--emit torch) from case.cnn.\n\n'
                             "Header line.\n")
    assert "# The width of everything.\nwidth = 8  # trailing\n" in source
    assert 'class Cbr(Modules):\n    """A conv, a batch norm, a relu.\n' in source
    assert "x: the image" in source
    # a statement's comments stand above its code, in __init__ and in forward
    assert "        # the only statement\n        # conv\n        self[0] = conv(" in source
    assert "        # the only statement\n        # conv\n        return F.relu(" in source
    assert "        # The stem.\n        self.stem = Modules()\n" in source
    assert "        # The stem.\n        stem = self.stem[0](x)\n" in source
    assert "        # the classifier\n        head = gap(stem)\n" in source


def test_a_construct_without_translation_falls_back_to_one_class(spec_file):
    path = spec_file("network unsup\ninput x: [N, 4, 8, 8]\n"
                     "y = x -> repeat 3 as i { repeat i + 1 { relu } -> conv(4, k=1) }\noutput y\n")
    notices: list[str] = []
    source = emit_torch(path, notices=notices)
    assert len(notices) == 1 and "depends on its loop variable" in notices[0]
    graph = load_spec(path)
    net = network_class(source, execute(source))()
    weights = init_weights(graph, 1)
    net.load_state_dict(tensors(weights), strict=True)
    assert_matches_reference(net, graph, weights, seeded_inputs(graph))


# ---- batch norm's num_batches_tracked ------------------------------------------------------------

def test_num_batches_tracked_loads_with_and_without(emitted):
    source = emitted(ROOT / "specs" / "resnet18.cnn")
    cls = network_class(source, execute(source))
    shape = ("N", 3, 32, 32)
    net = cls(x_shape=shape)
    ours = tensors(init_weights(load_spec(ROOT / "specs" / "resnet18.cnn"), 3))
    assert not any(k.endswith("num_batches_tracked") for k in ours)
    net.load_state_dict(ours, strict=True)  # cnncomp's weights: no num_batches_tracked
    assert int(net.bn1.num_batches_tracked) == 0
    with_counts = net.state_dict()  # torchvision-style: with num_batches_tracked
    assert "layer1.0.bn1.num_batches_tracked" in with_counts
    for v in with_counts.values():
        if v.dtype == torch.long:
            v.fill_(7)
    other = cls(x_shape=shape)
    other.load_state_dict(with_counts, strict=True)
    assert int(other.layer4[1].bn2.num_batches_tracked) == 7
    # a state_dict() (whose metadata says batch norm version 2) with the counts removed loads too
    stripped = OrderedDict((k, v) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked"))
    stripped._metadata = net.state_dict()._metadata
    cls(x_shape=shape).load_state_dict(stripped, strict=True)


def test_torchvision_resnet18_state_dict_loads_and_agrees(emitted):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    tvm = pytest.importorskip("torchvision_models")
    model = tvm.resnet18(seed=0)
    source = emitted(ROOT / "specs" / "resnet18.cnn")
    net = network_class(source, execute(source))(x_shape=("N", 3, 64, 64)).eval()
    net.load_state_dict(model.state_dict(), strict=True)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        want, got = model.eval()(x), net(x)
    torch.testing.assert_close(got, want, rtol=0, atol=REL_TOL * float(want.abs().max()))


# ---- training, graphs, the command line -----------------------------------------------------------

def test_the_module_trains(spec_file):
    path = spec_file("network small\ninput x: [N, 3, 16, 16]\n"
                     "y = x -> conv(8, k=3, p=1) -> bn -> relu -> bottleneck(4, 16, stride=2) -> dropout(0.2)\n"
                     "      -> gap -> flatten -> linear(5)\noutput y\n")
    source = emit_torch(path)
    net = network_class(source, execute(source))().train()
    before = net.y[0].weight.detach().clone()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = net(torch.randn(4, 3, 16, 16)).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    optimizer.step()
    assert not torch.equal(before, net.y[0].weight)
    assert int(net.y[1].num_batches_tracked) == 1  # batch statistics in train mode, like any nn.BatchNorm


def test_graph_input(spec_file):
    path = ROOT / "specs" / "squeezenet1_0.cnn"
    assert emit_torch(load_spec(path)) == emit_torch(path)  # an unrewritten graph goes back to its spec
    graph = load_text(NAMING, "naming_text.cnn")  # a spec given as text
    notices: list[str] = []
    assert "class CondStages(Modules):" in emit_torch(graph, notices=notices) and notices == []


def test_a_graph_after_passes_is_one_class(spec_file):
    from cnncomp.pipeline import optimize

    compiled = optimize(spec_file(ALL_BLOCKS), opt_level=1)
    assert "fold-bn" in compiled.graph.meta["passes"]
    notices: list[str] = []
    source = emit_torch(compiled.graph, notices=notices)
    assert len(notices) == 1 and "fold-bn" in notices[0]
    assert defined_classes(source) - HELPER_CLASSES == {"AllBlocks"}
    net = network_class(source, execute(source))()
    net.load_state_dict(tensors(compiled.weights), strict=True)
    inputs = seeded_inputs(compiled.ref_graph)
    assert_matches_reference(net, compiled.ref_graph, compiled.ref_weights, inputs)


def test_compile_emit_torch(tmp_path, capsys):
    from cnncomp.cli import main

    out = tmp_path / "lenet.py"
    assert main(["compile", str(ROOT / "specs" / "lenet.cnn"), "-O0", "--emit", "torch", "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    source = out.read_text()
    assert source == emit_torch(ROOT / "specs" / "lenet.cnn")
    graph = load_spec(ROOT / "specs" / "lenet.cnn")
    net = network_class(source, execute(source))()
    net.load_state_dict(tensors(init_weights(graph, 0)), strict=True)


def test_source_is_written_without_torch():
    # the prelude is read as package data, not imported: torch is needed only to check the result
    script = ("import sys\nsys.modules['torch'] = None  # as if torch were not installed\n"
              "from cnncomp.emit.torch.emit import emit_torch\nnotices = []\n"
              "sys.stdout.write(emit_torch(sys.argv[1], notices=notices))\nsys.stderr.write(repr(notices))\n")
    lenet = ROOT / "specs" / "lenet.cnn"
    done = subprocess.run([sys.executable, "-c", script, str(lenet)], capture_output=True, text=True, check=False,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "torch is not installed: the generated module was not checked" in done.stderr
    assert done.stdout == emit_torch(lenet)
