"""WetMapFormer: sizes, window attention against a direct computation, scene data, mapping, the pipeline."""

import warnings

import numpy as np
import pytest
import torch

from edgevit.bundle import read_manifest
from edgevit.data.rasters import fill_invalid, open_raster, write_geotiff
from edgevit.data.scenes import load_scene_dataset, pad_scene, patches_at, synthetic_scene, write_synthetic_scene
from edgevit.errors import EdgevitError
from rules import check_unmeasured_choice
from edgevit.models import create_model
from edgevit.models.wetmapformer import LocalWindowAttention, WetMapFormer


def window_attention_reference(q, key, v, rpb, h: int, w: int, k: int, scale: float) -> torch.Tensor:
    """Loops over queries and their clamped windows, straight from the spec (B, heads, N, d inputs)."""
    out = torch.zeros_like(q)
    for i in range(h):
        for j in range(w):
            ti, tj = min(max(i - (k - 1) // 2, 0), h - k), min(max(j - (k - 1) // 2, 0), w - k)
            idx, bias = [], []
            for a in range(k):
                for b in range(k):
                    r, c = ti + a, tj + b
                    idx.append(r * w + c)
                    bias.append(rpb[:, (r - i + k - 1) * (2 * k - 1) + (c - j + k - 1)])
            s = torch.einsum("bhd,bhnd->bhn", q[:, :, i * w + j], key[:, :, idx]) * scale
            s = s + torch.stack(bias, dim=-1)
            out[:, :, i * w + j] = torch.einsum("bhn,bhnd->bhd", s.softmax(-1), v[:, :, idx])
    return out

# -- the model -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant,depths,head_dim,total,trainable", [
    ("designed", (1, 1), 32, 1_376_816, 1_374_607),     # WetMapFormer_small, the edgevit default
    ("released", (1, 1), 32, 719_728, 717_519),         # what the notebook trains
    ("released", (3, 4), 256, 1_626_988, None),         # _medium
    ("designed", (3, 4), 256, 4_123_084, None),
    ("released", (3, 4), 64, 1_627_000, None),          # WetMapFormer() defaults
    ("designed", (3, 4), 64, 4_123_384, None),
])
def test_parameter_counts_match_the_spec_exactly(variant, depths, head_dim, total, trainable):
    counts = WetMapFormer(variant, depths=depths, head_dim=head_dim).keras_param_count()
    assert counts["total"] == total
    if trainable:
        assert counts["trainable"] == trainable


def test_bands_and_classes_are_parameters():
    base = WetMapFormer().keras_param_count()["total"]
    m = WetMapFormer(bands=10, num_classes=5)
    assert m.keras_param_count()["total"] == base + 10_658 * (10 - 16) + 257 * (5 - 7)   # spec §0
    assert m(torch.rand(2, 10, 8, 8)).shape == (2, 5)
    with pytest.raises(EdgevitError, match=r"expects \(B, 10, 8, 8\) patches, got \(2, 16, 8, 8\)"):
        m(torch.rand(2, 16, 8, 8))
    with pytest.raises(EdgevitError, match="variant 'paper': expected one of designed, released"):
        WetMapFormer("paper")


@pytest.mark.parametrize("hw", [(3, 3), (4, 5), (6, 4), (5, 7)])
def test_window_attention_matches_a_direct_computation(hw):
    H, W = hw
    torch.manual_seed(H * W)
    att = LocalWindowAttention(16, 2, 3).double().eval()
    with torch.no_grad():
        att.rpb.normal_()                                    # make the bias table matter
        x = torch.randn(2, 16, H, W, dtype=torch.float64)
        t = x.permute(0, 2, 3, 1).reshape(2, H * W, 16)
        q, k, v = att.qkv(t).reshape(2, H * W, 3, 2, 8).permute(2, 0, 3, 1, 4)
        ref = window_attention_reference(q, k, v, att.rpb, H, W, 3, att.scale)
        ref = att.proj(ref.transpose(1, 2).reshape(2, H, W, 16)).permute(0, 3, 1, 2)
        assert torch.allclose(att(x), ref, atol=1e-10)


def test_window_attention_on_a_map_smaller_than_the_window():
    # Stage 2 of the designed model: a 1x1 map, zero-padded to 3x3 before the qkv projection.
    torch.manual_seed(0)
    att = LocalWindowAttention(16, 2, 3).double().eval()
    with torch.no_grad():
        for H, W in ((1, 1), (2, 2), (1, 3)):
            x = torch.randn(2, 16, H, W, dtype=torch.float64)
            xp = torch.nn.functional.pad(x, (0, 3 - W, 0, 3 - H))
            t = xp.permute(0, 2, 3, 1).reshape(2, 9, 16)
            q, k, v = att.qkv(t).reshape(2, 9, 3, 2, 8).permute(2, 0, 3, 1, 4)
            ref = window_attention_reference(q, k, v, att.rpb, 3, 3, 3, att.scale)
            ref = att.proj(ref.transpose(1, 2).reshape(2, 3, 3, 16)[:, :H, :W]).permute(0, 3, 1, 2)
            assert torch.allclose(att(x), ref, atol=1e-10)


def test_released_variant_is_linear_attention_and_constant_mlps():
    m = WetMapFormer("released").eval()
    blk = m.stage2[0]
    x = torch.randn(3, 256, 1, 1)
    with torch.no_grad():
        wv, bv = blk.attn.qkv.weight[512:], blk.attn.qkv.bias[512:]
        expected = blk.attn.proj(x.permute(0, 2, 3, 1) @ wv.T + bv).permute(0, 3, 1, 2)
        assert torch.allclose(blk.attn(x), expected, atol=1e-5)
        assert torch.equal(blk.mlp(x), blk.mlp.bias.view(1, -1, 1, 1).expand_as(x))
    assert not hasattr(blk.mlp, "fc1")                      # no zero-width Linear to trip exporters


def test_tf_same_padding_at_stride_2():
    # TF "same" pads bottom/right only; symmetric padding would shift the FE output (spec §4).
    m = WetMapFormer().eval()
    fe = m.fe
    x = torch.randn(1, 16 * 32, 8, 8)
    pooled = torch.nn.functional.max_pool2d(x, 3, 2, ceil_mode=True)
    tf = torch.nn.functional.max_pool2d(torch.nn.functional.pad(x, (0, 1, 0, 1), value=-float("inf")), 3, 2)
    assert torch.equal(pooled, tf)
    assert fe.residual(torch.nn.functional.pad(x, (0, 1, 0, 1))).shape[-2:] == (4, 4)


# -- scene data --------------------------------------------------------------------------------------------

def test_fill_and_patch_alignment():
    cube = np.arange(6 * 7 * 2, dtype=np.float32).reshape(6, 7, 2)
    cube[0, 0, 0], cube[1, 1, 1], cube[2, 2, 0] = np.nan, -5000.0, -999.0
    filled = fill_invalid(cube)
    assert filled[0, 0, 0] == -1 and filled[1, 1, 1] == -1 and filled[2, 2, 0] == -999
    padded = pad_scene(cube)
    assert padded.shape == (14, 15, 2) and padded[:4].sum() == 0
    p = patches_at(padded, np.array([3, 0]), np.array([5, 0]))       # pixels (3, 5) and (0, 0)
    assert p.shape == (2, 2, 8, 8)
    # Patch row r, column c of pixel (i, j) is scene pixel (i - 4 + r, j - 4 + c): the pixel sits at (4, 4).
    assert p[0, 1, 4, 4] == cube[3, 5, 1]
    for r in range(8):
        for c in range(8):
            i, j = 3 - 4 + r, 5 - 4 + c
            want = filled[i, j] if 0 <= i < 6 and 0 <= j < 7 else np.zeros(2)
            np.testing.assert_array_equal(p[0, :, r, c], want)
    assert p[1, 0, 4, 4] == -1                                          # NaN filled, not padding
    assert not p[1, :, :4].any() and not p[1, :, :, :4].any()           # beyond the border: zeros


def test_loaders_read_the_same_scene_from_tif_npy_and_mat(tmp_path):
    from scipy.io import savemat

    cube, labels = synthetic_scene(size=40, bands=6, classes=3, seed=3)
    write_synthetic_scene(tmp_path / "tif", size=40, bands=6, classes=3, seed=3)
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "SA1.npy", cube)
    np.save(tmp_path / "npy" / "SA1_gt.npy", labels)
    (tmp_path / "mat").mkdir()
    savemat(tmp_path / "mat" / "SA1.mat", {"SA1": cube})
    savemat(tmp_path / "mat" / "SA1_gt.mat", {"SA1_gt": labels.astype(np.uint8)})
    sets = [load_scene_dataset(tmp_path / d, bands=6) for d in ("tif", "npy", "mat")]
    for ds in sets:
        assert ds.classes == ["1", "2", "3"] and len(ds.train) + len(ds.calib) + len(ds.val) == int((labels > 0).sum())
        np.testing.assert_array_equal(ds.val.patches, sets[0].val.patches)
        np.testing.assert_array_equal(ds.val.labels, sets[0].val.labels)
        assert np.isfinite(ds.train.patches).all() and (ds.train.patches >= -1000).all()
    ds = sets[0]
    ids = [set(s.ids) for s in (ds.train, ds.calib, ds.val)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])            # disjoint
    assert all(set(s.labels.tolist()) == {0, 1, 2} for s in (ds.train, ds.calib, ds.val))   # stratified
    assert len(ds.preprocess.mean) == 6
    assert ds.split_hash() != sets[1].split_hash()          # the scene's name is part of what was split


def test_scene_errors_name_the_file(tmp_path):
    cube, labels = synthetic_scene(size=20, bands=4, classes=2, seed=1)
    np.save(tmp_path / "a.npy", cube)
    with pytest.raises(EdgevitError, match="a.npy has no label raster beside it.*a_gt.tif"):
        load_scene_dataset(tmp_path / "a.npy", bands=4)
    np.save(tmp_path / "a_gt.npy", labels[:10])
    with pytest.raises(EdgevitError, match=r"a_gt.npy is 10 x 20, its scene .*a.npy is 20 x 20"):
        load_scene_dataset(tmp_path / "a.npy", bands=4)
    np.save(tmp_path / "a_gt.npy", labels)
    with pytest.raises(EdgevitError, match="has 4 bands; the model takes 16"):
        load_scene_dataset(tmp_path / "a.npy", bands=16)
    np.save(tmp_path / "a_gt.npy", labels + 0.5)
    with pytest.raises(EdgevitError, match="labels must be whole numbers"):
        load_scene_dataset(tmp_path / "a.npy", bands=4)
    with pytest.raises(EdgevitError, match="does not exist"):
        load_scene_dataset(tmp_path / "missing.tif", bands=4)
    (tmp_path / "a_gt.npy").unlink()
    (tmp_path / "a_gt.tif").write_bytes(b"not a tiff")
    with pytest.raises(EdgevitError, match="cannot read label raster .*a_gt.tif as a GeoTIFF"):
        load_scene_dataset(tmp_path / "a.npy", bands=4)


# -- scene mapping -------------------------------------------------------------------------------------------

class _LinearEngine:
    """A deterministic stand-in engine: class scores are fixed linear functions of the patch."""

    def __init__(self, bands, classes, batch=1):
        self.w = np.random.default_rng(0).normal(size=(bands * 64, classes)).astype(np.float32)
        self.input_shape, self.output_shape = (batch, bands, 8, 8), (batch, classes)

    def infer(self, x):
        return x.reshape(len(x), -1) @ self.w

    def close(self):
        pass


class _Runtime:
    def __init__(self, bands, classes):
        from edgevit.data.preprocess import PatchPreprocess

        self.preprocess = PatchPreprocess(bands=bands)
        self.labels = [f"c{i}" for i in range(classes)]
        self.current, self.backend, self.bundle = "p8", "test", "test-bundle"
        self._runners = {"p8": _LinearEngine(bands, classes, batch=4)}

    def preset(self, name):
        return name

    def runner(self, name):
        return self._runners[name]


def test_map_scene_is_tile_independent_and_keeps_the_georeference(tmp_path):
    import rasterio

    from edgevit.runtime.mapping import MapOptions, map_scene

    src = write_synthetic_scene(tmp_path, size=37, bands=5, classes=3, seed=2)
    with rasterio.open(src) as f:
        cube = np.moveaxis(f.read(), 0, -1)
        crs, transform = f.crs, f.transform
    cube[5, 6, :] = np.nan                                            # a pixel with no valid band
    write_geotiff(src, cube, {"crs": crs, "transform": transform})
    rt = _Runtime(5, 3)
    maps = []
    for tile in (1, 7, 16, 64):
        out = tmp_path / f"map{tile}.tif"
        summary = map_scene(rt, src, out, MapOptions(tile=tile, progress=False))
        with rasterio.open(out) as f:
            maps.append(f.read(1))
            assert f.crs == crs and f.transform == transform and f.nodata == 0
        assert summary["pixels"]["nodata"] == 1
    for m in maps[1:]:
        np.testing.assert_array_equal(m, maps[0])
    rows, cols = np.mgrid[0:37, 0:37]
    whole = patches_at(pad_scene(cube), rows.ravel(), cols.ravel())
    expected = (rt._runners["p8"].infer(whole).argmax(-1) + 1).reshape(37, 37)
    expected[5, 6] = 0
    np.testing.assert_array_equal(maps[0], expected)
    assert not list(tmp_path.glob(".*.partial"))


def test_map_refuses_image_bundles_and_band_mismatch(tmp_path):
    from edgevit.data.preprocess import Preprocess
    from edgevit.runtime.mapping import MapOptions, map_scene

    src = write_synthetic_scene(tmp_path, size=12, bands=5, classes=3, seed=2)
    rt = _Runtime(4, 3)
    with pytest.raises(EdgevitError, match="has 5 bands; the bundle's model takes 4"):
        map_scene(rt, src, tmp_path / "m.tif", MapOptions(progress=False))
    rt.preprocess = Preprocess(resize=32, crop=32)
    with pytest.raises(EdgevitError, match="classifies images, not scene pixels"):
        map_scene(rt, src, tmp_path / "m.tif", MapOptions(progress=False))


# -- through the pipeline ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wmf_bundle(tmp_path_factory):
    from edgevit.build.builder import BuildOptions, build
    from edgevit.build.train import TrainConfig, train

    base = tmp_path_factory.mktemp("wmf")
    train(TrainConfig(model="wetmapformer", epochs=4, batch_size=128, lr=1e-3, weight_decay=0.1, warmup_epochs=1,
                      out=str(base / "wmf.pt")))
    out = build(BuildOptions(target="x86-cpu", checkpoint=str(base / "wmf.pt"), out=str(base / "bundle"),
                             cache_dir=str(base / "cache"), log=lambda m: None, measure=False))
    return out, base


def test_wetmapformer_bundle_reports_oa_and_kappa_and_int8_agrees(wmf_bundle):
    out, _ = wmf_bundle
    m = read_manifest(out).to_dict()
    assert m["model"]["family"] == "wetmapformer" and m["preprocess"]["kind"] == "patches"
    assert m["data"]["name"] == "synthetic-wetland" and m["labels"][0] == "open water"
    assert len(m["preprocess"]["mean"]) == 16                        # the normalisation travels in the bundle
    (p,) = m["presets"]
    assert p["torch"]["top1"] >= 0.9 and p["torch"]["kappa"] >= 0.85
    for b, e in p["engines"].items():
        # Not measured (measure=False): the preference order ships the first candidate that passes the gate
        # (INT8 where its kernels' rounding on this host keeps it inside the gate).
        check_unmeasured_choice(e, m["precision"][0])
        assert e["agreement"] >= 0.98 and 0.85 <= e["kappa"] <= 1.0, (b, e["gate"])
        int8 = [c for c in e["candidates"] if c["precision"] == "int8" and not c.get("skipped")]
        assert int8 and all("kappa" in c and "agreement" in c for c in int8)   # INT8 was built and validated


def test_map_command_end_to_end(wmf_bundle, tmp_path):
    import rasterio
    from click.testing import CliRunner

    from edgevit.cli import cli

    out, _ = wmf_bundle
    src = write_synthetic_scene(tmp_path / "scene")                  # the scene the model was trained on
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = CliRunner().invoke(cli, ["map", str(out), str(src), "--out", str(tmp_path / "classes.tif"),
                                     "--preview", str(tmp_path / "classes.png"), "--tile", "40"])
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "classes.tif") as f, rasterio.open(src.with_name("wetland_gt.tif")) as g:
        pred, gt = f.read(1), g.read(1)
        assert f.crs == g.crs and f.transform == g.transform
    labelled = gt > 0
    assert (pred[labelled] == gt[labelled]).mean() >= 0.9
    assert (tmp_path / "classes.png").stat().st_size > 10_000
    assert open_raster(tmp_path / "classes.tif").bands == 1
    assert create_model("wetmapformer").variant == "wetmapformer"


def test_export_checks_parity_even_with_fewer_samples_than_the_batch(tmp_path):
    from edgevit.build.export import export_preset

    model = create_model("wetmapformer").eval()
    sample = np.random.default_rng(0).normal(size=(3, 16, 8, 8)).astype(np.float32)
    report = export_preset(model, model.presets()[0], tmp_path / "m.onnx", sample, batch=8)
    assert report.parity_samples == 8 and 0 < report.parity_max_abs < 1e-3
