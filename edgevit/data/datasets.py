"""Labelled image data split three ways: train / calibration / validation, disjoint and reproducible.

Calibration (for INT8) and validation use the same preprocessing, and a hash of the three splits travels
with checkpoints and bundles so a bundle's accuracy can be traced to the exact images it was measured on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgevit.data.preprocess import Preprocess, imagenet_preprocess
from edgevit.data.splits import Dataset, Split, stratified  # noqa: F401 - Dataset and Split re-exported
from edgevit.errors import EdgevitError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}


# -- the embedded default ------------------------------------------------------------------------------

DIGITS_SEED = 0


def digits_preprocess(crop: int = 32) -> Preprocess:
    # 8x8 digits upscaled (32x32 for the small-input variants); flips would turn digits into other shapes.
    return Preprocess(resize=crop, crop=crop, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear",
                      channels=3, train_scale=(0.85, 1.0), train_ratio=(0.8, 1.25), hflip=0.0)


def load_digits(crop: int = 32, seed: int = DIGITS_SEED) -> Dataset:
    """scikit-learn's digits (1,797 8x8 images shipped inside the package: no download), 70/10/20 split."""
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    labels = d.target.astype(np.int64)
    parts = stratified(labels, {"train": 0.7, "calib": 0.1, "val": 0.2}, seed)
    splits = {k: Split(k, [images[i] for i in idx], labels[idx], idx.tolist()) for k, idx in parts.items()}
    return Dataset("digits", [str(i) for i in range(10)], digits_preprocess(crop), **splits)


# -- image folders -------------------------------------------------------------------------------------

def _scan(split_dir: Path) -> tuple[list[str], list[tuple[Path, str]]]:
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    items = []
    for c in classes:
        for f in sorted((split_dir / c).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                items.append((f, c))
    return classes, items


def _check_headers(items) -> None:
    # Reading headers is cheap and turns a corrupt file into a named error before hours of training.
    for path, _ in items:
        try:
            with Image.open(path) as im:
                im.size  # noqa: B018
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise EdgevitError(f"cannot read image {path}: {e}") from None


def _scan_like_train(folder: Path, classes: list, hint: str) -> list:
    """A split's images, whose classes must be among train/'s."""
    _, items = _scan(folder)
    extra = sorted({c for _, c in items} - set(classes))
    if extra:
        raise EdgevitError(f"{folder} has classes not in train/: {', '.join(extra)}")
    if not items:
        raise EdgevitError(f"{folder} has no images{hint}")
    return items


def load_image_folder(root, crop: int, channels: int = 3, calib_fraction: float = 0.1,
                      calib_max: int = 512, seed: int = 0, preprocess: Preprocess | None = None) -> Dataset:
    """``root/train/<class>/*`` and ``root/val/<class>/*``; calibration is carved from train (and removed
    from it, so the three splits stay disjoint) unless ``root/calib/<class>/*`` exists."""
    root = Path(root)
    if not root.is_dir():
        state = "is a file, not a folder" if root.exists() else "does not exist"
        raise EdgevitError(f"data folder {root} {state} (expected {root}/train/<class>/*.jpg|png "
                           f"and {root}/val/<class>/...)")
    split_dirs = {k: root / k for k in ("train", "val", "calib")}
    for k in ("train", "val"):
        if not split_dirs[k].is_dir():
            raise EdgevitError(f"data folder {root} has no {k}/ folder (expected {split_dirs[k]}/<class>/*.jpg|png)")
    classes, train_items = _scan(split_dirs["train"])
    classes = [c for c in classes if any(ci == c for _, ci in train_items)]
    if len(classes) < 2:
        raise EdgevitError(f"{split_dirs['train']} has {len(classes)} class folder(s) with images "
                           f"({', '.join(classes) or 'none'}); a classifier needs at least 2")
    index = {c: i for i, c in enumerate(classes)}
    val_items = _scan_like_train(split_dirs["val"], classes, "")
    if split_dirs["calib"].is_dir():
        calib_items = _scan_like_train(split_dirs["calib"], classes, " (remove it to carve calibration from train/)")
    else:
        labels = np.array([index[c] for _, c in train_items])
        frac = min(calib_fraction, calib_max / max(1, len(labels)))
        parts = stratified(labels, {"calib": frac, "train": 1.0 - frac}, seed)
        calib_items = [train_items[i] for i in parts["calib"]]
        train_items = [train_items[i] for i in parts["train"]]
    for items in (train_items, val_items, calib_items):
        _check_headers(items)

    def split(name, items):
        # Size and mtime in the ids: replacing images under the same names changes the split hash, and with
        # it every cache key built on it (a cached model trained on the old pixels is not reused).
        ids = []
        for p, _ in items:
            st = p.stat()
            ids.append(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}")
        return Split(name, [p for p, _ in items], np.array([index[c] for _, c in items], np.int64), ids)

    pre = preprocess or imagenet_preprocess(crop, channels)
    return Dataset(str(root), classes, pre, split("train", train_items), split("calib", calib_items),
                   split("val", val_items))


EMBEDDED = {"images": "digits", "patches": "synthetic-wetland"}


def input_kind(model) -> str:
    """What a model's engines take: preprocessed images, or raw multispectral patches (WetMapFormer)."""
    return getattr(model, "input_kind", "images")


def available_here(name: str) -> bool:
    """Whether the data set a checkpoint or bundle records can be loaded on this host."""
    return name in EMBEDDED.values() or Path(name).exists()


def load_dataset(data: str | None, crop: int, channels: int = 3, kind: str = "images") -> Dataset:
    """Images: ``None``/``"digits"`` is the embedded default, anything else an image-folder root.
    Patches (WetMapFormer): ``None``/``"synthetic-wetland"`` is the embedded synthetic scene, anything else a
    raster with its ``_gt`` label raster, or a folder of such pairs."""
    if kind == "patches":
        from edgevit.data.scenes import load_scene_dataset, write_synthetic_scene

        if data in (None, EMBEDDED["patches"]):
            import tempfile

            # Written to disk and read back: the embedded default goes through the loaders real data uses.
            with tempfile.TemporaryDirectory() as tmp:
                ds = load_scene_dataset(write_synthetic_scene(tmp, bands=channels).parent, bands=channels, patch=crop)
            from edgevit.data.scenes import SYNTHETIC_CLASSES

            ds.name = EMBEDDED["patches"]
            ds.classes = SYNTHETIC_CLASSES[:len(ds.classes)]
            return ds
        return load_scene_dataset(data, bands=channels, patch=crop)
    if data in (None, "digits"):
        return load_digits(crop)
    return load_image_folder(data, crop, channels)
