"""Image decoding: any mode to RGB, EXIF orientation applied, decompression bombs refused."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
MAX_PIXELS = 50_000_000
FIRST_SIZE = 32


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


def load_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """Decode an image fully (truncation shows only on load) and return it as RGB.

    Raises ImageError naming the file and the reason."""
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            fp = io.BytesIO(source) if isinstance(source, bytes) else source
            with Image.open(fp) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageError(f"{label}: {img.width}x{img.height} is over the {MAX_PIXELS:,}-pixel cap")
                img.load()
                img = ImageOps.exif_transpose(img) or img
                return to_rgb(img)
    except ImageError:
        raise
    except FileNotFoundError as exc:
        raise ImageError(f"{label}: no such file") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{label}: is a directory, not an image file") from exc
    except PermissionError as exc:
        raise ImageError(f"{label}: permission denied") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{label}: refused as a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{label}: not a readable image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{label}: corrupt or truncated image ({exc})") from exc


def first_stage_tensor(img: Image.Image) -> torch.Tensor:
    """(3, 32, 32) float tensor in [0, 1]: the `first` stage's input (ToTensor scaling)."""
    if img.size != (FIRST_SIZE, FIRST_SIZE):
        img = img.resize((FIRST_SIZE, FIRST_SIZE), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def array_to_image(arr: np.ndarray) -> Image.Image:
    """An HxWx3 uint8 array (a CIFAR-10 record) as an RGB image."""
    return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), "RGB")
