"""Torch eager FP32, the reference: what every engine is validated against and what ``edgevit bench`` sets
beside them. It is a ``Runner`` like every backend's (Polygraphy runs the framework the same way), so the
build's references, validation, the latency pass and bench's baseline go through one interface."""

from __future__ import annotations

import numpy as np

from edgevit.backends.base import Runner

REFERENCE = "torch"   # its name where a backend is named: profiles, manifests, bench results


class TorchRunner(Runner):
    """One preset of a model, eager. ``infer`` takes any batch size; ``input_shape[0]`` is the chunk that
    ``validate.run_engine`` feeds it."""

    input_name = "input"

    def __init__(self, model, resolution: int, keep_rate: float, batch: int = 256):
        import torch

        self._torch = torch
        self.model, self.resolution, self.keep_rate = model.eval(), resolution, keep_rate
        model.check_preset(resolution, keep_rate)
        self.input_shape = (batch, model.in_chans, model.img_size, model.img_size)
        self.output_shape = (batch, model.num_classes)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            x = self._torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            return self.model(x, self.resolution, self.keep_rate).numpy()
