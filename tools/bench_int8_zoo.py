"""Int8 on zoo exports a user brings: torchvision and timm CNNs exported, imported and compiled to int8 at
default settings with a task metric, each printed as one JSON line.

    python tools/bench_int8_zoo.py --size 96 tv:resnet18 timm:convnext_atto ...

Each model is built with `tests/zoo/zoo.py`'s informative random weights (batch-norm statistics measured on
the model's own input, then perturbed), exported (opset 17, dynamic batch), `cnncomp import`ed and compiled
with `--precision int8 --metric top1` through the same job as `cnncomp compile`, calibrated on 16 crops of
the photos scikit-learn and matplotlib ship (ImageNet scaling; a quarter held out). Printed per model: the
seconds of import and of int8, the precision written, the share of the MACs in int8, int8's speed against
float32 as the not-faster rule timed it, the budget error, and the why-line (or the error, with the stage).
Random weights make the budget judge near-tied logits: the shares say what the pipeline does with such a
net, not what a trained one would get (docs/precision.md, "Zoo exports at random weights"). Needs the zoo
tier (`python tools/install_zoo.py`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "zoo"))

import numpy as np  # noqa: E402

import zoo  # noqa: E402
from trained_nets import crops, imagenet_input, photos  # noqa: E402

SAMPLES = 16


def quantize(name: str, model_of, size: int) -> dict:
    """One model through export, import and int8: the JSON line's fields."""
    import torch

    import cnncomp
    from cnncomp.job import job_from_keywords
    from cnncomp.pipeline import compile_job

    folder = Path(tempfile.mkdtemp(prefix="cnncomp-int8-zoo-"))
    stem = name.replace(":", "_")
    start, stage = time.perf_counter(), "build"
    try:
        torch.manual_seed(0)
        model = zoo.informative_weights(model_of(), size, 0)
        stage = "export"
        zoo.export(model, torch.randn(1, 3, size, size), folder / f"{stem}.onnx")
        stage = "import"
        cnncomp.import_onnx(folder / f"{stem}.onnx", folder / f"{stem}.cnn")
        images = [c for i, p in enumerate(photos()) for c in crops(p, size, size, SAMPLES // 2, i)][:SAMPLES]
        calibration = {cnncomp.load(str(folder / f"{stem}.cnn")).inputs[0]:
                       np.concatenate([imagenet_input(image) for image in images])}
        imported = time.perf_counter()
        stage = "int8"
        job = job_from_keywords("compile", str(folder / f"{stem}.cnn"), {
            "weights": str(folder / f"{stem}.safetensors"), "opt_level": 1, "precision": "int8",
            "calibration": calibration, "metric": "top1"})
        report = compile_job(job).details
        speed = report.float_ms / report.int8_ms if report.float_ms and report.int8_ms else None
        share = report.int8_macs_share
        return {"name": name, "ok": True, "import_s": round(imported - start, 1),
                "int8_s": round(time.perf_counter() - imported, 1), "written": report.written,
                "int8_macs_share": None if share is None else round(share, 3),
                "speed": None if speed is None else round(speed, 2), "budget_error": round(report.budget_error, 3),
                "why": report.shortfall()}
    except Exception as e:  # noqa: BLE001 - every failure is a row, with its stage
        return {"name": name, "ok": False, "stage": stage, "s": round(time.perf_counter() - start, 1),
                "error": f"{type(e).__name__}: {e}"[:600], "traceback": traceback.format_exc()[-1500:]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="zoo names (tv:resnet18, timm:mixnet_s; tools/zoo_table.py)")
    parser.add_argument("--size", type=int, default=96, help="input height and width (default 96)")
    args = parser.parse_args(argv)
    import torch

    tv, timm, why = zoo.load_zoo()
    models = {m.name: m for m in zoo.zoo_models(tv, timm)}
    missing = [n for n in args.models if n not in models]
    if missing:
        print(f"not in this torchvision/timm: {', '.join(missing)}{f' ({why})' if why else ''}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the zoo tier: on a shared machine spinning threads slow everything
    try:
        for name in args.models:
            print(json.dumps(quantize(name, models[name].build, args.size)), flush=True)
    finally:
        torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
