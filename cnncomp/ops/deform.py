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
"""

from __future__ import annotations


def deform_conv2d_reference(x, offsets, weight, bias, attrs: dict, mask=None):
    """Deformable 2-D convolution with bilinear sampling (torchvision.ops.deform_conv2d semantics).

    The implementation is the one `--emit torch` copies into generated files
    (torch_prelude.deform_conv2d), so the two cannot drift apart."""
    from cnncomp.ops.torch_prelude import deform_conv2d

    return deform_conv2d(x, offsets, weight, bias, attrs["stride"], attrs["pads"], attrs["dilation"],
                         attrs["groups"], attrs["offset_groups"], mask)
