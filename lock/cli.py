"""The `lock` command.

Every command that can fail on bad input prints one clear line naming what
was wrong and where, and exits non-zero: 2 for a bad configuration or usage,
1 for anything else.  No tracebacks for a person to read.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import sys
import time

import numpy as np

from lock import config as config_mod
from lock.errors import ConfigError, ImageError, LockError

log = logging.getLogger("lock")


# --- helpers ----------------------------------------------------------------

def _settings(args: argparse.Namespace) -> config_mod.Settings:
    """For verify, embed and bench (no relay): the config given with --config, else the default
    paths, else defaults."""
    if args.config is None:
        try:
            return config_mod.load(None, door=False)
        except ConfigError as exc:
            if "no configuration file" in str(exc):
                return config_mod.Settings()
            raise
    return config_mod.load(args.config, door=False)


def _pipeline(settings: config_mod.Settings, frame_size=None):
    from lock.vision.pipeline import FacePipeline
    return FacePipeline(settings).open(frame_size)


def _faces_json(faces) -> list[dict]:
    return [{"box": [round(float(v), 2) for v in faces.boxes[i]],
             "score": round(float(faces.scores[i]), 4),
             "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in faces.landmarks[i]]}
            for i in range(len(faces))]


# --- vision commands --------------------------------------------------------

def cmd_verify(args: argparse.Namespace) -> int:
    from lock.imageio import load_image
    from lock.vision.pipeline import main_face

    pipe = _pipeline(_settings(args))
    embeddings: dict[str, np.ndarray] = {}
    failed = 0
    for path in args.images:
        try:
            frame = load_image(path)
        except ImageError as exc:
            print(exc)  # the message names the file
            failed += 1
            continue
        faces = pipe.detect(frame)
        print(f"{path}: {len(faces)} face(s)")
        for i in range(len(faces)):
            x1, y1, x2, y2 = faces.boxes[i]
            print(f"  face {i + 1}: box ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}) score {faces.scores[i]:.3f}")
        i = main_face(faces, frame.shape)
        if i is not None:
            embeddings[path] = pipe.embed(frame, faces.landmarks[i])
    names = list(embeddings)
    if len(names) >= 2:
        print("similarity of the main faces (cosine, 1 = same):")
        for a, b in itertools.combinations(names, 2):
            print(f"  {float(embeddings[a] @ embeddings[b]):+.3f}  {a}  {b}")
    return 1 if failed else 0


def cmd_embed(args: argparse.Namespace) -> int:
    from lock.imageio import iter_images, load_image
    from lock.vision.pipeline import main_face

    pipe = _pipeline(_settings(args))
    out = sys.stdout
    failed = 0
    for path in iter_images(args.paths):
        record: dict = {"path": str(path)}
        try:
            frame = load_image(path)
        except ImageError as exc:
            record.update(faces=[], embedding=None, error=str(exc))
            failed += 1
        else:
            faces = pipe.detect(frame)
            i = main_face(faces, frame.shape)
            emb = None if i is None else pipe.embed(frame, faces.landmarks[i])
            record.update(faces=_faces_json(faces),
                          embedding=None if emb is None else [round(float(v), 6) for v in emb])
        out.write(json.dumps(record) + "\n")
    out.flush()
    return 1 if failed else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from lock.vision.align import align
    from lock.scenes import bench_frames

    settings = _settings(args)
    h, w = settings.camera.height, settings.camera.width
    frames = bench_frames(args.photos, (h, w), args.frames)
    pipe = _pipeline(settings, (h, w))
    stages: dict[str, list[float]] = {k: [] for k in ("pnet", "rnet", "onet", "detect", "align", "embed", "total")}
    faces_found = 0
    for rep in range(args.repeat + 1):
        for frame in frames:
            t0 = time.perf_counter()
            faces, t = pipe.timed_detect(frame)
            t1 = time.perf_counter()
            ta = te = 0.0
            if len(faces):
                faces_found += rep == 0
                a0 = time.perf_counter()
                face = align(frame, faces.landmarks[0])
                a1 = time.perf_counter()
                pipe.embedder.embed(face)
                a2 = time.perf_counter()
                ta, te = (a1 - a0) * 1e3, (a2 - a1) * 1e3
            if rep == 0:
                continue  # warm-up pass
            for k in ("pnet", "rnet", "onet"):
                stages[k].append(t[k])
            stages["detect"].append((t1 - t0) * 1e3)
            stages["align"].append(ta)
            stages["embed"].append(te)
            stages["total"].append((t1 - t0) * 1e3 + ta + te)
    info = pipe.runtime.info()
    print(f"runtime {info['runtime']}, threads {info['threads']}, coral {'on' if info['coral'] else 'off'}, "
          f"delegates {info['delegates']}")
    print(f"{len(frames)} frames of {w}x{h}, faces found in {faces_found}, "
          f"min face {settings.vision.min_face} px, {args.repeat} timed passes")
    print(f"{'stage':<16}{'median ms':>10}{'p90 ms':>10}")
    labels = {"pnet": "pyramid+P-Net", "rnet": "R-Net", "onet": "O-Net", "detect": "detect (all)",
              "align": "align", "embed": "embed", "total": "total"}
    result = {}
    for k, v in stages.items():
        med, p90 = float(np.median(v)), float(np.percentile(v, 90))
        result[k] = {"median_ms": round(med, 2), "p90_ms": round(p90, 2)}
        print(f"{labels[k]:<16}{med:>10.2f}{p90:>10.2f}")
    print(json.dumps({"runtime": info, "stages": result}))
    return 0


# --- entry point ------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lock", description="Face-unlock door lock for the Raspberry Pi.")
    p.add_argument("--config", "-c", default=None, help="config file (default /etc/lock/config.yaml, then ./config.yaml)")
    p.add_argument("--verbose", "-v", action="store_true")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("verify", help="faces found in images; similarity of their main faces")
    s.add_argument("images", nargs="+")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("embed", help="one JSON line per image: faces and the main face's embedding")
    s.add_argument("paths", nargs="+", help="image files or folders (walked recursively)")
    s.add_argument("--jsonl", action="store_true", help="JSON lines on stdout (the only format)")
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("bench", help="per-stage latency of the vision pipeline on real frames")
    s.add_argument("--photos", default=None, help="folder of face photos (default: the test photographs)")
    s.add_argument("--frames", type=int, default=20)
    s.add_argument("--repeat", type=int, default=5)
    s.set_defaults(func=cmd_bench)

    from lock import commands  # the door, gallery and daemon commands
    commands.register(sub)
    _common_options_everywhere(p)
    return p


def _common_options_everywhere(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--verbose`` also after the command (``lock demo --config FILE``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                sp.add_argument("--config", "-c", default=argparse.SUPPRESS, help="config file")
                sp.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS)
                _common_options_everywhere(sp)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "enroll" and not any(x.startswith("-") for x in extra):
        args.sources += extra  # photos after an option: lock enroll NAME --replace PHOTO ...
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    for stream in (sys.stdout, sys.stderr):  # file names need not be UTF-8: never crash printing one
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("PIL",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()   # here, so that a reader gone early is the BrokenPipeError below
        return rc
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:   # `lock status | head -1`: the reader has gone, nothing more to say
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        # Enrollment writes in one transaction at the end: all of it or nothing.
        print("interrupted" + (" (an enrollment is stored whole or not at all: see lock faces list)"
                               if args.command == "enroll" else ""), file=sys.stderr)
        return 130
