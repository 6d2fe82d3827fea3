"""Layer names for imported nodes, kept from the exporter where they are module paths.

- cnncomp's own ONNX names each layer's node after the layer (`layer1.0.conv1`);
  the name is kept as is.
- torch.onnx.export (TorchScript) names a node after its module scope and op:
  `/layer1/layer1.0/conv1/Conv`. Each scope segment repeats its parent's path
  for `nn.Sequential` children (`layer1.0` under `layer1`), so the module path
  is rebuilt by dropping that repetition: `layer1.0.conv1`. A node that is
  the module itself (a leaf: no other node lives below its path) takes the
  path; a functional op inside a container (`/layer1/layer1.0/Add`) takes the
  path plus its op in lower case (`layer1.0.add`).
- Anything else (an empty name, `Conv_0`) becomes a valid name made from the
  node name or the op type.

Every name is made of parts `[A-Za-z0-9_]+` joined by dots, as the language's
`as NAME` allows, and unique.
"""

from __future__ import annotations

import re

from cnncomp.ir.graph import unique_name

_PART = re.compile(r"[^A-Za-z0-9_]")


def torch_module_path(node_name: str) -> tuple[str, str] | None:
    """('layer1.0.conv1', 'Conv') for '/layer1/layer1.0/conv1/Conv'; None when not a scoped name."""
    if not node_name.startswith("/"):
        return None
    segments = [s for s in node_name.strip("/").split("/") if s]
    if not segments:
        return None
    op = segments[-1]
    parts: list[str] = []
    parent = ""
    for seg in segments[:-1]:
        if parent and seg.startswith(parent + "."):
            parts.append(seg[len(parent) + 1:])
        else:
            parts.append(seg)
        parent = seg
    return ".".join(parts), op


def clean_name(text: str) -> str:
    """Dotted parts of letters, digits and underscores only."""
    parts = [_PART.sub("_", p) for p in text.split(".")]
    parts = [p for p in parts if p]
    return ".".join(parts) or "layer"


class Namer:
    """Chooses one unique layer name per imported layer."""

    def __init__(self, node_names: list[str], taken: set[str]):
        self.taken = set(taken)
        scoped = [torch_module_path(n) for n in node_names]
        self.containers = set()  # module paths with other modules below them
        for item in scoped:
            if item and item[0]:
                parts = item[0].split(".")
                self.containers.update(".".join(parts[:i]) for i in range(1, len(parts)))

    def name_for(self, node_name: str, op_type: str) -> str:
        scoped = torch_module_path(node_name)
        if scoped is not None:
            path, op = scoped
            op_part = op.lower()
            if not path:
                base = op_part
            elif path in self.containers:
                base = f"{path}.{op_part}"
            else:
                base = path
        elif node_name:
            base = node_name.split("/")[0] or node_name
        else:
            base = op_type.lower()
        name = unique_name(clean_name(base), self.taken)
        self.taken.add(name)
        return name
