"""Building blocks for end-to-end tests: recorded frames, settings, a running daemon."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np

from lock import config
from lock.imageio import load_image
from lock.scenes import background, walkup

SIZE = (480, 640)


def write_frames(directory: Path, frames: list[np.ndarray]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(directory / f"{i:05d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    return directory


def empty(n: int, seed: int = 1) -> list[np.ndarray]:
    return [background(SIZE, seed)] * n


_pipe = None


def face_box(image: np.ndarray) -> np.ndarray | None:
    """The main face's box in a photo (real detector), to size it like a face at a door."""
    global _pipe
    if _pipe is None:
        from lock.vision.pipeline import FacePipeline
        _pipe = FacePipeline(config.parse({"vision": {"min_face": 30}})).open()
    from lock.vision.pipeline import main_face
    faces = _pipe.detect(image)
    i = main_face(faces, image.shape)
    return None if i is None else faces.boxes[i]


def walk(photo: Path, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` frames of the person in ``photo`` at the door, face box 120-200 px on its shorter side."""
    image = load_image(photo)
    return walkup(image, SIZE, n, np.random.default_rng(seed), background(SIZE, 1), face_box=face_box(image))


def settings(tmp: Path, frames: Path | None = None, **sections) -> config.Settings:
    data = {
        "camera": {"source": "files", "path": str(frames or tmp), "fps": 6, "loop": False},  # slow enough for a loaded CI machine
        "gallery": {"path": str(tmp / "gallery.db")},
        "audit": {"path": str(tmp / "audit.db")},
        "control": {"socket": str(tmp / "control.sock"), "group": None},
        "door": {"unlock_seconds": 0.6},
    }
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return config.parse(data, "test settings")


class Running:
    """A Daemon looping in a thread (signals stay with pytest's main thread)."""

    def __init__(self, daemon, *, stop_when_exhausted: bool = True) -> None:
        self.daemon = daemon
        self.events = []
        daemon.bus.subscribe(self.events.append)
        self._thread = threading.Thread(target=daemon.run, kwargs={"stop_when_exhausted": stop_when_exhausted},
                                        daemon=True)

    def __enter__(self) -> "Running":
        self.daemon.open()
        self._thread.start()
        return self

    def wait(self, timeout: float = 60.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the daemon did not finish the recording in time"

    def kinds(self, *kinds: str) -> list:
        return [e for e in self.events if e.kind in kinds]

    def __exit__(self, *exc) -> None:
        self.daemon.stop_event.set()
        self._thread.join(10)
        self.daemon.close()


def relay_history(factory, pin: str = "GPIO17") -> list[tuple[float, bool]]:
    """(seconds since the pin was made, level) of each change; gpiozero's mock records deltas."""
    out, t = [], 0.0
    for s in factory.pin(pin).states:
        t += s.timestamp
        out.append((t, bool(s.state)))
    return out


def active_spans(history: list[tuple[float, bool]]) -> list[float]:
    """Durations (s) of each stretch the pin was high."""
    spans, start = [], None
    for t, on in history:
        if on and start is None:
            start = t
        elif not on and start is not None:
            spans.append(t - start)
            start = None
    if start is not None:
        spans.append(float("inf"))
    return spans


def wait_until(pred, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()
