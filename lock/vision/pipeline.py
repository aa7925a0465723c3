"""The vision core as one object: detect → (quality, align) → embed.

This is what the CLI, the daemon and the benchmarks use; it knows nothing of
doors, galleries or networks.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from lock.config import QualitySettings, Settings, models_dir
from lock.vision import quality as quality_mod
from lock.vision.align import SIZE as ALIGNED_SIZE, align
from lock.vision.facenet import Embedder
from lock.vision.mtcnn import Detector, Faces
from lock.vision.runtime import Runtime


@dataclasses.dataclass(frozen=True)
class Analysis:
    """One face made ready for matching."""

    aligned: np.ndarray        # (160, 160, 3) uint8
    quality: quality_mod.Quality
    embedding: np.ndarray | None  # (128,) unit float32; None when quality failed and embed was skipped


def main_face(faces: Faces, shape: tuple[int, ...]) -> int | None:
    """Index of the face whose box centre is nearest the frame centre (None if no face)."""
    if len(faces) == 0:
        return None
    h, w = shape[:2]
    c = (faces.boxes[:, :2] + faces.boxes[:, 2:]) / 2
    return int(np.argmin(((c - [w / 2, h / 2]) ** 2).sum(1)))


class FacePipeline:
    def __init__(self, settings: Settings, *, runtime: Runtime | None = None) -> None:
        v = settings.vision
        self.runtime = runtime or Runtime(models_dir(settings), threads=v.threads, coral=v.coral)
        self.quality_settings: QualitySettings = settings.quality
        self.detector = Detector(self.runtime, min_face=v.min_face, scale_factor=v.scale_factor,
                                 thresholds=v.thresholds, shrink=v.fast_pyramid)
        self.embedder = Embedder(self.runtime)
        self.timings: dict[str, float] = {}

    def open(self, frame_size: tuple[int, int] | None = None) -> "FacePipeline":
        """Load and verify the models; with (h, w), size P-Net for that frame now."""
        if not self.runtime.name:
            self.runtime.open()
        self.detector.open(frame_size)
        self.embedder.open()
        return self

    @property
    def model_hash(self) -> str:
        return self.embedder.model_hash

    def detect(self, frame: np.ndarray) -> Faces:
        return self.detector.detect(frame)

    def analyse(self, frame: np.ndarray, faces: Faces, i: int, *, embed_if_poor: bool = False) -> Analysis:
        """Align face ``i``, judge its quality and (if good, or asked) embed it."""
        if not (np.isfinite(faces.boxes[i]).all() and np.isfinite(faces.landmarks[i]).all()):
            # never from these models, but a NaN must not reach the SVD of the alignment
            return Analysis(np.zeros((ALIGNED_SIZE, ALIGNED_SIZE, 3), np.uint8),
                            quality_mod.Quality(0.0, 0.0, 0.0, 0.0, 0.0, ("no usable landmarks",)), None)
        aligned = align(frame, faces.landmarks[i])
        q = quality_mod.assess(faces.boxes[i], faces.landmarks[i], aligned, self.quality_settings,
                               frame.shape)
        emb = self.embedder.embed(aligned) if (q.ok or embed_if_poor) else None
        return Analysis(aligned, q, emb)

    def embed(self, frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        return self.embedder.embed(align(frame, landmarks))

    def timed_detect(self, frame: np.ndarray) -> tuple[Faces, dict[str, float]]:
        """detect() with per-stage wall times in ms (for `lock bench`)."""
        d = self.detector
        t0 = time.perf_counter()
        b = d.propose(frame)
        t1 = time.perf_counter()
        b = d.refine(frame, b)
        t2 = time.perf_counter()
        faces = d.output(frame, b)
        t3 = time.perf_counter()
        return faces, {"pnet": (t1 - t0) * 1e3, "rnet": (t2 - t1) * 1e3, "onet": (t3 - t2) * 1e3}
