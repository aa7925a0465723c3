"""Five-point similarity alignment onto the 160x160 crop FaceNet expects.

The template starts from the mean position of MTCNN's five landmarks in a
160x160 crop of the MTCNN box with a 10 px margin, measured over lfw-dev:
the view this FaceNet was trained on (../shared/DESIGN.md, "Figures measured
so far").  Those crops are the box stretched to a square, while a similarity
keeps the face's proportions, so the plain mean leaves the face small in the
crop.  ZOOM enlarges it about the crop centre.  Chosen with
``python bench/lfw.py --no-float --template-zoom Z`` (int8 models, lfw-dev;
pairs accuracy, TAR at FAR 1e-3 / 1e-4 / 1e-5; measured with the FaceNet
model calibrated on zoom 1.00, before it was rebuilt for 1.08):

    zoom 0.92  98.90  96.96  87.58  59.76
    zoom 1.00  98.93  98.23  92.97  78.45
    zoom 1.04  99.17  98.53  93.89  82.09
    zoom 1.08  99.33  98.70  94.50  84.47   <- ZOOM
    zoom 1.12  99.07  98.79  94.91  85.55
    zoom 1.16  99.10  98.78  94.77  85.22
    zoom 1.20  99.33  98.67  94.42  85.36

1.08 to 1.20 form a plateau on each half of lfw-dev's identities taken
apart; 1.08 is its near edge (the most context around the face).  The
FaceNet int8 model is calibrated on faces aligned with this template
(models/build.py), so changing it means rebuilding the model, which in
turn marks the templates enrolled before as another model's.
"""

from __future__ import annotations

import cv2
import numpy as np

SIZE = 160
ZOOM = 1.08
BOX_TEMPLATE = np.array([[58.1, 64.9],    # left eye (as seen in the image)
                         [104.7, 63.8],   # right eye
                         [81.6, 91.5],    # nose
                         [61.8, 115.7],   # left mouth corner
                         [102.9, 114.9]], np.float32)


def zoomed(template: np.ndarray, zoom: float) -> np.ndarray:
    """The template enlarged ``zoom`` times about the centre of the crop."""
    return ((np.asarray(template, np.float32) - SIZE / 2) * zoom + SIZE / 2).astype(np.float32)


TEMPLATE = zoomed(BOX_TEMPLATE, ZOOM)


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


def align(frame: np.ndarray, landmarks: np.ndarray, template: np.ndarray | None = None) -> np.ndarray:
    """The 160x160x3 uint8 face crop with the landmarks moved onto :data:`TEMPLATE` (or ``template``)."""
    m = similarity(landmarks, TEMPLATE if template is None else template)
    return cv2.warpAffine(frame, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
