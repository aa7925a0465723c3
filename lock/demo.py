"""`lock demo`: the whole lock on recorded frames, with a mock relay, on any machine.

It enrolls one person from real photographs, writes a short recording (an
empty porch, that person walking up, the porch again, a stranger walking up),
and runs the real daemon on it: real models, real gallery, real decision, the
relay on gpiozero's MockFactory, events printed as they happen (and sent to
MQTT when the config given turns it on).
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from lock import config as config_mod
from lock import events as ev
from lock.scenes import background, default_photos, walkup

log = logging.getLogger(__name__)


def _recording(photos: Path, out: Path, size: tuple[int, int]) -> tuple[str, str, list[Path]]:
    from lock.imageio import load_image

    people = sorted(p for p in (photos / "celebrities" / "train").iterdir() if p.is_dir())
    member, stranger = people[0], people[-1]
    enroll = sorted(member.glob("*.jpg"))
    rng = np.random.default_rng(7)
    scene = background(size, 1)
    val = photos / "celebrities" / "val"
    frames = [scene] * 15
    frames += walkup(load_image(sorted((val / member.name).glob("*.jpg"))[0]), size, 20, rng, scene)
    frames += [scene] * 15
    frames += walkup(load_image(sorted((val / stranger.name).glob("*.jpg"))[0]), size, 20, rng, scene)
    frames += [scene] * 10
    out.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(out / f"{i:05d}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    return member.name, stranger.name, enroll


def demo(config_path: str | None, *, photos: str | None = None, fps: float = 10.0,
         keep: str | None = None) -> int:
    """Returns 0 when the member was let in once and the stranger reported; ``keep``: a folder for the
    recording, the gallery and the audit log, kept at the end (else a temporary one, removed)."""
    base = config_mod.load(config_path, door=False) if config_path else config_mod.Settings()   # a mock relay only
    root = Path(photos) if photos else default_photos()
    if keep:
        work = Path(keep).resolve()
        if work.exists() and (not work.is_dir() or any(work.iterdir())):
            print(f"error: --keep {keep}: {'not a folder' if not work.is_dir() else 'the folder is not empty'} "
                  "(give a new or empty folder)", file=sys.stderr)
            return 2
        work.mkdir(parents=True, exist_ok=True)
        return _run(base, root, work, fps, kept=True)
    work = Path(tempfile.mkdtemp(prefix="lock-demo-"))
    try:
        return _run(base, root, work, fps)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # frames, a gallery and an audit log: nothing to keep


def _run(base, root: Path, work: Path, fps: float, kept: bool = False) -> int:
    from gpiozero.pins.mock import MockFactory

    from lock.daemon import Daemon
    from lock.enroll import enroll_files
    from lock.gallery import Gallery
    from lock.vision.pipeline import FacePipeline

    size = (base.camera.height, base.camera.width)
    member, stranger, enroll_photos = _recording(root, work / "frames", size)
    data = base.model_dump()
    data["camera"].update(source="files", path=str(work / "frames"), fps=fps, loop=False)
    data["gallery"]["path"] = str(work / "gallery.db")
    data["audit"]["path"] = str(work / "audit.db")
    data["control"].update(socket=str(work / "control.sock"), group=None)
    # A device of its own in Home Assistant: with the live lock's client id and topics the broker
    # would drop the live lock's connection, and its events and switch state would be the demo's.
    data["mqtt"].update(client_id=f"{base.mqtt.client_id}-demo", base_topic=f"{base.mqtt.base_topic}_demo",
                        device_name=f"{base.mqtt.device_name} (demo)")
    settings = config_mod.parse(data, "demo settings")

    print(f"demo folder ({'kept' if kept else 'removed at the end'}): {work}")
    pipe = FacePipeline(settings).open()
    with Gallery(settings.gallery.path, pipe.model_hash) as gallery:
        report = enroll_files(pipe, gallery, member, enroll_photos, lookalike=settings.match.threshold)
    print(f"enrolled {member} from {len(report.stored)} photos; {len(report.rejected)} skipped"
          + (":" if report.rejected else ""))
    for what, why in report.rejected:
        print(f"  {Path(what).name}: {why}")
    print(f"recording: empty porch, {member} walks up, empty porch, {stranger} (not enrolled) walks up; "
          f"{fps:g} fps, mock relay on {settings.door.relay_pin}")
    if settings.mqtt.enabled:
        print(f"MQTT: {settings.mqtt.host}:{settings.mqtt.port}, base topic {settings.mqtt.base_topic}")

    factory = MockFactory()
    t0 = time.monotonic()
    seen: list[ev.Event] = []

    def show(e: ev.Event) -> None:
        if e.kind in ev.DOOR_EVENTS or e.kind == ev.LOCK_STATE:
            seen.append(e)
            who = f" {e.person}" if e.person else ""
            extra = f" {dict(e.detail)}" if e.detail else ""
            print(f"  t={time.monotonic() - t0:6.2f}s  {e.kind}{who}{extra}", flush=True)

    d = Daemon(settings, pin_factory=factory)
    d.bus.subscribe(show)
    d.install_signals()
    try:
        d.open()
        d.run(stop_when_exhausted=True)
        time.sleep(min(settings.door.unlock_seconds, 5) + 0.2)  # let a running pulse finish
    finally:
        d.close()
    unlocks = [e for e in seen if e.kind == ev.RECOGNIZED]
    unknown = [e for e in seen if e.kind == ev.UNKNOWN]
    print(f"done: {d.stats.frames} frames, {d.stats.detections} detections, {d.stats.embeddings} embeddings; "
          f"unlocked for {[e.person for e in unlocks]}, unknown faces: {len(unknown)}")
    ok = [e.person for e in unlocks] == [member] and len(unknown) >= 1
    print("demo result: " + ("as expected (member let in once, stranger kept out)" if ok else "UNEXPECTED"))
    if kept:
        print(f"kept in {work}: the recording (frames/), gallery.db (with {member}) and audit.db; to run the lock "
              f"on them, set camera.source: files, camera.path: {work / 'frames'}, gallery.path: "
              f"{work / 'gallery.db'} in your copy of config.yaml")
    return 0 if ok else 1
