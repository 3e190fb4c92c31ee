"""Feature pyramid network over the four concatenated bitemporal levels (mmseg ``FPN`` subset).

Only what the ChangeCLIP configs use: 1x1 lateral convs (bias, no norm, no activation), top-down
nearest-neighbour upsample-and-add, 3x3 output convs (bias), as many outputs as inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from changeclip.model.layers import ConvAct


class FPN(nn.Module):
    """The neck (module ``neck``).

    Args:
        in_channels: Channels of each input level, finest first.
        out_channels: Channels of every output level.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList([ConvAct(c, out_channels, 1, act="none") for c in in_channels])
        self.fpn_convs = nn.ModuleList([ConvAct(out_channels, out_channels, 3, act="none") for _ in in_channels])

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Run the pyramid.

        Args:
            inputs: Levels (B, in_channels[i], h_i, w_i), finest first, each level half the size
                of the previous one.

        Returns:
            Outputs (B, out_channels, h_i, w_i), finest first.
        """
        if len(inputs) != len(self.lateral_convs):
            raise ValueError(f"FPN expects {len(self.lateral_convs)} levels, got {len(inputs)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True)]
