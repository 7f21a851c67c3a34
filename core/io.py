"""Image I/O at the API boundary: every image leaves here as RGB, uint8, HxWx3.

``read_image`` decodes by content (not extension), converts grayscale, palette, RGBA and 16-bit images, and raises
``ImageReadError`` with a human-readable reason for anything it cannot turn into a field: missing, unreadable,
zero-byte, truncated, corrupt, non-image or oversized files. Complete 8-bit RGB JPEG and PNG files (what microscope
cameras write) are decoded by OpenCV, 1.5x faster than Pillow; everything else, and anything OpenCV cannot decode
to the size Pillow read from the header, goes through Pillow.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

MAX_PIXELS = 250_000_000  # larger images are refused (decompression bombs; tile whole slides first)


class ImageReadError(Exception):
    """An input file could not be read as an image; the message says why."""


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8 HxWx3.

    Conversions: grayscale -> 3 channels; palette/CMYK/LA -> RGB; RGBA -> RGB composited on white; 16-bit -> 8-bit
    by the image's own range (``>> 8`` when it uses more than 8 bits). Raises ``ImageReadError``.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImageReadError(f"cannot access file: {e.strerror or e}") from None
    if size == 0:
        raise ImageReadError("empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageReadError(f"image too large: {w}x{h} px > {max_pixels} px; tile it first")
            if im.mode == "RGB" and im.format in ("JPEG", "PNG"):
                fast = _decode_cv2(path, im.format, (h, w))
                if fast is not None:
                    return fast
            im.load()
            return _to_rgb8(im)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError("not an image file (unrecognized format)") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"image too large: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            msg = f"truncated image file ({msg})"
        raise ImageReadError(f"cannot decode image: {msg}") from None


def read_sample(paths: list, n: int, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """At most ``n`` of ``paths`` drawn at random (``seed``; kept in their given order) read as ``read_image`` reads
    them: ``(images, notes)``, a note per file that could not be read (skipped)."""
    rng = np.random.default_rng(seed)
    picked = [paths[i] for i in sorted(rng.choice(len(paths), min(n, len(paths)), replace=False))] if paths else []
    images, notes = [], []
    for p in picked:
        try:
            images.append(read_image(p))
        except ImageReadError as e:
            notes.append(f"{p}: {e} (skipped)")
    return images, notes


def _decode_cv2(path: Path, fmt: str, hw: tuple[int, int]) -> np.ndarray | None:
    """OpenCV decode of a complete JPEG (ends with EOI) or PNG (has IEND) file, EXIF orientation ignored as Pillow
    does; None when the file is not complete or the result is not ``hw`` RGB."""
    import cv2

    data = np.fromfile(path, np.uint8)
    tail = data[-16:].tobytes()
    if (fmt == "JPEG" and not tail.rstrip(b"\x00").endswith(b"\xff\xd9")) or (fmt == "PNG" and b"IEND" not in tail):
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None or bgr.shape != (*hw, 3) or bgr.dtype != np.uint8:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _to_rgb8(im) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        hi = float(a.max()) if a.size else 0.0
        a = a / 257.0 if hi > 255 else a
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        from PIL import Image

        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    if mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im))


def write_image(path: str | os.PathLike, image: np.ndarray, quality: int = 90) -> None:
    """Write an RGB uint8 image (JPEG or PNG by suffix)."""
    from PIL import Image

    Image.fromarray(image).save(path, quality=quality)


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Pad an RGB image to a square by replicating its border, then resize to ``size`` x ``size`` (uint8)."""
    import cv2

    h, w = image.shape[:2]
    if h != w:
        d = abs(h - w)
        a, b = d // 2, d - d // 2
        image = cv2.copyMakeBorder(image, a if h < w else 0, b if h < w else 0, a if w < h else 0,
                                   b if w < h else 0, cv2.BORDER_REPLICATE)
    if image.shape[0] != size:
        interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
        image = cv2.resize(image, (size, size), interpolation=interp)
    return image


def safe_name(name: str) -> str:
    """A file-name-safe version of a smear id or class label (letters, digits and ``-_.~`` kept, others ``_``)."""
    return "".join(ch if ch.isalnum() or ch in "-_.~" else "_" for ch in str(name)) or "_"
