"""Synthetic door-camera frames made from real photographs.

A photo is pasted into a plain 'porch' background of the camera's size, with
the small shifts, scale changes, blur and brightness changes of someone
walking up.  Used by the demo, `lock bench` and the benchmarks; never by the
decision itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from lock.errors import LockError


def background(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A textured, faceless (H, W, 3) uint8 scene: wall gradient, a door frame, noise."""
    h, w = size
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    base = np.array([150, 140, 125], np.float32) * (0.75 + 0.25 * y) * (0.9 + 0.1 * x)
    img = base + rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    img[:, int(w * 0.08):int(w * 0.12)] *= 0.6   # door frame, left
    img[:, int(w * 0.88):int(w * 0.92)] *= 0.6   # door frame, right
    return np.clip(img, 0, 255).astype(np.uint8)


def paste(scene: np.ndarray, photo: np.ndarray, height: int, centre: tuple[float, float],
          blur: float = 0.0, gain: float = 1.0) -> np.ndarray:
    """A copy of ``scene`` with ``photo`` resized to ``height`` px tall at ``centre`` (x, y)."""
    out = scene.copy()
    ph, pw = photo.shape[:2]
    nh = max(8, int(height))
    nw = max(8, int(round(pw * nh / ph)))
    p = cv2.resize(photo, (nw, nh), interpolation=cv2.INTER_AREA if nh < ph else cv2.INTER_LINEAR)
    if blur > 0:
        p = cv2.GaussianBlur(p, (0, 0), blur)
    if gain != 1.0:
        p = np.clip(p.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    H, W = out.shape[:2]
    x1, y1 = int(centre[0] - nw / 2), int(centre[1] - nh / 2)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x1 + nw, W), min(y1 + nh, H)
    if sx2 > sx1 and sy2 > sy1:
        out[sy1:sy2, sx1:sx2] = p[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1]
    return out


def walkup(photo: np.ndarray, size: tuple[int, int], n: int, rng: np.random.Generator,
           scene: np.ndarray | None = None, face_box: np.ndarray | None = None,
           face_px: tuple[float, float] = (120, 200)) -> list[np.ndarray]:
    """``n`` frames of a person (their photo) at the door: jitter in place, scale, blur, light.

    With ``face_box`` (x1, y1, x2, y2 of the face in the photo), the photo is
    scaled so that the face box's shorter side is ``face_px``, as at a door, and placed near
    the middle of the frame; without it the photo fills 60-85 % of the height.
    """
    h, w = size
    scene = background(size) if scene is None else scene
    ph, pw = photo.shape[:2]
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.5)
    if face_box is None:
        base_h = h * rng.uniform(0.6, 0.85)
    else:
        x1, y1, x2, y2 = (float(v) for v in face_box)
        base_h = ph * rng.uniform(*face_px) / max(min(x2 - x1, y2 - y1), 1.0)
        k = base_h / ph
        cx -= ((x1 + x2) / 2 - pw / 2) * k  # put the face, not the photo, at (cx, cy)
        cy -= ((y1 + y2) / 2 - ph / 2) * k
    frames = []
    for _ in range(n):
        frames.append(paste(scene, photo, base_h * rng.uniform(0.93, 1.07),
                            (cx + rng.normal(0, w * 0.01), cy + rng.normal(0, h * 0.01)),
                            blur=float(abs(rng.normal(0, 0.6))), gain=float(rng.uniform(0.85, 1.15))))
    return frames


def default_photos() -> Path:
    """The test photographs fetched by ``python -m tools.photos`` (cache), if present."""
    root = Path(os.environ.get("LOCK_PHOTO_CACHE", Path.home() / ".cache" / "lock-photos")) / "photos"
    if not root.is_dir():
        raise LockError(f"no photos at {root}: run `python -m tools.photos` in the project, or give --photos DIR")
    return root


def bench_frames(photos: str | os.PathLike | None, size: tuple[int, int], count: int,
                 seed: int = 0) -> list[np.ndarray]:
    """``count`` frames of ``size`` (h, w), each one real photo pasted into the scene."""
    from lock.imageio import iter_images, load_image

    root = Path(photos) if photos else default_photos()
    paths = iter_images([root])
    if not paths:
        raise LockError(f"{root}: no images found")
    rng = np.random.default_rng(seed)
    scene = background(size, seed)
    picks = rng.choice(len(paths), size=min(count, len(paths)), replace=False)
    return [walkup(load_image(paths[i]), size, 1, rng, scene)[0] for i in picks]
