"""Multi-band rasters: GeoTIFF (rasterio), ``.npy`` and ``.mat`` (scipy), read whole or by window.

Cubes are handled as H x W x B float32 (the layout of the reference's ``.mat`` files); GeoTIFF bands are
moved last on read. ``fill_invalid`` applies WetMapFormer's rule (NaN and values below -1000 become -1).
GeoTIFFs are read window by window so a scene of any size maps in bounded memory; ``.npy`` is memory-mapped;
``.mat`` has no partial reads and is loaded whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgevit.errors import EdgevitError

CUBE_SUFFIXES = (".tif", ".tiff", ".npy", ".mat")
INVALID_BELOW = -1000.0
FILL_VALUE = -1.0


def fill_invalid(cube: np.ndarray) -> np.ndarray:
    """NaN and values < -1000 -> -1 (the reference's fill, applied before padding), as float32."""
    cube = np.array(cube, dtype=np.float32, copy=True)
    cube[~np.isfinite(cube) | (cube < INVALID_BELOW)] = FILL_VALUE
    return cube


def invalid_mask(cube: np.ndarray) -> np.ndarray:
    """Pixels with no valid band at all (H x W): nodata in the class map."""
    c = np.asarray(cube, dtype=np.float32)
    return np.all(~np.isfinite(c) | (c < INVALID_BELOW), axis=-1)


def _mat_array(path: Path, variable: str | None, ndim: int) -> np.ndarray:
    from scipy.io import loadmat

    try:
        data = loadmat(str(path))
    except (OSError, ValueError, NotImplementedError) as e:
        raise EdgevitError(f"cannot read {path} as a MATLAB .mat file: {e}") from None
    arrays = {k: v for k, v in data.items() if not k.startswith("__") and isinstance(v, np.ndarray) and v.ndim == ndim}
    if variable:
        if variable not in arrays:
            raise EdgevitError(f"{path}: no {ndim}-D variable {variable!r}; it has: {', '.join(arrays) or 'none'}")
        return arrays[variable]
    if path.stem in arrays:
        return arrays[path.stem]
    if len(arrays) != 1:
        raise EdgevitError(f"{path}: expected one {ndim}-D variable (or one named {path.stem!r}), found "
                           f"{', '.join(arrays) or 'none'}")
    return next(iter(arrays.values()))


@dataclass
class Raster:
    """An H x W x B cube on disk with its georeference (GeoTIFF only)."""

    path: Path
    height: int
    width: int
    bands: int
    profile: dict = field(default_factory=dict)      # rasterio profile (crs, transform) for GeoTIFF sources
    _array: np.ndarray | None = None                  # whole cube (.mat) or memory map (.npy)

    def read(self, row0: int = 0, col0: int = 0, rows: int | None = None, cols: int | None = None) -> np.ndarray:
        """Rows/cols of the cube, unfilled, as float32 H x W x B (clipped to the raster)."""
        rows = self.height - row0 if rows is None else rows
        cols = self.width - col0 if cols is None else cols
        if self._array is not None:
            return np.asarray(self._array[row0:row0 + rows, col0:col0 + cols], dtype=np.float32)
        import rasterio
        from rasterio.windows import Window

        with rasterio.open(self.path) as src:
            a = src.read(window=Window(col0, row0, cols, rows), out_dtype="float32")
            if src.nodata is not None and not np.isnan(src.nodata):
                a[a == src.nodata] = np.nan
        return np.moveaxis(a, 0, -1)


def open_raster(path, variable: str | None = None) -> Raster:
    path = Path(path)
    if not path.is_file():
        raise EdgevitError(f"raster {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in CUBE_SUFFIXES:
        raise EdgevitError(f"raster {path}: unsupported type {suffix!r}; expected {', '.join(CUBE_SUFFIXES)}")
    if suffix in (".tif", ".tiff"):
        import rasterio

        try:
            with rasterio.open(path) as src:
                return Raster(path, src.height, src.width, src.count, {"crs": src.crs, "transform": src.transform})
        except rasterio.errors.RasterioIOError as e:
            raise EdgevitError(f"cannot read {path} as a GeoTIFF: {e}") from None
    if suffix == ".npy":
        try:
            a = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise EdgevitError(f"cannot read {path} as a .npy array: {e}") from None
    else:
        a = _mat_array(path, variable, 3)
    if a.ndim != 3:
        raise EdgevitError(f"raster {path}: expected an H x W x bands array, got shape {a.shape}")
    return Raster(path, a.shape[0], a.shape[1], a.shape[2], {}, a)


def read_labels(path, variable: str | None = None) -> np.ndarray:
    """An H x W integer label raster: 0 = unlabelled, 1..K = classes."""
    path = Path(path)
    if not path.is_file():
        raise EdgevitError(f"label raster {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import rasterio

        try:
            with rasterio.open(path) as src:
                a = src.read(1)
        except rasterio.errors.RasterioIOError as e:
            raise EdgevitError(f"cannot read label raster {path} as a GeoTIFF: {e}") from None
    elif suffix == ".npy":
        a = np.load(path, allow_pickle=False)
    elif suffix == ".mat":
        a = _mat_array(path, variable, 2)
    else:
        raise EdgevitError(f"label raster {path}: unsupported type {suffix!r}; expected {', '.join(CUBE_SUFFIXES)}")
    a = np.asarray(a)
    if a.ndim != 2:
        raise EdgevitError(f"label raster {path}: expected H x W, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise EdgevitError(f"label raster {path}: labels must be whole numbers (0 = unlabelled)")
        a = a.astype(np.int64)
    if a.min() < 0:
        raise EdgevitError(f"label raster {path}: negative label {int(a.min())} (0 = unlabelled, 1..K = classes)")
    return a.astype(np.int64)


def write_geotiff(path, array: np.ndarray, profile: dict | None = None, nodata=None) -> None:
    """Write an H x W x B (or H x W) array as a GeoTIFF, keeping ``profile``'s crs and transform."""
    import rasterio

    a = array if array.ndim == 3 else array[..., None]
    meta = {"driver": "GTiff", "height": a.shape[0], "width": a.shape[1], "count": a.shape[2],
            "dtype": a.dtype.name}
    for k in ("crs", "transform"):
        if profile and profile.get(k) is not None:
            meta[k] = profile[k]
    if nodata is not None:
        meta["nodata"] = nodata
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(np.moveaxis(a, -1, 0))
