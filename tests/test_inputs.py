"""The input contract of ``Runtime.predict``: what it takes, and the one-line error for everything else."""

import numpy as np
import pytest
from PIL import Image

from edgevit.data.datasets import load_digits
from edgevit.data.preprocess import Preprocess, imagenet_preprocess
from edgevit.errors import EdgevitError

PRE = imagenet_preprocess(32)


@pytest.fixture(scope="module")
def digits():
    ds = load_digits()
    gray = [np.asarray(ds.val.image(i)) for i in range(12)]          # 8x8 uint8
    # RGB with distinct channels, so a channel mix-up would show.
    return [np.stack([g, g // 2, 255 - g], axis=-1).astype(np.uint8) for g in gray]


def test_uint8_float255_and_float01_give_identical_input(digits):
    im = digits[0]
    assert im.dtype == np.uint8 and im.ndim == 3
    a = PRE.batch(im)
    np.testing.assert_array_equal(a, PRE.batch(im.astype(np.float32)))            # 0..255, read from the values
    np.testing.assert_array_equal(a, PRE.batch(im.astype(np.float64) / 255.0))    # 0..1
    np.testing.assert_array_equal(a, PRE.batch(im.astype(np.int64)))               # integers are 0..255
    np.testing.assert_array_equal(a, PRE.batch(im.astype(np.float32) / 255, value_range=(0, 1)))
    np.testing.assert_array_equal(a, PRE.batch(Image.fromarray(im)))


def test_pil_images_of_any_mode_and_paths(digits, tmp_path):
    rgb = Image.fromarray(digits[1])
    for mode in ("L", "RGBA", "P", "CMYK", "LA", "I", "F", "1"):
        x = PRE.batch(rgb.convert(mode))
        assert x.shape == (1, 3, 32, 32) and np.isfinite(x).all(), mode
    rgb.save(tmp_path / "a.png")
    np.testing.assert_array_equal(PRE.batch(str(tmp_path / "a.png")), PRE.batch(rgb))
    np.testing.assert_array_equal(PRE.batch(tmp_path / "a.png"), PRE.batch(rgb))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(EdgevitError, match="bad.png: cannot read it"):
        PRE.batch(str(tmp_path / "bad.png"))


def test_batches_nhwc_lists_and_grayscale(digits):
    stack = np.stack(digits[:4])
    x = PRE.batch(stack)
    assert x.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(x, PRE.batch(list(stack)))
    gray = digits[2][..., 0]
    np.testing.assert_array_equal(PRE.batch(gray), PRE.batch(gray[..., None]))     # HxW == HxWx1
    assert PRE.batch([gray, digits[3]]).shape == (2, 3, 32, 32)
    assert PRE.batch([]).shape == (0, 3, 32, 32)


def test_preprocessed_input_only_when_said(digits):
    ready = PRE.batch(digits[:2])
    np.testing.assert_array_equal(PRE.batch(ready, preprocessed=True), ready)
    np.testing.assert_array_equal(PRE.batch(ready[0], preprocessed=True), ready[:1])
    with pytest.raises(EdgevitError, match="NHWC images.*preprocessed=True"):
        PRE.batch(ready)                                  # normalised NCHW is never guessed
    with pytest.raises(EdgevitError, match=r"preprocessed=True takes normalised float32 CHW \(3, 32, 32\)"):
        PRE.batch(np.zeros((1, 3, 24, 24), np.float32), preprocessed=True)
    with pytest.raises(EdgevitError, match="preprocessed=True takes normalised float32"):
        PRE.batch(ready.astype(np.float64), preprocessed=True)


@pytest.mark.parametrize("bad,message", [
    (None, "expected an image, a path, an array or a list of them, got NoneType"),
    (3.0, "expected an image, a path, an array or a list of them, got float"),
    (np.zeros((0, 0, 3), np.uint8), "empty image array"),
    (np.zeros((32, 32, 5), np.uint8), r"expected an HxW or HxWxC image array \(C = 1, 3 or 4\), got shape \(32, 32, 5\)"),
    (np.full((32, 32, 3), np.nan, np.float32), "holds NaN or inf"),
    (np.full((32, 32, 3), np.inf, np.float64), "holds NaN or inf"),
    (np.full((32, 32, 3), 300.0, np.float32), r"values span 300..300, outside the 0..255 range"),
    (np.full((32, 32, 3), -0.5, np.float32), r"outside the 0..1 range"),
    (np.zeros((2, 3, 32, 32), np.uint8), "a 4-D array must be NHWC images"),
    (np.zeros((32, 32, 3), bool), "dtype bool"),
])
def test_everything_else_is_one_clear_error(bad, message):
    with pytest.raises(EdgevitError, match=message):
        PRE.batch(bad)


def test_value_range_is_checked():
    with pytest.raises(EdgevitError, match=r"outside the 0..1 range"):
        PRE.batch(np.full((8, 8), 2.0, np.float32), value_range=(0, 1))
    with pytest.raises(EdgevitError, match=r"value_range=\(0, 2\): expected \(0, 1\) or \(0, 255\)"):
        PRE.batch(np.zeros((8, 8), np.float32), value_range=(0, 2))


def test_zero_size_pil_image():
    with pytest.raises(EdgevitError, match="empty image"):
        Preprocess(resize=36, crop=32).batch(Image.new("RGB", (0, 0)))


def test_predict_exact_labels_and_probabilities(built, digits):
    """On the runtime: the same labels for every encoding of the same images, probabilities and top-k."""
    import edgevit

    out, _, _ = built
    with edgevit.load(out) as rt:
        ref = rt.predict(digits)
        stack = np.stack(digits)
        for variant in (stack, stack.astype(np.float32), stack / 255.0, list(stack.astype(np.float64)),
                        [Image.fromarray(d) for d in digits]):
            assert list(rt.predict(variant).indices) == list(ref.indices)
        assert list(rt.predict(rt.preprocess.batch(stack), preprocessed=True).indices) == list(ref.indices)
        np.testing.assert_allclose(ref.probabilities.sum(-1), 1.0, rtol=1e-5)
        assert (ref.top_k[:, 0] == ref.indices).all() and ref.top_k.shape == (12, 5)
        top = ref.top(3)
        assert len(top) == 12 and top[0][0][0] == ref.labels[0] and top[0][0][1] >= top[0][1][1]
        with pytest.raises(EdgevitError, match="holds NaN or inf"):
            rt.predict(np.full((32, 32, 3), np.nan, np.float32))
        assert rt.in_flight == 0                           # a refused request leaves no trace


def test_latency_is_recorded_per_image(built, digits):
    import edgevit

    out, _, _ = built
    with edgevit.load(out) as rt:
        name = rt.current
        for _ in range(6):
            rt.predict(digits[0])
        single = rt.recent_p90()[name]
        for _ in range(6):
            rt.predict(digits[:8])
        # Eight images per call are eight requests' worth of time, not one slow request.
        assert rt.recent_p90(min_samples=12)[name] < 3 * single + 1.0
