"""Image decoding: any mode to RGB, EXIF orientation applied, decompression bombs refused; the
`first` stage's pixels (no torch: stage first needs none)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
MAX_PIXELS = 50_000_000
FIRST_SIZE = 32

# What the library accepts as one image: a file path, encoded bytes, a PIL image, or an HxWx3 uint8 array.
ImageInput = str | Path | bytes | Image.Image | np.ndarray


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any PIL mode; 16- and 32-bit grey scaled to 8 bits rather than clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            top = max(float(arr.max()), 1.0) if arr.max() > 1.0 else 1.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def read_file(path: str | Path, name: str | None = None) -> bytes:
    """A file's bytes; a missing, unreadable or directory path is a one-line ImageError."""
    label = name or str(path)
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ImageError(f"{label}: no such file") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{label}: is a directory, not an image file") from exc
    except PermissionError as exc:
        raise ImageError(f"{label}: permission denied") from exc
    except OSError as exc:
        raise ImageError(f"{label}: cannot be read ({exc})") from exc


def load_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Decode an image fully (truncation shows only on load) and return it as RGB.

    Raises ImageError naming the file and the reason."""
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    data = source if isinstance(source, bytes) else read_file(source, label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageError(f"{label}: {img.width}x{img.height} is over the {MAX_PIXELS:,}-pixel cap")
                img.load()
                upright = ImageOps.exif_transpose(img) or img
                return to_rgb(upright)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{label}: refused as a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{label}: not a readable image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{label}: corrupt or truncated image ({exc})") from exc


def as_image(value: ImageInput, name: str | None = None) -> Image.Image:
    """Any accepted image input as an RGB PIL image (arrays: HxWx3 uint8, or HxW grey)."""
    if isinstance(value, Image.Image):
        return to_rgb(value)
    if isinstance(value, np.ndarray):
        if value.ndim == 2 or (value.ndim == 3 and value.shape[2] == 3):
            return to_rgb(Image.fromarray(np.ascontiguousarray(value, dtype=np.uint8)))
        raise ImageError(f"{name or 'array'}: expected an HxWx3 or HxW uint8 array, got shape {value.shape}")
    return load_image(value, name)


def first_stage_pixels(img: Image.Image) -> np.ndarray:
    """(32, 32, 3) uint8: the `first` stage's input, resized bicubic when not 32x32."""
    if img.size != (FIRST_SIZE, FIRST_SIZE):
        img = img.resize((FIRST_SIZE, FIRST_SIZE), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def first_stage_vectors(pixels: np.ndarray) -> np.ndarray:
    """`first` vectors from a (N, 32, 32, 3) uint8 batch: channel-first, flattened, in [0, 1]
    (torchvision's ToTensor scaling, bit for bit: one float32 division by 255)."""
    x = pixels.transpose(0, 3, 1, 2).reshape(pixels.shape[0], -1).astype(np.float32)
    x /= np.float32(255.0)
    return x


def array_to_image(arr: np.ndarray) -> Image.Image:
    """An HxWx3 uint8 array (a CIFAR-10 record) as an RGB image."""
    return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), "RGB")


def png_bytes(img: Image.Image, scale: int = 1) -> bytes:
    """An image as PNG bytes, scaled up `scale` times with nearest-neighbor pixels."""
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
