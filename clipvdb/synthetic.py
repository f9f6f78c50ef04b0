"""A small synthetic 10-class image set that clipvdb generates itself, for offline demos and tests.

Each class is a coloured shape on a noisy background; position, size and noise vary per image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = [
    "red-circle",
    "green-square",
    "blue-triangle",
    "yellow-bar",
    "purple-ring",
    "orange-cross",
    "cyan-diamond",
    "white-dots",
    "black-stripe",
    "pink-blob",
]
_COLOURS = [
    (220, 40, 40),
    (40, 180, 60),
    (50, 80, 220),
    (230, 210, 40),
    (140, 60, 170),
    (240, 140, 30),
    (40, 200, 210),
    (245, 245, 245),
    (20, 20, 20),
    (240, 120, 180),
]


def make_image(label: int, rng: np.random.Generator, size: int = 32) -> Image.Image:
    bg = rng.integers(60, 180, size=3)
    arr = np.clip(bg + rng.normal(0, 18, size=(size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(img)
    c = tuple(int(v) for v in np.clip(np.array(_COLOURS[label]) + rng.integers(-25, 26, 3), 0, 255))
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    box = (cx - r, cy - r, cx + r, cy + r)
    shape = label
    if shape == 0:
        d.ellipse(box, fill=c)
    elif shape == 1:
        d.rectangle(box, fill=c)
    elif shape == 2:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=c)
    elif shape == 3:
        d.rectangle((0, cy - r // 3, size, cy + r // 3), fill=c)
    elif shape == 4:
        d.ellipse(box, outline=c, width=max(2, r // 3))
    elif shape == 5:
        d.rectangle((cx - r, cy - r // 4, cx + r, cy + r // 4), fill=c)
        d.rectangle((cx - r // 4, cy - r, cx + r // 4, cy + r), fill=c)
    elif shape == 6:
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=c)
    elif shape == 7:
        for _ in range(6):
            x, y = (int(v) for v in rng.integers(2, size - 2, 2))
            d.ellipse((x - 2, y - 2, x + 2, y + 2), fill=c)
    elif shape == 8:
        d.rectangle((cx - r // 3, 0, cx + r // 3, size), fill=c)
    else:
        pts = [
            (cx + int(r * np.cos(a)) + int(rng.integers(-3, 4)), cy + int(r * np.sin(a)))
            for a in np.linspace(0, 2 * np.pi, 9)[:-1]
        ]
        d.polygon(pts, fill=c)
    return img


def generate(root: Path, per_class: dict[str, int], seed: int = 0, size: int = 32) -> Path:
    """Write root/<split>/<class>/NNNN.png; `per_class` maps split -> images per class. Idempotent."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = make_image(label, rng, size)
                path = folder / f"{i:04d}.png"
                if not path.exists():
                    img.save(path)
    return root
