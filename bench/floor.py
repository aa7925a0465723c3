#!/usr/bin/env python3
"""What dominates a frame, and how far each int8 network is from what this CPU can do.

    python bench/floor.py [--frames 20] [--repeat 5] [--threads 1 2] [--tf-python PATH] [--check-pyramid]

1. Profile: the vision pipeline (default settings, 640x480, one face per
   frame) on real frames; per stage the wall time per frame and how much
   of it is the networks' invoke (the rest: resizing, crops, NMS, numpy).
2. Arithmetic: multiply-accumulates per frame for each network, counted
   from the .tflite graph (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED;
   output elements x kernel volume x input channels): P-Net at each
   pyramid scale for the frame size and min face, R-Net and O-Net per
   candidate times the candidates per frame measured in (1), FaceNet per
   face.  Element-wise work (PReLU, pooling, adds) is listed apart.
3. The floor: the int8 MAC rate this CPU reaches in the same runtime
   (LiteRT + XNNPACK, same thread count) on a large compute-bound int8
   model (a stack of 3x3 convolutions, built with TensorFlow from
   ``--tf-python`` when one is found) and the best rate among the
   project's own models.  Floor time = MACs / that rate; the printed ratio
   is measured invoke time / floor time, per network and for the four
   networks' invokes together (the ``invokes`` row).

   When no TensorFlow python builds the reference, the floor falls back to
   the best of the project's own models (usually FaceNet's own rate, so
   FaceNet's ratio is 1.0 by construction): a WARNING goes to stderr and
   into every table header, and the JSON says ``"reference": null`` with
   ``"reference_missing"``: why.  The run still completes (exit status 0).

``--check-pyramid`` also measures how much reading the pyramid and R-Net's
crops from halved copies of the frame moves the detections, next to the
noise of a one-pixel shift of the frame.
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lock.config import parse  # noqa: E402
from lock.scenes import bench_frames  # noqa: E402
from lock.vision.align import align  # noqa: E402
from lock.vision.pipeline import FacePipeline, main_face  # noqa: E402

from floorlib import count_ops, reference_model, time_invoke  # noqa: E402


class InvokeClock:
    """Wraps every Net.invoke of a pipeline to sum its wall time per network."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, net, key: str) -> None:
        """Time the interpreter's own invoke (whichever Net method calls it)."""
        interp = net.interp
        inner = interp.invoke

        def invoke(_inner=inner, _key=key):
            t = time.perf_counter()
            _inner()
            self.ms[_key] += (time.perf_counter() - t) * 1e3
            self.calls[_key] += 1
        interp.invoke = invoke


def profile(threads: int, frames: list[np.ndarray], repeat: int, shrink: bool = False) -> dict:
    s = parse({"vision": {"threads": threads}}, "floor")
    cv2.setNumThreads(threads)
    pipe = FacePipeline(s).open((480, 640))
    det = pipe.detector
    det.shrink = shrink
    clock = InvokeClock()
    for level in det._pyramid(480, 640):
        clock.wrap(level.net, "pnet")
    for n in det._rnet.nets.values():
        clock.wrap(n, "rnet")
    for n in det._onet.nets.values():
        clock.wrap(n, "onet")
    clock.wrap(pipe.embedder._net, "facenet")
    stages = defaultdict(list)
    cands = defaultdict(list)
    for rep in range(repeat + 1):
        for f in frames:
            before = dict(clock.ms)
            t0 = time.perf_counter()
            b1 = det.propose(f)
            t1 = time.perf_counter()
            b2 = det.refine(f, b1)
            t2 = time.perf_counter()
            faces = det.output(f, b2)
            t3 = time.perf_counter()
            i = main_face(faces, f.shape)
            if i is None:
                continue
            face = align(f, faces.landmarks[i])
            t4 = time.perf_counter()
            pipe.embedder.embed(face)
            t5 = time.perf_counter()
            if rep == 0:
                continue
            cands["rnet"].append(len(b1))
            cands["onet"].append(len(b2))
            for k, v in (("pnet", t1 - t0), ("rnet", t2 - t1), ("onet", t3 - t2), ("align", t4 - t3),
                         ("embed", t5 - t4), ("total", t5 - t0)):
                stages[k].append(v * 1e3)
            for k in ("pnet", "rnet", "onet", "facenet"):
                stages["invoke_" + k].append(clock.ms[k] - before.get(k, 0.0))
    levels = [(lv.scale, lv.hs, lv.ws) for lv in det._pyramid(480, 640)]
    return {"stages": {k: float(np.median(v)) for k, v in stages.items()},
            "stages_mean": {k: float(np.mean(v)) for k, v in stages.items()},
            "candidates": {k: float(np.mean(v)) for k, v in cands.items()}, "levels": levels,
            "min_face": s.vision.min_face}


def check_pyramid(frames: list[np.ndarray]) -> dict:
    """Levels and R-Net crops from halved copies vs all from the full frame, next to a one-pixel shift."""
    def iou(a, b):
        w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
        i = w * h
        return i / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - i)

    pipe = FacePipeline(parse({}, "floor")).open((480, 640))
    det = pipe.detector

    def run(f, shrink, dx=0):
        det.shrink = shrink
        if dx:
            f = np.ascontiguousarray(np.pad(f, ((0, 0), (dx, 0), (0, 0)), mode="edge")[:, :f.shape[1]])
        faces = det.detect(f)
        i = main_face(faces, f.shape)
        if i is None:
            return None
        b = faces.boxes[i].copy()
        b[[0, 2]] -= dx
        lm = faces.landmarks[i].copy()
        lm[:, 0] -= dx
        return b, lm, pipe.embedder.embed(align(f, faces.landmarks[i]))

    out = {}
    for label, hb, dx in (("shrunk_copies", True, 0), ("shift_1px", False, 1)):
        ious, lms, coss, differ = [], [], [], 0
        for f in frames:
            a, b = run(f, False), run(f, hb, dx)
            if (a is None) != (b is None):
                differ += 1
                continue
            if a is None:
                continue
            ious.append(iou(a[0], b[0]))
            lms.append(float(np.abs(a[1] - b[1]).max() / (a[0][2] - a[0][0])))
            coss.append(float(a[2] @ b[2]))
        out[label] = {"found_differently": differ, "iou_median": round(float(np.median(ious)), 4),
                      "iou_min": round(float(np.min(ious)), 4),
                      "landmark_err_box_median": round(float(np.median(lms)), 4),
                      "landmark_err_box_max": round(float(np.max(lms)), 4),
                      "embedding_cos_median": round(float(np.median(coss)), 4),
                      "embedding_cos_min": round(float(np.min(coss)), 4)}
    det.shrink = True
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--photos", default=None)
    ap.add_argument("--tf-python", default=None, help="a python with TensorFlow, to build the reference model")
    ap.add_argument("--plain-pyramid", action="store_true",
                    help="profile without vision.fast_pyramid (every level resized from the full frame)")
    ap.add_argument("--check-pyramid", action="store_true")
    ap.add_argument("--check-frames", type=int, default=60)
    args = ap.parse_args()

    models = ROOT / "models"
    frames = bench_frames(args.photos, (480, 640), args.frames, seed=0)
    result: dict = {"threads": {}}
    tmp = Path(tempfile.mkdtemp(prefix="lock-floor-"))
    ref, ref_how = reference_model(args.tf_python, tmp / "reference_conv_int8.tflite")
    ref_macs = count_ops(ref)["macs"] if ref else 0
    no_ref_warning = None
    if ref:
        result["reference"] = {"python": ref_how, "mmacs": round(ref_macs / 1e6, 1)}
    else:
        no_ref_warning = ("WARNING: the large-convolution reference model is MISSING: " + ref_how
                          + "; the floor is the best of the project's own models' rates instead, so the "
                          "'x floor' ratios are understated")
        print(no_ref_warning, file=sys.stderr, flush=True)
        result["reference"] = None
        result["reference_missing"] = ref_how

    for threads in args.threads:
        prof = profile(threads, frames, args.repeat, not args.plain_pyramid)
        st = prof["stages"]
        levels = prof["levels"]
        # --- MACs per frame
        pnet_levels = [count_ops(models / "pnet.tflite", (1, hs, ws, 3)) for _, hs, ws in levels]
        per = {"rnet": count_ops(models / "rnet.tflite", (1, 24, 24, 3)),
               "onet": count_ops(models / "onet.tflite", (1, 48, 48, 3)),
               "facenet": count_ops(models / "facenet.tflite")}
        macs = {"pnet": sum(c["macs"] for c in pnet_levels),
                "rnet": per["rnet"]["macs"] * prof["candidates"]["rnet"],
                "onet": per["onet"]["macs"] * prof["candidates"]["onet"],
                "facenet": per["facenet"]["macs"]}
        elem = {"pnet": sum(sum(c["elementwise"].values()) for c in pnet_levels),
                "rnet": sum(per["rnet"]["elementwise"].values()) * prof["candidates"]["rnet"],
                "onet": sum(per["onet"]["elementwise"].values()) * prof["candidates"]["onet"],
                "facenet": sum(per["facenet"]["elementwise"].values())}
        # --- rates
        rates = {}
        if ref:
            rates["reference"] = ref_macs / time_invoke(ref, None, threads) / 1e6   # GMAC/s
        rates["facenet"] = per["facenet"]["macs"] / time_invoke(models / "facenet.tflite", None, threads) / 1e6
        rates["onet_batch16"] = 16 * per["onet"]["macs"] / time_invoke(models / "onet.tflite", (16, 48, 48, 3),
                                                                        threads) / 1e6
        rates["rnet_batch32"] = 32 * per["rnet"]["macs"] / time_invoke(models / "rnet.tflite", (32, 24, 24, 3),
                                                                        threads) / 1e6
        _, hs, ws = levels[0]
        rates["pnet_level0"] = pnet_levels[0]["macs"] / time_invoke(models / "pnet.tflite", (1, hs, ws, 3),
                                                                     threads) / 1e6
        peak_name = max(rates, key=rates.get)
        peak = rates[peak_name]

        print(f"\n== {threads} thread(s), shrunk copies {'off' if args.plain_pyramid else 'on'}: 640x480, "
              f"min face {prof['min_face']} px, {len(frames)} frames x "
              f"{args.repeat}; candidates per frame: R-Net {prof['candidates']['rnet']:.1f}, "
              f"O-Net {prof['candidates']['onet']:.1f}")
        if no_ref_warning:
            print(f"   !! {no_ref_warning} (floor uses {peak_name})")
        print("   pyramid: " + ", ".join(f"{s:.3f} ({ws}x{hs}) {c['macs'] / 1e6:.1f}M"
                                         for (s, hs, ws), c in zip(levels, pnet_levels)))
        print(f"   int8 MAC rate (GMAC/s, LiteRT+XNNPACK, {threads} thread(s)): "
              + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()) + f"; floor uses {peak_name}")
        print(f"   {'stage':<10}{'ms/frame':>10}{'invoke':>9}{'other':>8}{'MMAC':>9}{'M elem':>8}"
              f"{'floor ms':>10}{'x floor':>9}{'GMAC/s':>8}")
        rows = {}
        total_floor = 0.0
        for stage, net in (("pnet", "pnet"), ("rnet", "rnet"), ("onet", "onet"), ("embed", "facenet")):
            ms = st[stage]
            inv = st["invoke_" + net]
            floor_ms = macs[net] / peak / 1e6
            total_floor += floor_ms
            rows[net] = {"ms_frame": round(ms, 3), "invoke_ms": round(inv, 3), "other_ms": round(ms - inv, 3),
                         "mmacs": round(macs[net] / 1e6, 2), "m_elementwise": round(elem[net] / 1e6, 2),
                         "floor_ms": round(floor_ms, 3), "invoke_x_floor": round(inv / floor_ms, 2),
                         "stage_x_floor": round(ms / floor_ms, 2), "gmacs": round(macs[net] / inv / 1e6, 1)}
            r = rows[net]
            print(f"   {stage:<10}{ms:>10.2f}{inv:>9.2f}{ms - inv:>8.2f}{r['mmacs']:>9.1f}{r['m_elementwise']:>8.2f}"
                  f"{floor_ms:>10.3f}{r['invoke_x_floor']:>9.2f}{r['gmacs']:>8.1f}")
        inv_sum = sum(r["invoke_ms"] for r in rows.values())
        print(f"   {'invokes':<10}{'':>10}{inv_sum:>9.2f}{'':>8}{sum(macs.values()) / 1e6:>9.1f}{'':>8}"
              f"{total_floor:>10.3f}{inv_sum / total_floor:>9.2f}   (the four networks' invokes together)")
        print(f"   {'align':<10}{st['align']:>10.2f}")
        print(f"   {'total':<10}{st['total']:>10.2f}{'':>17}{sum(macs.values()) / 1e6:>9.1f}{'':>8}"
              f"{total_floor:>10.3f}{st['total'] / total_floor:>9.2f}")
        result["threads"][str(threads)] = {"rates_gmacs": {k: round(v, 1) for k, v in rates.items()},
                                           "peak": peak_name, "networks": rows,
                                           "align_ms": round(st["align"], 3), "total_ms": round(st["total"], 3),
                                           "total_floor_ms": round(total_floor, 3),
                                           "invokes_ms": round(inv_sum, 3),
                                           "invokes_x_floor": round(inv_sum / total_floor, 2),
                                           "candidates": prof["candidates"]}
    if args.check_pyramid:
        frames2 = bench_frames(args.photos, (480, 640), args.check_frames, seed=3)
        chk = check_pyramid(frames2)
        print(f"\n== pyramid and R-Net crops from halved copies vs all from the full frame "
              f"({len(frames2)} frames), next to a 1-px shift of the frame")
        for k, v in chk.items():
            print(f"   {k:<13} main face IoU median {v['iou_median']}, min {v['iou_min']}; landmark error / box "
                  f"median {v['landmark_err_box_median']}, max {v['landmark_err_box_max']}; embedding cosine "
                  f"median {v['embedding_cos_median']}, min {v['embedding_cos_min']}; found differently "
                  f"{v['found_differently']}")
        result["check_pyramid"] = chk
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
