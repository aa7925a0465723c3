#!/usr/bin/env python3
"""Idle cost of `lock run` with nobody at the door, and what the change gate costs on arrival.

    python bench/idle.py [--duration 300] [--fps 10] [--parallel]

1. CPU and memory: `python -m lock --config CFG run` as a subprocess
   (GPIOZERO_PIN_FACTORY=mock, a files camera replaying an empty porch at
   ``--fps`` in a loop), once with idle.change_threshold 0 (detect every
   frame) and once with the default gate.  After the daemon says it is
   ready and a warm-up, CPU is read from /proc/PID/stat (utime + stime)
   over ``--duration`` seconds and given as a share of one core; memory
   as VmRSS and VmHWM (peak) from /proc/PID/status.  The empty porch is a
   BMP file, so the camera thread's decoding costs about what taking a
   raw frame from a real camera does.
2. Peak memory with faces: the same `lock run`, its camera replaying people
   walking up one after another (nobody enrolled), ``--faces-duration``
   seconds: VmHWM is the daemon's peak while it detects and embeds.
3. Arrival: the real Daemon.process on recorded frames at ``--fps`` with
   the frame times as its clock (so the figures are in frames, not
   machine speed): someone appears, slides in from the side, or approaches
   from afar (their face growing from a quarter of its size).  For the
   gate on and off: frames from the first frame in which the always-on
   detector finds the face to the first detection of it, and to the
   unlock.

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lock.imageio import iter_images, load_image  # noqa: E402
from lock.scenes import background, default_photos, paste, walkup  # noqa: E402

SIZE = (480, 640)
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK   # utime, stime (fields 14, 15)


def proc_mem_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) / 1024
    return out


def write_config(tmp: Path, fps: float, threshold: float | None, photos: list[Path] | None = None) -> Path:
    scene_dir = tmp / "porch"
    scene_dir.mkdir(parents=True, exist_ok=True)
    scene = background(SIZE, 1)
    if photos is None:
        cv2.imwrite(str(scene_dir / "empty.bmp"), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
    else:   # the porch with people walking up, one after another (none enrolled)
        frames = []
        for j, photo in enumerate(photos):
            frames += [scene] * 15 + walkup(load_image(photo), SIZE, 20, np.random.default_rng(j), scene)
        for k, f in enumerate(frames):
            cv2.imwrite(str(scene_dir / f"{k:05d}.bmp"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    cfg = {
        "camera": {"source": "files", "path": str(scene_dir), "fps": fps, "loop": True},
        "gallery": {"path": str(tmp / "gallery.db")},
        "audit": {"path": str(tmp / "audit.db")},
        "control": {"socket": str(tmp / "control.sock"), "group": None},
        "door": {"relay_pin": "GPIO17", "relay_active_high": True},   # a config file must state both
        "log_level": "INFO",
    }
    if threshold is not None:
        cfg["idle"] = {"change_threshold": threshold}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Run:
    """One `lock run` subprocess."""

    def __init__(self, label: str, threshold: float | None, fps: float, photos: list[Path] | None = None) -> None:
        self.label = label
        self.tmp = Path(tempfile.mkdtemp(prefix=f"lock-idle-{label}-"))
        cfg = write_config(self.tmp, fps, threshold, photos)
        env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock")
        env.pop("NOTIFY_SOCKET", None)
        self.log = open(self.tmp / "daemon.log", "w+")
        self.p = subprocess.Popen([sys.executable, "-m", "lock", "--config", str(cfg), "run"], cwd=str(ROOT),
                                  env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.t0 = self.c0 = 0.0

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise SystemExit(f"{self.label}: lock run exited ({self.p.returncode}):\n"
                                 + (self.tmp / "daemon.log").read_text()[-2000:])
            if "lock ready" in (self.tmp / "daemon.log").read_text():
                return
            time.sleep(0.5)
        raise SystemExit(f"{self.label}: lock run not ready after {timeout} s")

    def start(self) -> None:
        self.t0, self.c0 = time.monotonic(), proc_cpu_s(self.p.pid)

    def stop(self) -> dict:
        t1, c1 = time.monotonic(), proc_cpu_s(self.p.pid)
        mem = proc_mem_mb(self.p.pid)
        self.p.terminate()
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        return {"cpu_core_pct": round(100 * (c1 - self.c0) / (t1 - self.t0), 2), "seconds": round(t1 - self.t0, 1),
                "rss_mb": round(mem.get("VmRSS", 0), 1), "hwm_mb": round(mem.get("VmHWM", 0), 1)}


def measure_idle(args) -> dict:
    runs = [("always_detect", 0.0), ("gate_default", None)]
    results = {}
    groups = [runs] if args.parallel else [[r] for r in runs]
    for group in groups:
        live = [Run(label, thr, args.fps) for label, thr in group]
        for r in live:
            r.wait_ready()
        time.sleep(args.warmup)
        for r in live:
            r.start()
        time.sleep(args.duration)
        for r in live:
            results[r.label] = res = r.stop()
            print(f"   {r.label:<14} CPU {res['cpu_core_pct']:6.2f} % of one core over {res['seconds']} s; "
                  f"RSS {res['rss_mb']:.0f} MB, peak {res['hwm_mb']:.0f} MB", flush=True)
    return results


# --- arrival ------------------------------------------------------------------

class NoCamera:
    def open(self):
        return self

    def close(self):
        pass


def arrival_frames(photo: np.ndarray, kind: str, fps: float, rng) -> tuple[list[np.ndarray], int]:
    """Empty porch, then someone arriving; returns frames and the index of the first one they are in."""
    scene = background(SIZE, 1)
    h, w = SIZE
    height = h * rng.uniform(0.65, 0.8)
    cx, cy = w * rng.uniform(0.45, 0.55), h * 0.5
    pw = photo.shape[1] * height / photo.shape[0]
    n_in = max(2, round(0.5 * fps)) if kind == "slide" else max(2, round(1.5 * fps)) if kind == "approach" else 1
    frames = [scene] * round(2 * fps)
    first = len(frames)
    for k in range(n_in + round(2 * fps)):
        a = min(1.0, (k + 1) / n_in)
        if kind == "slide":
            x = (w + pw / 2) + (cx - (w + pw / 2)) * a
            frames.append(paste(scene, photo, height, (x, cy)))
        elif kind == "approach":
            frames.append(paste(scene, photo, height * (0.25 + 0.75 * a), (cx, cy)))
        else:
            frames.append(paste(scene, photo, height, (cx, cy)))
    frames += [scene] * round(2 * fps)
    return frames, first


def measure_arrival(args) -> dict:
    from gpiozero.pins.mock import MockFactory

    from lock import config, events as ev
    from lock.daemon import Daemon
    from lock.enroll import enroll_files
    from lock.gallery import Gallery
    from lock.imageio import iter_images, load_image
    from lock.vision.pipeline import FacePipeline

    photos = Path(args.photos or default_photos()) / "celebrities"
    people = sorted(d.name for d in (photos / "train").iterdir() if d.is_dir())
    tmp = Path(tempfile.mkdtemp(prefix="lock-arrival-"))
    base = {"camera": {"source": "files", "path": str(tmp), "fps": args.fps},
            "gallery": {"path": str(tmp / "gallery.db")}, "audit": {"path": str(tmp / "audit.db")},
            "control": {"socket": str(tmp / "control.sock"), "group": None}, "door": {"unlock_seconds": 0.5}}
    s0 = config.parse(base, "arrival")
    pipe = FacePipeline(s0).open()
    with Gallery(s0.gallery.path, pipe.model_hash) as g:
        for name in people:
            enroll_files(pipe, g, name, iter_images([photos / "train" / name]))
    val = [(name, p) for name in people for p in iter_images([photos / "val" / name])][:args.arrivals]
    out = {}
    for kind in ("appear", "slide", "approach"):
        rng = np.random.default_rng(11)
        cases = [arrival_frames(load_image(p), kind, args.fps, rng) for _, p in val]
        per = {}
        for label, thr in (("always_detect", 0.0), ("gate_default", None)):
            data = dict(base)
            if thr is not None:
                data = {**base, "idle": {"change_threshold": thr}}
            s = config.parse(data, "arrival")
            to_face, to_unlock = [], []
            d = Daemon(s, pin_factory=MockFactory(), camera=NoCamera())
            d.open()
            now = 1000.0
            try:
                for frames, first in cases:
                    seen = unlocked = None
                    for i, f in enumerate(frames):
                        raised = d.process(f, now=now)
                        now += 1.0 / args.fps
                        if seen is None and i >= first and d._last_faces > 0:
                            seen = i
                        if unlocked is None and any(e.kind == ev.RECOGNIZED for e in raised):
                            unlocked = i
                    to_face.append(seen)
                    to_unlock.append(unlocked)
                    now += 600.0  # tracks, votes and any lockout window are long over
            finally:
                d.close()
            per[label] = {"first_face_frame": to_face, "unlock_frame": to_unlock}
        # frames are counted from the first frame in which the always-on detector finds the face
        rows = {}
        for label in per:
            lat_face, lat_unlock = [], []
            for k, (frames, first) in enumerate(cases):
                ref = per["always_detect"]["first_face_frame"][k]
                if ref is None:
                    continue
                f, u = per[label]["first_face_frame"][k], per[label]["unlock_frame"][k]
                lat_face.append(np.inf if f is None else f - ref)
                lat_unlock.append(np.inf if u is None else u - ref)
            fin = [x for x in lat_unlock if np.isfinite(x)]
            rows[label] = {"detect_delay_frames_median": float(np.median(lat_face)) if lat_face else None,
                           "detect_delay_frames_max": float(np.max(lat_face)) if lat_face else None,
                           "unlock_frames_median": float(np.median(fin)) if fin else None,
                           "unlock_frames_max": float(np.max(fin)) if fin else None,
                           "unlocked": f"{len(fin)}/{len(lat_unlock)}"}
        out[kind] = rows
        a, g = rows["always_detect"], rows["gate_default"]
        print(f"   {kind:<9} first detection after the face is findable: gate {g['detect_delay_frames_median']:g} "
              f"frames median, {g['detect_delay_frames_max']:g} max (always-detect 0); unlock after "
              f"{g['unlock_frames_median']} frames median, max {g['unlock_frames_max']} (always-detect "
              f"{a['unlock_frames_median']}, max {a['unlock_frames_max']}); unlocked {g['unlocked']} "
              f"vs {a['unlocked']}", flush=True)
    return out


def measure_faces(args) -> dict:
    """Peak RSS of `lock run` while it detects and embeds faces: the daemon's own peak."""
    root = Path(args.photos) if args.photos else default_photos()
    photos = iter_images([root / "celebrities" / "val"])[:6]
    r = Run("faces", None, args.fps, photos)
    r.wait_ready()
    r.start()
    time.sleep(args.faces_duration)
    res = r.stop()
    res["unknown_events"] = (r.tmp / "daemon.log").read_text().count("unknown")
    print(f"   {'faces':<14} {len(photos)} people walking up in turn, none enrolled: RSS {res['rss_mb']:.0f} MB, "
          f"peak {res['hwm_mb']:.0f} MB over {res['seconds']} s ({res['unknown_events']} unknown-face lines "
          "in its log: it did detect and embed them)", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=300.0, help="seconds measured for each setting")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds after `lock ready` before measuring")
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--parallel", action="store_true", help="run both settings at once (half the time, more noise)")
    ap.add_argument("--arrivals", type=int, default=10, help="arrivals of each kind for the gate's latency")
    ap.add_argument("--photos", default=None)
    ap.add_argument("--skip-idle", action="store_true")
    ap.add_argument("--skip-arrival", action="store_true")
    ap.add_argument("--faces-duration", type=float, default=60.0,
                    help="seconds of `lock run` with people walking up, for its peak RSS (0: skip)")
    args = ap.parse_args()
    result = {"fps": args.fps}
    if not args.skip_idle:
        print(f"== idle: lock run, empty porch at {args.fps:g} fps, {args.duration:g} s each", flush=True)
        result["idle"] = measure_idle(args)
        a, g = result["idle"]["always_detect"], result["idle"]["gate_default"]
        print(f"   the gate saves {a['cpu_core_pct'] - g['cpu_core_pct']:.2f} points of a core "
              f"({a['cpu_core_pct'] / max(g['cpu_core_pct'], 1e-6):.1f}x less CPU)")
    if args.faces_duration > 0:
        print(f"== peak memory of lock run with faces in view ({args.faces_duration:g} s)", flush=True)
        result["faces"] = measure_faces(args)
    if not args.skip_arrival:
        print(f"== arrival: what the gate costs when someone comes ({args.arrivals} people per kind, "
              f"{args.fps:g} fps, frame clock)", flush=True)
        result["arrival"] = measure_arrival(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
