"""ONNX node patterns back to layers: one table row per pattern.

Each matcher is keyed by the op type of the pattern's last node (its anchor)
and looks back through producers that nothing else reads. It returns a
`Match` (the layer: op, language arguments, data inputs, weights, the nodes
it absorbs), or raises `Unsupported` with the reason. The importer visits
anchors last to first, so a pattern absorbs its earlier nodes before they
are visited on their own.

    Conv                                   -> conv
    ConvTranspose                          -> conv_transpose
    DeformConv                             -> deform_conv
    Gemm; MatMul(x, W) [+ Add(., b)]       -> linear
    BatchNormalization                     -> bn
    Reshape-InstanceNorm-Reshape-Mul-Add   -> gn
    MaxPool AveragePool LpPool             -> maxpool avgpool lppool (ceil mode recovered from end padding)
    a pool over the whole static input     -> gmp gap
    Neg-MaxPool-Neg                        -> minpool
    GlobalAveragePool GlobalMaxPool        -> gap gmp
    TopK-TopK-GatherElements x2            -> kmaxpool
    Flatten; Reshape to [N, -1]            -> flatten
    Reshape-Transpose(1<->2)-Reshape       -> shuffle
    Reshape-Transpose-Reshape (6-D, r)     -> pixel_shuffle / pixel_unshuffle
    DepthToSpace(CRD); SpaceToDepth (C=1)  -> pixel_shuffle / pixel_unshuffle
    Resize                                 -> upsample
    Shape-Gather/Slice-Cast-Concat-Resize  -> upsample(size=) to the symbolic dims the Shape reads
    Pad                                    -> pad
    Slice (one axis, step 1)               -> slice
    Concat Add Sum Mul                     -> concat add add mul
    Clip(0, 6) / Clip(0, inf)              -> relu6 / relu
    Sigmoid-Mul(x, .)                      -> silu
    Softplus-Tanh-Mul(x, .)                -> mish
    x*0.5*(1+erf(x/sqrt2))                 -> gelu
    Relu Sigmoid Tanh Elu LeakyRelu PRelu Selu Mish HardSigmoid HardSwish Softmax LogSoftmax Gelu Identity
                                           -> the layer of that name
"""

from cnncomp.frontend.onnx.patterns import activation, conv, layout, pool, tensor  # noqa: F401  (they fill MATCHERS)
from cnncomp.frontend.onnx.patterns.base import MATCHERS, NEAREST, Match, Unsupported  # noqa: F401
