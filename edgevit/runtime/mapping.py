"""Scene mapping: classify every pixel of a multi-band raster from its 8x8 patch, tile by tile.

For an output tile of T x T pixels at (y0, x0) the source rows y0-4 .. y0+T+2 (T+7 of them, zero beyond the
scene, after the NaN / < -1000 fill) are read, all T*T patches cut with a stride-1 window view and run
through the engine; the class map gets class + 1, with 0 where the source pixel has no valid band (nodata),
and keeps the source's georeference. Tiles are independent, so the map does not depend on the tile size,
and memory is bounded by one tile (T = 128: 16,384 patches, 64 MiB at 16 bands) whatever the scene size.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevit.data.rasters import fill_invalid, invalid_mask, open_raster
from edgevit.errors import EdgevitError

MARGIN = 4
CHUNK = 4096     # patches per engine call: the engine's buffers stay small whatever the tile


@dataclass(frozen=True)
class MapOptions:
    """``tile``: output tile side in pixels (memory is bounded by one tile); ``preset``: the runtime's current
    one unless named; ``preview``: also write a PNG there; ``variable``: the data variable of a NetCDF
    scene; ``progress``: a progress bar on stderr."""

    tile: int = 128
    preset: str | None = None
    preview: object = None
    variable: str | None = None
    progress: bool = True


def tile_patches(raster, y0: int, x0: int, th: int, tw: int, patch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(th*tw, B, patch, patch) patches of the tile and its (th, tw) nodata mask."""
    H, W = raster.height, raster.width
    r0, r1 = max(0, y0 - MARGIN), min(H, y0 + th + patch - MARGIN - 1)
    c0, c1 = max(0, x0 - MARGIN), min(W, x0 + tw + patch - MARGIN - 1)
    raw = raster.read(r0, c0, r1 - r0, c1 - c0)
    nodata = invalid_mask(raw)[y0 - r0:y0 - r0 + th, x0 - c0:x0 - c0 + tw]
    block = np.pad(fill_invalid(raw), ((r0 - (y0 - MARGIN), (y0 + th + patch - MARGIN - 1) - r1),
                                       (c0 - (x0 - MARGIN), (x0 + tw + patch - MARGIN - 1) - c1), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(block, (patch, patch), axis=(0, 1))[:th, :tw]
    return np.ascontiguousarray(win.reshape(th * tw, raster.bands, patch, patch), dtype=np.float32), nodata


def map_scene(runtime, scene, out, options: MapOptions = MapOptions()) -> dict:
    """Write ``out`` (GeoTIFF, uint8 class + 1, 0 = nodata) for ``scene``; optionally a PNG preview."""
    import rasterio
    from rasterio.windows import Window
    from tqdm import tqdm

    from edgevit.backends.base import run_engine

    tile, preset, preview, progress, chunk = options.tile, options.preset, options.preview, options.progress, CHUNK
    pre = runtime.preprocess
    if getattr(pre, "kind", "images") != "patches":
        raise EdgevitError(f"bundle {runtime.bundle} classifies images, not scene pixels; map needs a WetMapFormer "
                           f"bundle (edgevit build --model wetmapformer ...)")
    if tile < 1:
        raise EdgevitError(f"--tile {tile}: expected a positive number of pixels")
    raster = open_raster(scene, options.variable)
    if raster.bands != pre.bands:
        raise EdgevitError(f"scene {scene} has {raster.bands} bands; the bundle's model takes {pre.bands}")
    name = preset or runtime.current
    runner = runtime.runner(name)
    if len(runtime.labels) > 254:
        raise EdgevitError(f"{len(runtime.labels)} classes do not fit a uint8 class map")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    meta = {"driver": "GTiff", "height": raster.height, "width": raster.width, "count": 1, "dtype": "uint8",
            "nodata": 0, "compress": "deflate", "tiled": True}
    meta.update({k: v for k, v in raster.profile.items() if v is not None})
    counts = np.zeros(len(runtime.labels) + 1, np.int64)
    bar = tqdm(total=raster.height * raster.width, unit="px", unit_scale=True, disable=not progress,
               desc=f"map {Path(scene).name}", file=sys.stderr)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **meta) as dst:
                for y0 in range(0, raster.height, tile):
                    for x0 in range(0, raster.width, tile):
                        th, tw = min(tile, raster.height - y0), min(tile, raster.width - x0)
                        patches, nodata = tile_patches(raster, y0, x0, th, tw, pre.crop)
                        cls = np.concatenate([run_engine(runner, patches[i:i + chunk]).argmax(-1)
                                              for i in range(0, len(patches), chunk)])
                        cls = (cls + 1).astype(np.uint8).reshape(th, tw)
                        cls[nodata] = 0
                        counts += np.bincount(cls.ravel(), minlength=len(counts))
                        dst.write(cls, 1, window=Window(x0, y0, tw, th))
                        bar.update(th * tw)
        tmp.replace(out)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    summary = {"scene": str(scene), "out": str(out), "height": raster.height, "width": raster.width,
               "preset": name, "backend": runtime.backend, "tile": tile,
               "pixels": {"nodata": int(counts[0]), **{lab: int(c) for lab, c in zip(runtime.labels, counts[1:])}}}
    if preview:
        write_preview(out, preview, runtime.labels)
        summary["preview"] = str(preview)
    return summary


def write_preview(class_map, png, labels: list[str], max_side: int = 1024) -> None:
    """A PNG of the class map (decimated to at most ``max_side`` pixels a side) with a colour legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    with rasterio.open(class_map) as src:
        step = max(1, -(-max(src.height, src.width) // max_side))
        a = src.read(1, out_shape=(-(-src.height // step), -(-src.width // step)),
                     resampling=rasterio.enums.Resampling.nearest)
    colors = ["#000000"] + [plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")(i) for i in range(len(labels))]
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(a, cmap=ListedColormap(colors), vmin=0, vmax=len(labels), interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{Path(class_map).name} ({a.shape[1] * step} x {a.shape[0] * step} px"
                 + (f", shown 1:{step}" if step > 1 else "") + ")")
    handles = [Patch(color=colors[0], label="nodata")] + [Patch(color=colors[i + 1], label=lab)
                                                         for i, lab in enumerate(labels)]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
