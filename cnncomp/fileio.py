"""Writing files atomically: a failed write never leaves a half-written output behind."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable, Mapping

import numpy as np


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Write a file through a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def save_arrays(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Save arrays atomically: one array to .npy, otherwise (or for .npz) keyed by name to .npz."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            if str(path).endswith(".npy") and len(arrays) == 1:
                np.save(f, next(iter(arrays.values())))
            else:
                np.savez(f, **arrays)

    atomic_write(path, write)
