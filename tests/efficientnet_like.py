"""A small EfficientNet in torchvision's module layout (features.K.J.block.{0..3}, squeeze-and-excitation with
Conv2d fc1/fc2, SiLU, residual adds where stride 1 keeps the width), for tests of how its stages import.
Widths and depths are cut down; the structure (stages whose first MBConv differs from the rest) is the real one."""
import torch
from torch import nn


class ConvNormAct(nn.Sequential):
    def __init__(self, cin, cout, k, s=1, g=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=g, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.SiLU())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, c, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.activation = nn.SiLU()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x):
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return s * x


class MBConv(nn.Module):
    def __init__(self, cin, cout, expand, k, s):
        super().__init__()
        hidden = cin * expand
        self.use_res = s == 1 and cin == cout
        layers = []
        if expand != 1:
            layers.append(ConvNormAct(cin, hidden, 1))
        layers += [ConvNormAct(hidden, hidden, k, s, g=hidden), SqueezeExcitation(hidden, max(1, cin // 4)),
                   ConvNormAct(hidden, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return y + x if self.use_res else y


class EfficientNet(nn.Module):
    # (expand, k, s, cin, cout, n)
    SETTING = [(1, 3, 1, 16, 8, 1), (6, 3, 2, 8, 12, 2), (6, 5, 2, 12, 16, 2), (6, 3, 2, 16, 24, 3),
               (6, 5, 1, 24, 32, 3)]

    def __init__(self):
        super().__init__()
        features = [ConvNormAct(3, 16, 3, 2)]
        for expand, k, s, cin, cout, n in self.SETTING:
            features.append(nn.Sequential(*[MBConv(cin if i == 0 else cout, cout, expand, k, s if i == 0 else 1)
                                            for i in range(n)]))
        features.append(ConvNormAct(32, 64, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def efficientnet(seed: int = 0) -> EfficientNet:
    """The model in eval mode, seeded, with non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    model = EfficientNet().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model
