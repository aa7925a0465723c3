"""Is this face good enough to match (or to enroll)?  Each rejection says why.

Pose is estimated from the five landmarks alone (no 3-D model): yaw from how
far the nose sits from the middle of the eyes, relative to the eye distance;
pitch from where the nose sits between the eye line and the mouth line,
relative to a frontal face (the alignment template).  They are estimates,
good enough to turn away a face in profile or looking at the floor.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from lock.vision.align import TEMPLATE, similarity

# Where the nose sits between eye line (0) and mouth line (1) in a frontal face.
_FRONTAL_T = float((TEMPLATE[2, 1] - TEMPLATE[:2, 1].mean()) / (TEMPLATE[3:, 1].mean() - TEMPLATE[:2, 1].mean()))


@dataclasses.dataclass(frozen=True)
class Quality:
    size: float          # shorter side of the box, px
    sharpness: float     # variance of the Laplacian of the aligned grey face
    yaw: float           # degrees, + = nose towards the image's right
    pitch: float         # degrees, + = looking down
    brightness: float    # mean grey level of the aligned face, 0-255
    reasons: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def score(self) -> float:
        """0..1, higher is better; used to rank enrollment frames."""
        pose = max(0.0, 1 - (abs(self.yaw) + abs(self.pitch)) / 90)
        return float(min(1.0, self.sharpness / 200) * 0.5 + pose * 0.5)


def pose(landmarks: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) in degrees from five landmarks (5, 2)."""
    le, re, nose, lm, rm = np.asarray(landmarks, np.float64)
    eye_mid = (le + re) / 2
    mouth_mid = (lm + rm) / 2
    eye_dist = max(float(np.linalg.norm(re - le)), 1e-6)
    axis = (re - le) / eye_dist                      # along the eyes
    down = np.array([-axis[1], axis[0]])             # perpendicular, towards the mouth
    # sideways offset of the nose, in half eye distances ~ sin(yaw) for a head
    side = float((nose - eye_mid) @ axis) / (eye_dist / 2)
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, side))))
    span = max(float((mouth_mid - eye_mid) @ down), 1e-6)
    t = float((nose - eye_mid) @ down) / span
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, (t - _FRONTAL_T) * 2.0))))
    return yaw, pitch


# More of the face than this outside the picture: alignment would fill the
# missing part with repeated edge pixels, a poor template or probe.
MAX_OUTSIDE = 0.10
# The face itself in the aligned crop (rows, columns): what sharpness and
# brightness are measured on, and what must come from inside the picture.
CENTRE = (slice(30, 140), slice(30, 130))
_CENTRE_POINTS = np.stack(np.meshgrid(np.arange(CENTRE[1].start, CENTRE[1].stop, 2) + 0.5,
                                      np.arange(CENTRE[0].start, CENTRE[0].stop, 2) + 0.5), -1).reshape(-1, 2)


def outside_fraction(box: np.ndarray, frame_shape: tuple[int, ...]) -> float:
    """Share of the box's area that lies outside a frame of ``frame_shape`` (h, w, ...)."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    area = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
    if area <= 0:
        return 0.0
    h, w = frame_shape[:2]
    inside = max(min(x2, w) - max(x1, 0.0), 0.0) * max(min(y2, h) - max(y1, 0.0), 0.0)
    return 1.0 - inside / area


def centre_outside(landmarks: np.ndarray, frame_shape: tuple[int, ...]) -> float:
    """Share of the aligned face's :data:`CENTRE` whose pixels come from outside the frame.

    The box alone misses most of a cut: O-Net's box regression pulls the box
    in onto the visible part of the face (a face 20 % outside had a box 2-9 %
    outside), while alignment, which follows the landmarks, still reaches out.
    """
    m = cv2.invertAffineTransform(similarity(landmarks, TEMPLATE))
    src = _CENTRE_POINTS @ m[:, :2].T + m[:, 2]
    h, w = frame_shape[:2]
    out = (src[:, 0] < 0) | (src[:, 0] > w) | (src[:, 1] < 0) | (src[:, 1] > h)
    return float(out.mean())


def assess(box: np.ndarray, landmarks: np.ndarray, aligned: np.ndarray, settings,
           frame_shape: tuple[int, ...] | None = None) -> Quality:
    """Measure a face and list what is wrong with it (settings: config.QualitySettings).

    With ``frame_shape``, a face cut off by the edge of the picture (more than
    :data:`MAX_OUTSIDE` of its box, or of its aligned centre, outside) is
    rejected too.
    """
    size = float(min(box[2] - box[0], box[3] - box[1]))
    grey = cv2.cvtColor(aligned, cv2.COLOR_RGB2GRAY)
    centre = grey[CENTRE]  # the face itself, not the background around it
    sharp = float(cv2.Laplacian(centre, cv2.CV_64F).var())
    bright = float(centre.mean())
    yaw, pitch = pose(landmarks)
    reasons = []
    if size < settings.min_face:
        reasons.append(f"face too small ({size:.0f} px, needs {settings.min_face}): come closer")
    cut = (max(outside_fraction(box, frame_shape), centre_outside(landmarks, frame_shape))
           if frame_shape is not None else 0.0)
    if cut > MAX_OUTSIDE:
        reasons.append(f"face cut off by the edge of the picture ({100 * cut:.0f} % outside): "
                       "step into the middle")
    if abs(yaw) > settings.max_yaw:
        reasons.append(f"head turned {abs(yaw):.0f}° (at most {settings.max_yaw:.0f}°): face the camera")
    if abs(pitch) > settings.max_pitch:
        reasons.append(f"head tilted {abs(pitch):.0f}° (at most {settings.max_pitch:.0f}°): look at the camera")
    if sharp < settings.min_sharpness:
        reasons.append(f"image blurred (sharpness {sharp:.0f}, needs {settings.min_sharpness:.0f}): hold still")
    if bright < settings.min_brightness:
        reasons.append(f"too dark (brightness {bright:.0f}, needs {settings.min_brightness:.0f}): more light")
    if bright > settings.max_brightness:
        reasons.append(f"too bright (brightness {bright:.0f}, at most {settings.max_brightness:.0f})")
    return Quality(size, sharp, yaw, pitch, bright, tuple(reasons))
