#!/usr/bin/env python3
"""The door trial: people walking up to the door, through the whole lock.

    python bench/door_trial.py [--data ../shared/data/lfw-dev] [--seeds 5 | --seed N]
                               [--config FILE] [--limit N] [--quick]

Every frame goes through the code the door runs: ``Daemon.process`` (change
gate → MTCNN → track → align, quality, FaceNet → gallery match → decision →
relay on gpiozero's MockFactory), with the int8 models, a temporary SQLite
gallery and audit log, and a fake monotonic clock.

Per seed, 10 people with at least 4 photos in LFW are enrolled at the door
(3 photos each, pasted into a 640x480 porch scene at door size, detected,
quality-checked and embedded by the pipeline, stored with ``Gallery.enroll``);
their other photos (at most ``--max-genuine`` each) are genuine walk-ups.
Every identity not enrolled walks up once per seed (one of its photos) as an
impostor.  A walk-up is a short sequence of frames from
:func:`lock.scenes.walkup` (the photo 290-410 px tall, so the face box is
about 105-150 px; jitter, scale, blur and brightness change per frame), at
``--fps`` frames per second.  Walk-ups are separated on the fake clock by
more than the lockout window, so they share neither tracks nor lockouts.

Counted, per walk-up, from the daemon's events and the relay:

- ``false_unlocks``: impostor walk-ups in which the stranger's own face (the
  face at the centre of the LFW photo) unlocked the door;
- ``bystander_unlocks`` (listed, to check by eye): unlocks by another face in
  the photo, which is often the enrolled person (bandmates, couples, teams);
- ``wrong_person_unlocks``: genuine walk-ups of one enrolled person that
  unlocked as another enrolled person;
- ``frr``: genuine walk-ups that did not unlock as the right person
  (``frr_quality_passed``: the same, counted only among the walk-ups in which
  the face of the photo's own person passed the quality gate at least once;
  ``genuine_quality_rejected``: walk-ups in which that face was found but the
  gate turned it away in every frame; ``genuine_no_own_face``: walk-ups in
  which no face was ever attributed to the photo's person, a misattribution
  rather than a quality-gate refusal);
- ``mean_frames_to_unlock``: frames from the first of the walk-up to the
  unlock, over the genuine walk-ups that unlocked.

Cost: about 5 frames per walk-up (a detection each, and an embedding for each
good face), ~10,500 walk-ups for the default 5 seeds: about 16 minutes on 2
x86 cores (a full run took 15.1 minutes).  ``--save FILE`` keeps the
recordings after each seed; a killed run started again with ``--save FILE
--resume`` skips the seeds already done.

A walk-up ends once every face in view is decided and has enough matched
frames to replay (``--replay-frames``), or after ``--frames`` frames.  The
per-frame match results (best person, score, runner-up) and boxes are kept,
and replayed through fresh :class:`lock.decide.Decider` instances with other
thresholds, margins and vote counts: the trade-off table.  (The replay of the
configured settings must give exactly the daemon's outcome; the script checks
it.)  Then the lockout: one stranger walks up again and again, an enrolled
person tries during the lockout, the stranger keeps trying, the enrolled
person tries after it.

The last line is one JSON object: impostor_walkups, false_unlocks,
wrong_person_unlocks, genuine_walkups, frr, mean_frames_to_unlock, and more.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lock import config as config_mod  # noqa: E402
from lock import events as ev  # noqa: E402
from lock.config import DecideSettings, MatchSettings, Settings  # noqa: E402
from lock.decide import Decider, Match  # noqa: E402
from lock.imageio import load_image  # noqa: E402
from lock.scenes import background, paste, walkup  # noqa: E402
from lock.vision.pipeline import main_face  # noqa: E402

ENROLLED = 10          # people per seed
ENROLL_PHOTOS = 3      # enrollment photos per person
SKIP = "skip"          # a face not analysed (its track was decided): replays must not need it

log = logging.getLogger("door_trial")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the daemon, driven directly --------------------------------------------------------


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class NoCamera:
    """The daemon wants a camera to open; frames are handed to ``process`` instead."""

    healthy = True
    exhausted = False

    def open(self) -> "NoCamera":
        return self

    def close(self) -> None:
        pass

    def read(self, timeout: float | None = 1.0):
        return None


class Recorder:
    """Sees what the daemon's pipeline detected and analysed in one frame (the same objects)."""

    def __init__(self, pipeline) -> None:
        self.detect = pipeline.detect
        self.analyse = pipeline.analyse
        self.faces = None
        self.analysed: dict[int, object] = {}

        def detect(frame):
            self.faces = self.detect(frame)
            return self.faces

        def analyse(frame, faces, i, **kw):
            a = self.analyse(frame, faces, i, **kw)
            self.analysed[i] = a
            return a

        pipeline.detect = detect      # instance attributes: the real methods, observed
        pipeline.analyse = analyse

    def reset(self) -> None:
        self.faces = None
        self.analysed = {}


def trial_settings(base: Settings, work: Path) -> Settings:
    data = base.model_dump()
    data["gallery"]["path"] = str(work / "gallery.db")
    data["audit"]["path"] = str(work / "audit.db")
    data["control"].update(socket=str(work / "control.sock"), group=None)
    data["mqtt"]["enabled"] = False
    return config_mod.parse(data, "door trial settings")


def open_daemon(settings: Settings, clock: FakeClock):
    from gpiozero.pins.mock import MockFactory

    from lock.daemon import Daemon

    d = Daemon(settings, pin_factory=MockFactory(), camera=NoCamera(), clock=clock)
    d.open()
    return d


# --- walk-ups ---------------------------------------------------------------------------


@dataclasses.dataclass
class Walk:
    kind: str                       # "genuine" | "impostor"
    truth: str | None               # the enrolled person at the door (genuine)
    photo: str                      # Name/Name_NNNN.jpg
    path: Path
    seed: int
    frames: list = dataclasses.field(default_factory=list)  # (t, boxes | None, [Match | None | SKIP], subject)
    embeddings: list = dataclasses.field(default_factory=list)  # per frame: [embedding | None] per face
    recognized: list = dataclasses.field(default_factory=list)  # (person, frame number) from the daemon
    relay: bool = False             # the relay was energised after the walk-up
    kinds: list = dataclasses.field(default_factory=list)   # event kinds raised

    def own_face_matched(self) -> bool:
        """Did the face of the photo's own person pass the quality gate in any frame?"""
        return any(0 <= sub < len(ms) and isinstance(ms[sub], Match) for _, _, ms, sub in self.frames)

    def max_score(self) -> float:
        return max((m.score for _, b, ms, _ in self.frames for m in ms if isinstance(m, Match) and m.person),
                   default=-1.0)


def subject_face(frame: np.ndarray, scene: np.ndarray, boxes: np.ndarray) -> int:
    """Index of the face of the photo's own person: the face nearest the centre of the pasted photo.

    LFW photos are centred on their person; other faces in them are bystanders.  The
    photo's place is where the frame differs from the empty scene.  -1 if no face is near.
    """
    if len(boxes) == 0:
        return -1
    diff = (frame != scene).any(-1)
    ys, xs = np.flatnonzero(diff.any(1)), np.flatnonzero(diff.any(0))
    if not len(xs):
        return -1
    centre = np.array([(xs[0] + xs[-1]) / 2, (ys[0] + ys[-1]) / 2])
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    dist = np.hypot(*(c - centre).T)
    i = int(np.argmin(dist))
    return i if dist[i] < 0.15 * (ys[-1] - ys[0] + 1) else -1


def run_walk(d, rec: Recorder, matcher, frames: list[np.ndarray], scene: np.ndarray, t0: float, dt: float,
             clock: FakeClock, replay_frames: int, walk: Walk) -> float:
    """Feed one walk-up to the daemon; record boxes and matches for replays.  Returns the last time."""
    s = d.settings
    # A shadow decider with the daemon's tracking that never votes: its tracks are
    # 'decided' (unknown) once they have `replay_frames` matched frames.
    shadow = Decider(s.decide.model_copy(update={"votes": replay_frames + 1, "unknown_after": replay_frames}),
                     MatchSettings(threshold=0.9999, margin=0.0), clock=clock, wall=clock)
    t = t0
    for k, img in enumerate(frames, 1):
        t = t0 + (k - 1) * dt
        clock.t = t
        rec.reset()
        raised = d.process(img, t)
        for e in raised:
            walk.kinds.append(e.kind)
            if e.kind == ev.RECOGNIZED:
                walk.recognized.append((e.person, k))
        if d.door.state == "UNLOCKED":
            walk.relay = True
        if rec.faces is None:          # the change gate skipped this frame
            walk.frames.append((t, None, [], -1))
            walk.embeddings.append([])
            continue
        faces = rec.faces
        ids = shadow.observe(faces.boxes, t)
        matches, embeddings = [], []
        for i, tid in enumerate(ids):
            need = shadow.needs_embedding(tid, t)
            a = rec.analysed.get(i)
            if a is None and need:
                a = rec.analyse(img, faces, i)   # the daemon's track is decided; the replays may need it
            embeddings.append(None if a is None else a.embedding)
            if a is None:
                matches.append(SKIP)
                continue
            m = matcher.match(a.embedding) if a.embedding is not None else None
            matches.append(m)
            if need:
                shadow.vote(tid, m, t, embedding=a.embedding)
        boxes = np.array(faces.boxes, np.float32).reshape(-1, 4)
        walk.frames.append((t, boxes, matches, subject_face(img, scene, boxes)))
        walk.embeddings.append(embeddings)
        # Decided in the shadow (K matched frames) implies decided in the daemon (unknown_after <= K).
        if ids and not any(shadow.unsettled(tid, t) for tid in ids):
            break
    if d.door.state == "UNLOCKED":
        d.door.lock()
    return t


def replay(walk: Walk, decide: DecideSettings, match: MatchSettings) -> list[tuple[str, int, bool]]:
    """The recorded walk-up through a fresh Decider: RECOGNIZED events as (person, frame number, by the
    face of the photo's own person)."""
    if walk.max_score() < match.threshold:
        return []                   # no frame can vote: nothing to replay
    dec = Decider(decide, match, clock=lambda: 0.0, wall=lambda: 0.0)
    out = []
    for k, ((t, boxes, matches, subject), embeddings) in enumerate(zip(walk.frames, walk.embeddings), 1):
        if boxes is None:
            continue
        ids = dec.observe(boxes, t)
        for i, tid in enumerate(ids):
            if not dec.needs_embedding(tid, t):
                continue
            m = matches[i]
            if m is SKIP:
                if dec.decided(tid):
                    continue            # a decided face's check that the daemon did not make here
                raise RuntimeError(f"replay needs a frame that was not recorded ({walk.photo}, frame {k}); "
                                   "raise --replay-frames")
            for e in dec.vote(tid, m, t, embedding=embeddings[i]):
                if e.kind == ev.RECOGNIZED:
                    out.append((e.person, k, i == subject))
    return out


def score(walks: list[Walk], outcome) -> dict:
    """Counts from outcome(walk) → [(person, frame, by the photo's own face)] of unlocks.

    An unlock by another face in an LFW photo (a bystander, who may well be the enrolled
    person: LFW photos of bandmates, couples, teams) is not the walk-up's error; those are
    counted as ``bystander_unlocks`` and listed, to be checked by eye.
    """
    imp = [w for w in walks if w.kind == "impostor"]
    gen = [w for w in walks if w.kind == "genuine"]
    fa, by = [], []
    for w in imp:
        got = outcome(w)
        if any(own for _, _, own in got):
            fa.append((w, got))
        elif got:
            by.append((w, got))
    ok, ok_passed, wrong, frames = 0, 0, 0, []
    # Genuine walk-ups in which the face of the photo's own person never passed the quality gate,
    # in two kinds: the face was found but the gate turned it away in every frame (`gated`), and
    # no face was ever attributed to the photo's person (`no_own_face`: subject -1 in every frame,
    # a misattribution by subject_face, not a quality-gate refusal).
    passed = [w for w in gen if w.own_face_matched()]
    no_own_face = sum(1 for w in gen if not w.own_face_matched() and all(sub < 0 for *_, sub in w.frames))
    gated = len(gen) - len(passed) - no_own_face
    for w in gen:
        got = outcome(w)
        right = [k for p, k, _ in got if p == w.truth]
        if right:
            ok += 1
            ok_passed += w.own_face_matched()
            frames.append(min(right))
        if any(p != w.truth and own for p, _, own in got):
            wrong += 1
        elif any(p != w.truth for p, _, _ in got):
            by.append((w, got))
    return {"impostor_walkups": len(imp), "false_unlocks": len(fa),
            "wrong_person_unlocks": wrong, "genuine_walkups": len(gen),
            "frr": round(1 - ok / len(gen), 4) if gen else None,
            "mean_frames_to_unlock": round(float(np.mean(frames)), 2) if frames else None,
            "bystander_unlocks": len(by), "genuine_quality_rejected": gated,
            "genuine_no_own_face": no_own_face, "genuine_quality_passed": len(passed),
            # unlocks as the right person among the walk-ups that passed the gate, over those walk-ups
            "frr_quality_passed": round(1 - ok_passed / len(passed), 4) if passed else None,
            "_fa": fa, "_by": by}


# --- data -------------------------------------------------------------------------------


def people(data: Path) -> dict[str, list[Path]]:
    root = data / "images"
    if not root.is_dir():
        raise SystemExit(f"{data}: no images/ folder (give --data DIR with images/<Name>/<Name>_NNNN.jpg)")
    out = {}
    for d in sorted(root.iterdir()):
        if d.is_dir():
            ps = sorted(d.glob("*.jpg"))
            if ps:
                out[d.name] = ps
    return out


def enroll_person(d, name: str, paths: list[Path], scene: np.ndarray) -> tuple[int, list[str]]:
    """Enroll from photos at the door: the photo at 80 % of the frame height, centred, still."""
    h, w = scene.shape[:2]
    embs, quals, why = [], [], []
    for p in paths:
        frame = paste(scene, load_image(p), int(h * 0.8), (w / 2, h / 2))
        faces = d.pipeline.detect(frame)
        i = main_face(faces, frame.shape)
        if i is None:
            why.append(f"{p.name}: no face")
            continue
        a = d.pipeline.analyse(frame, faces, i)
        if a.embedding is None:
            why.append(f"{p.name}: {'; '.join(a.quality.reasons)}")
            continue
        embs.append(a.embedding)
        quals.append(a.quality.score)
    if embs:
        d.gallery.enroll(name, embs, quals)
    return len(embs), why


# --- the trial --------------------------------------------------------------------------


def run_seed(base: Settings, seed: int, everyone: dict[str, list[Path]], args, stats: dict,
             lockout_check: bool) -> tuple[list[Walk], dict | None]:
    rng = np.random.default_rng(seed)
    work = Path(tempfile.mkdtemp(prefix=f"door-trial-{seed}-"))
    clock = FakeClock()
    settings = trial_settings(base, work)
    size = (settings.camera.height, settings.camera.width)
    scenes = [background(size, 100 * seed + j) for j in range(4)]
    d = open_daemon(settings, clock)
    rec = Recorder(d.pipeline)
    walks: list[Walk] = []
    lock_report = None
    try:
        eligible = sorted(n for n, ps in everyone.items() if len(ps) >= ENROLL_PHOTOS + 1)
        order = list(rng.permutation(eligible))
        members: dict[str, list[Path]] = {}
        while len(members) < ENROLLED and order:
            name = str(order.pop(0))
            ps = [everyone[name][i] for i in rng.permutation(len(everyone[name]))]
            n, why = enroll_person(d, name, ps[:ENROLL_PHOTOS], scenes[0])
            for line in why:
                say(f"  seed {seed}: enrollment photo of {name} skipped: {line}")
            if n == 0:
                continue
            members[name] = ps[ENROLL_PHOTOS:ENROLL_PHOTOS + args.max_genuine]
        matcher = d.gallery.matcher()
        say(f"seed {seed}: enrolled {len(members)} people ({len(matcher)} templates): {', '.join(members)}")

        plan = [("genuine", n, p) for n, ps in members.items() for p in ps]
        strangers = [n for n in everyone if n not in members]
        if args.impostor:
            strangers = [n for n in args.impostor if n in strangers]
        elif args.limit:
            strangers = [strangers[i] for i in sorted(rng.choice(len(strangers), min(args.limit, len(strangers)),
                                                                 replace=False))]
            plan = plan[:max(1, args.limit // 10)] if args.quick else plan
        plan += [("impostor", None, everyone[n][int(rng.integers(len(everyone[n])))]) for n in strangers]

        s = settings.decide
        gap = s.lockout_window_seconds + s.track_timeout_seconds + 1.0
        dt = 1.0 / args.fps
        t = clock.t
        t_start = time.perf_counter()
        for j, (kind, truth, photo) in enumerate(plan, 1):
            scene = scenes[int(rng.integers(len(scenes)))]
            frames = walkup(load_image(photo), size, args.frames, rng, scene)
            w = Walk(kind, truth, f"{photo.parent.name}/{photo.name}", photo, seed)
            t = run_walk(d, rec, matcher, frames, scene, t + gap, dt, clock, args.replay_frames, w)
            walks.append(w)
            if kind == "impostor" and w.recognized:
                say(f"  impostor walk-up unlocked (seed {seed}): {w.photo} as {w.recognized[0][0]}")
            if j % 200 == 0 or j == len(plan):
                el = time.perf_counter() - t_start
                done = stats["done"] + j
                total_el = time.perf_counter() - stats["t0"]
                eta = total_el / done * (stats["planned"] - done) if stats["planned"] else 0
                say(f"  seed {seed}: {j}/{len(plan)} walk-ups, {el:.0f} s "
                    f"({el / j * 1e3:.0f} ms each); whole trial ETA {eta / 60:.1f} min")
        stats["done"] += len(plan)
        stats["frames"] += d.stats.frames
        stats["detections"] += d.stats.detections
        stats["embeddings"] += d.stats.embeddings
        stats["face_changes"] += d.decider.face_changes

        stats["model_hash"] = d.pipeline.model_hash
        if lockout_check:
            lock_report = check_lockout(d, rec, matcher, everyone, strangers, walks, size, scenes[0], rng,
                                        clock, t, args)
    finally:
        d.close()
        shutil.rmtree(work, ignore_errors=True)
    return walks, lock_report


def check_lockout(d, rec, matcher, everyone, strangers, walks, size, scene, rng, clock, t, args) -> dict:
    """One stranger tries again and again; an enrolled person tries during and after the lockout."""
    s = d.settings.decide
    t += s.lockout_max_seconds + s.lockout_window_seconds + 10.0   # a quiet start
    dt = 1.0 / args.fps
    gap = min(10.0, s.lockout_window_seconds / (s.lockout_after + 1))
    # an enrolled person who got in, alone in the photo (a bystander's `unknown` would count too)
    member = next((w for w in walks if w.kind == "genuine" and any(p == w.truth for p, _ in w.recognized)
                   and all(b is not None and len(b) == 1 for _, b, _, _ in w.frames)), None) or next(
        (w for w in walks if w.kind == "genuine" and any(p == w.truth for p, _ in w.recognized)), None)
    # a clear stranger: every frame of their walk-up passed the quality gate, far from everyone
    def clear(w: Walk) -> bool:
        own = [ms[sub] for _, _, ms, sub in w.frames if 0 <= sub < len(ms)]
        return (w.kind == "impostor" and len(w.frames) == args.replay_frames and not w.recognized
                and len(own) == len(w.frames) and all(isinstance(m, Match) and m.score < 0.4 for m in own))
    seen = next((w for w in walks if clear(w)), None) or next(
        w for w in walks if w.kind == "impostor" and ev.UNKNOWN in w.kinds and not w.recognized)
    stranger, photo = seen.path.parent.name, seen.path
    report: dict = {"stranger": stranger, "lockout_after": s.lockout_after}

    def walk(path: Path, kind: str, truth: str | None) -> Walk:
        nonlocal t
        w = Walk(kind, truth, f"{path.parent.name}/{path.name}", path, -1)
        t = run_walk(d, rec, matcher, walkup(load_image(path), size, args.frames, rng, scene), scene, t + gap,
                     dt, clock, args.replay_frames, w)
        return w

    def lockouts(w: Walk) -> str:
        return ", ".join(w.kinds) or "nothing"

    say("lockout check:")
    tries, engaged = 0, []
    while len(engaged) < 2 and tries < 4 * s.lockout_after + 4:
        tries += 1
        w = walk(photo, "impostor", None)
        line = f"  stranger try {tries}: {lockouts(w)}"
        if ev.LOCKOUT in w.kinds:
            engaged.append((tries, d.decider.lockout_remaining(t)))
            line += f" (face unlock suspended for {d.decider.lockout_remaining(t):.0f} s)"
        say(line)
        print(line)
        if len(engaged) == 1 and "member_during" not in report and member is not None:
            m = walk(member.path, "genuine", member.truth)
            line = (f"  enrolled {member.truth} tries during the lockout: {lockouts(m)}; relay "
                    f"{'ENERGISED' if m.relay else 'stayed off'}")
            say(line)
            print(line)
            report["member_during"] = m.kinds
            report["member_relay_during"] = m.relay
    report["engaged_after_tries"] = engaged[0][0] if engaged else None
    report["first_lockout_seconds"] = round(engaged[0][1], 1) if engaged else None
    report["second_after_tries"] = engaged[1][0] if len(engaged) > 1 else None
    report["second_lockout_seconds"] = round(engaged[1][1], 1) if len(engaged) > 1 else None
    if member is not None and engaged:
        t += d.decider.lockout_remaining(t) + 1.0
        m = walk(member.path, "genuine", member.truth)
        line = (f"  enrolled {member.truth} tries after the lockout: {lockouts(m)}; relay "
                f"{'energised' if m.relay else 'stayed off'}")
        say(line)
        print(line)
        report["member_after"] = m.kinds
    report["ok"] = bool(engaged and engaged[0][0] == s.lockout_after
                        and ev.DENIED in report.get("member_during", [])
                        and ev.RECOGNIZED not in report.get("member_during", [])
                        and not report.get("member_relay_during", False)
                        and (len(engaged) < 2 or engaged[1][1] > engaged[0][1])
                        and ev.RECOGNIZED in report.get("member_after", [ev.RECOGNIZED]))
    return report


MARGINS = (0.0, 0.03, 0.05, 0.1)
VOTES = (1, 2, 3)


def grid(base: Settings, args) -> list[tuple[DecideSettings, MatchSettings]]:
    """Thresholds x margins x votes (unknown_after = max(configured, votes)), then unknown_after."""
    m0, d0 = base.match, base.decide
    out = []
    ths = sorted({round(x, 3) for x in args.thresholds} | {m0.threshold})
    for margin in sorted(set(MARGINS) | {m0.margin}):
        for th in ths:
            for votes in sorted(set(VOTES) | {d0.votes}):
                ua = max(d0.unknown_after, votes)
                if ua <= args.replay_frames:
                    out.append((d0.model_copy(update={"votes": votes, "unknown_after": ua}),
                                m0.model_copy(update={"threshold": th, "margin": margin})))
    for ua in range(d0.votes, args.replay_frames + 1):
        if ua != d0.unknown_after:
            out.append((d0.model_copy(update={"unknown_after": ua}), m0))
    return out


def print_table(table: list[dict], base: Settings) -> None:
    """One block per margin: rows thresholds, columns votes; cells 'false unlocks/wrong person FRR %'."""
    d0 = base.decide
    votes = sorted({r["votes"] for r in table})
    for margin in sorted({r["margin"] for r in table}):
        print(f"  margin {margin:.2f}  (cells: false unlocks / wrong-person unlocks, FRR %, mean frames)")
        print("  threshold " + "".join(f"{f'votes={v} unknown_after={max(d0.unknown_after, v)}':>30}"
                                        for v in votes))
        for th in sorted({r["threshold"] for r in table}):
            cells = []
            for v in votes:
                r = next((r for r in table if r["margin"] == margin and r["threshold"] == th and r["votes"] == v
                          and r["unknown_after"] == max(d0.unknown_after, v)), None)
                cells.append("-" if r is None else
                             f"{r['false_unlocks']}/{r['wrong_person_unlocks']}  {(r['frr'] or 0) * 100:5.1f} %"
                             f"  {r['mean_frames_to_unlock'] or 0:4.2f}")
            mark = " <- configured" if (th == base.match.threshold and margin == base.match.margin) else ""
            print(f"  {th:9.3f} " + "".join(f"{c:>30}" for c in cells) + mark)
    rest = [r for r in table if r["unknown_after"] != max(d0.unknown_after, r["votes"])]
    for r in rest:
        print(f"  threshold {r['threshold']:.3f} margin {r['margin']:.2f} votes {r['votes']} "
              f"unknown_after {r['unknown_after']}: {r['false_unlocks']}/{r['wrong_person_unlocks']}  "
              f"{(r['frr'] or 0) * 100:5.1f} %  {r['mean_frames_to_unlock'] or 0:4.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "lfw-dev"))
    ap.add_argument("--config", help="settings file (default: the built-in defaults)")
    ap.add_argument("--seeds", type=int, default=5, help="trials with different people enrolled (seeds 0..N-1)")
    ap.add_argument("--seed", type=int, help="run this one seed only")
    ap.add_argument("--limit", type=int, default=0, help="at most this many impostor identities per seed")
    ap.add_argument("--quick", action="store_true", help="one seed, 150 impostors, 15 genuine walk-ups (~1 min)")
    ap.add_argument("--max-genuine", type=int, default=10, help="held-back photos per enrolled person, at most")
    ap.add_argument("--frames", type=int, default=8, help="frames per walk-up, at most")
    ap.add_argument("--replay-frames", type=int, default=0,
                    help="matched frames kept per face for the replays (default and minimum: "
                         "decide.unknown_after; more costs frames but lets the table vary unknown_after)")
    ap.add_argument("--fps", type=float, default=5.0, help="frames the door processes per second")
    ap.add_argument("--thresholds", type=float, nargs="*",
                    default=[0.55, 0.6, 0.63, 0.65, 0.68, 0.7, 0.71, 0.72, 0.74, 0.76, 0.78, 0.8])
    ap.add_argument("--no-lockout", action="store_true", help="skip the lockout check")
    ap.add_argument("--impostor", action="append", help="only this identity as impostor (repeatable)")
    ap.add_argument("--save", help="pickle the recorded walk-ups here after every seed (other analyses, --resume)")
    ap.add_argument("--resume", action="store_true", help="with --save: skip the seeds already saved there")
    args = ap.parse_args(argv)
    if args.quick:
        args.limit = args.limit or 150
        if args.seed is None:
            args.seeds = 1
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lock.decide").setLevel(logging.ERROR)   # 'conflicted track' warnings in replays

    base = config_mod.load(args.config) if args.config else Settings()
    if args.replay_frames < base.decide.unknown_after:
        args.replay_frames = base.decide.unknown_after
    data = Path(args.data)
    everyone = people(data)
    seeds = [args.seed] if args.seed is not None else list(range(args.seeds))
    eligible = sum(1 for ps in everyone.values() if len(ps) > ENROLL_PHOTOS)
    per_seed = (min(args.limit, len(everyone) - ENROLLED) if args.limit else len(everyone) - ENROLLED)
    m, dd = base.match, base.decide
    say(f"door trial: {len(everyone)} people in {data} ({eligible} with >= {ENROLL_PHOTOS + 1} photos); "
        f"seeds {seeds}; ~{per_seed} impostors per seed; threshold {m.threshold}, margin {m.margin}, "
        f"votes {dd.votes}, window {dd.window_seconds} s, unknown_after {dd.unknown_after}")
    stats = {"done": 0, "planned": (per_seed + 45) * len(seeds), "t0": time.perf_counter(),
             "frames": 0, "detections": 0, "embeddings": 0, "face_changes": 0}
    walks: list[Walk] = []
    lock_report = None
    done: dict[int, dict] = {}      # seed → {"walks", "lockout", "stats"}: the checkpoint
    key = {"settings": base.model_dump(), "data": str(data), "frames": args.frames, "fps": args.fps,
           "replay_frames": args.replay_frames, "limit": args.limit, "max_genuine": args.max_genuine,
           "impostor": args.impostor, "quick": args.quick,
           "recording": 2}   # 2: walk-ups keep their embeddings (the replays check for a change of face)
    if args.save and args.resume and Path(args.save).exists():
        with open(args.save, "rb") as f:
            saved = pickle.load(f)
        if saved.get("key") != key:
            raise SystemExit(f"{args.save}: recorded with other settings or options; not resuming")
        done = {k: v for k, v in saved["seeds"].items() if k in seeds}
        say(f"resuming: seeds {sorted(done)} read from {args.save}")
    for k, seed in enumerate(seeds):
        if seed not in done:
            t_seed = time.perf_counter()
            before = {n: stats[n] for n in ("frames", "detections", "embeddings", "face_changes")}
            w, lr = run_seed(base, seed, everyone, args, stats, lockout_check=(k == len(seeds) - 1
                                                                                  and not args.no_lockout))
            done[seed] = {"walks": w, "lockout": lr, "seconds": time.perf_counter() - t_seed,
                          "model_hash": stats.pop("model_hash"),
                          "stats": {n: stats[n] - before[n] for n in before}}
            if args.save:           # after every seed, so that a killed run can --resume
                with open(args.save + ".tmp", "wb") as f:
                    pickle.dump({"key": key, "seeds": done}, f)
                os.replace(args.save + ".tmp", args.save)
        else:
            stats["done"] += len(done[seed]["walks"])
            for n, v in done[seed]["stats"].items():
                stats[n] += v
        walks += done[seed]["walks"]
        lock_report = done[seed]["lockout"] or lock_report
    elapsed = sum(v["seconds"] for v in done.values())
    models = sorted({done[seed].get("model_hash", "?") for seed in seeds})

    # The daemon's own outcome (events), checked against the relay and against the replay.
    # The daemon's outcome, attributed to faces by replaying the configured settings, which must
    # give exactly the daemon's events (checked) and the relay (checked).
    t_replay = time.perf_counter()
    daemon = score(walks, lambda w: replay(w, base.decide, base.match))
    relay_mismatch = sum(1 for w in walks if w.relay != bool(w.recognized))
    mismatched = [(w, [(p, k) for p, k, _ in replay(w, base.decide, base.match)]) for w in walks]
    mismatched = [(w, got) for w, got in mismatched if got != w.recognized]
    replay_mismatch = len(mismatched)
    table = []
    for dset, mset in grid(base, args):
        r = score(walks, lambda w: replay(w, dset, mset))
        r.pop("_fa"), r.pop("_by")
        table.append({"threshold": mset.threshold, "margin": mset.margin,
                      "votes": dset.votes, "unknown_after": dset.unknown_after,
                      "false_unlocks": r["false_unlocks"], "wrong_person_unlocks": r["wrong_person_unlocks"],
                      "frr": r["frr"], "mean_frames_to_unlock": r["mean_frames_to_unlock"],
                      "bystander_unlocks": r["bystander_unlocks"], "frr_quality_passed": r["frr_quality_passed"]})
    t_replay = time.perf_counter() - t_replay

    gen = [w for w in walks if w.kind == "genuine"]
    imp = [w for w in walks if w.kind == "impostor"]
    no_face = sum(1 for w in walks if all(b is None or len(b) == 0 for _, b, _, _ in w.frames))
    print(f"door trial on {data}: seeds {seeds}, {ENROLLED} people enrolled per seed "
          f"({ENROLL_PHOTOS} photos each), {args.fps:g} fps, walk-ups of at most {args.frames} frames")
    print(f"FaceNet model: {', '.join(models)}" + ("  WARNING: the models changed during the trial"
                                                  if len(models) > 1 else ""))
    print(f"settings: match.threshold {m.threshold}, match.margin {m.margin}, decide.votes {dd.votes}, "
          f"decide.window_seconds {dd.window_seconds}, decide.unknown_after {dd.unknown_after}")
    print(f"walk-ups tried: {len(walks)} ({len(imp)} impostor, {len(gen)} genuine; {no_face} with no face found)")
    print(f"false unlocks (impostor walk-ups let in): {daemon['false_unlocks']} of {len(imp)}")
    for w, got in daemon["_fa"]:
        print(f"  seed {w.seed}: {w.photo} let in as {got[0][0]} at frame {got[0][1]} "
              f"(best score {w.max_score():.3f})")
    print(f"unlocks by another face in the photo (bystander; check by eye): {daemon['bystander_unlocks']}")
    for w, got in daemon["_by"]:
        print(f"  seed {w.seed}: {w.kind} walk-up {w.photo}: a bystander face recognized as "
              f"{', '.join(p for p, _, _ in got)}")
    print(f"unlocks of the wrong enrolled person: {daemon['wrong_person_unlocks']} of {len(gen)} genuine walk-ups")
    if gen:
        print(f"genuine walk-ups that failed (FRR): {daemon['frr'] * 100:.1f} % "
              f"({round(daemon['frr'] * len(gen))} of {len(gen)})")
        print(f"  the quality gate turned the photo's person's face away in every frame: "
              f"{daemon['genuine_quality_rejected']} of {len(gen)} genuine walk-ups")
        print(f"  no face was ever attributed to the photo's person (not a quality-gate refusal): "
              f"{daemon['genuine_no_own_face']} of {len(gen)}"
              + "".join(f"\n    seed {w.seed}: {w.photo}" for w in gen
                        if not w.own_face_matched() and all(sub < 0 for *_, sub in w.frames)))
        qp = daemon["frr_quality_passed"]
        print(f"  FRR over the {daemon['genuine_quality_passed']} walk-ups whose face passed the quality gate "
              f"at least once: " + (f"{qp * 100:.1f} %" if qp is not None else "n/a"))
    else:
        print("no genuine walk-ups")
    print(f"mean frames to unlock: {daemon['mean_frames_to_unlock']} "
          f"({daemon['mean_frames_to_unlock'] / args.fps if daemon['mean_frames_to_unlock'] else 0:.2f} s "
          f"at {args.fps:g} fps)")
    print(f"checks: relay energised exactly when `recognized` was raised: {len(walks) - relay_mismatch}/{len(walks)}; "
          f"replay of the configured settings = daemon: {len(walks) - replay_mismatch}/{len(walks)}"
          + "".join(f"\n    seed {w.seed} {w.kind} {w.photo}: daemon {w.recognized}, replay {got}"
                    for w, got in mismatched[:10]))
    print(f"cost: {stats['frames']} frames, {stats['detections']} detections, {stats['embeddings']} daemon "
          f"embeddings, {stats['face_changes']} tracks that changed face (lock/decide.py SAME_FACE: each walk-up "
          f"is one photo, so every one is one face taken for two); {elapsed / 60:.1f} min "
          f"({elapsed / max(1, len(walks)) * 1e3:.0f} ms per walk-up); "
          f"replays {t_replay:.0f} s")
    print("trade-off (replayed through fresh Deciders; false unlocks of "
          f"{len(imp)} impostor walk-ups, FRR of {len(gen)} genuine):")
    print_table(table, base)
    if lock_report:
        print(f"lockout: engaged after {lock_report['engaged_after_tries']} tries of one stranger "
              f"(lockout_after {lock_report['lockout_after']}) for {lock_report['first_lockout_seconds']} s; "
              f"an enrolled person during it: {', '.join(lock_report.get('member_during', [])) or 'n/a'}; "
              f"the stranger kept trying: next lockout at try {lock_report['second_after_tries']}, for "
              f"{lock_report['second_lockout_seconds']} s; as designed: {'yes' if lock_report['ok'] else 'NO'}")
    fa, by = daemon.pop("_fa"), daemon.pop("_by")
    out = dict(daemon)
    out.update(seeds=seeds, model_hash=models[0] if len(models) == 1 else models, threshold=m.threshold, margin=m.margin, votes=dd.votes,
               window_seconds=dd.window_seconds, unknown_after=dd.unknown_after,
               walkups_no_face=no_face, relay_mismatch=relay_mismatch, replay_mismatch=replay_mismatch,
               false_unlock_photos=[f"{w.photo}->{got[0][0]}" for w, got in fa],
               bystander_unlock_photos=[f"{w.photo}->{got[0][0]}" for w, got in by],
               lockout=lock_report, tradeoff=table, minutes=round(elapsed / 60, 1))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
