"""Calibration data for int8: arrays from .npz / .npy files or a folder of images, checked and split.

- `.npz`: one array per network input, keyed by input name; the first dim is the sample dim.
- `.npy`: one array, for a network with a single input.
- a folder of images (`.jpg`, `.jpeg`, `.png`, `.bmp`, `.ppm`, `.webp`), read with Pillow (the optional
  `cnncomp[images]` extra) and preprocessed as `--preprocess` says:
    - `imagenet`: resize the shorter side to 256/224 of the input's height (256 for a 224 input),
      center-crop to the input's height x width, scale to [0, 1], subtract the ImageNet mean
      (0.485, 0.456, 0.406) and divide by its std (0.229, 0.224, 0.225), channels first;
    - `imagenet-keep` (a dynamic model, input [N, C, H, W]): each image at its own size, its aspect ratio
      kept: scaled down (never up) so the longer side is at most 512, each side rounded down to a size the
      input's `where` constraints allow, then normalized as `imagenet` (no crop);
    - `unit`: resize to height x width and scale to [0, 1], channels first (no normalization).
  Images of different sizes, and a `.npz` of several keys (for a one-input network: each key one sample
  [C, H, W] or batch [N, C, H, W], of any size the input takes), give a SampleList (cnncomp/inputs.py):
  one sample per calibration run, the error measured over all of them together.
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
from cnncomp.inputs import SampleList, check_array_headers, collate
from cnncomp.ir.graph import LayerGraph
from cnncomp.passes.budget import batches, split_held_out  # noqa: F401  (the one split, shared with -O3)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
PREPROCESS = ("imagenet", "imagenet-keep", "unit")
KEEP_MAX_SIDE = 512  # imagenet-keep: the longer side of an image is scaled down to this
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
        return check_calibration(samples_by_key(arrays, graph), graph, str(path))
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


def samples_by_key(arrays: dict[str, np.ndarray], graph: LayerGraph) -> dict:
    """A .npz's arrays keyed by input name as they are; for a one-input network, a .npz of several keys none of
    which is the input's name holds one sample ([C, H, W]) or batch ([N, C, H, W]) per key, of any size the
    input takes: those of one size become one array, those of several a SampleList (in the file's order)."""
    if len(graph.inputs) != 1 or len(arrays) < 2 or any(k in graph.inputs for k in arrays):
        return arrays
    name = graph.inputs[0]
    rank = len(graph.layer(name).shape)
    samples = SampleList()
    for key, array in arrays.items():
        array = np.asarray(array)
        if array.ndim == rank - 1:
            array = array[None]
        if array.ndim != rank:
            raise CnnError(f"array '{key}' has shape {list(array.shape)}; as a sample or batch of input '{name}' "
                           f"it must be [{', '.join(map(str, graph.layer(name).shape[1:]))}] or "
                           f"[{', '.join(map(str, graph.layer(name).shape))}]")
        samples.extend(array[i:i + 1] for i in range(len(array)))
    return {name: samples}


def check_calibration(feeds: dict, graph: LayerGraph, source: str) -> dict[str, np.ndarray]:
    """The arrays as float32, after checking every input is there, non-empty, finite and shaped like the input
    (differently sized samples, a SampleList, each against the input's sizes and their constraints)."""
    out = {}
    for name in graph.inputs:
        if name not in feeds:
            raise CnnError(f"{source}: no array for input '{name}' (it has {', '.join(feeds) or 'nothing'})")
        shape = graph.layer(name).shape
        if isinstance(feeds[name], SampleList):
            out[name] = _check_samples(feeds[name], shape, name, source)
        else:
            out[name] = _checked_array(feeds[name], shape, name, source)
    counts = {len(a) for a in out.values()}
    if len(counts) > 1:
        raise CnnError(f"{source}: the inputs have different sample counts ({sorted(counts)})")
    return out


def _checked_array(array, shape: tuple, name: str, source: str) -> np.ndarray:
    """One input's samples as float32, after checking they are non-empty numbers, finite and shaped like it."""
    array = np.asarray(array)
    if array.size == 0:
        raise CnnError(f"{source}: input '{name}' is empty (shape {list(array.shape)})")
    if not np.issubdtype(array.dtype, np.number):
        raise CnnError(f"{source}: input '{name}' holds {array.dtype}, not numbers")
    if len(array.shape) != len(shape) or any(isinstance(d, int) and d != a for d, a in zip(shape[1:], array.shape[1:])):
        raise CnnError(f"{source}: input '{name}' has shape {list(array.shape)}; the network takes "
                       f"{list(shape)} (samples along the first dim)")
    bad = int(np.size(array) - np.isfinite(array).sum())
    if bad:
        raise CnnError(f"{source}: input '{name}' has {bad} non-finite values (NaN or Inf)")
    return array.astype(np.float32)


def _check_samples(samples: SampleList, shape: tuple, name: str, source: str) -> np.ndarray | SampleList:
    """Each sample checked as an array is, its sizes bound against the input's symbols (a static input
    refuses another size; `where` constraints hold); one array when they all share a size."""
    from cnncomp.ops.dims import bind_symbols

    if not samples:
        raise CnnError(f"{source}: input '{name}' has no samples")
    checked = []
    for i, sample in enumerate(samples):
        where = f"{source}, sample {i}"
        one = _checked_array(sample, shape, name, where)
        try:
            bind_symbols({name: shape}, {name: one.shape}, what="input")
        except CnnError as e:
            raise CnnError(f"{where}: {e}") from None
        checked.append(one)
    return collate(checked)


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
    keep = preprocess == "imagenet-keep"
    if keep and (len(shape) != 4 or isinstance(shape[2], int) or isinstance(shape[3], int)):
        raise CnnError(f"{folder}: --preprocess imagenet-keep calibrates at each image's own size, so the input "
                       f"needs symbolic height and width ([N, C, H, W]); '{name}' is {list(shape)}: use "
                       "--preprocess imagenet")
    if len(shape) != 4 or not isinstance(shape[1], int) or shape[1] not in (1, 3) or \
            (not keep and not all(isinstance(d, int) for d in shape[2:])):
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
                if keep:
                    height, width = kept_size(image.size, shape[2], shape[3], path)
                _check_pixels(path, image.size, height, width, preprocess)
                image = image.convert("L" if channels == 1 else "RGB")
                samples.append(preprocess_image(image, height, width, preprocess)[None])
        except (OSError, Image.DecompressionBombError) as e:  # the bomb error is not an OSError
            raise CnnError(f"cannot read image {path}: {e}") from None
    return {name: collate(samples)}


def kept_size(size: tuple[int, int], height_dim, width_dim, path) -> tuple[int, int]:
    """imagenet-keep's (height, width) for an image of `size` (width, height): scaled down (never up) so its
    longer side is at most KEEP_MAX_SIDE, then each side rounded down to a size its symbol's `where`
    constraint allows (H % 8 == 0: a multiple of 8)."""
    from cnncomp.ops.dims import input_symbol

    scale = min(1.0, KEEP_MAX_SIDE / max(size))
    out = []
    for pixels, dim in ((size[1], height_dim), (size[0], width_dim)):
        _, modulus, rest = input_symbol(dim)
        side = max(1, round(pixels * scale))
        side = (side - rest) // modulus * modulus + rest
        if side < max(rest, 1):
            raise CnnError(f"image {path} is {size[0]}x{size[1]}: too small for the input's constraint "
                           f"{dim} % {modulus} == {rest}")
        out.append(side)
    return out[0], out[1]


MAX_IMAGE_PIXELS = 2**26  # per image, as decoded and as resized by --preprocess (64 Mpixels)


def _resized_size(size: tuple[int, int], height: int, width: int, preprocess: str) -> tuple[int, int]:
    """The size preprocess_image resizes an image of `size` to (before the imagenet crop)."""
    if preprocess != "imagenet":  # unit and imagenet-keep resize to the size asked
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
    if preprocess in ("imagenet", "imagenet-keep"):
        mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
        if array.shape[0] == 1:
            mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
        array = (array - mean[:, None, None]) / std[:, None, None]
    return np.ascontiguousarray(array, dtype=np.float32)
