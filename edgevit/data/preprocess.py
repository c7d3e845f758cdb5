"""Preprocessing: one object from training to the device (images: ``Preprocess``; scene patches:
``PatchPreprocess``).

``Preprocess`` turns a PIL image or a uint8/float array into the model's normalised CHW float32 input using
Pillow and numpy only, because the on-device runtime must not need torch. The same object is saved in
checkpoints and bundles (``to_dict``/``from_dict``), so a bundle preprocesses exactly as training did.
"""

from __future__ import annotations

import math
import random
import threading
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields

import numpy as np
from PIL import Image, ImageOps

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
        _sides(self, "resize", "crop")
        if self.interpolation not in _RESAMPLE:
            raise EdgevitError(f"preprocess.interpolation {self.interpolation!r}: expected one of {sorted(_RESAMPLE)}")
        if self.channels not in (1, 3):
            raise EdgevitError(f"preprocess.channels {self.channels}: expected 1 or 3")
        _finite(self)
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
        missing = [f.name for f in fields(cls) if f.name not in d and f.default is MISSING
                   and f.default_factory is MISSING]
        if missing:
            raise EdgevitError(f"preprocess: missing field(s) {missing}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    # -- images ----------------------------------------------------------------------------------------
    def to_image(self, x, value_range=None, max_pixels: int | None = None) -> Image.Image:
        """A PIL image from a file path, a PIL image of any mode, or one HxW / HxWxC array (see ``as_image``)."""
        img = as_image(x, value_range, max_pixels)
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

    def batch(self, images, value_range=None, preprocessed: bool = False, max_pixels: int | None = None) -> np.ndarray:
        """NCHW float32 model input from what ``Runtime.predict`` accepts (the input contract):

        * file paths (EXIF orientation applied, as a viewer shows them; at most ``max_pixels`` pixels, default
          ``MAX_PIXELS``), PIL images of any mode, or a list of them or of arrays;
        * one HxW or HxWxC array, or an NHWC stack (C = 1, 3 or 4);
        * uint8 (0..255), uint16 (0..65535, as 16-bit images are), other integers (0..255), floats in 0..1 or
          0..255: ``value_range`` says which, else the range is read from the values (floats above 1:
          0..255), and checked. PIL images of 16-bit, 32-bit integer and float modes follow the same rules as
          arrays of their values, so a picture gives the same input as a file, a PIL image or an array;
        * with ``preprocessed=True`` only: already-normalised CHW / NCHW float32 of the model's input size.

        Anything else is an ``EdgevitError`` naming the expected shape, dtype and range."""
        ready = (self.channels, self.crop, self.crop)
        if preprocessed:
            return _preprocessed(images, ready)
        if images is None or isinstance(images, (bytes, dict)) or (np.isscalar(images) and not isinstance(images, str)):
            raise EdgevitError(f"expected an image, a path, an array or a list of them, got {_describe(images)}")
        if isinstance(images, (list, tuple)):
            items = list(images)
        elif isinstance(images, np.ndarray) and images.ndim == 4:
            if images.shape[3] not in (1, 3, 4):
                raise EdgevitError(f"a 4-D array must be NHWC images with 1, 3 or 4 channels (uint8 0..255 or float), "
                                   f"got shape {images.shape} {images.dtype}"
                                   + ("; for normalised NCHW input pass preprocessed=True" if
                                      images.shape[1:] == ready else ""))
            value_range = _check_array(images, value_range)   # the stack's range, so every image reads alike
            items = list(images)
        else:
            items = [images]
        arrays = [self(self.to_image(im, value_range, max_pixels)) for im in items]
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


VALUE_RANGES = ((0, 1), (0, 255), (0, 65535))
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485   # a file with more is refused before it is decoded
_PIL_LIMIT = threading.Lock()
# PIL modes whose pixels are not 8-bit: read as arrays of their values, by the arrays' rules
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


MAX_SIDE = 8192   # pixels (or bands): a bundle's preprocessing runs on every request, so it is bounded


def _sides(pre, *names) -> None:
    """Sizes a bundle's manifest gives: whole numbers in range, before PIL or numpy is asked to allocate them."""
    for name in names:
        v = getattr(pre, name)
        if type(v) is not int or not 1 <= v <= MAX_SIDE:
            raise EdgevitError(f"preprocess.{name} {v!r}: expected a whole number from 1 to {MAX_SIDE}")


def _finite(pre) -> None:
    if not isinstance(pre.mean, (tuple, list)) or not isinstance(pre.std, (tuple, list)):
        raise EdgevitError(f"preprocess.mean/std {pre.mean!r} / {pre.std!r}: expected lists of numbers, one per "
                           f"channel")
    values = (*pre.mean, *pre.std)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise EdgevitError(f"preprocess.mean/std {list(pre.mean)} / {list(pre.std)}: expected finite numbers")
    if any(v <= 0 for v in pre.std):
        raise EdgevitError(f"preprocess.std {list(pre.std)}: expected positive values (the image is divided by them)")


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"an array of shape {x.shape} {x.dtype}"
    return f"{type(x).__name__} {x!r}"[:120]


def _check_array(a: np.ndarray, value_range) -> tuple:
    """Checks an image array's values and returns its value range (0, 1) or (0, 255)."""
    if a.size == 0:
        raise EdgevitError(f"empty image array of shape {a.shape}: expected HxW or HxWxC with H, W >= 1")
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise EdgevitError(f"image array of dtype {a.dtype}: expected uint8, an integer type, or float")
    if value_range is not None and (not isinstance(value_range, (tuple, list)) or tuple(value_range) not in VALUE_RANGES):
        raise EdgevitError(f"value_range={repr(value_range)[:60]}: expected (0, 1), (0, 255) or (0, 65535)")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise EdgevitError(f"image array of shape {a.shape} holds NaN or inf: expected finite values in 0..1 or 0..255")
    lo, hi = float(a.min()), float(a.max())
    if value_range is None:
        integer = np.issubdtype(a.dtype, np.integer)
        value_range = (0, 65535) if a.dtype == np.uint16 else (0, 255) if integer or hi > 1.0 else (0, 1)
    if lo < value_range[0] or hi > value_range[1]:
        raise EdgevitError(f"image array values span {lo:g}..{hi:g}, outside the {value_range[0]}..{value_range[1]} "
                           f"range; images are uint8 0..255, uint16 0..65535 or float "
                           "0..1 / 0..255 (pass value_range), normalised input needs preprocessed=True")
    return tuple(value_range)


def _open(path, value_range, max_pixels: int | None) -> Image.Image:
    """A file as the eye sees it (EXIF orientation applied), refused before decoding if it has more than
    ``max_pixels`` pixels (a 190 KB PNG can hold 14000x14000)."""
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # edgevit's own limit decides
            with _PIL_LIMIT:
                saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None    # opening reads the header only; the size is checked below
                try:
                    im = Image.open(path)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
        with im:
            pixels = im.width * im.height
            if pixels > limit:
                raise EdgevitError(f"image {path}: {im.width}x{im.height} = {pixels:,} pixels, more than max_pixels="
                                   f"{limit:,} (a decompression bomb?); pass max_pixels to edgevit.load for larger "
                                   f"inputs")
            im.load()
            return as_image(ImageOps.exif_transpose(im), value_range)
    except EdgevitError:
        raise
    except Exception as e:   # Pillow's decoders and EXIF parser raise many kinds: a bad file is one line
        raise EdgevitError(f"image {path}: cannot read it ({type(e).__name__}: {str(e)[:200]})") from None


def as_image(x, value_range=None, max_pixels: int | None = None) -> Image.Image:
    """One image as PIL: a path, a PIL image, or an HxW / HxWxC (C = 1, 3, 4) array whose values are checked."""
    import os

    if isinstance(x, Image.Image):
        if x.width == 0 or x.height == 0:
            raise EdgevitError(f"empty image ({x.width}x{x.height})")
        if x.mode in _WIDE_MODES:      # 16-bit, 32-bit integer, float: by the values' rules, as arrays are
            return as_image(np.asarray(x), value_range)
        return x
    if isinstance(x, (str, os.PathLike)):
        return _open(x, value_range, max_pixels)
    if x is None or np.isscalar(x) or not isinstance(x, (np.ndarray, list, tuple)):
        raise EdgevitError(f"expected an image: a path, a PIL image or an HxW / HxWxC array, got {_describe(x)}")
    a = np.asarray(x)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise EdgevitError(f"expected an HxW or HxWxC image array (C = 1, 3 or 4), got shape {a.shape} {a.dtype}"
                           + ("; several images go in a list or an NHWC array" if a.ndim == 3 else ""))
    vr = _check_array(a, value_range)
    if a.dtype != np.uint8 or vr != (0, 255):
        # 65535 = 255 x 257: a 16-bit picture of 8-bit values v x 257 reads back as exactly v
        a = np.clip(a.astype(np.float64) * (255.0 / vr[1]) + 0.5, 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    return Image.fromarray(a)


def _preprocessed(x, ready: tuple) -> np.ndarray:
    a = np.asarray(x) if isinstance(x, np.ndarray) else None
    if a is None or a.dtype != np.float32 or a.shape[-3:] != ready or a.ndim not in (3, 4):
        raise EdgevitError(f"preprocessed=True takes normalised float32 CHW {ready} or NCHW (N, {ready[0]}, "
                           f"{ready[1]}, {ready[2]}), got {_describe(x)}")
    if not np.isfinite(a).all():
        raise EdgevitError("preprocessed input holds NaN or inf")
    return np.ascontiguousarray(a[None] if a.ndim == 3 else a)


def imagenet_preprocess(crop: int, channels: int = 3) -> Preprocess:
    """DeiT's evaluation recipe: resize crop/0.875 bicubic, centre crop, ImageNet mean/std."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
    return Preprocess(resize=int(round(crop / 0.875)), crop=crop, mean=mean, std=std, channels=channels)


@dataclass(frozen=True)
class PatchPreprocess:
    """Patches go to the model raw (filled): the per-band normalisation is inside the model. Carries the
    statistics for the record, and the training augmentation (the reference's flip, rotation and zoom)."""

    kind: str = "patches"
    bands: int = 16
    crop: int = 8
    mean: tuple = ()
    std: tuple = ()
    hflip: float = 0.5
    rotation: float = 0.02 * 360      # degrees, +-
    zoom: float = 0.2
    version: int = field(default=1, repr=False)

    def __post_init__(self):
        _sides(self, "bands", "crop")
        _finite(self)

    @property
    def channels(self) -> int:
        return self.bands

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "PatchPreprocess":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise EdgevitError(f"preprocess: unknown field(s) {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def __call__(self, patch) -> np.ndarray:
        from edgevit.data.rasters import fill_invalid

        p = np.asarray(patch, dtype=np.float32)
        if p.shape != (self.bands, self.crop, self.crop):
            raise EdgevitError(f"expected a ({self.bands}, {self.crop}, {self.crop}) patch, got {p.shape}")
        return fill_invalid(p)

    def batch(self, patches, value_range=None, preprocessed: bool = False) -> np.ndarray:
        """(N, bands, 8, 8) raw patches; NaN and fill values are expected (they are filled, as in training),
        and the normalisation is inside the model, so ``value_range`` and ``preprocessed`` change nothing."""
        if patches is None or np.isscalar(patches):
            raise EdgevitError(f"expected (N, {self.bands}, {self.crop}, {self.crop}) patches, got {patches!r}")
        a = np.asarray(patches, dtype=np.float32)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or a.shape[1:] != (self.bands, self.crop, self.crop):
            raise EdgevitError(f"expected (N, {self.bands}, {self.crop}, {self.crop}) patches, got {a.shape}")
        from edgevit.data.rasters import fill_invalid

        return fill_invalid(a)

    def train(self, patch, rng: random.Random) -> np.ndarray:
        from scipy.ndimage import affine_transform

        p = np.asarray(patch, dtype=np.float32)
        if self.hflip and rng.random() < self.hflip:
            p = p[:, :, ::-1]
        angle = np.deg2rad(rng.uniform(-self.rotation, self.rotation))
        scale = 1.0 + rng.uniform(-self.zoom, self.zoom)
        c, s = np.cos(angle) * scale, np.sin(angle) * scale
        m = np.array([[c, -s], [s, c]])
        centre = (self.crop - 1) / 2
        offset = centre - m @ np.array([centre, centre])
        return np.stack([affine_transform(b, m, offset, order=1, mode="reflect") for b in p]).astype(np.float32)


def preprocess_from_dict(d: dict):
    """The preprocessing a checkpoint or bundle records: images (``Preprocess``) or patches."""
    if d.get("kind") == "patches":
        return PatchPreprocess.from_dict(d)
    return Preprocess.from_dict(d)
