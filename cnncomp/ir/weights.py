"""Weights of a network: seeded initialization, loading, checking and saving.

Weights are a flat dict keyed like PyTorch state_dict entries: `LAYER.weight`,
`LAYER.bias`, and for batch norm also `LAYER.running_mean` and
`LAYER.running_var`. Values are numpy arrays (float32 unless the file held
float16 or float64).

Seeded initialization draws each weight tensor from its own generator,
seeded from (seed, weight name), so a weight's values do not depend on the
order of the layers or on which other layers exist.

Loading accepts `.safetensors` files and PyTorch checkpoints (read with
`torch.load(weights_only=True)`): a plain state_dict, or one nested under a
"state_dict" entry, with a leading "module." (DataParallel) stripped from
every key. Buffers inference does not use (`num_batches_tracked`) are
ignored. Missing keys, unexpected keys and wrong shapes are reported
together in one error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cnncomp.errors import CnnError
from cnncomp.fileio import atomic_write, note_input  # noqa: F401  (atomic_write re-exported for other modules)
from cnncomp.inputs import count_nonfinite, refuse_kind
from cnncomp.ops.registry import WeightSpec, init_weight

# Entries a PyTorch checkpoint may hold that inference never reads.
IGNORED_SUFFIXES = ("num_batches_tracked",)
FLOAT_DTYPES = (np.float16, np.float32, np.float64)
MAX_LISTED = 12  # keys listed per kind of problem in one error


def expected_weights(graph) -> dict[str, WeightSpec]:
    """Every weight the graph's layers need, by full name, in layer order."""
    specs = {}
    for layer in graph.layers():
        for suffix, spec in layer.weights.items():
            specs[f"{layer.name}.{suffix}"] = spec
    return specs


def _rng(seed: int, name: str) -> np.random.Generator:
    digest = hashlib.sha256(name.encode()).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & 0xFFFFFFFF] + words)))


def init_weights(graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded weights for every layer (PyTorch's default init, non-trivial batch-norm statistics)."""
    specs = expected_weights(graph)
    check_weights_size(graph, specs)
    return {name: init_weight(spec, _rng(seed, name)) for name, spec in specs.items()}


MAX_WEIGHT_BYTES = 2**34  # all weights of a network, float32 (docs/language.md, Limits)


def _nbytes(spec: WeightSpec) -> int:
    return 4 * int(np.prod(spec.shape, dtype=object))  # float32; object: no int64 overflow


def check_weights_size(graph, specs: Mapping[str, WeightSpec] | None = None) -> None:
    """Refuse, before allocating anything, a network whose weights are over MAX_WEIGHT_BYTES,
    naming the size and the largest layer (two conv(46000, k=3) would ask for 142 GiB)."""
    specs = expected_weights(graph) if specs is None else specs
    total = sum(_nbytes(spec) for spec in specs.values())
    if total <= MAX_WEIGHT_BYTES:
        return
    largest = max(graph.layers(), key=lambda layer: sum(_nbytes(w) for w in layer.weights.values()))
    size = sum(_nbytes(w) for w in largest.weights.values())
    raise CnnError(f"the network's weights take {_gib(total)} as float32, over the limit of "
                   f"{_gib(MAX_WEIGHT_BYTES)}; the largest layer, {largest.name}, takes {_gib(size)}", largest.loc)


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


# ---- reading ------------------------------------------------------------------


def read_weights_file(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file or a PyTorch checkpoint, keys as stored (prefix stripped)."""
    path = Path(path)
    note_input(path)
    if path.is_dir():
        raise CnnError(f"weights file '{path}' is a folder; give a .safetensors file or a PyTorch checkpoint")
    if not path.is_file():
        raise CnnError(f"weights file '{path}' does not exist")
    refuse_kind(path, "a weights file (.safetensors or a PyTorch checkpoint)", ("safetensors", "torch"))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            import torch

            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except CnnError:
        raise
    except Exception as exc:  # corrupt file, pickled objects refused by weights_only, ...
        raise CnnError(f"cannot read weights file '{path}': {_load_reason(exc)}") from None
    return _tensors(raw, path)


def _load_reason(exc: Exception) -> str:
    """The useful part of a loader's message (torch's weights_only refusals are long)."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        detail = " ".join(text.split("WeightsUnpickler error:", 1)[1].split())
        detail = detail.split(" Please use ", 1)[0].split(" Check the documentation", 1)[0]
        advice = "; save model.state_dict(), not the model" if "Unsupported global" in detail else ""
        return f"torch.load with weights_only=True refused it ({detail.rstrip('.')}){advice}"
    return text.splitlines()[0] if text else type(exc).__name__


def _tensors(raw, path: Path) -> dict[str, np.ndarray]:
    import torch

    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise CnnError(f"weights file '{path}' holds {type(raw).__name__}, expected a state_dict "
                       "(a dict of tensors, or a checkpoint with a 'state_dict' entry)")
    out = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = str(key)
        out[key.removeprefix("module.")] = _to_numpy(value)
    if not out and raw:
        raise CnnError(f"weights file '{path}' holds no tensors (expected a state_dict)")
    return out


def _as_array(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        return _to_numpy(value)
    return np.asarray(value)


def _to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.to(torch.float32)
    return t.numpy().copy()


def load_weights(path: str | Path, graph) -> dict[str, np.ndarray]:
    """Load a weights file and check it against the graph: every weight present, with its shape."""
    return check_weights(read_weights_file(path), graph, f"weights file '{path}'")


def check_weights(weights: Mapping[str, np.ndarray], graph, source: str = "the weights dict",
                  allow_unexpected: bool = False) -> dict[str, np.ndarray]:
    """Check weights against the graph; return them as numpy arrays, or raise one error listing every problem."""
    specs = expected_weights(graph)
    missing, wrong, unexpected = [], [], []
    out = {}
    for name, spec in specs.items():
        if name not in weights:
            missing.append(f"{name} {_fmt(spec.shape)}")
            continue
        array = _as_array(weights[name])
        if array.dtype not in FLOAT_DTYPES:
            if np.issubdtype(array.dtype, np.floating):
                array = array.astype(np.float32)
            else:
                wrong.append(f"{name} has dtype {array.dtype}, expected a floating-point type")
                continue
        if tuple(array.shape) != tuple(spec.shape):
            wrong.append(f"{name} is {_fmt(array.shape)}, the spec expects {_fmt(spec.shape)}")
            continue
        out[name] = array
    for name in weights:
        if name not in specs and name.rsplit(".", 1)[-1] not in IGNORED_SUFFIXES:
            unexpected.append(name)
    if allow_unexpected:
        unexpected = []
    if missing or wrong or unexpected:
        raise CnnError(_mismatch_message(source, graph.name, missing, unexpected, wrong))
    return out


def nonfinite_weights(weights: Mapping[str, np.ndarray]) -> list[str]:
    """'NAME holds 2 NaN and 0 Inf values (first at index (0, 1))' for every weight that is not finite."""
    return [f"{name} holds {count_nonfinite(a)}" for name, a in weights.items()
            if np.issubdtype(np.asarray(a).dtype, np.floating) and not np.isfinite(a).all()]


def _mismatch_message(source: str, network: str, missing: list, unexpected: list, wrong: list) -> str:
    counts = [f"{len(v)} {what}" for v, what in ((missing, "missing"), (unexpected, "unexpected"),
                                                 (wrong, "with the wrong shape or type")) if v]
    lines = [f"{source} does not match network '{network}': {', '.join(counts)}"]
    for items, what in ((missing, "missing"), (unexpected, "unexpected"), (wrong, "mismatch")):
        for item in items[:MAX_LISTED]:
            lines.append(f"  {what}: {item}")
        if len(items) > MAX_LISTED:
            lines.append(f"  ... and {len(items) - MAX_LISTED} more {what}")
    hint = _prefix_hint(missing, unexpected)
    if hint:
        lines.append(f"  hint: {hint}")
    return "\n".join(lines)


def _prefix_hint(missing: list, unexpected: list) -> str:
    """Say so when the file's keys are the expected ones under an extra prefix."""
    wanted = {m.split(" ", 1)[0] for m in missing}
    for key in unexpected:
        for name in wanted:
            if key.endswith("." + name):
                return f"the file's keys carry a prefix '{key[: -len(name)]}' (e.g. '{key}' for '{name}')"
    return ""


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# ---- writing ------------------------------------------------------------------


def save_safetensors(weights: Mapping[str, np.ndarray], path: str | Path, with_other=None) -> None:
    """Save weights as a .safetensors file, atomically; with `with_other` (a function writing another
    output), the file takes its place only once that output is written (fileio.atomic_write_with)."""
    from safetensors.numpy import save_file

    from cnncomp.fileio import atomic_write_with

    arrays = {name: np.ascontiguousarray(np.asarray(a)) for name, a in weights.items()}
    if with_other is None:
        atomic_write(path, lambda tmp: save_file(arrays, tmp))
    else:
        atomic_write_with(path, lambda tmp: save_file(arrays, tmp), with_other)


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


def save_weights(weights: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Save weights in the format the name says: .safetensors, or a PyTorch state_dict (.pt, .pth); `-` is
    safetensors. Any other name is refused: `--weights` could not read it back."""
    suffix = Path(str(path)).suffix.lower()
    if str(path) == "-" or suffix == ".safetensors":
        save_safetensors(weights, path)
    elif suffix in (".pt", ".pth"):
        import torch

        state = {name: torch.from_numpy(np.ascontiguousarray(np.asarray(a))) for name, a in weights.items()}
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    else:
        raise CnnError(f"cannot tell the weights format of '{path}': name it .safetensors, or .pt/.pth for a "
                       "PyTorch state_dict (the formats --weights reads)")
