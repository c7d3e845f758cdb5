"""Preprocessing: one object from training to the device.

``Preprocess`` turns a PIL image or a uint8/float array into the model's normalised CHW float32 input using
Pillow and numpy only, because the on-device runtime must not need torch. The same object is saved in
checkpoints and bundles (``to_dict``/``from_dict``), so a bundle preprocesses exactly as training did.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from edgevit.errors import EdgevitError

_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize``, centre-crop ``crop``, scale to [0, 1], normalise per channel."""

    resize: int
    crop: int
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    interpolation: str = "bicubic"
    channels: int = 3
    # Training-only augmentation: random resized crop (scale, ratio) and horizontal flip probability.
    train_scale: tuple = (0.08, 1.0)
    train_ratio: tuple = (3 / 4, 4 / 3)
    hflip: float = 0.5
    version: int = field(default=1, repr=False)

    def __post_init__(self):
        if self.interpolation not in _RESAMPLE:
            raise EdgevitError(f"preprocess.interpolation {self.interpolation!r}: expected one of {sorted(_RESAMPLE)}")
        if self.channels not in (1, 3):
            raise EdgevitError(f"preprocess.channels {self.channels}: expected 1 or 3")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise EdgevitError(f"preprocess.mean/std need {self.channels} values, got {self.mean} / {self.std}")
        if self.crop > self.resize:
            raise EdgevitError(f"preprocess.crop {self.crop} is larger than preprocess.resize {self.resize}")

    # -- (de)serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise EdgevitError(f"preprocess: unknown field(s) {sorted(unknown)}; expected {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    # -- images ----------------------------------------------------------------------------------------
    def to_image(self, x) -> Image.Image:
        """Accept a PIL image, or an HxW / HxWxC array (uint8 0-255, or float in [0, 1])."""
        if isinstance(x, Image.Image):
            img = x
        else:
            a = np.asarray(x)
            if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
                raise EdgevitError(f"expected an HxW or HxWxC image array, got shape {a.shape}")
            if a.dtype != np.uint8:
                a = np.clip(a.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            img = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a)
        mode = "RGB" if self.channels == 3 else "L"
        return img if img.mode == mode else img.convert(mode)

    def _normalise(self, img: Image.Image) -> np.ndarray:
        a = np.asarray(img, dtype=np.float32) / 255.0
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return np.ascontiguousarray((a - mean) / std)

    def __call__(self, x) -> np.ndarray:
        """Evaluation transform: CHW float32 of size ``crop``."""
        img = self.to_image(x)
        w, h = img.size
        s = self.resize / min(w, h)
        nw, nh = max(self.crop, round(w * s)), max(self.crop, round(h * s))
        img = img.resize((nw, nh), _RESAMPLE[self.interpolation])
        left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
        return self._normalise(img.crop((left, top, left + self.crop, top + self.crop)))

    def batch(self, images) -> np.ndarray:
        """NCHW float32 from a list of images, or an already-preprocessed CHW / NCHW float32 array."""
        ready = (self.channels, self.crop, self.crop)
        if isinstance(images, np.ndarray) and images.dtype == np.float32:
            if images.ndim == 4 and images.shape[1:] == ready:
                return images
            if images.ndim == 3 and images.shape == ready:   # one preprocessed image, not C grayscale images
                return images[None]
        if isinstance(images, (Image.Image, np.ndarray)) and not _is_image_batch(images):
            images = [images]
        arrays = [self(im) for im in images]
        return np.stack(arrays) if arrays else np.zeros((0, *ready), np.float32)

    def train(self, x, rng: random.Random) -> np.ndarray:
        """Training transform: random resized crop to ``crop`` (box sampled in source pixels) + flip."""
        img = self.to_image(x)
        w, h = img.size
        area = w * h
        box = (0.0, 0.0, float(w), float(h))
        for _ in range(10):
            target = area * rng.uniform(*self.train_scale)
            ratio = math.exp(rng.uniform(math.log(self.train_ratio[0]), math.log(self.train_ratio[1])))
            cw, ch = math.sqrt(target * ratio), math.sqrt(target / ratio)
            if cw <= w and ch <= h:
                x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
                box = (x0, y0, x0 + cw, y0 + ch)
                break
        img = img.resize((self.crop, self.crop), _RESAMPLE[self.interpolation], box=box)
        if self.hflip and rng.random() < self.hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return self._normalise(img)


def _is_image_batch(x) -> bool:
    # NHWC / NCHW stacks, or N grayscale HxW images (a 3-D array whose last axis is not a channel count).
    return isinstance(x, np.ndarray) and (x.ndim == 4 or (x.ndim == 3 and x.shape[2] not in (1, 3, 4)))


def imagenet_preprocess(crop: int, channels: int = 3) -> Preprocess:
    """DeiT's evaluation recipe: resize crop/0.875 bicubic, centre crop, ImageNet mean/std."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
    return Preprocess(resize=int(round(crop / 0.875)), crop=crop, mean=mean, std=std, channels=channels)
