"""One preset frozen into a plain ``forward(x)``: what gets exported as a static-shape engine.

Works for every family, since each model takes ``forward(x, img_size, keep_rate)`` (``models.base``).
"""

from __future__ import annotations

from torch import nn


class PresetModule(nn.Module):
    def __init__(self, model, img_size: int, keep_rate: float):
        super().__init__()
        model.check_preset(img_size, keep_rate)
        self.model, self.img_size, self.keep_rate = model, img_size, keep_rate

    def forward(self, x):
        return self.model(x, self.img_size, self.keep_rate)
