"""The zoo tier: torchvision's and timm's model code, exported, imported, compiled and compared.

Not a test module itself: `tests/zoo/test_zoo.py` and `tools/zoo_table.py` use it.

torchvision's compiled extension (`torchvision._C`) does not load beside a
CPU build of torch other than the one it was built for, and its
`__init__` imports it; the model code is pure Python. `load_zoo` makes
`torchvision` a bare package (its `__init__` not run) and imports
`torchvision.models` and `timm` from it. Where the two are not installed,
`CNNCOMP_ZOO_SITE` (default `.zoo-site` at the repository root, where
`tools/install_zoo.py` puts them) is searched too.

Weights are random but informative (`informative_weights`): a tensor that
the model's init made constant (batch-norm scales and shifts, layer scales,
a residual branch's zero-initialized last norm) is redrawn around its value,
and batch-norm statistics are measured on the model's own input, then
perturbed, so that the output really depends on the input and on every
layer (drawn statistics make many nets' outputs nearly constant, and then a
1e-4 comparison is blind).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import time
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SIZE = 64  # input height and width: small, so that the whole zoo runs in minutes
MAX_PARAMS = 50_000_000  # larger variants (vgg, wide_resnet, convnext_base...) are left out: minutes each, same ops
# models whose fixed adaptive pooling needs the ImageNet size (it refuses to export an upsampling adaptive pool)
FULL_SIZE = {"alexnet": 224, "vgg": 224, "inception_v3": 96, "googlenet": 96}
BATCH = 2


def zoo_site() -> Path:
    return Path(os.environ.get("CNNCOMP_ZOO_SITE", ROOT / ".zoo-site"))


def load_zoo():
    """(torchvision.models, timm), either None where it is not importable; with the reason as a third item."""
    import torch  # noqa: F401 - torch first: the zoo's modules need it loaded

    site = zoo_site()
    if importlib.util.find_spec("torchvision") is None and site.is_dir() and str(site) not in sys.path:
        sys.path.append(str(site))
    reasons = []
    tv = timm = None
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        reasons.append(f"torchvision is not installed (nor in {site}; see docs/import.md, 'The zoo tier')")
    else:
        if "torchvision" not in sys.modules:  # a bare package: its __init__ would load the C extension
            package = types.ModuleType("torchvision")
            package.__path__ = list(spec.submodule_search_locations)
            package.__spec__, package.__file__ = spec, spec.origin
            package.__version__ = _dist_version("torchvision")
            sys.modules["torchvision"] = package
        try:
            tv = importlib.import_module("torchvision.models")
        except Exception as exc:  # noqa: BLE001 - any failure means no zoo, said in the skip reason
            reasons.append(f"torchvision.models does not import ({type(exc).__name__}: {exc})")
    if tv is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                timm = importlib.import_module("timm")
        except Exception as exc:  # noqa: BLE001
            reasons.append(f"timm does not import ({type(exc).__name__}: {exc})")
    return tv, timm, "; ".join(reasons)


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "0"


# ---- the models ---------------------------------------------------------------------------------------

# torchvision models that are not CNNs (attention throughout): outside the tier, listed in the table as such
NOT_CNN = ("vit_", "swin_", "maxvit_")

# timm's hybrids with attention blocks (self-attention, halo, lambda, linear attention: products of two
# computed matrices) are outside the tier like torchvision's transformers
NOT_CNN_TIMM = ["bat_resnext26ts", "halonet26t", "botnet26t_256", "sebotnet33ts_256", "lambda_resnet26t",
                "mobilevit_xxs", "edgenext_xx_small", "coatnet_0_rw_224", "efficientvit_b0"]

# timm: one or two members of each CNN family (the smallest), at SIZE x SIZE
TIMM = [
    "resnet18d", "resnet26t", "resnext26ts", "seresnext26d_32x4d", "ecaresnet26t", "skresnet18", "resnest14d",
    "res2net50_14w_8s", "res2next50", "cspresnet50", "cspdarknet53", "darknet17", "dla34", "dpn48b", "densenet121",
    "efficientnet_b0", "tf_efficientnet_lite0", "tf_efficientnet_b0", "efficientnetv2_rw_t", "mixnet_s",
    "tf_mixnet_s", "mnasnet_small", "mobilenetv2_035", "mobilenetv3_small_050", "tf_mobilenetv3_small_075",
    "lcnet_050", "fbnetc_100", "spnasnet_100", "ghostnet_050", "hrnet_w18_small", "regnetx_002", "regnety_002",
    "rexnet_100", "selecsls42b", "tinynet_e", "convnext_atto", "convnextv2_atto", "nf_resnet26", "nfnet_l0",
    "dm_nfnet_f0", "vgg11", "repvgg_a0", "resnetv2_50", "gernet_s", "hardcorenas_a", "inception_v3", "xception41",
    "legacy_seresnet18", "cs3darknet_s", "cspresnext50", "mobileone_s0", "fastvit_t8", "ese_vovnet19b_dw",
    "tresnet_m", "ghostnetv2_100", "repghostnet_050", "resnet50_gn", "inception_next_atto", "poolformer_s12",
    "vovnet39a",
]


@dataclass
class ZooModel:
    name: str  # "tv:resnet18", "timm:mixnet_s"
    build: object  # () -> nn.Module
    size: int = SIZE


def zoo_models(tv, timm) -> list[ZooModel]:
    """The zoo tier's models: torchvision classification and segmentation, and the timm sample."""
    out: list[ZooModel] = []
    if tv is not None:
        for name in sorted(tv.list_models(module=tv)):
            if name.startswith(NOT_CNN):
                continue
            size = next((v for k, v in FULL_SIZE.items() if name.startswith(k)), SIZE)
            out.append(ZooModel(f"tv:{name}", lambda n=name: tv.get_model(n, weights=None, num_classes=10,
                                                                           **_tv_extra(n)), size))
        for name in sorted(tv.list_models(module=tv.segmentation)):
            out.append(ZooModel(f"tv:{name}", lambda n=name: tv.get_model(n, weights=None, weights_backbone=None,
                                                                           num_classes=5, aux_loss=False)))
    if timm is not None:
        for name in TIMM:
            size = 96 if name in ("inception_v3",) else SIZE
            out.append(ZooModel(f"timm:{name}", lambda n=name: timm.create_model(n, pretrained=False,
                                                                                  num_classes=10), size))
    return out


def _tv_extra(name: str) -> dict:
    if name in ("inception_v3", "googlenet"):
        return {"aux_logits": False, "init_weights": True}
    return {}


def informative_weights(model, size: int, seed: int = 0):
    """The model in eval mode with every constant tensor redrawn and batch-norm statistics measured on a
    random batch, then perturbed (see the module docstring)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers()
                                                           if b.is_floating_point() and "running" not in n]:
            if p.numel() > 1 and bool((p == p.reshape(-1)[0]).all()):
                c = float(p.reshape(-1)[0])
                if c == 0:
                    p.copy_(torch.empty(p.shape).uniform_(-0.2, 0.2, generator=g))
                else:  # 1, a layer scale's 1e-6: a gain near 1
                    p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g))
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the measuring batches
        model.train()
        x = torch.randn(4, 3, size, size, generator=g)
        model(x)
        model.eval()
        for m in norms:
            if m.running_mean is None:
                continue
            m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=g) * m.running_var.sqrt())
            m.running_var.mul_(torch.empty(m.running_var.shape).uniform_(0.8, 1.25, generator=g))
    return model.eval()


# ---- one round trip -------------------------------------------------------------------------------------


@dataclass
class RoundTrip:
    name: str
    ok: bool = False
    skipped: str = ""  # why the model is outside the tier (too large)
    stage: str = ""  # build, export, import, compile, compare
    error: str = ""
    spec_lines: int = 0
    rel_err: float = float("nan")
    bound: float = float("nan")
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def round_trip(zm: ZooModel, folder: Path, seed: int = 0) -> RoundTrip:
    """Build, export (opset 17, TorchScript exporter, dynamic batch), import, compile at -O1 and compare with
    PyTorch in float64: relative error (max abs error / max abs output) at most 1e-4, or 4x PyTorch's own
    float32 error where that is larger."""
    import torch

    result = RoundTrip(zm.name)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared machine several threads spin-wait: 50 s instead of 0.3 s a forward
    try:
        _round_trip(zm, folder, seed, result)
    finally:
        torch.set_num_threads(threads)
    result.seconds = time.perf_counter() - start
    return result


def _round_trip(zm: ZooModel, folder: Path, seed: int, result: RoundTrip) -> None:
    import onnxruntime as ort
    import torch

    import cnncomp
    from cnncomp.errors import CnnError

    stem = zm.name.replace(":", "_")
    try:
        result.stage = "build"
        torch.manual_seed(seed)
        model = zm.build()
        params = sum(p.numel() for p in model.parameters())
        if params > MAX_PARAMS:
            result.skipped = f"{params / 1e6:.0f}M parameters (the tier takes up to {MAX_PARAMS / 1e6:.0f}M)"
            return
        model = informative_weights(model, zm.size, seed)
        x = torch.randn(BATCH, 3, zm.size, zm.size, generator=torch.Generator().manual_seed(seed + 1))
        result.stage = "export"
        onnx_path = folder / f"{stem}.onnx"
        export(model, x, onnx_path)
        result.stage = "import"
        imported = cnncomp.import_onnx(onnx_path, folder / f"{stem}.cnn")
        result.spec_lines = len(imported.text.splitlines())
        result.stage = "compile"
        compiled = cnncomp.compile(folder / f"{stem}.cnn", weights=folder / f"{stem}.safetensors", opt_level=1)
        result.stage = "compare"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(compiled.SerializeToString(), options, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want32 = _first(model(x)).numpy()
            want64 = _first(model.double()(x.double())).numpy()
        scale = float(np.abs(want64).max()) or 1.0
        torch_err = float(np.abs(want32 - want64).max()) / scale
        result.bound = max(1e-4, 4 * torch_err)
        if got.shape != want64.shape:
            raise AssertionError(f"output shape {got.shape}, PyTorch's {want64.shape}")
        result.rel_err = float(np.abs(got - want64).max()) / scale
        result.ok = result.rel_err <= result.bound
        if not result.ok:
            result.error = f"relative error {result.rel_err:.2e} > {result.bound:.2e}"
    except CnnError as err:
        result.error = err.message
    except Exception as exc:  # noqa: BLE001 - the table records every failure with its stage
        result.error = f"{type(exc).__name__}: {exc}"


def _first(out):
    if isinstance(out, dict):
        return out["out"]
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def export(model, x, path: Path) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
