"""Image I/O: every kind of bad or unusual file gives an RGB uint8 image or a clear ImageReadError."""

import numpy as np
import pytest
from PIL import Image

from core.io import ImageReadError, read_image, square_resize


def _rgb(h=20, w=30):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_rgb_png_roundtrip(tmp_path):
    a = _rgb()
    Image.fromarray(a).save(tmp_path / "a.png")
    b = read_image(tmp_path / "a.png")
    assert b.dtype == np.uint8 and b.shape == (20, 30, 3)
    assert np.array_equal(a, b)


def test_fast_decode_equals_pillow_and_keeps_truncation_errors(tmp_path, monkeypatch):
    import core.io as io

    rng = np.random.default_rng(1)
    a = (rng.integers(0, 40, (120, 160, 3)) + np.linspace(0, 200, 160)[None, :, None]).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=92)
    Image.fromarray(a).save(tmp_path / "a.png")
    calls = []
    real = io._decode_cv2
    monkeypatch.setattr(io, "_decode_cv2", lambda *args: calls.append(args[1]) or real(*args))
    for name in ("a.jpg", "a.png"):
        fast = read_image(tmp_path / name)
        with Image.open(tmp_path / name) as im:
            assert np.array_equal(fast, np.asarray(im.convert("RGB")))
    assert calls == ["JPEG", "PNG"]
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(tmp_path / "cut.jpg")


def test_grayscale_becomes_three_equal_channels(tmp_path):
    g = np.arange(200, dtype=np.uint8).reshape(10, 20)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    b = read_image(tmp_path / "g.png")
    assert b.shape == (10, 20, 3)
    assert np.array_equal(b[..., 0], g) and np.array_equal(b[..., 2], g)


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255
    a[0, 0, 3] = 0  # transparent -> white
    a[1:, :, 3] = 255
    a[0, 1:, 3] = 255
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    b = read_image(tmp_path / "a.png")
    assert b.shape == (4, 4, 3)
    assert tuple(b[0, 0]) == (255, 255, 255)
    assert tuple(b[2, 2]) == (255, 0, 0)


def test_16bit_scaled_to_8bit(tmp_path):
    a = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0..65535
    Image.fromarray(a).save(tmp_path / "a16.png")
    b = read_image(tmp_path / "a16.png")
    assert b.dtype == np.uint8 and b.shape == (4, 4, 3)
    assert b[0, 0, 0] == 0 and b[3, 3, 0] == 255
    assert np.all(np.diff(b[..., 0].ravel().astype(int)) >= 0)


def test_palette_image(tmp_path):
    Image.fromarray(_rgb()).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (20, 30, 3)


def test_wrong_extension_is_decoded_by_content(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "really_png.jpg", format="PNG")
    assert read_image(tmp_path / "really_png.jpg").shape == (20, 30, 3)


@pytest.mark.parametrize("kind, fragment", [
    ("empty", "empty file"),
    ("text", "not an image"),
    ("truncated", "truncated"),
    ("corrupt", "cannot decode"),
    ("missing", "cannot access"),
    ("directory", "cannot"),
])
def test_bad_files_raise_with_reason(tmp_path, kind, fragment):
    p = tmp_path / f"{kind}.jpg"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not an image\n")
    elif kind == "truncated":
        Image.fromarray(_rgb(200, 200)).save(tmp_path / "full.jpg", quality=95)
        data = (tmp_path / "full.jpg").read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":
        Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.png")
        data = bytearray((tmp_path / "full.png").read_bytes())
        data[60:200] = b"\x00" * 140  # smash the image data (the header stays valid)
        p.write_bytes(bytes(data))
    elif kind == "directory":
        p.mkdir()
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert fragment in str(e.value)


def test_too_large_refused_before_decoding(tmp_path):
    Image.fromarray(_rgb(100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="too large"):
        read_image(tmp_path / "big.png", max_pixels=5000)


def test_square_resize_pads_without_distorting():
    a = np.zeros((10, 30, 3), np.uint8)
    a[:, 10:20] = 200
    b = square_resize(a, 30)
    assert b.shape == (30, 30, 3)
    assert b[15, 15, 0] == 200 and b[15, 0, 0] == 0


def test_crop_square_centres_and_pads_at_edges():
    from pipelines.crop import crop_square

    im = np.zeros((100, 80, 3), np.uint8)
    im[40:60, 30:50] = 255
    c = crop_square(im, [30, 40, 50, 60], margin=0.5)
    assert c.shape == (40, 40, 3) and c[20, 20, 0] == 255 and c[0, 0, 0] == 0
    for box in ([0, 0, 5, 5], [75, 95, 80, 100], [79, 99, 80, 100], [-50, -50, -40, -40]):
        c = crop_square(im, box, margin=0.75)
        assert c.ndim == 3 and c.shape[0] == c.shape[1] and c.dtype == np.uint8
    # a cell at the field's edge stays centred; beyond the field: the median colour, no mirrored cells
    im[:, :] = 100
    im[0:20, 0:20] = 255
    c = crop_square(im, [0, 0, 20, 20], margin=0.5)
    assert c.shape == (40, 40, 3) and c[20, 20, 0] == 255 and c[15, 15, 0] == 255 and c[5, 5, 0] == 100
