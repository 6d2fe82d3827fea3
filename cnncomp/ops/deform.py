"""Deformable convolution (v1) in plain PyTorch, written from the math.

For output position p = (ho, wo), kernel tap k = (i, j) and offset group g,
the tap samples the input at

    y = ho * stride_h - pad_top  + i * dilation_h + dy[g, k, ho, wo]
    x = wo * stride_w - pad_left + j * dilation_w + dx[g, k, ho, wo]

by bilinear interpolation between the four integer neighbours, a neighbour
outside the input counting as zero (so a point a full pixel or more outside
samples 0). Channels of offset group g (C / offset_groups of them) use that
group's offsets. The offsets tensor is [N, 2 * offset_groups * kh * kw, Ho, Wo],
ordered (group, tap i*kw + j, (dy, dx)), as torchvision.ops.deform_conv2d and
ONNX DeformConv read it. The sampled columns are then multiplied by the
weight [out, C / groups, kh, kw] group by group, and the bias added.

With a mask (modulated deformable convolution, DCNv2) the sample of tap k for
output position p in offset group g is multiplied by mask[g, k, ho, wo]; the
mask is [N, offset_groups * kh * kw, Ho, Wo], ordered (group, tap).

Only the end padding's size matters through Ho and Wo (taken from the
offsets), since sampling outside the input gives zeros anyway.

This is the reference's own code, written tap by tap in float64 with the
bilinear sampling spelled out: it shares nothing with the vectorized
`torch_prelude.deform_conv2d` that `--emit torch` copies into generated files,
so that tests/backends/test_deform_conv.py compares two independent
implementations (and ONNX Runtime's DeformConv as a third).
"""

from __future__ import annotations


def deform_conv2d_reference(x, offsets, weight, bias, attrs: dict, mask=None):
    """Deformable 2-D convolution with bilinear sampling (torchvision.ops.deform_conv2d semantics), computed in
    float64 and returned in x's dtype: for each kernel tap, every channel's sample at its offset group's
    displaced point, times the tap's weights."""
    import torch

    dtype = x.dtype
    x, offsets, weight = x.double(), offsets.double(), weight.double()
    n, c, h, w = x.shape
    out_c, in_per_group, kh, kw = weight.shape
    (sh, sw), (dh, dw), (pad_top, pad_left) = attrs["stride"], attrs["dilation"], attrs["pads"][:2]
    groups, taps = attrs["groups"], kh * kw
    ho, wo = offsets.shape[2:]
    group_of = torch.arange(c) // (c // attrs["offset_groups"])  # each channel's offset group
    rows = (torch.arange(ho, dtype=torch.float64) * sh - pad_top).view(1, 1, ho, 1)
    cols = (torch.arange(wo, dtype=torch.float64) * sw - pad_left).view(1, 1, 1, wo)
    out = torch.zeros(n, out_c, ho, wo, dtype=torch.float64)
    outs_per_group = out_c // groups
    for i in range(kh):
        for j in range(kw):
            tap = i * kw + j
            dy = offsets[:, 2 * (group_of * taps + tap)]  # [N, C, Ho, Wo]: channel ch reads its group's offsets
            dx = offsets[:, 2 * (group_of * taps + tap) + 1]
            sample = _bilinear(x, rows + i * dh + dy, cols + j * dw + dx)
            if mask is not None:
                sample = sample * mask.double()[:, group_of * taps + tap]
            for g in range(groups):
                ins = sample[:, g * in_per_group:(g + 1) * in_per_group]
                tap_weight = weight[g * outs_per_group:(g + 1) * outs_per_group, :, i, j]
                out[:, g * outs_per_group:(g + 1) * outs_per_group] += torch.einsum("oc,nchw->nohw", tap_weight, ins)
    if bias is not None:
        out = out + bias.double().view(1, out_c, 1, 1)
    return out.to(dtype)  # computed in float64 whatever the reference's dtype


def _bilinear(x, py, px):
    """x[n, ch] at the real points (py, px) [N, C, Ho, Wo]: the four integer neighbours weighted by their
    nearness, a neighbour outside the input counting as zero."""
    import torch

    n, c, h, w = x.shape
    batch = torch.arange(n).view(n, 1, 1, 1)
    channel = torch.arange(c).view(1, c, 1, 1)
    top, left = torch.floor(py), torch.floor(px)
    down, right = py - top, px - left  # how far past the top-left neighbour

    def pixel(yy, xx):
        inside = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
        value = x[batch, channel, yy.clamp(0, h - 1).long(), xx.clamp(0, w - 1).long()]
        return torch.where(inside, value, torch.zeros((), dtype=value.dtype))

    return (pixel(top, left) * (1 - down) * (1 - right) + pixel(top, left + 1) * (1 - down) * right
            + pixel(top + 1, left) * down * (1 - right) + pixel(top + 1, left + 1) * down * right)
