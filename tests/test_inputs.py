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
    with pytest.raises(EdgevitError, match=r"value_range=\(0, 2\): expected \(0, 1\), \(0, 255\) or \(0, 65535\)"):
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


def _forms(gray: np.ndarray, tmp_path, i: int) -> dict:
    """One grayscale digit in every form the input contract takes: files, PIL images, arrays of each dtype."""
    g16 = gray.astype(np.uint16) * 257                      # the same picture at 16 bits: v x 257
    f01 = gray.astype(np.float32) / 255
    files = {"png8": tmp_path / f"{i}-8.png", "png16": tmp_path / f"{i}-16.png", "tiff-float": tmp_path / f"{i}-f.tif",
             "png-exif-rotated": tmp_path / f"{i}-exif.png"}
    Image.fromarray(gray).save(files["png8"])
    Image.fromarray(g16).save(files["png16"])
    Image.fromarray(f01, mode="F").save(files["tiff-float"])
    # stored rotated 90 degrees, with EXIF orientation 6 (rotate 90 clockwise to view): as a phone writes it
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(gray, 1)).save(files["png-exif-rotated"], exif=exif)
    forms = {name: path for name, path in files.items()}
    forms.update({"pil L": Image.fromarray(gray), "pil RGB": Image.fromarray(gray).convert("RGB"),
                  "pil I;16": Image.fromarray(g16), "pil F 0..1": Image.fromarray(f01, mode="F"),
                  "pil I": Image.fromarray(gray.astype(np.int32), mode="I"),
                  "uint8": gray, "uint16": g16, "int64": gray.astype(np.int64), "float32 0..1": f01,
                  "float64 0..255": gray.astype(np.float64), "float32 0..255 with value_range": gray.astype(np.float32)})
    return forms


def test_every_form_of_one_picture_gives_the_same_input(tmp_path):
    """A file, a PIL image and an array of any supported dtype, 16-bit and float and EXIF-rotated included, of
    real digits: the model sees the same tensor, so the labels are the same."""
    ds = load_digits()
    pre = Preprocess(resize=32, crop=32, channels=1, mean=(0.5,), std=(0.5,))
    for i in range(6):
        gray = np.asarray(ds.val.image(i).convert("L"))
        want = pre.batch(gray)
        for name, form in _forms(gray, tmp_path, i).items():
            vr = (0, 255) if name.endswith("value_range") else None
            np.testing.assert_array_equal(pre.batch(form, value_range=vr), want, err_msg=f"digit {i}: {name}")
    # A float PIL image follows value_range too: 0..1 as given, not read as 0..255
    f01 = Image.fromarray(np.asarray(ds.val.image(0).convert("L"), np.float32) / 255, mode="F")
    np.testing.assert_array_equal(pre.batch(f01, value_range=(0, 1)), pre.batch(np.asarray(ds.val.image(0).convert("L"))))


def test_a_jpeg_is_turned_as_its_exif_orientation_says(tmp_path):
    """A phone's JPEG: pixels stored sideways, orientation 6 (turn 90 degrees clockwise to view)."""
    ds = load_digits()
    upright = np.asarray(ds.val.image(3).convert("RGB").resize((64, 48)))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(np.rot90(upright, 1)).save(path, quality=95, exif=exif)
    with Image.open(path) as im:
        stored = np.asarray(im)                       # as decoded, still sideways
    assert stored.shape[:2] == (64, 48)
    np.testing.assert_array_equal(PRE.batch(str(path)), PRE.batch(np.rot90(stored, -1)))


def test_an_image_file_with_more_pixels_than_allowed_is_refused_before_decoding(tmp_path):
    """A 14000x14000 PNG of one colour is about 190 KB on disk and 588 MB decoded."""
    big = tmp_path / "bomb.png"
    Image.new("L", (14000, 14000)).save(big, optimize=True)
    assert big.stat().st_size < 1_000_000
    with pytest.raises(EdgevitError, match=r"image .*bomb.png: .*196,000,000 pixels.*max_pixels"):
        PRE.batch(str(big))
    small = tmp_path / "small.png"
    Image.new("L", (300, 200)).save(small)
    with pytest.raises(EdgevitError, match=r"300x200 = 60,000 pixels, more than max_pixels=50,000"):
        PRE.batch(str(small), max_pixels=50_000)
    assert PRE.batch(str(small), max_pixels=60_000).shape == (1, 3, 32, 32)
