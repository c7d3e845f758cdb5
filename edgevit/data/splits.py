"""A data set as edgevit uses it: train / calibration / validation splits, disjoint and reproducible.

Apart from the loaders (``datasets`` for images, ``scenes`` for rasters) so that both build on it without
importing each other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgevit.data.preprocess import Preprocess
from edgevit.errors import EdgevitError


@dataclass
class Split:
    """One split: ``sources`` are in-memory uint8 images or image file paths, with integer labels."""

    name: str
    sources: list
    labels: np.ndarray
    ids: list            # stable identifiers (index or relative path), for the split hash

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        src = self.sources[i]
        if isinstance(src, np.ndarray):
            return Image.fromarray(src)
        try:
            with Image.open(src) as im:
                im.load()
                return im
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise EdgevitError(f"cannot read image {src}: {e}") from None

    def arrays(self, preprocess: Preprocess, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The split preprocessed for evaluation: (N, C, H, W) float32 and (N,) int64 labels."""
        n = len(self) if limit is None else min(limit, len(self))
        x = np.stack([preprocess(self.image(i)) for i in range(n)]) if n else np.zeros((0,), np.float32)
        return x, self.labels[:n].astype(np.int64)


@dataclass
class Dataset:
    name: str
    classes: list
    preprocess: Preprocess
    train: Split
    calib: Split
    val: Split

    def split_hash(self) -> str:
        h = hashlib.sha256(self.name.encode())
        if getattr(self, "content_hash", None):   # scenes: the pixels behind the patch positions
            h.update(self.content_hash.encode())
        for s in (self.train, self.calib, self.val):
            h.update(json.dumps([s.name, [str(i) for i in s.ids], s.labels.tolist()]).encode())
        return h.hexdigest()[:16]

    def summary(self) -> str:
        return (f"{self.name}: {len(self.classes)} classes, train {len(self.train)}, "
                f"calibration {len(self.calib)}, validation {len(self.val)}")


def stratified(labels: np.ndarray, fractions: dict, seed: int) -> dict:
    """Indices per split name, class by class, with a fixed seed (fractions sum to 1)."""
    rng = np.random.default_rng(seed)
    out = {k: [] for k in fractions}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        names = list(fractions)
        for k in names[:-1]:
            n = int(round(fractions[k] * len(idx)))
            out[k].extend(idx[start:start + n].tolist())
            start += n
        out[names[-1]].extend(idx[start:].tolist())
    return {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in out.items()}
