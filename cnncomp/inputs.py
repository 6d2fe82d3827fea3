"""Reading input arrays (--load-inputs, --calibration, run --input) and telling files apart.

Input arrays come from a `.npz` keyed by input name, or a `.npy` holding the one input of a
single-input network. Every array must be finite: NaN or Inf in an input would make a
check or a calibration meaningless (an all-NaN calibration measures an error of 0), so it is
refused, naming the input. A file of another kind (a spec, an ONNX model, weights) is named
for what it is instead of failing inside a loader.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cnncomp.errors import CnnError
from cnncomp.fileio import note_input

SINGLE = ""  # the key of a .npy's array until it is bound to the network's one input

KINDS = {
    "npy": "a NumPy .npy array",
    "npz": "a NumPy .npz archive",
    "safetensors": "a safetensors weights file",
    "torch": "a PyTorch checkpoint",
    "onnx": "an ONNX model",
    "cnn": "a .cnn spec",
    "zip": "a zip archive",
}
_PROTOBUF_KEYS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}  # ModelProto fields 2..8, after ir_version


def file_kind(path: str | Path) -> str | None:
    """What a file holds, from its first bytes: a key of KINDS, or None when it is none of them."""
    path = Path(path)
    if not path.is_file():  # a pipe or device: reading its first bytes would consume them
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "zip"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        return "npz" if names and all(n.endswith(".npy") for n in names) else "zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:  # a pickle protocol 2..5 (torch.save, old format)
        return "torch"
    if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if path.suffix.lower() == ".onnx" or (len(head) > 3 and head[0] == 0x08 and head[1] < 0x80
                                           and head[2] in _PROTOBUF_KEYS):
        return "onnx"
    if path.suffix.lower() == ".cnn" or head.lstrip().startswith((b"network", b"#")):
        return "cnn"
    return None


def describe_kind(path: str | Path) -> str:
    """'an ONNX model', 'a .cnn spec', ... or 'a file of an unknown kind'."""
    kind = file_kind(path)
    return KINDS[kind] if kind else "a file of an unknown kind"


def refuse_kind(path: str | Path, wanted: str, accepted: tuple[str, ...]) -> None:
    """Raise 'PATH is an ONNX model, not WANTED' when the file is of a known kind not in `accepted`."""
    kind = file_kind(path)
    if kind is not None and kind not in accepted:
        raise CnnError(f"'{path}' is {KINDS[kind]}, not {wanted}")


def load_arrays(path: str | Path, what: str = "inputs") -> dict[str, np.ndarray]:
    """Arrays from a .npz (by name) or a .npy (one array, keyed SINGLE until bound); all must be finite."""
    note_input(path)
    path = Path(path)
    if path.is_dir():
        raise CnnError(f"{what} '{path}' is a folder; give a .npz keyed by input name or a .npy")
    if not path.exists():
        raise CnnError(f"{what} '{path}' does not exist")
    if path.is_block_device() or path.is_char_device() or path.is_socket():
        raise CnnError(f"{what} '{path}' is a device or socket, not a .npz or .npy file")
    refuse_kind(path, f"an inputs file for {what} (a .npz keyed by input name, or a .npy)", ("npy", "npz"))
    check_array_headers(path)
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            arrays = {SINGLE: data}
        else:
            with data:
                arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, AttributeError, zipfile.BadZipFile, EOFError) as e:
        raise CnnError(f"cannot read {path}: {e}") from None
    for name, array in arrays.items():
        check_finite(array, f"{what} '{path}'" + (f", input '{name}'" if name else ""))
    return arrays


MAX_ARRAY_BYTES = 2**34  # one input or calibration file, all arrays together (16 GiB)


def check_array_headers(path: str | Path) -> None:
    """Refuse, before reading any data, a .npy or .npz whose headers claim more than the file holds
    (a 100-byte .npy claiming 1.9e14 elements would otherwise end in a MemoryError) or, together,
    more than MAX_ARRAY_BYTES. A file that is neither is left to the loader's own error."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            with open(path, "rb") as f:
                claim = _npy_claim(f)
                claims = [(path.name, claim, path.stat().st_size - f.tell())]
        elif magic[:4] == b"PK\x03\x04":
            claims = []
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    if info.filename.endswith(".npy"):
                        with z.open(info) as member:
                            claims.append((info.filename[:-4], _npy_claim(member), info.file_size - member.tell()))
        else:
            return
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, SyntaxError) as e:
        raise CnnError(f"cannot read {path}: {e}") from None
    total = 0
    for name, (shape, nbytes), holds in claims:
        if nbytes > holds:
            raise CnnError(f"cannot read {path}: array '{name}' claims shape {list(shape)} ({nbytes:,} bytes), "
                           f"but the file holds {max(holds, 0):,} bytes of data")
        total += nbytes
    if total > MAX_ARRAY_BYTES:
        raise CnnError(f"{path}: its arrays take {total / 2**30:,.1f} GiB, over the limit of "
                       f"{MAX_ARRAY_BYTES / 2**30:,.0f} GiB for one file")


def _npy_claim(f) -> tuple[tuple, int]:
    """The shape and byte size a .npy header claims (the stream is left at the start of the data)."""
    from numpy.lib import format as npy

    version = npy.read_magic(f)
    read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
    if read is None:  # format 3.0 (utf-8 field names) has no public reader
        shape, _, dtype = npy._read_array_header(f, version)
    else:
        shape, _, dtype = read(f)
    count = 1
    for d in shape:
        count *= int(d)
    return tuple(shape), count * dtype.itemsize


def check_finite(array: np.ndarray, where: str) -> None:
    """Refuse an array holding NaN or Inf, saying how many and where."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.complexfloating):
        return
    bad = ~np.isfinite(array)
    if bad.any():
        raise CnnError(f"{where} holds non-finite values, {count_nonfinite(array)}; inputs must be finite")


def count_nonfinite(array: np.ndarray) -> str:
    """'3 NaN and 1 Inf values (first at index (0, 2))'."""
    array = np.asarray(array)
    nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    first = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0]) if nan + inf else ()
    return f"{nan} NaN and {inf} Inf values (first at index {first})"


def bind_inputs(arrays: dict[str, np.ndarray], input_names, what: str = "inputs") -> dict[str, np.ndarray]:
    """Key a .npy's array by the network's one input; a network with several inputs needs a .npz."""
    if SINGLE not in arrays:
        return arrays
    names = list(input_names)
    if len(names) != 1:
        raise CnnError(f"{what}: a .npy holds one array, but the network has {len(names)} inputs "
                       f"({', '.join(names)}); give a .npz keyed by input name")
    return {names[0]: arrays[SINGLE]}


def read_inputs(path: str | Path, input_names, what: str = "inputs") -> dict[str, np.ndarray]:
    """load_arrays, then bind_inputs."""
    return bind_inputs(load_arrays(path, what), input_names, what)


class SampleList(list):
    """Samples of different sizes for a dynamic input (calibration images at their own sizes, a .npz of
    several differently shaped arrays): one array per sample, each with its leading sample dim of 1.
    Slicing gives a SampleList and len() counts samples, as for an array; `stack_samples` makes a run's feed."""

    def __getitem__(self, index):
        item = super().__getitem__(index)
        return SampleList(item) if isinstance(index, slice) else item


def is_mixed(feeds: dict) -> bool:
    """Whether any input's samples are a SampleList (differently sized samples)."""
    return any(isinstance(v, SampleList) for v in feeds.values())


def stack_samples(samples) -> np.ndarray:
    """One array for a run: a SampleList's samples concatenated along the sample dim (they must share a size,
    as one sample always does), an array as it is."""
    return np.concatenate(samples) if isinstance(samples, SampleList) else samples


def collate(parts: list[np.ndarray]) -> np.ndarray | SampleList:
    """Per-run arrays (each with its sample dim) as one array when they share a size, else a SampleList of
    single samples."""
    if len({p.shape[1:] for p in parts}) <= 1:
        return np.concatenate(parts)
    return SampleList(p[i:i + 1] for p in parts for i in range(len(p)))


def same_size_samples(feeds: dict) -> dict:
    """Arrays as they are; of samples that differ in size (a SampleList), those of the first sample's size as one
    array (a check or a timing runs at one size)."""
    if not is_mixed(feeds):
        return feeds
    count = len(next(iter(feeds.values())))
    first = {k: v[0].shape for k, v in feeds.items()}
    keep = [i for i in range(count) if all(v[i].shape == first[k] for k, v in feeds.items())]
    return {k: np.concatenate([v[i] for i in keep]) for k, v in feeds.items()}
