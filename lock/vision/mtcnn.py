"""MTCNN face detection (Zhang et al. 2016) around int8 TFLite networks.

Three stages, each a small recipe over pure numpy helpers:

1. P-Net slides a 12x12 window (stride 2) over an image pyramid and proposes
   boxes; NMS within each scale, then across scales; box regression; square.
2. R-Net rescores 24x24 crops of the proposals (batched); NMS; regression.
3. O-Net rescores 48x48 crops (batched) and gives five landmarks; regression;
   NMS by the smaller box ("min"), which removes a box inside another.

Boxes are (x1, y1, x2, y2) floats in frame pixels; landmarks (5, 2) (x, y).
No face gives arrays of length 0, never ``None``.

The interpreters are made once per frame size (one per pyramid scale, one per
power-of-two batch for R-Net and O-Net, so K candidates run as the binary
digits of K and no padding is ever computed), with their input buffers:
nothing is re-allocated per frame.  The uint8 -> int8 input step is a XOR
(q = pixel - 128) and P-Net's threshold is applied to the int8 codes, so
only the cells that pass are dequantised; results are exactly those of the
plain float formulation.
"""

from __future__ import annotations

import dataclasses
import logging
import cv2
import numpy as np

from lock.vision.runtime import Net, Runtime

log = logging.getLogger(__name__)

PNET, RNET, ONET = "pnet.tflite", "rnet.tflite", "onet.tflite"
PIXEL_SCALE = 0.0078125  # MTCNN was trained on (pixel - 127.5) * 0.0078125


def pixel_lut(quant) -> np.ndarray:
    """Input code for each uint8 pixel value.

    The float models take (pixel - 127.5) / 128.  The int8 models take
    q = pixel - 128 exactly (scale 1/128, zero point 0): the build folded the
    remaining half step into conv1's bias (models/manifest.json, preprocessing).
    """
    return quant.pixel_lut(128.0 if quant.scale else 127.5, PIXEL_SCALE)
STRIDE, CELL = 2, 12
# Shrunk copies (Detector(shrink=True); config vision.fast_pyramid, on by default): the frame halved
# again and again with 2x2 INTER_AREA (fast, exact box averages).  A pyramid
# level, or an R-Net crop, then reads the smallest copy that is still at least
# SHRINK_MARGIN times its own size instead of the whole frame: for 640x480 at
# min face 80 that is about 6 ms less CPU per frame (pyramid 7 -> 1 ms, R-Net
# crops 2 -> 0.5 ms).  The detections then move by as much as a one-pixel
# shift of the frame moves them (bench/floor.py --check-pyramid), which is
# noise for accuracy but not bit-identical, and a borderline face can be found
# in a different frame of a sequence; off, the cascade is exactly the plain
# one.  On since the MTCNN graphs were made XNNPACK-friendly: the resizes had
# become most of the detection time.  O-Net, which gives the final boxes and
# landmarks, always crops the full frame.
SHRINK_MARGIN = 2.0
# Also with vision.fast_pyramid: a level that no halved copy can serve (its
# scale is above 1 / (2 * SHRINK_MARGIN)) would be resampled from the full
# frame with non-integer INTER_AREA, the slowest resize of the pyramid.  When
# two steps of the scale factor make a halving within this fraction (0.709 **
# 2 = 0.503 with the default), such a level, from the third on, is instead
# the level two above it halved (exact 2x2 averages) and takes exactly half
# its scale (0.300 for 0.302).  Only small min faces have such levels: at
# min face 20 the third level (194x145) is one, 1.2 ms of a 41 ms frame on
# one thread.  At min face 40 and above (the door's 80, bench/lfw.py's 40)
# the pyramid is unchanged.
HALVING_TOLERANCE = 0.01


@dataclasses.dataclass(frozen=True)
class Faces:
    """Detections in one frame: boxes (N, 4), scores (N,), landmarks (N, 5, 2), float32."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    @classmethod
    def empty(cls) -> "Faces":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, idx: np.ndarray | list[int]) -> "Faces":
        return Faces(self.boxes[idx], self.scores[idx], self.landmarks[idx])


# --- pure helpers -----------------------------------------------------------

def pyramid_scales(height: int, width: int, min_face: int, factor: float) -> list[float]:
    """Scales at which a face of ``min_face`` px (and larger) fills P-Net's 12 px window."""
    m = CELL / float(min_face)
    side = min(height, width) * m
    scales = []
    while side >= CELL:
        scales.append(m * factor ** len(scales))
        side *= factor
    return scales


def _overlap(x1, y1, x2, y2, area, i, rest, mode: str) -> np.ndarray:
    """Overlap of box(es) ``i`` with boxes ``rest`` (IoU, or over the smaller box for "min")."""
    w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
    h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
    inter = w * h
    denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
    return inter / np.maximum(denom, 1e-9)


# Up to this many boxes the overlaps are computed all at once (an N x N
# matrix, one numpy pass) and the greedy pass only reads it; above it, row by
# row as boxes are kept.  Same arithmetic, same result; a door frame has about
# ten boxes per call, where the row-by-row numpy calls cost several times more.
NMS_MATRIX_MAX = 128


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first.

    ``mode="union"`` uses IoU; ``"min"`` divides the overlap by the smaller box.
    """
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[order].T
    area = (x2 - x1) * (y2 - y1)
    n = len(order)
    keep = []
    if n <= NMS_MATRIX_MAX:
        spared = _overlap(x1, y1, x2, y2, area, np.arange(n)[:, None], np.arange(n), mode) <= threshold
        alive = np.ones(n, bool)
        for i in range(n):
            if alive[i]:
                keep.append(i)
                np.logical_and(alive, spared[i], out=alive)
        return order[np.asarray(keep, np.int64)]
    rest = np.arange(n)
    while rest.size:
        i = rest[0]
        keep.append(i)
        rest = rest[1:]
        rest = rest[_overlap(x1, y1, x2, y2, area, i, rest, mode) <= threshold]
    return order[np.asarray(keep, np.int64)]


def window_boxes(prob: np.ndarray, reg: np.ndarray, scale: float, threshold: float):
    """P-Net's map (h, w) → candidate windows in frame pixels, their scores and regressions."""
    ys, xs = np.nonzero(prob >= threshold)
    if ys.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 4), np.float32)
    return cells_to_boxes(ys, xs, scale), prob[ys, xs].astype(np.float32), reg[ys, xs].astype(np.float32)


def regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply (dx1, dy1, dx2, dy2) offsets, given as fractions of the box size."""
    wh = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
    return (boxes + reg * wh).astype(np.float32)


def square(boxes: np.ndarray) -> np.ndarray:
    """The square with the box's centre and its longer side."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = np.max(boxes[:, 2:] - boxes[:, :2], axis=1, keepdims=True) / 2
    return np.concatenate([c - half, c + half], axis=1).astype(np.float32)


def shrink_steps(scale: float, limit: int = 6) -> int:
    """How many 2x halvings of the frame still leave ``SHRINK_MARGIN`` x what a resize to ``scale`` needs."""
    k = 0
    while k < limit and scale * SHRINK_MARGIN * (2 << k) <= 1.0:
        k += 1
    return k


class Shrunk:
    """The frame and its halvings (made on demand, into buffers kept per frame size)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, int], list[np.ndarray]] = {}
        self._copies: list[np.ndarray] = []

    def reset(self, frame: np.ndarray) -> None:
        self._copies = [frame]

    @property
    def frame(self) -> np.ndarray | None:
        return self._copies[0] if self._copies else None

    def get(self, k: int) -> np.ndarray:
        copies = self._copies
        if k < len(copies):
            return copies[k]
        h, w = copies[0].shape[:2]
        bufs = self._buffers.get((h, w))
        if bufs is None:
            if len(self._buffers) >= 4:
                self._buffers.pop(next(iter(self._buffers)))
            bufs = self._buffers[(h, w)] = []
        while len(copies) <= k:
            prev = copies[-1]
            ph, pw = prev.shape[:2]
            if ph < 2 or pw < 2:
                return prev
            i = len(copies) - 1
            if len(bufs) <= i:
                bufs.append(np.zeros((ph // 2, pw // 2, 3), np.uint8))
            cv2.resize(prev, (pw // 2, ph // 2), dst=bufs[i], interpolation=cv2.INTER_AREA)
            copies.append(bufs[i])
        return copies[k]


def crops(frame: np.ndarray, boxes: np.ndarray, size: int, out: np.ndarray, shrunk: Shrunk | None = None) -> None:
    """Cut each box out of the frame (zeros outside it), resize it to size² into ``out[k]`` (uint8).

    A box inside the frame is resized straight from the frame (no copy); only
    boxes crossing the border are padded first.  With ``shrunk``, a large box
    is cut from a halved copy that is still ``SHRINK_MARGIN`` x ``size``.
    """
    fh, fw = frame.shape[:2]
    for k, box in enumerate(boxes):
        src = frame
        if shrunk is not None:
            side = max(float(box[2] - box[0]), float(box[3] - box[1]))
            steps = shrink_steps(size / side) if side > 0 else 0
            if steps:
                src = shrunk.get(steps)
                box = box * np.array([src.shape[1] / fw, src.shape[0] / fh] * 2, np.float32)
        h, w = src.shape[:2]
        x1, y1, x2, y2 = np.rint(box).astype(np.int64).tolist()
        bw, bh = max(x2 - x1, 1), max(y2 - y1, 1)
        if x1 >= 0 and y1 >= 0 and x2 <= w and y2 <= h and x2 > x1 and y2 > y1:
            patch = src[y1:y2, x1:x2]
        else:
            patch = np.zeros((bh, bw, 3), np.uint8)
            sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
            if sx2 > sx1 and sy2 > sy1:
                patch[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = src[sy1:sy2, sx1:sx2]
        interp = cv2.INTER_AREA if bw > size else cv2.INTER_LINEAR
        cv2.resize(patch, (size, size), dst=out[k], interpolation=interp)


class InputCoder:
    """uint8 pixels -> the network's input codes, written into a preallocated input array.

    For the int8 models the code is pixel - 128, i.e. the uint8 bits XOR 0x80
    read as int8 (no table look-up, no temporary); other models use the table.
    """

    def __init__(self, quant) -> None:
        self.lut = pixel_lut(quant)
        self.dtype = quant.dtype
        self.xor = self.lut.dtype == np.int8 and np.array_equal(
            self.lut.astype(np.int16), np.arange(256, dtype=np.int16) - 128)

    def __call__(self, pixels: np.ndarray, out: np.ndarray) -> None:
        if self.xor:
            np.bitwise_xor(pixels, 0x80, out=out.view(np.uint8))
        else:
            out[...] = self.lut[pixels]


# --- the networks -----------------------------------------------------------

class BatchedNet:
    """R-Net or O-Net with one interpreter per power-of-two batch up to ``max_batch``.

    K candidates run as chunks of the largest batch that fits what is left
    (17 = 16 + 1): every candidate is computed exactly once, nothing is
    padded, and no interpreter is ever resized.
    """

    def __init__(self, runtime: Runtime, filename: str, size: int, max_batch: int,
                 threads: int | None = None) -> None:
        self.size = size
        self.batches = [1 << i for i in range(max_batch.bit_length()) if (1 << i) <= max_batch]
        self.nets = {b: Net(runtime.interpreter(filename, (b, size, size, 3), threads=threads))
                     for b in self.batches}
        first = self.nets[1]
        self.coder = InputCoder(first.input_quant)
        self.max_batch = self.batches[-1]
        self._pixels = np.zeros((self.max_batch, size, size, 3), np.uint8)
        self._inputs = {b: np.zeros((b, size, size, 3), first.input_quant.dtype) for b in self.batches}

    def run(self, frame: np.ndarray, boxes: np.ndarray, shrunk: Shrunk | None = None) -> dict[int, np.ndarray]:
        n = len(boxes)
        results = {k: np.empty((n, k), np.float32) for k in self.nets[1].outputs}
        start = 0
        while start < n:
            left = n - start
            b = self.max_batch if left >= self.max_batch else 1 << (left.bit_length() - 1)
            pixels, x, net = self._pixels[:b], self._inputs[b], self.nets[b]
            crops(frame, boxes[start:start + b], self.size, pixels, shrunk)
            self.coder(pixels, x)
            net.invoke(x)
            for k, r in results.items():
                r[start:start + b] = net.quant(k).dequantize(net.raw(k))
            start += b
        return results


class Level:
    """One pyramid scale: its P-Net interpreter and the buffers it reads.

    With a ``parent`` (the level two scales up, at twice this scale), the
    level's pixels are the parent's halved (an exact 2x2 box average, much
    cheaper than resampling the full frame; see HALVING_TOLERANCE);
    otherwise they are resampled from the frame (or a halved copy of it)
    given to :meth:`run`.
    """

    def __init__(self, runtime: Runtime, scale: float, hs: int, ws: int, threshold: float,
                 threads: int | None = None, parent: "Level | None" = None) -> None:
        self.scale, self.hs, self.ws = scale, hs, ws
        self.parent = parent
        self.net = Net(runtime.interpreter(PNET, (1, hs, ws, 3), threads=threads))
        self.coder = InputCoder(self.net.input_quant)
        self.pixels = np.zeros((hs, ws, 3), np.uint8)
        self.input = np.zeros((1, hs, ws, 3), self.net.input_quant.dtype)
        self.threshold = threshold
        self.code = self.net.quant(2).code_at_least(threshold)

    def run(self, frame: np.ndarray | None):
        """Windows of this scale whose face probability clears the threshold (boxes, scores, reg).

        ``frame`` may be the frame or a halved copy of it (INTER_AREA either
        way); a level with a parent ignores it and halves the parent's pixels,
        so the parent must have run on this frame first.
        """
        if self.parent is not None:
            whole = self.parent.pixels[:2 * self.hs, :2 * self.ws]
            cv2.resize(whole, (self.ws, self.hs), dst=self.pixels, interpolation=cv2.INTER_AREA)
        else:
            cv2.resize(frame, (self.ws, self.hs), dst=self.pixels, interpolation=cv2.INTER_AREA)
        self.coder(self.pixels, self.input[0])
        net = self.net
        net.invoke(self.input)
        prob = net.raw(2)[0, :, :, 1]
        ys, xs = np.nonzero(prob >= (self.threshold if self.code is None else self.code))
        if ys.size == 0:
            return None
        scores = net.quant(2).dequantize(prob[ys, xs]).astype(np.float32)
        reg = net.quant(4).dequantize(net.raw(4)[0, ys, xs]).astype(np.float32)
        return cells_to_boxes(ys, xs, self.scale), scores, reg


def cells_to_boxes(ys: np.ndarray, xs: np.ndarray, scale: float) -> np.ndarray:
    """P-Net output cells → their 12 px windows in frame pixels (x1, y1, x2, y2)."""
    x1 = (STRIDE * xs) / scale
    y1 = (STRIDE * ys) / scale
    side = CELL / scale
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1).astype(np.float32)


class Detector:
    """The cascade.  ``open()`` loads the nets; :meth:`detect` finds faces in a frame.

    Settings: ``min_face`` (px), ``scale_factor`` of the pyramid, ``thresholds``
    of the three stages.
    """

    def __init__(self, runtime: Runtime, *, min_face: int = 80, scale_factor: float = 0.709,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8),
                 shrink: bool = False, threads: int | None = None) -> None:
        self.runtime = runtime
        self.threads = threads  # interpreter threads of the three nets (None: the runtime's)
        self.shrink = shrink  # True: levels and R-Net crops from halved copies (see SHRINK_MARGIN)
        self._shrunk = Shrunk()
        self.min_face = min_face
        self.scale_factor = scale_factor
        self.thresholds = thresholds
        self._pnets: dict[tuple[int, int], list[Level]] = {}
        self._rnet: BatchedNet | None = None
        self._onet: BatchedNet | None = None

    def open(self, frame_size: tuple[int, int] | None = None) -> "Detector":
        """Load R-Net and O-Net; with ``frame_size`` (h, w), also P-Net for each scale."""
        # Batches up to 16: each interpreter costs about 2 MB of RSS, and a door
        # frame has about 16 R-Net candidates and 5 O-Net ones (bench/floor.py).
        self._rnet = BatchedNet(self.runtime, RNET, 24, 16, self.threads)
        self._onet = BatchedNet(self.runtime, ONET, 48, 16, self.threads)
        if frame_size is not None:
            self._pyramid(*frame_size)
        return self

    def _pyramid(self, h: int, w: int) -> list[Level]:
        key = (h, w, self.shrink)
        levels = self._pnets.get(key)
        if levels is None:
            # the plain levels of this frame size already made (shrink toggled by a benchmark): reused
            made = {(lv.scale, lv.hs, lv.ws): lv for k, lvs in self._pnets.items() if k[:2] == (h, w)
                    for lv in lvs if lv.parent is None}
            levels = []
            halve = self.shrink and abs(self.scale_factor ** 2 - 0.5) <= HALVING_TOLERANCE * 0.5
            for s in pyramid_scales(h, w, self.min_face, self.scale_factor):
                parent = levels[-2] if halve and len(levels) >= 2 else None
                if parent is not None and shrink_steps(s) == 0 and min(parent.hs, parent.ws) >= 2 * CELL:
                    level = Level(self.runtime, parent.scale / 2, parent.hs // 2, parent.ws // 2,
                                  self.thresholds[0], self.threads, parent=parent)
                else:
                    hs, ws = int(h * s + 1), int(w * s + 1)
                    level = made.get((s, hs, ws)) or Level(self.runtime, s, hs, ws, self.thresholds[0], self.threads)
                levels.append(level)
            if len(self._pnets) >= 4:  # frames of many sizes (enrolling from files): keep a few
                self._pnets.pop(next(iter(self._pnets)))
            self._pnets[key] = levels
        return levels

    def propose(self, frame: np.ndarray) -> np.ndarray:
        """Stage 1: P-Net over the pyramid → square candidate boxes (K, 4)."""
        h, w = frame.shape[:2]
        all_boxes, all_scores, all_reg = [], [], []
        shrunk = self._shrunk
        shrunk.reset(frame)
        for level in self._pyramid(h, w):
            if level.parent is not None:
                found = level.run(None)
            else:
                found = level.run(shrunk.get(shrink_steps(level.scale)) if self.shrink else frame)
            if found is None:
                continue
            boxes, scores, reg = found
            keep = nms(boxes, scores, 0.5)
            all_boxes.append(boxes[keep]); all_scores.append(scores[keep]); all_reg.append(reg[keep])
        if not all_boxes:
            return np.zeros((0, 4), np.float32)
        boxes, scores, reg = (np.concatenate(a) for a in (all_boxes, all_scores, all_reg))
        keep = nms(boxes, scores, 0.7)
        return square(regress(boxes[keep], reg[keep]))

    def refine(self, frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: R-Net rescoring → square boxes (K, 4)."""
        if len(boxes) == 0:
            return boxes
        if self._shrunk.frame is not frame:  # refine() called on its own
            self._shrunk.reset(frame)
        out = self._rnet.run(frame, boxes, self._shrunk if self.shrink else None)
        scores = out[2][:, 1]
        ok = scores >= self.thresholds[1]
        boxes, scores, reg = boxes[ok], scores[ok], out[4][ok]
        keep = nms(boxes, scores, 0.7)
        return square(regress(boxes[keep], reg[keep]))

    def output(self, frame: np.ndarray, boxes: np.ndarray) -> Faces:
        """Stage 3: O-Net rescoring and landmarks → final faces."""
        if len(boxes) == 0:
            return Faces.empty()
        out = self._onet.run(frame, boxes)
        scores = out[2][:, 1]
        ok = scores >= self.thresholds[2]
        boxes, scores, reg, pts = boxes[ok], scores[ok], out[4][ok], out[10][ok]
        wh = boxes[:, 2:] - boxes[:, :2]
        lm = np.stack([boxes[:, None, 0] + pts[:, :5] * wh[:, None, 0],
                       boxes[:, None, 1] + pts[:, 5:] * wh[:, None, 1]], axis=2)
        boxes = regress(boxes, reg)
        keep = nms(boxes, scores, 0.7, mode="min")
        return Faces(boxes[keep], scores[keep].astype(np.float32), lm[keep].astype(np.float32))

    def detect(self, frame: np.ndarray) -> Faces:
        """All faces of at least ``min_face`` px in an RGB uint8 frame (H, W, 3)."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 HxWx3 RGB, got {frame.dtype} {frame.shape}")
        return self.output(frame, self.refine(frame, self.propose(frame)))
