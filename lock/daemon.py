"""The daemon: the only place that wires camera, vision, gallery, decision, door and events.

One loop: take the newest frame → (change gate) → detect → track → for faces
of undecided tracks (and twice a second for decided ones: still the same
face?): align, quality, embed, match → decide → door and events.
Around it: the control socket, sd_notify (READY once frames flow, WATCHDOG
only while they do), signals (TERM/INT stop, HUP reloads the config), and the
MQTT bridge.  Whatever way the process leaves, the relay is turned off first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from lock import config as config_mod
from lock import events as ev
from lock.decide import OVERSHADOW_AREA_RATIO
from lock.schedule import TimeSync
from lock.errors import ControlError, DoorError, EnrollmentError, LockError

log = logging.getLogger(__name__)


def sd_notify(message: str) -> bool:
    """Send a systemd notification (READY=1, WATCHDOG=1, STATUS=...); no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)
        return False




class ChangeGate:
    """Is there anything new in front of the camera?  A 32x24 grey thumbnail compared with the last one."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._ref: np.ndarray | None = None

    def changed(self, frame: np.ndarray) -> bool:
        thumb = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (32, 24), interpolation=cv2.INTER_AREA)
        thumb = thumb.astype(np.int16)
        if self._ref is None or self.threshold <= 0:
            self._ref = thumb
            return True
        moved = float(np.abs(thumb - self._ref).mean()) >= self.threshold
        self._ref = thumb
        return moved

    @property
    def detail(self) -> float | None:
        """Standard deviation of the last thumbnail (grey levels): near 0 for a blank picture."""
        return None if self._ref is None else float(self._ref.std())


@dataclasses.dataclass
class Stats:
    frames: int = 0
    detections: int = 0
    embeddings: int = 0
    skipped_idle: int = 0
    latency_ms: float = 0.0
    fps: float = 0.0


class Commands:
    """What remote commands (MQTT) may do: the bridge's CommandHandler, backed by the daemon."""

    def __init__(self, daemon: "Daemon") -> None:
        self._d = daemon

    def unlock(self, source: str) -> None:
        self._d.unlock(source)

    def open(self, source: str) -> None:
        self._d.unlock(source)

    def lock(self, source: str) -> None:
        self._d.lock(source)

    def set_face_unlock(self, enabled: bool) -> None:
        self._d.set_face_unlock(enabled)


def turn_on_hint(settings: config_mod.Settings) -> str:
    """How face unlock can be turned back on with these settings."""
    if settings.mqtt.enabled and settings.mqtt.remote_face_unlock_on:
        return "`lock face-unlock on` or Home Assistant's switch"
    return "`lock face-unlock on` (at the device)"


# Camera health, for the log, `lock status` and Home Assistant's "Camera problem" sensor (the door stays
# locked either way; under systemd a camera that sends nothing also stops the watchdog kicks): no new
# frame for CAMERA_QUIET_SECONDS, or a picture without detail for as long (the change gate's 32x24 grey
# thumbnail with a standard deviation under BLANK_STD: the lens covered, pitch dark, the sun in it).
CAMERA_QUIET_SECONDS = 10.0
BLANK_STD = 2.0
SKIP_LOG_SECONDS = 10.0   # a frame skipped for the same reason is logged once per this long


def box_areas(boxes: np.ndarray) -> np.ndarray:
    wh = boxes[:, 2:4] - boxes[:, 0:2]
    return wh[:, 0] * wh[:, 1]


def door_face(boxes: np.ndarray) -> int | None:
    """Index of the face at the door: the largest box (the nearest the camera); None if no face."""
    return int(np.argmax(box_areas(boxes))) if len(boxes) else None


class Daemon:
    """The running lock.  Constructor does no I/O; :meth:`open` brings everything up.

    ``pin_factory`` goes to gpiozero (``MockFactory`` in tests and the demo);
    ``camera`` replaces the configured camera (tests, demo, benchmarks).
    """

    def __init__(self, settings: config_mod.Settings, *, config_path: str | None = None,
                 pin_factory: Any = None, camera: Any = None, notify: Callable[[str], bool] = sd_notify,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.config_path = config_path
        self.pin_factory = pin_factory
        self.notify = notify
        self.clock = clock
        self.bus = ev.EventBus()
        self.stats = Stats()
        self.stop_event = threading.Event()
        self._camera = camera
        self._reload = threading.Event()
        self._matcher = None
        self._gallery_version: tuple[int, int] | None = None   # (gallery generation, version)
        self._face_unlock = True
        self._ready = False
        self._last_stats = 0.0
        self._stats_frames = 0
        self.camera_problem: str | None = None   # "no_frames", "blank" or None (CAMERA_QUIET_SECONDS)
        self._last_new_frame: float | None = None
        self._blank_since: float | None = None
        self._skip_log: tuple[str, float, int] = ("", 0.0, 0)   # last reason logged, when, how many since
        self._last_detect = -1e9
        self._last_faces = 0
        self._all_decided = False
        self._in_front: dict[int, tuple[float, float]] = {}  # door face's track id -> (last seen, box area)
        self._enroll_lock = threading.Lock()
        self._enrolling = False   # an enrollment from the camera is running: no face is decided meanwhile
        # Held while the face unlock setting changes and while a face decision unlocks the door: once
        # set_face_unlock(False) or an enrollment has begun, no face opens the door, not even the one in a
        # frame that was already being matched.
        self._deciding_lock = threading.Lock()
        self._state_lock = threading.Lock()  # state.json: one writer at a time
        self._warned_dir_sync = False
        self._frame_listeners: list[Callable[[np.ndarray], None]] = []
        self.door = self.gallery = self.audit = self.mqtt = self.pipeline = None
        self.decider = self.camera = self.control = None
        self.time_sync: TimeSync | None = None
        self._synced_boot_noted: str | None = None   # the sighting state.json holds, or a save was tried for

    # --- bring-up and tear-down ---------------------------------------------

    def open(self) -> "Daemon":
        from lock.audit import AuditLog
        from lock.camera import make_camera
        from lock.control import ControlServer
        from lock.decide import Decider
        from lock.door import Door
        from lock.gallery import Gallery
        from lock.vision.pipeline import FacePipeline

        s = self.settings
        try:
            # Before anything else, the one-daemon claim: a second `lock run` stops here, before it
            # touches the relay pin or the broker.  The socket itself is served once all is up.
            self.control = ControlServer(s.control.socket, self._handle, group=s.control.group)
            self.control.claim()
            # The door next: whatever fails next, the relay is already held off.
            self.door = Door(s.door, self.bus, pin_factory=self.pin_factory)
            self.door.open()
            self.audit = AuditLog(s.audit, outbox=s.mqtt.enabled)
            self.audit.open()
            self.bus.subscribe(self.audit.record)
            self.pipeline = FacePipeline(s).open((s.camera.height, s.camera.width))
            self.gallery = Gallery(s.gallery.path, self.pipeline.model_hash)
            self.gallery.open()
            self._report_stale()
            state = self._load_state()
            self._face_unlock = state.get("face_unlock", True)
            self.time_sync = TimeSync(state.get("time_synced_boot"))
            self._synced_boot_noted = self.time_sync.synced_boot
            self.decider = Decider(s.decide, s.match, schedules=self.gallery.schedule, clock=self.clock,
                                   time_synced=self.time_sync)
            self.decider.restore_lockout(state.get("lockout") or {})
            self.gate = ChangeGate(s.idle.change_threshold)
            if s.mqtt.enabled:
                from lock.mqtt import MqttBridge, install_id
                self.mqtt = MqttBridge(s.mqtt, self.bus, Commands(self), has_contact=s.door.contact_pin is not None,
                                       outbox=self.audit, install=install_id(s.control.socket))
                self.mqtt.start()
            self.bus.publish(ev.Event.now(ev.FACE_UNLOCK, enabled=self._face_unlock))
            self.door.announce()  # the door was opened before the audit log and MQTT listened
            self.control.start()
            self.camera = self._camera or make_camera(s.camera)
            self.camera.open()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Relay off first, then everything else; safe to call twice."""
        if self.door is not None:
            try:
                self.door.close()
            except Exception:
                log.exception("closing the door failed")
        for part in ("camera", "control", "mqtt", "gallery", "audit"):
            obj = getattr(self, part)
            if obj is None:
                continue
            try:
                obj.stop() if part == "mqtt" else obj.close()
            except Exception:
                log.exception("closing %s failed", part)
            setattr(self, part, None)

    def __enter__(self) -> "Daemon":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- state ----------------------------------------------------------------

    def _state_path(self) -> Path:
        return Path(self.settings.gallery.path).with_name("state.json")

    def _load_state(self) -> dict:
        """state.json as saved; {} when there is none yet (a first start).

        One that cannot be read or is not what :meth:`_save_state` writes starts
        with face unlock OFF: it may have been turned off, or a lockout been
        running, and a damaged file must not quietly undo either.
        """
        p = self._state_path()
        try:
            state = json.loads(p.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            return self._unusable_state(p, str(exc))
        if not isinstance(state, dict) or not isinstance(state.get("face_unlock", True), bool) \
                or not isinstance(state.get("lockout") or {}, dict):
            return self._unusable_state(p, "not the lock's saved state")
        return state

    def _unusable_state(self, p: Path, why: str) -> dict:
        log.error("%s: %s; face unlock starts OFF (the file may have held it off, or a lockout): turn it back "
                  "on with %s", p, why, turn_on_hint(self.settings))
        return {"face_unlock": False}

    def _save_state(self) -> None:
        # Called from the loop, MQTT's thread and the control socket's: one writer at a time, and the
        # snapshot taken under the same lock, so an older state never replaces a newer one.
        p = self._state_path()
        try:
            with self._state_lock:
                state = {"face_unlock": self._face_unlock}
                if self.decider is not None:
                    state["lockout"] = self.decider.lockout_state()
                synced_boot = self.time_sync.synced_boot if self.time_sync is not None else None
                if synced_boot is not None:
                    state["time_synced_boot"] = synced_boot
                fd, tmp = tempfile.mkstemp(prefix=".state.", suffix=".tmp", dir=p.parent)
                try:
                    with os.fdopen(fd, "w") as f:
                        f.write(json.dumps(state))
                        f.flush()
                        os.fsync(f.fileno())   # the new state on disk before it replaces the old one
                    os.replace(tmp, p)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
        except OSError as exc:
            log.error("cannot save %s: %s (the face unlock setting and any lockout will not survive "
                      "a restart)", p, exc)
            return
        try:  # the replacement itself on disk too; some file systems cannot sync a folder: the file is saved
            dfd = os.open(p.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            if not self._warned_dir_sync:
                self._warned_dir_sync = True
                log.warning("%s saved, but its folder %s cannot be synced to disk (%s): a power cut just "
                            "after a change may bring back the one before", p, p.parent, exc)

    def _report_stale(self) -> None:
        stale = self.gallery.stale_templates()
        if stale:
            names = ", ".join(sorted(stale))
            log.warning("%d template(s) in %s were made by another FaceNet model and are ignored: "
                        "re-enroll %s (lock enroll NAME PHOTOS --replace), or remove them with "
                        "`lock faces purge-stale`", sum(stale.values()), self.settings.gallery.path, names)

    def _refresh_matcher(self) -> None:
        version = self.gallery.version(), self.gallery.generation
        if version != self._gallery_version:
            self._matcher = self.gallery.matcher()
            if self._gallery_version is not None:
                log.info("gallery changed: %d people now", len(self._matcher.people))
            self._gallery_version = version

    # --- CommandHandler (MQTT) and control socket ---------------------------

    def unlock(self, source: str) -> None:
        self.door.unlock(source)  # first: a door that cannot unlock raises no remote_unlock event
        self.bus.publish(ev.Event.now(ev.REMOTE_UNLOCK, source=source))

    def lock(self, source: str) -> None:
        log.info("lock requested by %s", source)
        self.door.lock()

    def set_face_unlock(self, enabled: bool) -> None:
        with self._deciding_lock:
            self._face_unlock = bool(enabled)
        self._save_state()
        log.info("face unlock %s", "enabled" if enabled else "disabled")
        self.bus.publish(ev.Event.now(ev.FACE_UNLOCK, enabled=self._face_unlock))

    def status(self) -> dict:
        now = self.clock()
        people = self.gallery.people() if self.gallery else []
        cam = self.camera
        return {
            "door": self.door.state if self.door else None,
            "door_contact_open": getattr(self.door, "contact_open", None),
            "face_unlock": self._face_unlock,
            "locked_out": self.decider.locked_out(now) if self.decider else False,
            "lockout_remaining_s": round(self.decider.lockout_remaining(now), 1) if self.decider else 0,
            "clock_synchronized": bool(self.time_sync and self.time_sync()),
            "people": len(people),
            "gallery_read_only": bool(getattr(self.gallery, "read_only", False)),
            "camera_healthy": bool(getattr(cam, "healthy", False)),
            "camera_problem": self.camera_problem,
            "fps": round(self.stats.fps, 1),
            "latency_ms": round(self.stats.latency_ms, 1),
            "mqtt_connected": bool(self.mqtt and self.mqtt.connected),
            "mqtt_conflict": self.mqtt.conflict if self.mqtt else None,
            "mqtt_code_lockout_s": round(self.mqtt.code_lockout_remaining, 1) if self.mqtt else 0,
            "frames": self.stats.frames,
        }

    def _handle(self, req: dict, progress: Callable[[str], None]) -> dict:
        cmd = req.get("cmd")
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "unlock":
            self.unlock("control_socket")
            return {"ok": True}
        if cmd == "lock":
            self.lock("control_socket")
            return {"ok": True}
        if cmd == "face_unlock":
            enabled = req.get("enabled")
            if not isinstance(enabled, bool):
                return {"ok": False, "error": "face_unlock needs \"enabled\": true or false"}
            self.set_face_unlock(enabled)
            return {"ok": True}
        if cmd == "enroll":
            name, count = req.get("name"), req.get("count", 5)
            if not isinstance(name, str) or not isinstance(count, int) or not 1 <= count <= 50:
                return {"ok": False, "error": "enroll needs a name (text) and a count (1-50)"}
            return self._enroll_from_camera(name, count, bool(req.get("replace", False)), progress)
        return {"ok": False, "error": f"unknown command {cmd!r} (status, unlock, lock, face_unlock, enroll)"}

    def _enroll_from_camera(self, name: str, count: int, replace: bool, say: Callable[[str], None]) -> dict:
        from lock.enroll import enroll_frames

        if not self._enroll_lock.acquire(blocking=False):
            return {"ok": False, "error": "another enrollment is running"}
        # The person enrolling stands at the door, a stranger to the gallery until the end: deciding on
        # their face raised `unknown` events (a photo of them with mqtt.unknown_image) and, as they
        # moved in and out of view as asked, lockouts of face unlock for everyone.
        with self._deciding_lock:
            self._enrolling = True
        frames: list[np.ndarray] = []
        cond = threading.Condition()

        def listener(frame: np.ndarray) -> None:
            with cond:
                frames.append(frame)
                del frames[:-1]
                cond.notify()

        def stream():
            while not self.stop_event.is_set():
                with cond:
                    cond.wait_for(lambda: frames, timeout=1.0)
                    if not frames:
                        continue
                    frame = frames.pop()
                yield frame

        self._frame_listeners.append(listener)
        try:
            report = enroll_frames(self.pipeline_enroll, self.gallery, name, stream(), count=count,
                                   timeout=60.0, say=say, replace=replace,
                                   lookalike=self.settings.match.threshold)
            return {"ok": True, "stored": len(report.stored)}
        except EnrollmentError as exc:
            return {"ok": False, "error": str(exc)}
        finally:
            self._frame_listeners.remove(listener)
            self._enrolling = False
            self._enroll_lock.release()

    @property
    def pipeline_enroll(self):
        """A second pipeline for enrollment, so the door loop never waits for it."""
        if not hasattr(self, "_pipeline_enroll"):
            from lock.vision.pipeline import FacePipeline
            self._pipeline_enroll = FacePipeline(self.settings).open()
        return self._pipeline_enroll

    # --- the loop -------------------------------------------------------------

    def process(self, image: np.ndarray, now: float | None = None) -> list[ev.Event]:
        """One frame through the pipeline; returns the door events it raised."""
        now = self.clock() if now is None else now
        t0 = time.perf_counter()
        self.stats.frames += 1
        for listener in list(self._frame_listeners):
            listener(image)
        s = self.settings
        # Someone undecided in view: detect every frame.  Everyone in view already
        # decided (let in, or reported unknown): twice a second is enough to keep
        # their tracks alive.  Nobody: only when the scene changes, or once in a while.
        changed = self.gate.changed(image)
        since = now - self._last_detect
        if self._last_faces > 0:
            every = min(config_mod.DECIDED_DETECT_SECONDS, s.decide.track_timeout_seconds / 3)
            run = not self._all_decided or since >= every
        else:
            run = changed or since >= s.idle.detect_every_seconds
        if not run:
            self.stats.skipped_idle += 1
            return []
        self._last_detect = now
        self._refresh_matcher()
        faces = self.pipeline.detect(image)
        self.stats.detections += 1
        self._last_faces = len(faces)
        raised: list[ev.Event] = []
        track_ids = self.decider.observe(faces.boxes, now)
        for e in self.decider.ended_events():  # a lockout engaged by a stranger who walked away
            raised.append(e)
            self.bus.publish(e)
            self._save_state()
        # Only the face at the door (the largest) decides: an enrolled face further back (a resident
        # passing behind, a photo on the wall) must not open the door for the stranger standing at it,
        # not even in the frames where the face in front is not found (overshadow()).
        at_door = door_face(faces.boxes)
        # Remembered by scene, not by track: a face behind that gets a new track id (its track ended,
        # its box jumped, it was hidden behind the head in front) is still behind.
        # A detection that finds no face at all ends it: whoever was in front has gone (while they are
        # only missed, the face behind them is still found), and the next person walking up, small at
        # first, must not be held off by the last one.
        hold = max(s.decide.window_seconds, s.decide.track_timeout_seconds)
        self._in_front = {t: v for t, v in self._in_front.items() if now - v[0] < hold and len(faces)}
        if at_door is not None:
            area = box_areas(faces.boxes)
            self._in_front[track_ids[at_door]] = (now, float(area[at_door]))
            for i, tid in enumerate(track_ids):
                seen = [t_seen for t, (t_seen, a) in self._in_front.items()
                        if t != tid and a >= OVERSHADOW_AREA_RATIO * area[i]
                        and now - t_seen < s.decide.window_seconds]
                if seen:   # held off for window_seconds after the larger face was last seen, not after now
                    self.decider.overshadow(tid, max(seen))
        deciding = self._face_unlock and not self._enrolling
        for i, tid in enumerate(track_ids):
            if (i != at_door or not deciding or not self.decider.needs_embedding(tid, now)
                    or self.decider.overshadowed(tid, now)):
                continue
            a = self.pipeline.analyse(image, faces, i)
            match = None
            if a.embedding is not None:
                self.stats.embeddings += 1
                match = self._matcher.match(a.embedding)
            with self._deciding_lock:   # face unlock may have been turned off since this frame began
                off = "face_unlock_off" if not self._face_unlock else "enrolling" if self._enrolling else None
                decided = self.decider.vote(tid, match, now, refuse=off, embedding=a.embedding)
                if any(e.kind == ev.RECOGNIZED for e in decided):
                    self.door.unlock("face")  # before the event: its subscribers (audit: fsync) never delay the click
            for e in decided:
                raised.append(e)
                self.bus.publish(e)
                if e.kind in (ev.RECOGNIZED, ev.LOCKOUT):  # the lockout (and its level) survive a restart
                    self._save_state()
                if e.kind == ev.UNKNOWN and s.mqtt.unknown_image:
                    from lock.imageio import encode_jpeg
                    self.bus.publish(ev.Event.now(ev.UNKNOWN_FACE_IMAGE, jpeg=encode_jpeg(a.aligned)))
        # Faces behind are never decided: the detection rate follows the face at the door alone (and with
        # face unlock off nothing is decided: the tracks only need keeping alive).  Taken after the votes: a
        # decided face whose last frame was unlike it, or found to be another one, needs every frame.
        self._all_decided = (not deciding or at_door is None
                             or not self.decider.unsettled(track_ids[at_door], now))
        self.stats.latency_ms = (time.perf_counter() - t0) * 1e3
        return raised

    def _tick_stats(self, now: float) -> None:
        if not self._last_stats:
            self._last_stats, self._stats_frames = now, self.stats.frames
        elif now - self._last_stats >= 10.0:
            self._publish_stats(now)
            if (self.time_sync is not None and self.time_sync()
                    and self.time_sync.synced_boot != self._synced_boot_noted):
                self._synced_boot_noted = self.time_sync.synced_boot   # once: a failed save is logged once
                # seen now, not only when someone with a schedule comes: a later restart of timesyncd
                # (an upgrade) with no time server in reach must not take it back, nor a restart of the lock
                log.info("the clock has been set from a time server: schedules are kept")
                self._save_state()

    def _publish_stats(self, now: float) -> None:
        """Frame rate since the last report (not since start: a camera that stalled shows at once), latency,
        and the camera's health."""
        if self._last_stats and now > self._last_stats:
            self.stats.fps = (self.stats.frames - self._stats_frames) / (now - self._last_stats)
        self._last_stats, self._stats_frames = now, self.stats.frames
        self.bus.publish(ev.Event.now(ev.STATS, fps=round(self.stats.fps, 2),
                                      latency_ms=round(self.stats.latency_ms, 1),
                                      camera=self.camera_problem or "ok"))

    def _skipped(self, why: str, exc_info: bool = False) -> None:
        """Log a skipped frame; the same reason again within SKIP_LOG_SECONDS only counts (10 a second
        of one unusable gallery filled the log)."""
        t = time.monotonic()
        last_why, last_t, count = self._skip_log
        if why == last_why and t - last_t < SKIP_LOG_SECONDS:
            self._skip_log = (last_why, last_t, count + 1)
            return
        more = f" ({count} more frames skipped for this in the last {t - last_t:.0f} s)" if why == last_why and count else ""
        log.error("frame skipped: %s%s", why, more, exc_info=exc_info)
        self._skip_log = (why, t, 0)

    def _camera_health(self, now: float, detail: float | None) -> None:
        """After each pass of the loop: ``detail`` of a new frame (ChangeGate.detail), None when none came."""
        if self._last_new_frame is None:
            self._last_new_frame = now
        if detail is None:
            quiet = now - self._last_new_frame
            problem = "no_frames" if quiet >= CAMERA_QUIET_SECONDS else self.camera_problem
        else:
            self._last_new_frame = now
            if detail >= BLANK_STD:
                self._blank_since = None
            elif self._blank_since is None:
                self._blank_since = now
            blank = self._blank_since is not None and now - self._blank_since >= CAMERA_QUIET_SECONDS
            problem = "blank" if blank else None
        if problem == self.camera_problem:
            return
        self.camera_problem = problem
        source = self.settings.camera.source
        if problem == "no_frames":
            log.warning("camera %s: no new frame for %.0f s; the door stays locked (is it connected? camera.* in "
                        "the config)", source, now - self._last_new_frame)
        elif problem == "blank":
            log.warning("camera %s: the picture has shown nothing for %.0f s (lens covered, too dark, or the sun "
                        "in it?): no face can be seen", source, now - self._blank_since)
        else:
            log.info("camera %s: pictures again", source)
        self._publish_stats(now)

    def run(self, *, stop_when_exhausted: bool = False) -> None:
        """The loop, until :attr:`stop_event` (or the end of a files camera, if asked)."""
        last_frame_time = None
        ended = False
        while not self.stop_event.is_set():
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            self.door.check()  # a relay left on by a failed write is put off, or the service stops
            frame = self.camera.read(timeout=1.0)
            now = self.clock()
            if frame is None:
                if getattr(self.camera, "exhausted", False):
                    if stop_when_exhausted:
                        break
                    if not ended:
                        ended = True
                        log.warning("the recording has ended (camera.loop is off): nothing more to watch")
                    self.stop_event.wait(1.0)  # not a busy loop; no watchdog kick either
                else:
                    self._camera_health(now, None)
                    self._tick_stats(now)
                continue  # no frame: no watchdog kick, so systemd notices a dead camera
            if last_frame_time is not None and frame.time == last_frame_time:
                self._camera_health(now, None)
                continue
            last_frame_time = frame.time
            try:
                self.process(frame.image, now)
            except LockError as exc:
                self._skipped(str(exc))
                continue
            except Exception as exc:
                # A fault in one frame denies that frame (the relay only ever opens for a granted
                # decision); no watchdog kick, so one that repeats restarts the service.
                self._skipped(f"unexpected error: {type(exc).__name__}: {exc}", exc_info=True)
                continue
            if not self._ready:
                self._ready = True
                self.notify("READY=1\nSTATUS=watching the door")
                log.info("lock ready: watching the door")
            self.notify("WATCHDOG=1")
            self._camera_health(now, self.gate.detail)
            self._tick_stats(now)

    def reload(self) -> None:
        """SIGHUP: re-read the config; thresholds and decision settings apply at once."""
        if self.mqtt is not None:   # first: a leaked code must stop working even if the config is now broken
            self.mqtt.reload_code()   # from the file of the settings it started with
        if not self.config_path:
            log.warning("SIGHUP: no config file to reload")
            return
        try:
            new = config_mod.load(self.config_path)
        except LockError as exc:
            log.error("SIGHUP: config not reloaded, the old one stays in force: %s", exc)
            return
        from lock.vision import quality  # noqa: F401  (quality settings are read per frame)

        changed = [k for k in ("camera", "vision", "door", "mqtt", "control", "gallery", "audit")
                   if getattr(new, k) != getattr(self.settings, k)]
        old_level = self.settings.log_level
        # The sections that need a restart stay as opened: everything that reads self.settings
        # (the enrollment pipeline, made on first use, among them) sees one consistent set.
        self.settings = new.model_copy(update={k: getattr(self.settings, k) for k in changed})
        self.pipeline.quality_settings = new.quality
        if new.log_level != old_level:   # (a -v given on the command line stays until then)
            logging.getLogger().setLevel(new.log_level)
        if hasattr(self, "_pipeline_enroll"):
            self._pipeline_enroll.quality_settings = new.quality
        self.decider.reconfigure(new.decide, new.match)  # tracks and any lockout carry on
        self.gate = ChangeGate(new.idle.change_threshold)
        log.info("config reloaded from %s", self.config_path)
        if changed:
            log.warning("SIGHUP: changes to %s take effect after a restart (systemctl restart lock)",
                        ", ".join(changed))

    def install_signals(self) -> None:
        def stop(signum, _frame):
            log.info("signal %d: stopping", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())


def run(settings: config_mod.Settings, config_path: str | None, **kwargs: Any) -> int:
    """`lock run`: bring the daemon up, loop, and always leave the relay off."""
    d = Daemon(settings, config_path=config_path, **kwargs)
    d.install_signals()
    try:
        d.open()
        try:
            d.run()
        except DoorError as exc:  # the relay cannot be turned off (Door.check): stop now
            log.critical("%s: stopping (systemd's ExecStopPost forces the relay off, then the service "
                         "restarts)", exc)
            return 1
    except ControlError as exc:
        log.error("%s", exc)
        return 1
    finally:
        d.notify("STOPPING=1")
        d.close()
    return 0
