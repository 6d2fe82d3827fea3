"""Calibration data for int8: arrays from .npz / .npy files or a folder of images, checked and split.

- `.npz`: one array per network input, keyed by input name; the first dim is the sample dim.
- `.npy`: one array, for a network with a single input.
- a folder of images (`.jpg`, `.jpeg`, `.png`, `.bmp`, `.ppm`, `.webp`), read with Pillow (the optional
  `cnncomp[images]` extra) and preprocessed as `--preprocess` says:
    - `imagenet`: resize the shorter side to 256/224 of the input's height (256 for a 224 input),
      center-crop to the input's height x width, scale to [0, 1], subtract the ImageNet mean
      (0.485, 0.456, 0.406) and divide by its std (0.229, 0.224, 0.225), channels first;
    - `unit`: resize to height x width and scale to [0, 1], channels first (no normalization).
  One-channel inputs read images as grayscale (the mean/std of `imagenet` then use their averages).

Without calibration data, seeded uniform inputs in [-1, 1] stand in, with a warning that the
scales they give are not representative of real data. Empty data, missing inputs, shapes that
do not fit the input and non-finite values are CnnErrors naming the source.

The error budget is measured on held-out inputs, split as -O3 splits them (passes/budget.py's
`split_held_out`): the last quarter of the samples (at least one batch) when there are two or more,
the rest calibrate. One sample calibrates and is also measured on, with a warning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnncomp.errors import CnnError
from cnncomp.inputs import check_array_headers
from cnncomp.ir.graph import LayerGraph
from cnncomp.passes.budget import batches, split_held_out  # noqa: F401  (the one split, shared with -O3)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
PREPROCESS = ("imagenet", "unit")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SEEDED_SAMPLES = 8
NOT_REPRESENTATIVE = ("int8: no --calibration data: the activation scales come from seeded uniform inputs in "
                      "[-1, 1] and are not representative of real inputs; calibrate with real data")


def load_calibration(source, graph: LayerGraph, preprocess: str | None = None) -> dict[str, np.ndarray]:
    """Calibration samples from a path (.npz, .npy or an image folder) or a dict of arrays, checked against `graph`."""
    if isinstance(source, dict):
        return check_calibration(source, graph, "the calibration data")
    path = Path(source)
    if path.is_dir():
        return check_calibration(load_images(path, graph, preprocess or "imagenet"), graph, str(path))
    if preprocess is not None:
        raise CnnError(f"--preprocess applies to a folder of images; {path} is a file")
    if not path.exists():
        raise CnnError(f"calibration data {path} does not exist")
    if path.suffix in (".npz", ".npy"):
        check_array_headers(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, AttributeError) as e:
            raise CnnError(f"cannot read {path}: {e}") from None
        return check_calibration(arrays, graph, str(path))
    if path.suffix == ".npy":
        if len(graph.inputs) != 1:
            raise CnnError(f"{path}: a .npy file calibrates a single-input network; this one has inputs "
                           f"{', '.join(graph.inputs)} (use .npz keyed by input name)")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CnnError(f"cannot read {path}: {e}") from None
        return check_calibration({graph.inputs[0]: array}, graph, str(path))
    raise CnnError(f"calibration data {path}: expected a .npz file, a .npy file or a folder of images")


def check_calibration(feeds: dict, graph: LayerGraph, source: str) -> dict[str, np.ndarray]:
    """The arrays as float32, after checking every input is there, non-empty, finite and shaped like the input."""
    out = {}
    for name in graph.inputs:
        if name not in feeds:
            raise CnnError(f"{source}: no array for input '{name}' (it has {', '.join(feeds) or 'nothing'})")
        array = np.asarray(feeds[name])
        layer = graph.layer(name)
        if array.size == 0:
            raise CnnError(f"{source}: input '{name}' is empty (shape {list(array.shape)})")
        if not np.issubdtype(array.dtype, np.number):
            raise CnnError(f"{source}: input '{name}' holds {array.dtype}, not numbers")
        if len(array.shape) != len(layer.shape) or any(isinstance(d, int) and d != a
                                                      for d, a in zip(layer.shape[1:], array.shape[1:])):
            raise CnnError(f"{source}: input '{name}' has shape {list(array.shape)}; the network takes "
                           f"{list(layer.shape)} (samples along the first dim)")
        bad = int(np.size(array) - np.isfinite(array).sum())
        if bad:
            raise CnnError(f"{source}: input '{name}' has {bad} non-finite values (NaN or Inf)")
        out[name] = array.astype(np.float32)
    counts = {len(a) for a in out.values()}
    if len(counts) > 1:
        raise CnnError(f"{source}: the inputs have different sample counts ({sorted(counts)})")
    return out


def seeded_calibration(graph: LayerGraph, seed: int = 0, samples: int = SEEDED_SAMPLES) -> dict[str, np.ndarray]:
    """Seeded uniform samples in [-1, 1] for every input (a stand-in for real data); symbolic sizes
    at the largest default size a dynamic model is verified at."""
    from cnncomp.ops.dims import evaluate
    from cnncomp.run.sizes import verification_sizes

    rng = np.random.default_rng(seed)
    sizes = verification_sizes(graph, 1)[-1]
    out = {}
    for name in graph.inputs:
        layer = graph.layer(name)
        shape = tuple(d if isinstance(d, int) else evaluate(d, sizes) for d in layer.shape[1:])
        out[name] = rng.uniform(-1, 1, (samples,) + shape).astype(np.float32)
    return out


def fixed_batch(graph: LayerGraph) -> int | None:
    """The batch size every input fixes in its first dim, or None when the batch dim is symbolic."""
    sizes = {graph.layer(n).shape[0] for n in graph.inputs}
    return next(iter(sizes)) if len(sizes) == 1 and all(isinstance(d, int) for d in sizes) else None


def load_images(folder: Path, graph: LayerGraph, preprocess: str) -> dict[str, np.ndarray]:
    """The images of a folder (sorted by name), preprocessed into one batch for a single image input."""
    if preprocess not in PREPROCESS:
        raise CnnError(f"unknown --preprocess '{preprocess}'; choose one of {', '.join(PREPROCESS)}")
    if len(graph.inputs) != 1:
        raise CnnError(f"{folder}: a folder of images calibrates a single-input network; this one has "
                       f"{', '.join(graph.inputs)}")
    name = graph.inputs[0]
    shape = graph.layer(name).shape
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]) or shape[1] not in (1, 3):
        raise CnnError(f"{folder}: images calibrate an input shaped [N, 1 or 3, H, W]; '{name}' is {list(shape)}")
    try:
        from PIL import Image
    except ImportError:
        raise CnnError("calibrating from a folder of images needs Pillow: pip install 'cnncomp[images]' "
                       "(or pip install pillow)") from None
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CnnError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    channels, height, width = shape[1:]
    samples = []
    for path in files:
        try:
            with Image.open(path) as image:  # reads the header only: the size is checked before the pixels
                _check_pixels(path, image.size, height, width, preprocess)
                image = image.convert("L" if channels == 1 else "RGB")
                samples.append(preprocess_image(image, height, width, preprocess))
        except (OSError, Image.DecompressionBombError) as e:  # the bomb error is not an OSError
            raise CnnError(f"cannot read image {path}: {e}") from None
    return {name: np.stack(samples)}


MAX_IMAGE_PIXELS = 2**26  # per image, as decoded and as resized by --preprocess (64 Mpixels)


def _resized_size(size: tuple[int, int], height: int, width: int, preprocess: str) -> tuple[int, int]:
    """The size preprocess_image resizes an image of `size` to (before the imagenet crop)."""
    if preprocess != "imagenet":
        return width, height
    short = round(min(height, width) * 256 / 224)
    scale = short / min(size)
    return max(width, round(size[0] * scale)), max(height, round(size[1] * scale))


def _check_pixels(path, size: tuple[int, int], height: int, width: int, preprocess: str) -> None:
    """Refuse an image whose pixels, decoded or resized, are over MAX_IMAGE_PIXELS (a 100-byte 1x10000
    PNG resizes to 256x2,560,000 under imagenet: 2.9 GB)."""
    if min(size) < 1:
        raise CnnError(f"image {path} is {size[0]}x{size[1]}: it has no pixels")
    resized = _resized_size(size, height, width, preprocess)
    for what, (w, h) in (("is", size), (f"would be resized by --preprocess {preprocess} to", resized)):
        if w * h > MAX_IMAGE_PIXELS:
            raise CnnError(f"image {path} {what} {w}x{h} pixels, over the limit of {MAX_IMAGE_PIXELS:,} "
                           "per image" + ("" if what == "is" else f" (it is {size[0]}x{size[1]}: crop it to a "
                                                                   "less extreme shape)"))


def preprocess_image(image, height: int, width: int, preprocess: str) -> np.ndarray:
    """One Pillow image as a float32 [C, H, W] array (see the module docstring for the two recipes)."""
    from PIL import Image

    if preprocess == "imagenet":
        image = image.resize(_resized_size(image.size, height, width, preprocess), Image.BILINEAR)
        left, top = (image.size[0] - width) // 2, (image.size[1] - height) // 2
        image = image.crop((left, top, left + width, top + height))
    else:
        image = image.resize((width, height), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    if preprocess == "imagenet":
        mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
        if array.shape[0] == 1:
            mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
        array = (array - mean[:, None, None]) / std[:, None, None]
    return np.ascontiguousarray(array, dtype=np.float32)
