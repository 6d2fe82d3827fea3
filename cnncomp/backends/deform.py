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

Only the end padding's size matters through Ho and Wo (taken from the
offsets), since sampling outside the input gives zeros anyway.
"""

from __future__ import annotations


def deform_conv2d_reference(x, offsets, weight, bias, attrs: dict):
    """Deformable 2-D convolution with bilinear sampling (torchvision.ops.deform_conv2d semantics)."""
    import torch

    n, c, h, w = x.shape
    out_c, cin_g, kh, kw = weight.shape
    sh, sw = attrs["stride"]
    dh, dw = attrs["dilation"]
    pt, pl = attrs["pads"][0], attrs["pads"][1]
    groups, og = attrs["groups"], attrs["offset_groups"]
    ho, wo = offsets.shape[2:]
    taps = kh * kw
    dtype, device = x.dtype, x.device

    off = offsets.reshape(n, og, taps, 2, ho, wo)
    tap_y = (torch.arange(kh, dtype=dtype, device=device) * dh).repeat_interleave(kw)
    tap_x = (torch.arange(kw, dtype=dtype, device=device) * dw).repeat(kh)
    base_y = torch.arange(ho, dtype=dtype, device=device) * sh - pt
    base_x = torch.arange(wo, dtype=dtype, device=device) * sw - pl
    py = base_y.view(1, 1, 1, ho, 1) + tap_y.view(1, 1, taps, 1, 1) + off[:, :, :, 0]  # [n, og, taps, ho, wo]
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

    sampled = (corner(y0, x0) * flat((1 - ly) * (1 - lx)) + corner(y0, x0 + 1) * flat((1 - ly) * lx)
               + corner(y0 + 1, x0) * flat(ly * (1 - lx)) + corner(y0 + 1, x0 + 1) * flat(ly * lx))
    # [n, og, c/og, taps*ho*wo] -> columns [n, groups, (c/groups)*taps, ho*wo]
    cols = sampled.reshape(n, c, taps, ho * wo).reshape(n, groups, cin_g * taps, ho * wo)
    kernel = weight.reshape(groups, out_c // groups, cin_g * taps)
    out = torch.einsum("gok,ngkl->ngol", kernel, cols).reshape(n, out_c, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out
