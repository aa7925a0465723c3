"""FaceNet (Schroff et al. 2015) embeddings from an aligned 160x160 face, int8 TFLite."""

from __future__ import annotations

import cv2
import numpy as np

from lock.vision.runtime import Net, Runtime

FACENET = "facenet.tflite"
DIM = 128


def standardize(face: np.ndarray) -> np.ndarray:
    """Per-image standardisation, as the network was trained: (x - mean) / max(std, 1/sqrt(n))."""
    x = face.astype(np.float32)
    std = max(float(x.std()), 1.0 / np.sqrt(x.size))
    return (x - x.mean()) / std


def input_codes(face: np.ndarray, quant) -> np.ndarray:
    """``quant.quantize(standardize(face))`` by a 256-entry table: the same result up to rounding.

    A uint8 face has 256 possible values, so the standardised, quantised code
    of each is computed once and the face is mapped through the table
    (cv2.LUT), instead of five float passes over its 76,800 values.  Mean
    and standard deviation come from cv2.meanStdDev (double precision; numpy's
    float32 sums differ in the last bits, which can move a code by one).
    """
    mean, std = cv2.meanStdDev(face.reshape(-1, 1))
    std = max(float(std[0, 0]), 1.0 / np.sqrt(face.size))
    values = (np.arange(256, dtype=np.float32) - np.float32(mean[0, 0])) / np.float32(std)
    return cv2.LUT(face, quant.quantize(values))


class Embedder:
    """Turns an aligned face (160, 160, 3) uint8 RGB into a unit (128,) float32 embedding."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._net: Net | None = None

    def open(self) -> "Embedder":
        self._net = Net(self.runtime.interpreter(FACENET))
        return self

    @property
    def model_hash(self) -> str:
        """sha256 of the FaceNet file: templates are tagged with it."""
        return self.runtime.model_hash(FACENET)

    def embed(self, face: np.ndarray) -> np.ndarray:
        if face.shape != (160, 160, 3):
            raise ValueError(f"aligned face must be 160x160x3, got {face.shape}")
        net = self._net
        q = input_codes(face, net.input_quant)[None]
        v = net.run(q)[DIM][0]
        n = float(np.linalg.norm(v))
        return (v / n if n > 0 else v).astype(np.float32)
