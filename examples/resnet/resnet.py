"""A small ResNet (He et al. 2016, "Deep residual learning", arXiv:1512.03385) as a model of
your own: ntkpipe builds it from this file by import path.

    models:
      resnet:
        factory: examples/resnet/resnet.py:make_resnet
        kwargs: {blocks: 2}

A 3×3 stem convolution, `blocks` basic residual blocks per stage over `stages` stages (the
first block of every later stage halves the resolution and doubles the channels, with a 1×1
projection on the shortcut), BatchNorm after every convolution, global average pooling and a
linear readout. BatchNorm normalises with batch statistics while it trains and with its
running statistics in eval mode, the mode ntkpipe computes every kernel in (a per-sample NTK
needs a network that treats samples independently).

`width` (the stem's channels) is a sweep key: the factory names it, so `width: [8, 16, 32]`
in a sweep builds three networks. `parametrization` is ignored: the network keeps torch's
standard initialisation in every regime (the lazy regime still scales its lr).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm and a residual connection."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                nn.BatchNorm2d(channels_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_resnet(in_shape: Sequence[int], num_outputs: int, *, width: int = 16,
                blocks: int = 1, stages: int = 2) -> nn.Sequential:
    """A ResNet for images (C, H, W): `stages` stages of `blocks` basic blocks."""
    if len(in_shape) != 3:
        raise ValueError(f"make_resnet needs images (C, H, W), got in_shape {tuple(in_shape)}")
    layers: list[nn.Module] = [nn.Conv2d(in_shape[0], width, 3, 1, 1, bias=False),
                               nn.BatchNorm2d(width), nn.ReLU()]
    channels = width
    for stage in range(stages):
        out = width * 2 ** stage
        for block in range(blocks):
            layers.append(BasicBlock(channels, out, 2 if stage > 0 and block == 0 else 1))
            channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_outputs)]
    return nn.Sequential(*layers)
