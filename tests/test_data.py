import random

import numpy as np
import pytest
from PIL import Image

from edgevit.data.datasets import load_digits, load_image_folder
from edgevit.data.preprocess import Preprocess
from edgevit.errors import EdgevitError


def test_digits_splits_are_disjoint_stratified_and_reproducible():
    a, b = load_digits(), load_digits()
    ids = [set(s.ids) for s in (a.train, a.calib, a.val)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(len(s) for s in ids) == 1797
    assert a.split_hash() == b.split_hash()
    assert len(a.val) == pytest.approx(0.2 * 1797, abs=10) and len(a.calib) == pytest.approx(0.1 * 1797, abs=10)
    assert set(np.unique(a.calib.labels)) == set(range(10))  # every class in every split
    assert load_digits(seed=1).split_hash() != a.split_hash()


def test_digits_preprocess_output():
    ds = load_digits()
    x, y = ds.val.arrays(ds.preprocess, limit=5)
    assert x.shape == (5, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    # Background pixels (0) map to (0 - 0.5) / 0.5 = -1; the maximum stays within [-1, 1].
    assert x.min() == pytest.approx(-1.0) and x.max() <= 1.0


def test_preprocess_resize_crop_normalise_by_hand():
    pre = Preprocess(resize=4, crop=2, mean=(0.5,), std=(0.25,), interpolation="nearest", channels=1)
    img = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = pre(img)
    # nearest 8->4 keeps every other pixel starting at 1; centre crop 2x2 keeps rows/cols 1..2 of that.
    src = img[1::2, 1::2][1:3, 1:3].astype(np.float32) / 255.0
    np.testing.assert_allclose(out[0], (src - 0.5) / 0.25, rtol=1e-6)


def test_preprocess_accepts_pil_float_and_batches():
    pre = Preprocess(resize=36, crop=32, interpolation="bilinear")
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    a = pre(rgb)
    b = pre(Image.fromarray(rgb))
    c = pre(rgb.astype(np.float32) / 255.0)
    assert a.shape == (3, 32, 32)
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a, c, atol=0.02)
    assert pre.batch([rgb, rgb]).shape == (2, 3, 32, 32)
    assert pre.batch(np.stack([rgb, rgb])).shape == (2, 3, 32, 32)
    ready = pre.batch([rgb])
    assert pre.batch(ready, preprocessed=True) is ready
    with pytest.raises(EdgevitError, match="preprocessed=True"):   # normalised input is never guessed
        pre.batch(ready)


def test_preprocess_roundtrip_and_bad_fields():
    pre = Preprocess(resize=256, crop=224)
    assert Preprocess.from_dict(pre.to_dict()) == pre
    with pytest.raises(EdgevitError, match="unknown field.*'sizes'"):
        Preprocess.from_dict({**pre.to_dict(), "sizes": 3})
    with pytest.raises(EdgevitError, match="interpolation 'lanczos5'"):
        Preprocess(resize=8, crop=8, interpolation="lanczos5")


def test_train_transform_is_seeded_and_varies():
    pre = Preprocess(resize=32, crop=32, train_scale=(0.5, 1.0), hflip=0.5)
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    a = pre.train(img, random.Random(3))
    b = pre.train(img, random.Random(3))
    c = pre.train(img, random.Random(4))
    assert a.shape == (3, 32, 32)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def _folder(root, classes, n=3, size=(20, 16)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(d / f"{i}.png")


def test_image_folder_loads_with_disjoint_calibration(tmp_path):
    _folder(tmp_path, ["cat", "dog"], n=10)
    ds = load_image_folder(tmp_path, crop=16)
    assert ds.classes == ["cat", "dog"]
    assert len(ds.val) == 20 and len(ds.train) + len(ds.calib) == 20 and len(ds.calib) >= 2
    assert not set(ds.train.ids) & set(ds.calib.ids)
    x, y = ds.val.arrays(ds.preprocess)
    assert x.shape == (20, 3, 16, 16) and sorted(set(y.tolist())) == [0, 1]


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(EdgevitError, match=f"data folder {tmp_path / 'nope'} does not exist"):
        load_image_folder(tmp_path / "nope", crop=16)
    _folder(tmp_path / "one", ["cat"])
    with pytest.raises(EdgevitError, match="1 class folder.*cat.*at least 2"):
        load_image_folder(tmp_path / "one", crop=16)
    _folder(tmp_path / "bad", ["cat", "dog"])
    (tmp_path / "bad" / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(EdgevitError, match=r"cannot read image .*broken\.jpg"):
        load_image_folder(tmp_path / "bad", crop=16)
    (tmp_path / "noval" / "train" / "a").mkdir(parents=True)
    with pytest.raises(EdgevitError, match="has no val/ folder"):
        load_image_folder(tmp_path / "noval", crop=16)


def test_single_preprocessed_chw_array_is_one_image():
    pre = Preprocess(resize=32, crop=32)
    chw = np.zeros((3, 32, 32), np.float32)
    assert pre.batch(chw, preprocessed=True).shape == (1, 3, 32, 32)
    with pytest.raises(EdgevitError, match="expected an HxW or HxWxC image array"):
        pre.batch(chw)          # 3 x 32 x 32 is not an image: said, not guessed


def test_calib_folder_checked_like_val(tmp_path):
    _folder(tmp_path, ["cat", "dog"])
    (tmp_path / "calib" / "bird").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "calib" / "bird" / "b.png")
    with pytest.raises(EdgevitError, match="calib has classes not in train/: bird"):
        load_image_folder(tmp_path, crop=16)
