"""Hand-written PyTorch copies of the decoder and segmentation networks bundled as specs.

Plain torch.nn, independent of cnncomp, written after the originals so that module names, and
hence state_dict keys, are theirs:

- `unet`: milesial/Pytorch-UNet's UNet (bilinear=False): DoubleConv, Down, Up, OutConv;
- `espcn`: pytorch/examples' super_resolution Net (ESPCN, Shi et al. 2016);
- `deeplabv3_resnet50`: torchvision.models.segmentation.deeplabv3_resnet50 (aux_loss=True):
  resnet50 with replace_stride_with_dilation=[False, True, True] (torchvision/models/resnet.py),
  DeepLabHead with ASPP (torchvision/models/segmentation/deeplabv3.py), FCNHead (fcn.py).

The builders return eval-mode models, seeded, with non-trivial batch norms
(torchvision_models.randomize).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchvision_models import randomize

# ---- U-Net (milesial/Pytorch-UNet, unet/unet_parts.py and unet_model.py) -------------------------


class DoubleConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True))

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        dy, dx = x2.size(2) - x1.size(2), x2.size(3) - x1.size(3)
        x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class UNet(nn.Module):
    def __init__(self, n_channels: int = 3, n_classes: int = 2):
        super().__init__()
        self.inc = DoubleConv(n_channels, 64)
        self.down1, self.down2, self.down3, self.down4 = Down(64, 128), Down(128, 256), Down(256, 512), Down(512, 1024)
        self.up1, self.up2, self.up3, self.up4 = Up(1024, 512), Up(512, 256), Up(256, 128), Up(128, 64)
        self.outc = nn.Module()
        self.outc.conv = nn.Conv2d(64, n_classes, kernel_size=1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up4(self.up3(self.up2(self.up1(x5, x4), x3), x2), x1)
        return self.outc.conv(x)


# ---- ESPCN (pytorch/examples, super_resolution/model.py) -------------------------------------------


class ESPCN(nn.Module):
    def __init__(self, upscale_factor: int = 3):
        super().__init__()
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(1, 64, (5, 5), (1, 1), (2, 2))
        self.conv2 = nn.Conv2d(64, 64, (3, 3), (1, 1), (1, 1))
        self.conv3 = nn.Conv2d(64, 32, (3, 3), (1, 1), (1, 1))
        self.conv4 = nn.Conv2d(32, upscale_factor ** 2, (3, 3), (1, 1), (1, 1))
        self.pixel_shuffle = nn.PixelShuffle(upscale_factor)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = self.relu(self.conv3(x))
        return self.pixel_shuffle(self.conv4(x))


# ---- DeepLabV3-ResNet50 (torchvision/models/resnet.py, segmentation/deeplabv3.py, fcn.py) ----------


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class DilatedResNet50(nn.Module):
    """resnet50(replace_stride_with_dilation=[False, True, True]) without avgpool and fc."""

    def __init__(self):
        super().__init__()
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 6, stride=2, dilate=True)
        self.layer4 = self._make_layer(512, 3, stride=2, dilate=True)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        aux = self.layer3(self.layer2(self.layer1(x)))
        return self.layer4(aux), aux


class ASPPPooling(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())

    def forward(self, x):
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, in_channels: int, atrous_rates: list[int], out_channels: int = 256):
        super().__init__()
        modules = [nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                                 nn.ReLU())]
        for rate in atrous_rates:
            modules.append(nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate,
                                                   bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()))
        modules.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(modules)
        self.project = nn.Sequential(nn.Conv2d(len(modules) * out_channels, out_channels, 1, bias=False),
                                     nn.BatchNorm2d(out_channels), nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x):
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabV3(nn.Module):
    def __init__(self, num_classes: int = 21, aux: bool = True):
        super().__init__()
        self.backbone = DilatedResNet50()
        self.classifier = nn.Sequential(ASPP(2048, [12, 24, 36]), nn.Conv2d(256, 256, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(256), nn.ReLU(), nn.Conv2d(256, num_classes, 1))
        self.aux_classifier = nn.Sequential(
            nn.Conv2d(1024, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(), nn.Dropout(0.1),
            nn.Conv2d(256, num_classes, 1)) if aux else None

    def forward(self, x):
        size = x.shape[-2:]
        features, aux = self.backbone(x)
        out = F.interpolate(self.classifier(features), size=size, mode="bilinear", align_corners=False)
        if self.aux_classifier is None:
            return out
        return out, F.interpolate(self.aux_classifier(aux), size=size, mode="bilinear", align_corners=False)


def unet(seed: int = 0) -> UNet:
    """milesial's UNet(n_channels=3, n_classes=2, bilinear=False), seeded, eval mode."""
    torch.manual_seed(seed)  # the transposed convs keep their constructor's init
    return randomize(UNet(), seed, calib_batch=2)


def espcn(seed: int = 0) -> ESPCN:
    """pytorch/examples' ESPCN with upscale_factor=3, seeded (PyTorch's default init), eval mode."""
    torch.manual_seed(seed)
    return ESPCN(3).eval()


def deeplabv3_resnet50(seed: int = 0, aux: bool = True) -> DeepLabV3:
    """torchvision's deeplabv3_resnet50(num_classes=21, aux_loss=aux), seeded, eval mode."""
    torch.manual_seed(seed)
    return randomize(DeepLabV3(21, aux), seed, calib_batch=2)


BUILDERS = {"unet": unet, "espcn": espcn, "deeplabv3_resnet50": deeplabv3_resnet50}
# The originals' parameter counts (torchvision's documentation for DeepLabV3: 42,004,074 with the
# aux classifier, 39,638,869 without; the others counted on the originals' code).
PARAMS = {"unet": 31_037_698, "espcn": 59_657, "deeplabv3_resnet50": 42_004_074}
