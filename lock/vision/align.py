"""Five-point similarity alignment onto the 160x160 crop FaceNet expects.

The template is the mean position of MTCNN's five landmarks in a 160x160 crop
of the MTCNN box with a 10 px margin, measured over lfw-dev: the view this
FaceNet was trained on (../shared/DESIGN.md, "Figures measured so far").
"""

from __future__ import annotations

import cv2
import numpy as np

SIZE = 160
TEMPLATE = np.array([[58.1, 64.9],    # left eye (as seen in the image)
                     [104.7, 63.8],   # right eye
                     [81.6, 91.5],    # nose
                     [61.8, 115.7],   # left mouth corner
                     [102.9, 114.9]], np.float32)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking src onto dst.

    Umeyama (1991), without reflection.  src, dst: (N, 2).  Returns a 2x3 matrix.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s ** 2).sum() / len(src)
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    scale = (sig * np.diag(e)).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]]).astype(np.float32)


def align(frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 160x160x3 uint8 face crop with the landmarks moved onto :data:`TEMPLATE`."""
    m = similarity(landmarks, TEMPLATE)
    return cv2.warpAffine(frame, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
