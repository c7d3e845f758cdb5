"""Per-pixel scene data for WetMapFormer: labelled pixels of multi-band rasters as 8x8 patches.

Pixel (i, j) gets rows i-4 .. i+3 and columns j-4 .. j+3 of the scene after the fill (NaN and < -1000 -> -1)
and a zero padding of 4, so it sits at (4, 4) of its patch (shared/models/wetmapformer.md §1). Only pixels
with label > 0 are used, labels shifted to 0..K-1; the patches of every scene are pooled and split
stratified into train / calibration / validation. ``--data`` is a raster with its label raster beside it
(``scene.tif`` + ``scene_gt.tif``, as the reference's ``SA1.mat`` + ``SA1_gt.mat``) or a folder of such pairs.

The embedded default is a synthetic scene (``synthetic_scene``), written to disk as GeoTIFFs and read back
through the same loaders real data uses. It exercises the pipeline, not the science.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevit.data.preprocess import PatchPreprocess
from edgevit.data.splits import Dataset, stratified
from edgevit.data.rasters import CUBE_SUFFIXES, fill_invalid, open_raster, read_labels, write_geotiff
from edgevit.errors import EdgevitError

MARGIN = 4
SPLIT_SEED = 345                 # the reference's train_test_split random_state
SPLIT = {"train": 0.6, "calib": 0.1, "val": 0.3}


@dataclass
class PatchSplit:
    name: str
    patches: np.ndarray          # N, B, 8, 8 float32 (filled, unnormalised)
    labels: np.ndarray
    ids: list

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        return self.patches[i]

    def arrays(self, preprocess=None, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        n = len(self) if limit is None else min(limit, len(self))
        return np.ascontiguousarray(self.patches[:n]), self.labels[:n].astype(np.int64)


def pad_scene(cube: np.ndarray, margin: int = MARGIN) -> np.ndarray:
    return np.pad(fill_invalid(cube), ((margin, margin), (margin, margin), (0, 0)))


def patches_at(padded: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int = 8) -> np.ndarray:
    """(N, B, size, size) patches of a padded H x W x B cube, pixel (i, j) at (size/2, size/2)."""
    win = np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(0, 1))   # H', W', B, s, s
    return np.ascontiguousarray(win[rows, cols], dtype=np.float32)


def scene_pairs(data) -> list[tuple[Path, Path]]:
    """(cube, labels) pairs from a raster path or a folder: ``X.ext`` with ``X_gt.<any supported ext>``."""
    root = Path(data)
    if root.is_file():
        cubes = [root]
    elif root.is_dir():
        cubes = sorted(p for p in root.iterdir() if p.suffix.lower() in CUBE_SUFFIXES and not p.stem.endswith("_gt"))
    else:
        raise EdgevitError(f"scene data {root} does not exist (expected a raster such as scene.tif with its labels "
                           f"scene_gt.tif beside it, or a folder of such pairs)")
    pairs = []
    for c in cubes:
        gts = [c.with_name(f"{c.stem}_gt{s}") for s in CUBE_SUFFIXES]
        gt = next((g for g in gts if g.is_file()), None)
        if gt is None:
            raise EdgevitError(f"scene {c} has no label raster beside it (expected {c.stem}_gt.tif, .npy or .mat; "
                               f"0 = unlabelled, 1..K = classes)")
        pairs.append((c, gt))
    if not pairs:
        raise EdgevitError(f"scene folder {root} has no rasters ({', '.join(CUBE_SUFFIXES)}) with _gt label rasters")
    return pairs


def load_scene_dataset(data, bands: int, patch: int = 8, seed: int = SPLIT_SEED) -> Dataset:
    """Labelled pixels of every scene in ``data`` as patches, pooled, split 60/10/30 stratified."""
    pairs = scene_pairs(data)
    patches, labels, ids = [], [], []
    h = hashlib.sha256()
    for cube_path, gt_path in pairs:
        raster = open_raster(cube_path)
        if raster.bands != bands:
            raise EdgevitError(f"scene {cube_path} has {raster.bands} bands; the model takes {bands} "
                               f"(build with --bands {raster.bands}, or check the file)")
        gt = read_labels(gt_path)
        if gt.shape != (raster.height, raster.width):
            raise EdgevitError(f"label raster {gt_path} is {gt.shape[0]} x {gt.shape[1]}, its scene {cube_path} is "
                               f"{raster.height} x {raster.width}")
        cube = raster.read()
        h.update(np.ascontiguousarray(cube).tobytes())
        h.update(gt.tobytes())
        rows, cols = np.nonzero(gt)
        patches.append(patches_at(pad_scene(cube), rows, cols, patch))
        labels.append(gt[rows, cols])
        ids += [f"{cube_path.name}:{r}:{c}" for r, c in zip(rows.tolist(), cols.tolist())]
    x, y = np.concatenate(patches), np.concatenate(labels)
    if len(y) == 0:
        raise EdgevitError(f"scene data {data}: no labelled pixels (labels > 0)")
    classes = np.unique(y)
    if len(classes) < 2:
        raise EdgevitError(f"scene data {data}: only class {classes.tolist()} is labelled; a classifier needs 2+")
    if classes.tolist() != list(range(1, len(classes) + 1)):
        raise EdgevitError(f"scene data {data}: labels are {classes.tolist()}; expected 1..K with every class "
                           f"present (0 = unlabelled)")
    y = (y - 1).astype(np.int64)
    parts = stratified(y, SPLIT, seed)
    train_x = x[parts["train"]]
    # Keras Normalization adapted on the training patches: mean/variance over every patch pixel, padding included.
    mean = train_x.mean(axis=(0, 2, 3))
    std = np.maximum(train_x.std(axis=(0, 2, 3)), 1e-7)
    pre = PatchPreprocess(bands=bands, crop=patch, mean=tuple(float(v) for v in mean),
                          std=tuple(float(v) for v in std))
    splits = {k: PatchSplit(k, x[idx], y[idx], [ids[i] for i in idx]) for k, idx in parts.items()}
    names = [str(i + 1) for i in range(len(classes))]
    ds = Dataset(str(data), names, pre, splits["train"], splits["calib"], splits["val"])
    ds.content_hash = h.hexdigest()[:16]
    return ds


# -- the embedded default: a synthetic wetland scene ---------------------------------------------------

SYNTHETIC_CLASSES = ["open water", "marsh", "fen", "bog", "swamp", "shrub wetland", "upland"]


def synthetic_scene(size: int = 96, bands: int = 16, classes: int = 7, seed: int = 0):
    """A labelled H x W x B scene by a documented, seeded procedure:

    1. regions: ``classes * 3`` random seed points, each pixel takes the class of its nearest seed under a
       smooth random warp of the coordinates (so region borders are irregular but coherent);
    2. spectra: each class gets a smooth signature over the bands (a random walk, then smoothing) in
       reflectance-like units around 0..0.6, SAR-like bands (the last 4) in dB around -25..-5;
    3. texture and noise: a smooth per-pixel brightness field times the signature plus Gaussian noise;
    4. defects: 0.3 % of pixels NaN in some bands, 0.2 % set to -9999 (the fill rule's cases);
    5. labels: every pixel's class + 1 in the label raster, then 40 % of pixels set to 0 (unlabelled).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    def smooth_field(scale: float, amp: float) -> np.ndarray:
        f = np.zeros((size, size), np.float32)
        for _ in range(4):
            k = rng.uniform(0.5, 2.0, 2) * 2 * np.pi / (size * scale)
            f += np.sin(k[0] * xx + rng.uniform(0, 2 * np.pi)) * np.cos(k[1] * yy + rng.uniform(0, 2 * np.pi))
        return amp * f / 4

    wy, wx = yy + smooth_field(0.5, size * 0.08), xx + smooth_field(0.5, size * 0.08)
    seeds = rng.uniform(0, size, (classes * 3, 2))
    owner = np.argmin((wy[..., None] - seeds[:, 0]) ** 2 + (wx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    cls = (owner % classes).astype(np.int64)
    sig = np.cumsum(rng.normal(0, 0.08, (classes, bands)), axis=1) + rng.uniform(0.05, 0.5, (classes, 1))
    sig = np.apply_along_axis(lambda s: np.convolve(np.pad(s, 1, mode="edge"), np.ones(3) / 3, "valid"), 1, sig)
    sar = min(4, bands // 4)
    if sar:
        sig[:, -sar:] = rng.uniform(-25, -5, (classes, sar))
    brightness = 1.0 + smooth_field(0.3, 0.15)
    cube = sig[cls] * brightness[..., None] + rng.normal(0, 0.02, (size, size, bands))
    if sar:
        cube[..., -sar:] = sig[cls][..., -sar:] + rng.normal(0, 1.0, (size, size, sar))
    cube = cube.astype(np.float32)
    n = size * size
    nan_px = rng.choice(n, max(1, n * 3 // 1000), replace=False)
    cube.reshape(n, bands)[nan_px, : bands // 2] = np.nan
    bad_px = rng.choice(n, max(1, n * 2 // 1000), replace=False)
    cube.reshape(n, bands)[bad_px, rng.integers(0, bands)] = -9999.0
    labels = cls + 1
    labels.reshape(-1)[rng.choice(n, int(n * 0.4), replace=False)] = 0
    return cube, labels


def write_synthetic_scene(folder, size: int = 96, bands: int = 16, classes: int = 7, seed: int = 0) -> Path:
    """The synthetic scene as ``wetland.tif`` + ``wetland_gt.tif`` (10 m pixels, UTM 20N, a made-up origin)."""
    from affine import Affine
    from rasterio.crs import CRS

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cube, labels = synthetic_scene(size, bands, classes, seed)
    profile = {"crs": CRS.from_epsg(32620), "transform": Affine(10.0, 0.0, 700000.0, 0.0, -10.0, 5100000.0)}
    write_geotiff(folder / "wetland.tif", cube, profile)
    write_geotiff(folder / "wetland_gt.tif", labels.astype(np.uint8), profile)
    return folder / "wetland.tif"
