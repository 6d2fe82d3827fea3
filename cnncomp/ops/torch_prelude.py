"""The helpers a generated PyTorch file may contain (`--emit torch`).

This module is real Python, so it is linted and imported like any other, but its main use is as
text: cnncomp/emit/torch/ copies the sections a network needs into the file it writes (read
through cnncomp.ops.torch_source.prelude_sections(); the ops' torch_source facets name them).
Each section starts with a `# @ NAME: DEPENDENCIES` line. The sections mirror the op registry's
shape rules (normalize/infer_shape) and PyTorch references (torch_ref); tests/test_torch_emit.py
checks that generated files match the reference.

About 650 lines, over the ~500 guide: one section per op that needs a helper, each short; the
file is the prelude's single source, so splitting it would only add a loader over several files.
"""
# ruff: noqa: E501

import math

import torch
import torch.nn.functional as F
from torch import nn

# @ Modules
class Modules(nn.Module):
    """Submodules named like the spec's layers: `m[0]` is the child "0", `m["b1"]` the child "b1".

    Unlike nn.Sequential, numbers may be skipped (a weight-free layer takes a number but
    holds no module), and there is no forward: the owner calls the children.
    """

    def __getitem__(self, name):
        return self._modules[str(name)]

    def __setitem__(self, name, module):
        self.add_module(str(name), module)

# @ ntuple
def ntuple(value, rank):
    """One value per spatial dim: a number repeated, or a tuple of `rank` values."""
    if isinstance(value, tuple):
        if len(value) != rank:
            raise ValueError(f"{value} has {len(value)} values, expected {rank} (one per spatial dim)")
        return value
    return (value,) * rank

# @ spatial_pads: ntuple
def spatial_pads(p, kernel, stride, dilation, spatial):
    """Padding as (begin_0, ..., begin_r, end_0, ..., end_r): from an int, one int per spatial
    dim, begins then ends, or "same" (keeps ceil(n / s) outputs; an odd total puts the extra
    row or column first, at the top and left)."""
    rank = len(kernel)
    if p == "same":
        begins, ends = [], []
        for n, k, s, d in zip(spatial, kernel, stride, dilation):
            eff = d * (k - 1) + 1
            if isinstance(n, str):  # a symbolic size (a multiple of s where s > 1: the compiler checked)
                total = max(eff - s, 0)
            else:
                total = max((-(-n // s) - 1) * s + eff - n, 0)
            begins.append((total + 1) // 2)
            ends.append(total // 2)
        return tuple(begins) + tuple(ends)
    if isinstance(p, tuple) and len(p) == 2 * rank:
        return p
    p = ntuple(p, rank)
    return p + p

# @ torch_pads
def torch_pads(pads):
    """(begin_0, ..., begin_r, end_0, ..., end_r) in F.pad's order: the last dim first."""
    rank = len(pads) // 2
    return [v for i in reversed(range(rank)) for v in (pads[i], pads[i + rank])]

# @ window_size
def window_size(n, k, s, begin, end, d=1, ceil=False):
    """Outputs of a sliding window over n positions, counted as PyTorch does (ceil mode drops
    a last window that would start in the end padding); a symbolic size stays symbolic."""
    eff = d * (k - 1) + 1
    if isinstance(n, str):
        if s == 1 and begin + end == eff - 1:
            return n
        rounding = "ceil" if ceil else "floor"
        return f"{rounding}(({n} + {begin + end - eff}) / {s}) + 1"
    span = n + begin + end - eff
    if span < 0:
        raise ValueError(f"kernel {k} is larger than the padded input size {n + begin + end}")
    if not ceil:
        return span // s + 1
    out = -(-span // s) + 1
    return out - 1 if (out - 1) * s >= n + begin else out

# @ shape_pool: ntuple, spatial_pads, window_size
def shape_pool(shape, k, s=None, p=0, d=1, ceil=False):
    """The output shape of maxpool, avgpool, minpool and lppool (s defaults to k)."""
    rank = len(shape) - 2
    k, d = ntuple(k, rank), ntuple(d, rank)
    s = k if s is None else ntuple(s, rank)
    pads = spatial_pads(p, k, s, d, shape[2:])
    sizes = (window_size(n, k[i], s[i], pads[i], pads[i + rank], d[i], ceil) for i, n in enumerate(shape[2:]))
    return tuple(shape[:2]) + tuple(sizes)

# @ end_pads: shape_pool
def end_pads(shape, k, s, pads, d, ceil):
    """End padding plus what ceil mode needs so that the last window fits."""
    rank = len(k)
    out = shape_pool(shape, k, s, pads, d, ceil)[2:]
    ends = []
    for i, n in enumerate(shape[2:]):
        need = (out[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1
        ends.append(pads[rank + i] + max(need - (n + pads[i] + pads[rank + i]), 0))
    return tuple(ends)

# @ shape_global_pool
def shape_global_pool(shape):
    """The output shape of gap and gmp: 1 per spatial dim."""
    return tuple(shape[:2]) + (1,) * (len(shape) - 2)

# @ dims_product: math
def dims_product(dims):
    """The product of dims; with a symbolic dim, the product's expression as text."""
    if all(isinstance(d, int) for d in dims):
        return math.prod(dims)
    if len(dims) == 1:
        return dims[0]
    return "*".join(str(d) for d in dims)

# @ shape_flatten: dims_product
def shape_flatten(shape, axis=1, keep_leading=False):
    """The output shape of flatten: the dims before axis in one (or kept as they are, with keep_leading),
    the dims from it in another."""
    if axis < 0:
        axis += len(shape)
    if keep_leading:
        return tuple(shape[:axis]) + (dims_product(shape[axis:]),)
    return (dims_product(shape[:axis]), dims_product(shape[axis:]))

# @ shape_slice
def shape_slice(shape, start, end, axis=1, step=1):
    """The output shape of slice: every step-th of the end - start positions along axis."""
    axis %= len(shape)  # a negative axis counts from the back
    return tuple(shape[:axis]) + (-(-(end - start) // step),) + tuple(shape[axis + 1 :])

# @ slice_steps
def slice_steps(x, start, end, axis, step):
    """`slice` with a step along an axis given by a parameter."""
    index = [slice(None)] * x.dim()
    index[axis] = slice(start, end, step)
    return x[tuple(index)]

# @ shape_pad: spatial_pads
def shape_pad(shape, p, mode="constant", value=0.0):
    """The output shape of pad."""
    rank = len(shape) - 2
    pads = spatial_pads(p, (1,) * rank, (1,) * rank, (1,) * rank, shape[2:])
    sizes = (f"{n} + {pads[i] + pads[i + rank]}" if isinstance(n, str) and pads[i] + pads[i + rank]
             else n if isinstance(n, str) else n + pads[i] + pads[i + rank] for i, n in enumerate(shape[2:]))
    return tuple(shape[:2]) + tuple(sizes)

# @ shape_upsample: ntuple, math
def shape_upsample(shape, scale=None, mode="nearest", size=None, align_corners=False, coordinates=None,
                   rounding=None):
    """The output shape of upsample: `size`, or floor(n * scale)."""
    if size is not None:
        return tuple(shape[:2]) + ntuple(size, len(shape) - 2)
    scale = ntuple(2 if scale is None else scale, len(shape) - 2)
    return tuple(shape[:2]) + tuple(f"floor({n} * {f})" if isinstance(n, str) else math.floor(n * f)
                                    for n, f in zip(shape[2:], scale))

# @ shape_pixel_shuffle
def shape_pixel_shuffle(shape, r):
    """The output shape of pixel_shuffle: r*r channels into an r x r block."""
    return (shape[0], shape[1] // (r * r)) + tuple(f"{r}*{n}" if isinstance(n, str) else n * r for n in shape[2:])

# @ shape_pixel_unshuffle
def shape_pixel_unshuffle(shape, r):
    """The output shape of pixel_unshuffle: each r x r block into r*r channels."""
    return (shape[0], shape[1] * r * r) + tuple(f"{n} / {r}" if isinstance(n, str) else n // r for n in shape[2:])

# @ shape_concat
def shape_concat(shapes, axis=1):
    """The output shape of concat: the sizes along axis add up."""
    axis %= len(shapes[0])
    out = list(shapes[0])
    sizes = [s[axis] for s in shapes]
    out[axis] = sum(sizes) if all(isinstance(n, int) for n in sizes) else " + ".join(str(n) for n in sizes)
    return tuple(out)

# @ shape_broadcast
def shape_broadcast(*shapes):
    """The output shape of an element-wise add or mul: a dim of 1 takes the other's size."""
    out = list(shapes[0])
    for shape in shapes[1:]:
        for i, n in enumerate(shape):
            if out[i] == 1:
                out[i] = n
    return tuple(out)

# @ div
def div(a, b):
    """The language's `/`: exact on ints (an int result), float division otherwise."""
    if isinstance(a, int) and isinstance(b, int):
        if a % b:
            raise ValueError(f"{a} / {b} does not divide exactly: use // for integer division")
        return a // b
    return a / b

# @ conv: ntuple, spatial_pads, torch_pads, window_size
class PadFirst:
    """Mixin for nn.Conv1d/2d/3d: F.pad (`self.pad_first`, in F.pad's order), then convolve
    without padding; for asymmetric padding, as `p=same` with an even kernel gives."""

    def forward(self, x):
        return super().forward(F.pad(x, self.pad_first))


class PaddedConv1d(PadFirst, nn.Conv1d):
    pass


class PaddedConv2d(PadFirst, nn.Conv2d):
    pass


class PaddedConv3d(PadFirst, nn.Conv3d):
    pass


CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
PADDED_CONVS = {1: PaddedConv1d, 2: PaddedConv2d, 3: PaddedConv3d}


def conv(in_shape, out, k, s=1, p=0, d=1, g=1, bias=True):
    """`conv`: an nn.Conv1d/2d/3d (by the input's rank) for inputs of `in_shape`."""
    rank = len(in_shape) - 2
    k, s, d = ntuple(k, rank), ntuple(s, rank), ntuple(d, rank)
    pads = spatial_pads(p, k, s, d, in_shape[2:])
    if pads[:rank] == pads[rank:]:
        module = CONVS[rank](in_shape[1], out, k, s, pads[:rank], d, g, bias)
    else:
        module = PADDED_CONVS[rank](in_shape[1], out, k, s, 0, d, g, bias)
        module.pad_first = torch_pads(pads)
    sizes = (window_size(n, k[i], s[i], pads[i], pads[i + rank], d[i]) for i, n in enumerate(in_shape[2:]))
    module.out_shape = (in_shape[0], out) + tuple(sizes)
    return module

# @ conv_transpose: ntuple
class CropAfter:
    """Mixin for nn.ConvTranspose1d/2d/3d: crop `self.crop` (begin, end per spatial dim) off the
    output; for asymmetric padding, which nn.ConvTranspose cannot express."""

    def forward(self, x):
        y = super().forward(x)
        for i, (begin, end) in enumerate(self.crop):
            y = y.narrow(2 + i, begin, y.shape[2 + i] - begin - end)
        return y


class CroppedConvTranspose1d(CropAfter, nn.ConvTranspose1d):
    pass


class CroppedConvTranspose2d(CropAfter, nn.ConvTranspose2d):
    pass


class CroppedConvTranspose3d(CropAfter, nn.ConvTranspose3d):
    pass


CONV_TRANSPOSES = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
CROPPED_CONV_TRANSPOSES = {1: CroppedConvTranspose1d, 2: CroppedConvTranspose2d, 3: CroppedConvTranspose3d}


def conv_transpose(in_shape, out, k, s=1, p=0, output_padding=0, d=1, g=1, bias=True):
    """`conv_transpose`: an nn.ConvTranspose1d/2d/3d (by the input's rank) for inputs of `in_shape`."""
    rank = len(in_shape) - 2
    k, s, d, extra = ntuple(k, rank), ntuple(s, rank), ntuple(d, rank), ntuple(output_padding, rank)
    pads = p if isinstance(p, tuple) and len(p) == 2 * rank else ntuple(p, rank) * 2
    common = tuple(min(pads[i], pads[i + rank]) for i in range(rank))
    crop = tuple((pads[i] - common[i], pads[i + rank] - common[i]) for i in range(rank))
    cls = CONV_TRANSPOSES[rank] if not any(map(any, crop)) else CROPPED_CONV_TRANSPOSES[rank]
    module = cls(in_shape[1], out, k, s, common, extra, g, bias, d)
    module.crop = crop
    grow = [d[i] * (k[i] - 1) + extra[i] + 1 - s[i] - pads[i] - pads[i + rank] for i in range(rank)]
    sizes = (f"{s[i]}*{n} + {grow[i]}" if isinstance(n, str) else n * s[i] + grow[i]
             for i, n in enumerate(in_shape[2:]))
    module.out_shape = (in_shape[0], out) + tuple(sizes)
    return module

# @ deform_conv2d
def deform_conv2d(x, offsets, weight, bias, stride, pads, dilation, groups, offset_groups, mask=None):
    """Deformable 2-D convolution (v1) with bilinear sampling, torchvision.ops.deform_conv2d's
    semantics: tap (i, j) of output position (ho, wo) samples the input at
    (ho * sh - pad_top + i * dh + dy, wo * sw - pad_left + j * dw + dx), a neighbour outside
    the input counting as zero; offsets are [N, 2 * offset_groups * kh * kw, Ho, Wo], ordered
    (group, tap, (dy, dx)). A mask [N, offset_groups * kh * kw, Ho, Wo] (DCNv2) scales each
    tap's sample."""
    n, c, h, w = x.shape
    out_c, cin_g, kh, kw = weight.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pl = pads[0], pads[1]
    og = offset_groups
    ho, wo = offsets.shape[2:]
    taps = kh * kw
    dtype, device = x.dtype, x.device

    off = offsets.reshape(n, og, taps, 2, ho, wo)
    tap_y = (torch.arange(kh, dtype=dtype, device=device) * dh).repeat_interleave(kw)
    tap_x = (torch.arange(kw, dtype=dtype, device=device) * dw).repeat(kh)
    base_y = torch.arange(ho, dtype=dtype, device=device) * sh - pt
    base_x = torch.arange(wo, dtype=dtype, device=device) * sw - pl
    py = base_y.view(1, 1, 1, ho, 1) + tap_y.view(1, 1, taps, 1, 1) + off[:, :, :, 0]
    px = base_x.view(1, 1, 1, 1, wo) + tap_x.view(1, 1, taps, 1, 1) + off[:, :, :, 1]

    y0, x0 = torch.floor(py), torch.floor(px)
    ly, lx = py - y0, px - x0
    y0, x0 = y0.long(), x0.long()
    planes = x.reshape(n, og, c // og, h * w)

    def corner(yi, xi):
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).reshape(n, og, 1, -1)
        values = torch.gather(planes, 3, index.expand(n, og, c // og, index.shape[-1]))
        return values * inside.reshape(n, og, 1, -1).to(dtype)

    def flat(t):
        return t.reshape(n, og, 1, -1)

    sampled = (
        corner(y0, x0) * flat((1 - ly) * (1 - lx))
        + corner(y0, x0 + 1) * flat((1 - ly) * lx)
        + corner(y0 + 1, x0) * flat(ly * (1 - lx))
        + corner(y0 + 1, x0 + 1) * flat(ly * lx)
    )
    if mask is not None:
        sampled = sampled * mask.reshape(n, og, 1, -1)
    cols = sampled.reshape(n, c, taps, ho * wo).reshape(n, groups, cin_g * taps, ho * wo)
    kernel = weight.reshape(groups, out_c // groups, cin_g * taps)
    out = torch.einsum("gok,ngkl->ngol", kernel, cols).reshape(n, out_c, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out

# @ deform_conv: ntuple, spatial_pads, window_size, deform_conv2d, math
class DeformConv2d(nn.Module):
    """Deformable convolution: weight [out, C / g, kh, kw] and bias [out], as nn.Conv2d holds them."""

    def __init__(self, in_channels, out, kernel, stride, pads, dilation, groups, offset_groups, bias):
        super().__init__()
        self.stride, self.pads, self.dilation = stride, pads, dilation
        self.groups, self.offset_groups = groups, offset_groups
        self.weight = nn.Parameter(torch.empty(out, in_channels // groups, *kernel))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's initialization
        if bias:
            bound = 1 / math.sqrt(self.weight[0].numel())
            self.bias = nn.Parameter(torch.empty(out).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)

    def forward(self, x, offsets, mask=None):
        return deform_conv2d(
            x, offsets, self.weight, self.bias, self.stride, self.pads, self.dilation, self.groups, self.offset_groups,
            mask,
        )


def deform_conv(in_shape, offsets_shape, out, k, s=1, p=0, d=1, g=1, bias=True, offset_groups=1):
    """`deform_conv`: a DeformConv2d for inputs of `in_shape` (and offsets of `offsets_shape`)."""
    k, s, d = ntuple(k, 2), ntuple(s, 2), ntuple(d, 2)
    pads = spatial_pads(p, k, s, d, in_shape[2:])
    module = DeformConv2d(in_shape[1], out, k, s, pads, d, g, offset_groups, bias)
    sizes = (window_size(n, k[i], s[i], pads[i], pads[i + 2], d[i]) for i, n in enumerate(in_shape[2:]))
    module.out_shape = (in_shape[0], out) + tuple(sizes)
    return module

# @ bn
def bn(in_shape, eps=1e-5):
    """`bn`: an nn.BatchNorm1d/2d/3d over the channels (see count_from_zero)."""
    norm = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[len(in_shape)]
    module = norm(in_shape[1], eps=eps)
    module.register_load_state_dict_pre_hook(count_from_zero)
    module.out_shape = tuple(in_shape)
    return module


def count_from_zero(module, state_dict, prefix, *args):
    """Batch norm's num_batches_tracked is not among the spec's weights: a state dict without
    it (cnncomp's weights) loads with strict=True, and the count starts at 0."""
    state_dict.setdefault(prefix + "num_batches_tracked", torch.tensor(0))

# @ gn
def gn(in_shape, groups, eps=1e-5):
    """`gn`: an nn.GroupNorm over the channels."""
    module = nn.GroupNorm(groups, in_shape[1], eps)
    module.out_shape = tuple(in_shape)
    return module

# @ linear
def linear(in_shape, out, bias=True):
    """`linear`: an nn.Linear on the last dim."""
    module = nn.Linear(in_shape[-1], out, bias)
    module.out_shape = tuple(in_shape[:-1]) + (out,)
    return module

# @ prelu
class ShapedPReLU(nn.Module):
    """PReLU whose slope has any shape that broadcasts against the input without its batch."""

    def __init__(self, shape):
        super().__init__()
        self.weight = nn.Parameter(torch.full(tuple(shape), 0.25))

    def forward(self, x):
        return torch.where(x >= 0, x, x * self.weight)


def prelu(in_shape, shared=False, shape=None):
    """`prelu`: an nn.PReLU with one slope per channel (one in all if shared), or slopes of `shape`."""
    if shape is not None:
        module = ShapedPReLU(shape if isinstance(shape, tuple) else (shape,))
    else:
        module = nn.PReLU(1 if shared else in_shape[1])
    module.out_shape = tuple(in_shape)
    return module

# @ maxpool: ntuple, spatial_pads, torch_pads, end_pads, math
def maxpool(x, k, s=None, p=0, ceil=False, d=1):
    """`maxpool`: F.max_pool1d/2d/3d; asymmetric padding, or more than half the kernel, is
    -inf padding (by as much as ceil mode needs) before pooling in floor mode."""
    rank = x.dim() - 2
    k, d = ntuple(k, rank), ntuple(d, rank)
    s = k if s is None else ntuple(s, rank)
    pads = spatial_pads(p, k, s, d, tuple(x.shape[2:]))
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[rank - 1]
    if pads[:rank] == pads[rank:] and all(2 * q <= n for q, n in zip(pads[:rank], k)):
        return pool(x, k, s, pads[:rank], d, ceil_mode=ceil)
    ends = end_pads(tuple(x.shape), k, s, pads, d, ceil)
    x = F.pad(x, torch_pads(tuple(pads[:rank]) + ends), value=-math.inf)
    return pool(x, k, s, 0, d)

# @ minpool: maxpool
def minpool(x, k, s=None, p=0):
    """`minpool`: -maxpool(-x)."""
    return -maxpool(-x, k, s, p)

# @ sum_pool
def sum_pool(x, k, s, d=1):
    """The sum over each window (no padding): a grouped convolution with ones."""
    c = x.shape[1]
    ones = torch.ones((c, 1) + tuple(k), dtype=x.dtype, device=x.device)
    return (F.conv1d, F.conv2d, F.conv3d)[len(k) - 1](x, ones, None, tuple(s), 0, d, c)

# @ avgpool: ntuple, spatial_pads, torch_pads, end_pads, sum_pool
def avgpool(x, k, s=None, p=0, ceil=False, count_pad=False, d=1):
    """`avgpool`: F.avg_pool1d/2d/3d. The divisor counts the window's positions inside the
    input (and inside the padding with count_pad, never the extra end ceil mode adds)."""
    rank = x.dim() - 2
    k, d = ntuple(k, rank), ntuple(d, rank)
    s = k if s is None else ntuple(s, rank)
    ones = d
    pads = spatial_pads(p, k, s, ones, tuple(x.shape[2:]))
    if pads[:rank] == pads[rank:] and d == (1,) * rank:
        return (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1](x, k, s, pads[:rank], ceil, count_pad)
    # Asymmetric padding or dilation: a sum over each window divided by the positions it covers.
    padded = torch_pads(tuple(pads[:rank]) + end_pads(tuple(x.shape), k, s, pads, ones, ceil))
    mask = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
    if count_pad:
        mask = F.pad(mask, torch_pads(pads), value=1.0)
        mask = F.pad(mask, [b - a for a, b in zip(torch_pads(pads), padded)])
    else:
        mask = F.pad(mask, padded)
    return sum_pool(F.pad(x, padded), k, s, d) / sum_pool(mask, k, s, d)

# @ lppool: ntuple, spatial_pads, torch_pads, end_pads, sum_pool
def lppool(x, k, s=None, norm=2, p=0, d=1, ceil=False):
    """`lppool`: (sum of |x|^norm)^(1 / norm) over each window; padding adds zeros."""
    rank = x.dim() - 2
    k, d = ntuple(k, rank), ntuple(d, rank)
    s = k if s is None else ntuple(s, rank)
    pads = spatial_pads(p, k, s, d, tuple(x.shape[2:]))
    padded = torch_pads(tuple(pads[:rank]) + end_pads(tuple(x.shape), k, s, pads, d, ceil))
    return sum_pool(F.pad(x.abs() ** norm, padded), k, s, d) ** (1.0 / norm)

# @ gap
def gap(x):
    """`gap`: the mean over the spatial dims, each kept as size 1."""
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)

# @ gmp
def gmp(x):
    """`gmp`: the maximum over the spatial dims, each kept as size 1."""
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)

# @ kmaxpool
def kmaxpool(x, k):
    """`kmaxpool`: the k largest values along the last axis, in their original order."""
    # equal values: the lower position wins (as ONNX TopK; torch.topk leaves ties open)
    index = torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :k].sort(dim=-1).values
    return torch.gather(x, -1, index)

# @ flatten: math
def flatten(x, axis=1, keep_leading=False):
    """`flatten`: a 2-D tensor, the dims before axis in one and the dims from it in the other
    (a negative axis counts from the end, as in ONNX: -1 keeps the last dim apart); with keep_leading
    the dims before axis stay as they are (torch.flatten(x, axis))."""
    if axis < 0:
        axis += x.dim()
    if keep_leading:
        return x.reshape(*x.shape[:axis], -1)
    return x.reshape(math.prod(x.shape[:axis]), -1)

# @ shuffle
def shuffle(x, groups):
    """`shuffle`: the channels viewed as [groups, C / groups] and transposed (ShuffleNet)."""
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)

# @ resample: math
def resample(x, mode, coordinates, rounding=None, size=None, scale_factor=None):
    """`upsample` with one of ONNX Resize's coordinate rules (`coordinates`), one spatial axis after
    another: output position i reads the input at coordinate c(i), with r = 1 / scale (n_in / n_out
    when a size is given), in double precision as ONNX's reference implementation computes it.
    Mode "nearest" takes the index `rounding` gives (ONNX's nearest_mode), "linear" interpolates
    between floor(c) and floor(c) + 1; indices past the border repeat it. Where the output has the
    input's shape, nothing moves (ONNX Runtime copies the input then, whatever the rule)."""
    sizes = [n for n in x.shape[2:]]
    outs = list(size) if size is not None else [math.floor(n * f) for n, f in zip(sizes, scale_factor)]
    if outs == sizes:
        return x
    for i, (n, out) in enumerate(zip(sizes, outs)):
        axis = 2 + i
        r = n / out if size is not None else 1 / scale_factor[i]
        pos = torch.arange(out, dtype=torch.float64, device=x.device)
        if coordinates == "asymmetric":
            c = pos * r
        elif coordinates == "pytorch_half_pixel" and out == 1:
            c = torch.zeros_like(pos)
        elif coordinates == "half_pixel_symmetric":  # centred when n / r is not a whole number
            c = (n / 2) * (1 - out * r / n) + (pos + 0.5) * r - 0.5
        else:  # half_pixel, pytorch_half_pixel
            c = (pos + 0.5) * r - 0.5
        view = [1] * x.dim()
        view[axis] = out
        if mode == "nearest":
            index = {"floor": torch.floor(c), "ceil": torch.ceil(c), "round_prefer_floor": torch.ceil(c - 0.5),
                     "round_prefer_ceil": torch.floor(c + 0.5)}[rounding]
            x = x.index_select(axis, index.clamp(0, n - 1).long())
        else:
            c = c.clamp(0, n - 1)
            low = torch.floor(c)
            frac = (c - low).to(x.dtype).reshape(view)
            first = x.index_select(axis, low.long())
            second = x.index_select(axis, (low + 1).clamp(max=n - 1).long())
            x = first * (1 - frac) + second * frac
    return x

# @ upsample: ntuple, resample
def upsample(x, scale=None, mode="nearest", size=None, align_corners=False, coordinates=None, rounding=None):
    """`upsample`: F.interpolate to `size` or by `scale`: nearest, nearest-exact, (bi/tri)linear or bicubic;
    with `coordinates`, ONNX Resize's coordinate rule of that name (see resample)."""
    rank = x.dim() - 2
    if size is not None:
        where = {"size": ntuple(size, rank)}
    else:
        where = {"scale_factor": tuple(float(f) for f in ntuple(2 if scale is None else scale, rank))}
    if coordinates is not None:
        return resample(x, mode, coordinates, rounding or "round_prefer_floor", **where)
    if mode in ("nearest", "nearest-exact"):
        return F.interpolate(x, mode=mode, **where)
    mode = {"linear": ("linear", "bilinear", "trilinear")[rank - 1], "cubic": "bicubic"}[mode]
    return F.interpolate(x, mode=mode, align_corners=align_corners, **where)

# @ pad: spatial_pads, torch_pads
def pad(x, p, mode="constant", value=0.0):
    """`pad`: padding of the spatial dims, F.pad's modes (constant, reflect, replicate, circular)."""
    rank = x.dim() - 2
    pads = spatial_pads(p, (1,) * rank, (1,) * rank, (1,) * rank, tuple(x.shape[2:]))
    if mode != "constant":
        return F.pad(x, torch_pads(pads), mode=mode)
    return F.pad(x, torch_pads(pads), value=float(value))

# @ hardsigmoid
def hardsigmoid(x, alpha=1 / 6, beta=0.5):
    """`hardsigmoid` with its own slope and offset: clip(alpha * x + beta, 0, 1)."""
    return torch.clamp(x * alpha + beta, 0.0, 1.0)

# @ shape_reduce
def shape_reduce(shape, axes=(2, 3), keepdims=False):
    """The output shape of mean and sum: the axes kept as 1 (keepdims) or dropped."""
    axes = {a % len(shape) for a in (axes if isinstance(axes, tuple) else (axes,))}
    if keepdims:
        return tuple(1 if i in axes else n for i, n in enumerate(shape))
    return tuple(n for i, n in enumerate(shape) if i not in axes)

# @ shape_permute
def shape_permute(shape, dims):
    """The output shape of permute."""
    return tuple(shape[d] for d in dims)

# @ shape_split
def shape_split(shape, sizes, axis=1, part=0):
    """The output shape of one part of split."""
    axis %= len(shape)
    return tuple(shape[:axis]) + (sizes[part],) + tuple(shape[axis + 1 :])

# @ split_part
def split_part(x, sizes, axis=1, part=0):
    """`split`: part `part` of x cut along axis into pieces of `sizes`."""
    return torch.split(x, list(sizes), dim=axis)[part]

# @ layer_norm
class LayerNorm(nn.Module):
    """Layer norm over `axes` (any axes after the batch: 1 is ConvNeXt's LayerNorm2d, trailing axes
    nn.LayerNorm); weight and bias have the normalized shape."""

    def __init__(self, in_shape, axes, eps):
        super().__init__()
        self.axes = tuple(sorted(a % len(in_shape) for a in axes))
        self.eps = eps
        normalized = tuple(in_shape[a] for a in self.axes)
        self.weight = nn.Parameter(torch.ones(normalized))
        self.bias = nn.Parameter(torch.zeros(normalized))
        self.view = tuple(n if i in self.axes else 1 for i, n in enumerate(in_shape) if i > 0)
        self.out_shape = tuple(in_shape)

    def forward(self, x):
        mean = x.mean(dim=self.axes, keepdim=True)
        var = (x - mean).square().mean(dim=self.axes, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight.reshape(self.view) + self.bias.reshape(self.view)


def layer_norm(in_shape, axes=1, eps=1e-5):
    """`layer_norm`: a LayerNorm over `axes` for inputs of `in_shape`."""
    return LayerNorm(in_shape, axes if isinstance(axes, tuple) else (axes,), eps)

# @ channel_vector
class ChannelVector(nn.Module):
    """A learned vector per channel (axis 1), multiplied in (`scale`, its weight) or added (`shift`, its bias)."""

    def __init__(self, in_shape, name, fill, combine):
        super().__init__()
        self.register_parameter(name, nn.Parameter(torch.full((in_shape[1],), fill)))
        self.vector_name, self.combine = name, combine
        self.out_shape = tuple(in_shape)

    def forward(self, x):
        return self.combine(x, getattr(self, self.vector_name).reshape((-1,) + (1,) * (x.dim() - 2)))

# @ scale: channel_vector
def scale(in_shape):
    """`scale`: x times a learned weight per channel."""
    return ChannelVector(in_shape, "weight", 1.0, torch.mul)

# @ shift: channel_vector
def shift(in_shape):
    """`shift`: x plus a learned bias per channel."""
    return ChannelVector(in_shape, "bias", 0.0, torch.add)
