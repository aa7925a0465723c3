#!/usr/bin/env python3
"""The fault suite: what the lock does when its parts fail, with the figures observed.

    python bench/faults.py [--only broker,camera,kill,enroll,disk,soak] [--quick] [--seed N]

Real parts throughout: the int8 models, real photographs (tools/photos.py),
a real mosquitto on 127.0.0.1 started here (tests/plugins/broker.py's
Broker), gpiozero's MockFactory for the relay, a files camera.

broker  the broker is stopped and restarted ``--broker-restarts`` times while
        people walk up: unlocks keep happening, and every door event in the
        audit log reaches a persistent-session subscriber, in order, with its
        original time.
camera  the camera fails for ``--camera-outage`` s (a FileCamera whose
        ``_grab()`` raises CameraError, so the real retry code runs): the
        outage is logged and shown by ``status()``, the daemon recovers by
        itself, and the watchdog is not fed while no frames arrive.
kill    ``lock run`` is SIGKILLed at ``--kills`` random moments of a
        ``--kill-run`` s run and restarted as systemd would (ExecStopPost
        ``python -m lock.door --off``, RestartSec): both databases pass
        ``PRAGMA integrity_check`` every time; ``force_off`` drives a relay
        pin left energised to its inactive level.
enroll  ``lock enroll NAME DIR`` is SIGKILLed at random moments: that person
        has all or none of their templates every time; so does a process doing
        nothing but gallery writes, killed mid-transaction.
disk    the file system holding the gallery and the audit log fills up (a
        small tmpfs, else a loop-mounted ext4 file, else SQLite's
        max_page_count): a clear error, the door still opens for an enrolled
        face (also after a restart on the full disk), nothing corrupted.
soak    ``lock run`` on a looping files camera at 10 fps with people coming
        and going for ``--soak-minutes``: RSS and open file descriptors at the
        start and the end.

Each scenario prints what it observed; the last line is one JSON object with
every scenario's figures and an overall "ok".  Exit status 0 when all passed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from lock import config as config_mod  # noqa: E402
from lock import events as ev  # noqa: E402
from lock.camera import FileCamera  # noqa: E402
from lock.errors import CameraError, LockError  # noqa: E402
from lock.imageio import load_image  # noqa: E402
from lock.scenes import background, walkup  # noqa: E402

log = logging.getLogger("faults")

SIZE = (480, 640)  # the camera's frame (h, w)
SCENARIOS = ("broker", "camera", "kill", "enroll", "disk", "soak")


# --------------------------------------------------------------------------- printing and logs

def say(tag: str, message: str) -> None:
    print(f"[{tag}] {message}", flush=True)


class LogCapture(logging.Handler):
    """Keeps every record of the process (the in-process daemon's logs) for checks and printing."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)

    def mark(self) -> int:
        ensure_capture()
        with self._lock2:
            return len(self.records)

    def since(self, mark: int = 0, *, logger: str = "", level: int = logging.DEBUG,
              contains: str = "") -> list[str]:
        with self._lock2:
            recs = self.records[mark:]
        out = []
        for r in recs:
            if r.levelno >= level and r.name.startswith(logger):
                msg = r.getMessage()
                if contains in msg:
                    out.append(f"{r.levelname} {r.name}: {msg}")
        return out


CAPTURE = LogCapture()


def ensure_capture() -> None:
    """CAPTURE sees the records of this process (under pytest too, where main() does not run)."""
    root = logging.getLogger()
    if CAPTURE not in root.handlers:
        root.addHandler(CAPTURE)


def setup_logging(log_file: Path | None) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    ensure_capture()
    if log_file is not None:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)
    logging.getLogger("PIL").setLevel(logging.WARNING)


# --------------------------------------------------------------------------- people, frames, settings

@dataclasses.dataclass(frozen=True)
class Cast:
    """Who plays: enrolled members (train photos) and a stranger; val photos walk up to the door."""

    root: Path

    @property
    def names(self) -> list[str]:
        return sorted(p.name for p in (self.root / "celebrities" / "train").iterdir() if p.is_dir())

    @property
    def members(self) -> list[str]:
        return self.names[:2]

    @property
    def stranger(self) -> str:
        return self.names[-1]

    def train(self, name: str) -> list[Path]:
        return sorted((self.root / "celebrities" / "train" / name).glob("*.jpg"))

    def val(self, name: str) -> list[Path]:
        return sorted((self.root / "celebrities" / "val" / name).glob("*.jpg"))


def recording(directory: Path, cast: Cast, plan: Iterable[tuple[str, int]], seed: int = 0) -> Path:
    """Frames on disk (JPEG, the camera's size): ("", n) is n frames of the empty porch, (name, n) a walk-up."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scene = background(SIZE, 1)
    frames: list[np.ndarray] = []
    walks: dict[str, int] = {}
    for who, n in plan:
        if not who:
            frames += [scene] * n
            continue
        photos = cast.val(who)
        k = walks.get(who, 0)
        walks[who] = k + 1
        frames += walkup(load_image(photos[k % len(photos)]), SIZE, n, rng, scene)
    for i, f in enumerate(frames):
        cv2.imwrite(str(directory / f"{i:05d}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])
    return directory


def _merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def make_settings(work: Path, frames: Path, **sections: dict) -> config_mod.Settings:
    data = {
        "camera": {"source": "files", "path": str(frames), "fps": 10.0, "loop": True},
        "gallery": {"path": str(work / "gallery.db")},
        "audit": {"path": str(work / "audit.db")},
        "control": {"socket": str(work / "control.sock"), "group": None},
        "door": {"unlock_seconds": 1.0},
        # Strangers walk up again and again here; the lockout (tested elsewhere) would stop face unlock.
        "decide": {"lockout_after": 1000},
    }
    return config_mod.parse(_merge(data, sections), "fault settings")


def write_config(settings: config_mod.Settings, path: Path) -> Path:
    path.write_text(yaml.safe_dump(settings.model_dump()))
    return path


_PIPELINE = None


def pipeline():
    """One FacePipeline for the enrollments done by the suite itself."""
    global _PIPELINE
    if _PIPELINE is None:
        from lock.vision.pipeline import FacePipeline
        _PIPELINE = FacePipeline(config_mod.Settings()).open()
    return _PIPELINE


def enroll(settings: config_mod.Settings, cast: Cast, names: Iterable[str], photos: int = 8) -> dict[str, int]:
    """Enroll each name from their train photos; returns templates stored per name."""
    from lock.enroll import enroll_files
    from lock.gallery import Gallery

    pipe = pipeline()
    out = {}
    with Gallery(settings.gallery.path, pipe.model_hash) as g:
        for name in names:
            enroll_files(pipe, g, name, cast.train(name)[:photos])
            out[name] = g.person(name).templates
    return out


# --------------------------------------------------------------------------- databases

def integrity(path: Path | str) -> str:
    """``PRAGMA integrity_check`` of a database, opened as the next process would (WAL recovery included)."""
    try:
        c = sqlite3.connect(str(path), timeout=10)
        try:
            rows = c.execute("PRAGMA integrity_check").fetchall()
        finally:
            c.close()
    except sqlite3.Error as exc:
        return f"error: {exc}"
    return "; ".join(r[0] for r in rows)


def template_counts(path: Path | str) -> dict[str, int]:
    c = sqlite3.connect(str(path), timeout=10)
    try:
        rows = c.execute("SELECT p.name, COUNT(t.id) FROM people p LEFT JOIN templates t ON t.person_id = p.id "
                         "GROUP BY p.id").fetchall()
    finally:
        c.close()
    return dict(rows)


def audit_rows(path: Path | str, kinds: Iterable[str] | None = None) -> list[tuple[int, float, str, str | None, str]]:
    """(id, time, kind, person, detail) of the audit log, in the order stored."""
    c = sqlite3.connect(str(path), timeout=10)
    try:
        rows = c.execute("SELECT id, time, kind, person, detail FROM events ORDER BY id").fetchall()
    finally:
        c.close()
    if kinds is not None:
        kinds = set(kinds)
        rows = [r for r in rows if r[2] in kinds]
    return rows


def opens_cleanly(settings: config_mod.Settings, model_hash: str) -> tuple[bool, str]:
    """Open the gallery and the audit log with the package's own classes, as a restarted daemon does."""
    from lock.audit import AuditLog
    from lock.gallery import Gallery

    try:
        with Gallery(settings.gallery.path, model_hash) as g:
            g.people()
            g.matcher()
    except LockError as exc:
        return False, f"gallery: {exc}"
    a = AuditLog(settings.audit)
    try:
        if not a.open():
            return False, "audit log did not open"
        a.recent(5)
    finally:
        a.close()
    return True, "ok"


# --------------------------------------------------------------------------- the daemon, in process and as `lock run`

class Notifications:
    """A recording ``notify`` callable for an in-process Daemon: (monotonic time, message)."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __call__(self, message: str) -> bool:
        with self._lock:
            self.messages.append((time.monotonic(), message))
        return True

    def times(self, prefix: str) -> list[float]:
        with self._lock:
            return [t for t, m in self.messages if m.startswith(prefix)]


class NotifySocket(Notifications):
    """systemd's side of sd_notify: a datagram socket at ``path`` recording what `lock run` sends."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            for line in data.decode(errors="replace").splitlines():
                self(line)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class InProcess:
    """A Daemon looping in a thread of this process."""

    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.events: list[ev.Event] = []
        daemon.bus.subscribe(self.events.append)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="daemon-loop")

    def _run(self) -> None:
        try:
            self.daemon.run()
        except BaseException as exc:  # reported by the scenario
            self.error = exc
            log.exception("the daemon loop died")

    def start(self) -> "InProcess":
        self.daemon.open()
        self._thread.start()
        return self

    def kinds(self, *kinds: str, since: float = 0.0) -> list[ev.Event]:
        return [e for e in list(self.events) if e.kind in kinds and e.time >= since]

    def stop_loop(self) -> None:
        self.daemon.stop_event.set()
        if self._thread.ident is not None:
            self._thread.join(20)

    def close(self) -> None:
        self.stop_loop()
        self.daemon.close()


def daemon_env(notify: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", PYTHONUNBUFFERED="1")
    env.pop("NOTIFY_SOCKET", None)
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify)
    return env


def spawn_daemon(cfg: Path, log_path: Path, notify: Path | None) -> subprocess.Popen:
    """`python -m lock --config CFG run`, as lock.service's ExecStart does."""
    out = open(log_path, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "lock", "--config", str(cfg), "run"], cwd=ROOT,
                                env=daemon_env(notify), stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()


def exec_stop_post(cfg: Path) -> tuple[int, float, str]:
    """lock.service's ExecStopPost: ``python -m lock.door --off --config CFG``; (exit status, seconds, output)."""
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "lock.door", "--off", "--config", str(cfg)], cwd=ROOT,
                       env=daemon_env(), capture_output=True, text=True, timeout=60)
    return p.returncode, time.monotonic() - t0, (p.stdout + p.stderr).strip()


def proc_rss_kb(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (all resident memory), or RssAnon (heap and other private memory: where leaks show;
    RssFile, the mapped model files and libraries, comes and goes with the page cache)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def proc_fds(pid: int) -> list[str]:
    out = []
    d = Path(f"/proc/{pid}/fd")
    for p in d.iterdir():
        with contextlib.suppress(OSError):
            out.append(os.readlink(p))
    return sorted(out)


def stable_fds(pid: int, tries: int = 5) -> list[str]:
    """Open fds of ``pid``, read a few times: the smallest set (files opened for a moment, like the
    image a files camera is reading, or a control-socket client, are not leaks)."""
    best = proc_fds(pid)
    for _ in range(tries - 1):
        time.sleep(0.05)
        cur = proc_fds(pid)
        if len(cur) < len(best):
            best = cur
    return best


def relay_pulses(factory, pin: str = "GPIO17") -> int:
    """How many times the mock relay pin went from off to on."""
    states = [bool(s.state) for s in factory.pin(pin).states]
    return sum(1 for a, b in zip(states, states[1:]) if b and not a)


def wait_until(pred: Callable[[], Any], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def _broker_class():
    from tests.plugins.broker import Broker, Collector
    return Broker, Collector


# =========================================================================== 1. broker

def scenario_broker(work: Path, cast: Cast, *, restarts: int = 20, up: tuple[float, float] = (2.0, 4.0),
                    down: tuple[float, float] = (1.0, 3.0), seed: int = 0, tag: str = "broker") -> dict:
    work.mkdir(parents=True, exist_ok=True)
    from gpiozero.pins.mock import MockFactory

    from lock.daemon import Daemon
    from lock.mqtt import Topics

    Broker, Collector = _broker_class()
    rnd = random.Random(seed)
    (work / "mosquitto").mkdir(parents=True, exist_ok=True)
    broker = Broker(work / "mosquitto", persistent=True)
    broker.start()
    m0, m1 = cast.members
    frames = recording(work / "frames", cast, [("", 10), (m0, 14), ("", 22), (m1, 14), ("", 22),
                                               (cast.stranger, 16), ("", 22)], seed=seed)
    s = make_settings(work, frames, mqtt=broker.settings(retry_max_seconds=2, keepalive=5).model_dump())
    enrolled = enroll(s, cast, [m0, m1])
    topics = Topics.of(s.mqtt)
    sub = Collector(broker, [topics.event], client_id="fault-watcher").start()  # persistent session
    factory = MockFactory()
    notes = Notifications()
    run = InProcess(Daemon(s, pin_factory=factory, notify=notes))
    down_windows: list[tuple[float, float]] = []
    result: dict[str, Any] = {"restarts": restarts, "enrolled": enrolled}
    try:
        run.start()
        if not wait_until(lambda: run.daemon.mqtt.connected and notes.times("READY"), 90):
            raise RuntimeError("the daemon did not come up with the broker connected")
        say(tag, f"daemon up, {', '.join(cast.members)} enrolled; stopping/starting mosquitto {restarts} times "
                 f"(up {up[0]:g}-{up[1]:g} s, down {down[0]:g}-{down[1]:g} s)")
        t_first = time.time()
        for i in range(restarts):
            time.sleep(rnd.uniform(*up))
            t_down = time.time()
            broker.stop()
            time.sleep(rnd.uniform(*down))
            broker.start()
            down_windows.append((t_down, time.time()))
        t_last = time.time()
        time.sleep(up[1])
        run.stop_loop()  # no new door events from here on; the bridge keeps sending
        audit = [(r[1], r[2], r[3]) for r in audit_rows(s.audit.path, ev.DOOR_EVENTS)]

        def received() -> list[tuple[float, str, str | None]]:
            return [(e["time"], e["event_type"], e.get("person")) for e in sub.json(topics.event)]

        t_wait = time.monotonic()
        wait_until(lambda: set(audit) <= set(received()), 90, 0.2)
        catch_up = time.monotonic() - t_wait
        got = received()
        unique = list(dict.fromkeys(got))
        audit_set, got_set = set(audit), set(unique)
        missing = [a for a in audit if a not in got_set]
        extra = [g for g in unique if g not in audit_set]
        in_order = [g for g in unique if g in audit_set] == [a for a in audit if a in got_set]
        while_down = [a for a in audit if any(t0 <= a[0] <= t1 for t0, t1 in down_windows)]
        recognized = [a for a in audit if a[1] == ev.RECOGNIZED and t_first <= a[0] <= t_last]
        by_kind: dict[str, int] = {}
        for a in audit:
            by_kind[a[1]] = by_kind.get(a[1], 0) + 1
        result.update({
            "flapping_seconds": round(t_last - t_first, 1),
            "broker_down_seconds": round(sum(t1 - t0 for t0, t1 in down_windows), 1),
            "door_events_in_audit": len(audit), "by_kind": by_kind,
            "raised_while_broker_down": len(while_down),
            "recognized_during_flapping": len(recognized),
            "relay_pulses": relay_pulses(factory),
            "received": len(got), "duplicates": len(got) - len(unique), "missing": len(missing),
            "not_in_audit": len(extra), "in_order": in_order,
            "times_equal": not missing,  # matched on (time, kind, person): equal times or counted missing
            "catch_up_seconds": round(catch_up, 1),
            "bridge_dropped": run.daemon.mqtt.dropped,
            "daemon_loop_error": repr(run.error) if run.error else None,
        })
        say(tag, f"{result['flapping_seconds']} s of flapping, broker away {result['broker_down_seconds']} s in "
                 f"{restarts} outages")
        say(tag, f"door events in the audit log: {len(audit)} {by_kind}; {len(while_down)} raised while the "
                 f"broker was down; recognized during the flapping: {len(recognized)}; relay pulses: "
                 f"{result['relay_pulses']}")
        say(tag, f"subscriber (persistent session) received {len(got)} ({result['duplicates']} duplicates), "
                 f"missing {len(missing)}, not in the audit log {len(extra)}, same order: {in_order}, "
                 f"original times kept: {not missing} (all caught up {catch_up:.1f} s after the last restart)")
        for m in missing[:5]:
            say(tag, f"  missing: {m}")
        result["ok"] = bool(not missing and not extra and in_order and recognized and len(audit) > 0
                            and result["relay_pulses"] >= len(recognized) and not run.error)
    finally:
        with contextlib.suppress(Exception):
            run.close()
        with contextlib.suppress(Exception):
            sub.close()
        broker.stop()
    return result


# =========================================================================== 2. camera

class FlakyCamera(FileCamera):
    """A files camera that can be 'unplugged': ``_grab()`` raises CameraError inside a time window.

    Everything else (capture thread, retries with backoff, health) is the real Camera code.
    """

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.window: tuple[float, float] | None = None
        self.first_failure: float | None = None
        self.last_failure: float | None = None
        self.back_at: float | None = None       # first frame after the window
        self.last_before: float | None = None   # last frame published before the window
        self.failures = 0

    def fail_for(self, seconds: float) -> None:
        now = time.monotonic()
        self.window = (now, now + seconds)

    def _grab(self):
        w = self.window
        if w is not None and w[0] <= time.monotonic() < w[1]:
            now = time.monotonic()
            self.failures += 1
            if self.first_failure is None:
                self.first_failure = now
            self.last_failure = now
            time.sleep(0.02)
            raise CameraError("simulated: camera unplugged (no frame)")
        image = super()._grab()
        now = time.monotonic()
        if w is None or now < w[0]:
            self.last_before = now
        elif self.back_at is None and self.first_failure is not None:
            self.back_at = now
        return image


def scenario_camera(work: Path, cast: Cast, *, outage: float = 30.0, retry_max: float | None = None,
                    before: float = 5.0, after: float = 10.0, seed: int = 0, tag: str = "camera") -> dict:
    work.mkdir(parents=True, exist_ok=True)
    from gpiozero.pins.mock import MockFactory

    from lock.daemon import Daemon

    m0 = cast.members[0]
    frames = recording(work / "frames", cast, [("", 5), (m0, 14), ("", 22)], seed=seed)
    cam_section = {} if retry_max is None else {"retry_max_seconds": retry_max}
    s = make_settings(work, frames, camera=cam_section)
    enroll(s, cast, [m0])
    camera = FlakyCamera(s.camera)
    notes = Notifications()
    factory = MockFactory()
    run = InProcess(Daemon(s, pin_factory=factory, notify=notes, camera=camera))
    mark = CAPTURE.mark()
    health: list[tuple[float, bool]] = []
    stop_poll = threading.Event()

    def poll() -> None:
        while not stop_poll.is_set():
            with contextlib.suppress(Exception):
                health.append((time.monotonic(), bool(run.daemon.status()["camera_healthy"])))
            stop_poll.wait(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    result: dict[str, Any] = {"outage_seconds": outage, "retry_max_seconds": s.camera.retry_max_seconds}
    try:
        run.start()
        if not wait_until(lambda: notes.times("READY"), 90):
            raise RuntimeError("the daemon never became ready")
        poller.start()
        time.sleep(before)
        say(tag, f"camera unplugged for {outage:g} s (camera.retry_max_seconds {s.camera.retry_max_seconds:g})")
        camera.fail_for(outage)
        t_fail = camera.window[0]
        t_end = camera.window[1]
        wait_until(lambda: camera.back_at is not None, outage + s.camera.retry_max_seconds + 30)
        back = camera.back_at
        t_back_seen = time.time()
        time.sleep(after)
        stop_poll.set()
        poller.join(2)
        kicks = notes.times("WATCHDOG=1")
        before_kicks = [t for t in kicks if t < t_fail]
        # Frames captured before the outage may still be on their way when it starts: the one being
        # processed and the newest one waiting in the camera (latest-frame buffer): at most 2 kicks, soon.
        grace = 1.0
        during = [t for t in kicks if t_fail + grace <= t < (back or float("inf"))]
        in_flight = [t for t in kicks if t_fail <= t < t_fail + grace]
        after_kicks = [t for t in kicks if back is not None and t >= back]
        first_after = (min(after_kicks) - back) if after_kicks else None
        gap = max((b - a for a, b in zip(kicks, kicks[1:])), default=0.0)
        h_during = [h for t, h in health if t_fail + 0.5 <= t < t_end]
        h_after = [h for t, h in health if back is not None and t >= back + 3.0]
        lost = CAPTURE.since(mark, logger="lock.camera", level=logging.WARNING, contains="camera lost")
        back_lines = CAPTURE.since(mark, logger="lock.camera", level=logging.WARNING, contains="camera back")
        recognized_after = run.kinds(ev.RECOGNIZED, since=t_back_seen - 1)
        result.update({
            "grab_failures": camera.failures,
            "recovered_after_seconds": None if back is None else round(back - t_fail, 1),
            "recovery_lag_seconds": None if back is None else round(back - t_end, 1),
            "watchdog_kicks_before": len(before_kicks),
            "watchdog_kicks_during_outage": len(during),
            "watchdog_kicks_in_flight": len(in_flight),
            "watchdog_kicks_after": len(after_kicks),
            "first_kick_after_recovery_s": None if first_after is None else round(first_after, 2),
            "longest_watchdog_gap_s": round(gap, 1),
            "status_unhealthy_during": bool(h_during) and not any(h_during),
            "status_samples_during": len(h_during),
            "status_healthy_after": bool(h_after) and all(h_after),
            "log_lost": lost[:1], "log_back": back_lines[:1],
            "recognized_after_recovery": len(recognized_after),
            "daemon_loop_error": repr(run.error) if run.error else None,
        })
        say(tag, f"log: {lost[0] if lost else 'NO camera-lost line'}")
        say(tag, f"log: {back_lines[0] if back_lines else 'NO camera-back line'}")
        say(tag, f"{camera.failures} failed grabs; frames again {result['recovered_after_seconds']} s after the "
                 f"failure began ({result['recovery_lag_seconds']} s after the camera was back: the retry backoff)")
        say(tag, f"status camera_healthy during the outage: {sorted(set(h_during))} over {len(h_during)} "
                 f"samples; after: {sorted(set(h_after))}")
        say(tag, f"WATCHDOG=1: {len(before_kicks)} before, {len(during)} during the outage "
                 f"(+{len(in_flight)} in its first second, for frames captured before it), {len(after_kicks)} "
                 f"after (first "
                 f"{result['first_kick_after_recovery_s']} s after the first new frame); longest gap "
                 f"{gap:.1f} s")
        say(tag, f"recognized after recovery: {[e.person for e in recognized_after]}")
        result["ok"] = bool(back is not None and lost and back_lines and not during and len(in_flight) <= 2
                            and after_kicks and result["status_unhealthy_during"]
                            and result["status_healthy_after"] and before_kicks and not run.error)
    finally:
        stop_poll.set()
        run.close()
    return result


# =========================================================================== 3. SIGKILL of `lock run`

def force_off_check() -> dict:
    """In process: a relay pin left energised (by a dead process) is driven to its inactive level."""
    from gpiozero.pins.mock import MockFactory

    from lock.config import DoorSettings
    from lock.door import force_off

    out = {}
    for active_high in (True, False):
        factory = MockFactory()
        pin = factory.pin("GPIO17")
        pin.function = "output"
        pin.state = active_high            # energised and nobody holds the pin any more
        before = bool(pin.state)
        force_off(DoorSettings(relay_pin="GPIO17", relay_active_high=active_high), pin_factory=factory)
        history = [bool(st.state) for st in pin.states]
        driven = history[-1]
        out["active_high" if active_high else "active_low"] = {
            "left_at": before, "driven_to": driven, "ok": before == active_high and driven == (not active_high)}
    out["ok"] = all(v["ok"] for v in out.values())
    return out


def scenario_kill(work: Path, cast: Cast, *, run_seconds: float = 120.0, kills: int = 20,
                  restart_sec: float = 2.0, seed: int = 0, tag: str = "kill") -> dict:
    work.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    m0, m1 = cast.members
    frames = recording(work / "frames", cast, [("", 8), (m0, 14), ("", 20), (m1, 14), ("", 20)], seed=seed)
    s = make_settings(work, frames, door={"unlock_seconds": 3.0})
    cfg = write_config(s, work / "config.yaml")
    enroll(s, cast, [m0, m1])
    model_hash = pipeline().model_hash
    notify = NotifySocket(work / "notify.sock")
    # Random moments within run_seconds of daemon time: sorted uniform points, the gaps are the lifetimes.
    points = sorted(rnd.uniform(0, run_seconds) for _ in range(kills))
    lifetimes = [b - a for a, b in zip([0.0] + points, points)]
    rows: list[dict] = []
    t_all = time.monotonic()
    fo = force_off_check()
    say(tag, f"force_off in process: relay pin left energised → "
             f"active-high driven to {fo['active_high']['driven_to']}, active-low driven to "
             f"{fo['active_low']['driven_to']} (inactive levels: False, True): {'ok' if fo['ok'] else 'FAILED'}")
    say(tag, f"{kills} SIGKILLs over {run_seconds:g} s of `lock run` (lifetimes {min(lifetimes):.1f}-"
             f"{max(lifetimes):.1f} s), ExecStopPost after each, restart after {restart_sec:g} s")
    try:
        for i, life in enumerate(lifetimes):
            start_id = max((r[0] for r in audit_rows(s.audit.path)), default=0) if Path(s.audit.path).exists() else 0
            n_ready = len(notify.times("READY"))
            proc = spawn_daemon(cfg, work / "daemon.log", notify.path)
            time.sleep(life)
            alive = proc.poll() is None
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            ready = len(notify.times("READY")) > n_ready
            since = [r for r in audit_rows(s.audit.path)] if Path(s.audit.path).exists() else []
            since = [r for r in since if r[0] > start_id]
            states = [json.loads(r[4]).get("state") for r in since if r[2] == ev.LOCK_STATE]
            energised = bool(states) and states[-1] == "UNLOCKED"
            rc, secs, out = exec_stop_post(cfg)
            g_int, a_int = integrity(s.gallery.path), integrity(s.audit.path) if Path(s.audit.path).exists() else "absent"
            clean, why = opens_cleanly(s, model_hash)
            people = template_counts(s.gallery.path)
            row = {"after_s": round(life, 2), "alive_at_kill": alive, "ready": ready, "relay_energised": energised,
                   "recognized": sum(1 for r in since if r[2] == ev.RECOGNIZED), "stop_post_rc": rc,
                   "stop_post_s": round(secs, 2), "gallery": g_int, "audit": a_int, "opens": clean,
                   "templates": sum(people.values())}
            rows.append(row)
            say(tag, f"kill {i + 1:2d} after {life:5.2f} s ({'ready' if ready else 'starting'}"
                     f"{', relay energised' if energised else ''}): ExecStopPost exit {rc} ({secs:.1f} s); "
                     f"integrity gallery {g_int}, audit {a_int}; reopen {why}")
            if rc != 0:
                say(tag, f"  ExecStopPost output: {out[-300:]}")
            time.sleep(restart_sec)
    finally:
        notify.close()
    total_rec = sum(r["recognized"] for r in rows)
    result = {
        "kills": len(rows), "run_seconds": run_seconds, "wall_seconds": round(time.monotonic() - t_all, 1),
        "killed_before_ready": sum(1 for r in rows if not r["ready"]),
        "killed_with_relay_energised": sum(1 for r in rows if r["relay_energised"]),
        "recognized_total": total_rec,
        "stop_post_exit_0": sum(1 for r in rows if r["stop_post_rc"] == 0),
        "stop_post_seconds_max": max((r["stop_post_s"] for r in rows), default=None),
        "gallery_integrity_ok": sum(1 for r in rows if r["gallery"] == "ok"),
        "audit_integrity_ok": sum(1 for r in rows if r["audit"] in ("ok", "absent")),
        "reopened_cleanly": sum(1 for r in rows if r["opens"]),
        "force_off": fo,
    }
    result["ok"] = bool(rows and fo["ok"] and all(r["stop_post_rc"] == 0 and r["gallery"] == "ok"
                                                 and r["audit"] in ("ok", "absent") and r["opens"] for r in rows))
    say(tag, f"{len(rows)} kills ({result['killed_before_ready']} before READY, "
             f"{result['killed_with_relay_energised']} with the relay energised); ExecStopPost exit 0: "
             f"{result['stop_post_exit_0']}/{len(rows)}; integrity ok: gallery {result['gallery_integrity_ok']}/"
             f"{len(rows)}, audit {result['audit_integrity_ok']}/{len(rows)}; reopened cleanly "
             f"{result['reopened_cleanly']}/{len(rows)}; {total_rec} unlocks meanwhile")
    return result


# =========================================================================== 4. SIGKILL during enrollment

WRITER = """
import sys, numpy as np
from lock.gallery import Gallery
path, model_hash, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng()
with Gallery(path, model_hash) as g:
    i = 0
    while True:
        g.enroll(f"w{rng.integers(1 << 40):x}", list(rng.normal(size=(n, 128))), [1.0] * n)
        i += 1
"""


def scenario_enroll(work: Path, cast: Cast, *, kills: int = 20, writer_kills: int = 20,
                    writer_templates: int = 50, seed: int = 0, tag: str = "enroll") -> dict:
    work.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    m0, m1 = cast.members
    s = make_settings(work, work)
    cfg = write_config(s, work / "config.yaml")
    enroll(s, cast, [m0])
    base = template_counts(s.gallery.path)
    photos = work / "photos"
    photos.mkdir(exist_ok=True)
    for p in cast.train(m1)[:8]:
        shutil.copy(p, photos / p.name)

    def cli(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "lock", "--config", str(cfg), "enroll", name, str(photos)],
                                cwd=ROOT, env=daemon_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    t0 = time.monotonic()
    p = cli("probe")
    out = p.communicate(timeout=300)[0].decode(errors="replace")
    full_s = time.monotonic() - t0
    n = template_counts(s.gallery.path).get("probe", 0)
    say(tag, f"an uninterrupted `lock enroll probe DIR` ({len(list(photos.iterdir()))} photos) took {full_s:.1f} s "
             f"and stored {n} templates (exit {p.returncode}: {out.strip().splitlines()[-1] if out.strip() else ''})")
    if n == 0:
        return {"ok": False, "error": "the uninterrupted enrollment stored nothing", "output": out[-500:]}
    rows = []
    for i in range(kills):
        name = f"kill-{i:02d}"
        # Half of the moments anywhere in the run, half in its last quarter, where the write happens.
        delay = rnd.uniform(0, full_s) if i % 2 == 0 else rnd.uniform(0.75 * full_s, 1.05 * full_s)
        proc = cli(name)
        time.sleep(delay)
        finished = proc.poll() is not None
        proc.kill()
        proc.communicate(timeout=30)
        counts = template_counts(s.gallery.path)
        got = counts.get(name, 0)
        check = integrity(s.gallery.path)
        others_ok = all(counts.get(k) == v for k, v in base.items()) and counts.get("probe") == n
        rows.append({"delay": round(delay, 2), "finished": finished, "templates": got, "integrity": check,
                     "others_ok": others_ok})
        say(tag, f"kill {i + 1:2d} at {delay:5.2f} s{' (had finished)' if finished else ''}: {name} has {got} "
                 f"templates (0 or {n} allowed); integrity {check}; others unchanged {others_ok}")
    # A process doing nothing but gallery writes, killed at random moments: most kills land mid-transaction.
    model_hash = pipeline().model_hash
    wpath = work / "writer.db"
    wrows = []
    for i in range(writer_kills):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(wpath), model_hash, str(writer_templates)],
                                cwd=ROOT, env=daemon_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        delay = rnd.uniform(0.5, 2.5)
        time.sleep(delay)
        alive = proc.poll() is None
        proc.kill()
        err = proc.communicate(timeout=30)[1].decode(errors="replace")
        counts = template_counts(wpath) if wpath.exists() else {}
        bad = {k: v for k, v in counts.items() if v not in (0, writer_templates)}
        check = integrity(wpath) if wpath.exists() else "absent"
        wrows.append({"alive": alive, "people": len(counts), "partial": len(bad), "integrity": check})
        if not alive:
            say(tag, f"  writer {i + 1} died by itself: {err[-300:]}")
        if check not in ("ok", "absent") or bad:
            say(tag, f"  writer kill {i + 1} at {delay:.2f} s: integrity {check}; partial: {bad}")
    people_written = wrows[-1]["people"] if wrows else 0
    say(tag, f"gallery writer ({writer_templates} templates per person, one transaction each) killed "
             f"{len(wrows)} times at 0.5-2.5 s: {people_written} people written in all; people with a partial "
             f"set after any kill: {sum(r['partial'] for r in wrows)}; integrity ok "
             f"{sum(1 for r in wrows if r['integrity'] in ('ok', 'absent'))}/{len(wrows)} (file not made yet: "
             f"{sum(1 for r in wrows if r['integrity'] == 'absent')})")
    result = {
        "photos": len(list(photos.iterdir())), "templates_per_enrollment": n, "enroll_seconds": round(full_s, 1),
        "kills": len(rows), "none": sum(1 for r in rows if r["templates"] == 0),
        "all": sum(1 for r in rows if r["templates"] == n),
        "partial": sum(1 for r in rows if r["templates"] not in (0, n)),
        "finished_before_kill": sum(1 for r in rows if r["finished"]),
        "integrity_ok": sum(1 for r in rows if r["integrity"] == "ok"),
        "others_unchanged": all(r["others_ok"] for r in rows),
        "writer_kills": len(wrows), "writer_people": people_written,
        "writer_partial": sum(r["partial"] for r in wrows),
        "writer_integrity_ok": sum(1 for r in wrows if r["integrity"] in ("ok", "absent")),
        "writer_alive_at_kill": sum(1 for r in wrows if r["alive"]),
    }
    say(tag, f"{len(rows)} kills of `lock enroll`: {result['none']} left none, {result['all']} left all {n} "
             f"({result['finished_before_kill']} had finished), {result['partial']} partial; integrity ok "
             f"{result['integrity_ok']}/{len(rows)}")
    result["ok"] = bool(rows and result["partial"] == 0 and result["integrity_ok"] == len(rows)
                        and result["others_unchanged"] and result["writer_partial"] == 0
                        and result["writer_integrity_ok"] == len(wrows)
                        and result["writer_alive_at_kill"] == len(wrows))
    return result


# =========================================================================== 5. disk full

class Store:
    """Where the gallery and the audit log live, and how it is made full.

    ``tmpfs``: a small tmpfs mounted here (needs root); ``loop``: an ext4 image loop-mounted here
    (needs root); ``pages``: no file system at all, SQLite's max_page_count on the connections.
    """

    def __init__(self, path: Path, method: str = "auto", size_kb: int = 2048) -> None:
        self.path = path
        self.size_kb = size_kb
        self.method = ""
        self.attempts: list[str] = []
        self._image: Path | None = None
        self._filler = path / "filler"
        self._limited: list[sqlite3.Connection] = []
        path.mkdir(parents=True, exist_ok=True)
        for m in (("tmpfs", "loop", "pages") if method == "auto" else (method,)):
            why = getattr(self, f"_mount_{m}")()
            if why is None:
                self.method = m
                break
            self.attempts.append(f"{m}: {why}")
        if not self.method:
            raise RuntimeError("no way to make a full disk: " + "; ".join(self.attempts))

    def _mount_tmpfs(self) -> str | None:
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_kb}k,mode=0755", "lockfault",
                            str(self.path)], capture_output=True, text=True)
        return None if p.returncode == 0 else (p.stderr.strip() or f"mount exit {p.returncode}")

    def _mount_loop(self) -> str | None:
        image = self.path.with_suffix(".img")
        mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
        try:
            with open(image, "wb") as f:
                f.truncate(max(self.size_kb, 4096) * 1024)
            p = subprocess.run([mkfs, "-q", "-F", "-m", "0", str(image)], capture_output=True, text=True)
            if p.returncode != 0:
                return p.stderr.strip() or "mkfs.ext4 failed"
            p = subprocess.run(["mount", "-o", "loop", str(image), str(self.path)], capture_output=True, text=True)
            if p.returncode != 0:
                image.unlink()
                return p.stderr.strip() or f"mount exit {p.returncode}"
        except OSError as exc:
            return str(exc)
        self._image = image
        return None

    def _mount_pages(self) -> str | None:
        return None

    @property
    def is_filesystem(self) -> bool:
        return self.method in ("tmpfs", "loop")

    def free_kb(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize // 1024

    def fill(self, conns: Iterable[sqlite3.Connection] = ()) -> int:
        """Make it full; returns the bytes the filler took (file systems) or pages left (max_page_count)."""
        if self.is_filesystem:
            written = 0
            fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                for chunk in (1 << 16, 4096, 512):
                    block = b"\0" * chunk
                    try:
                        while True:
                            written += os.write(fd, block)
                    except OSError:
                        pass
            finally:
                os.close(fd)
            return written
        for c in conns:  # audit log connections: fill the file, then its pages, with filler events
            pages = c.execute("PRAGMA page_count").fetchone()[0]
            c.execute(f"PRAGMA max_page_count = {pages}")
            for size in (2048, 256, 32, 1):
                try:
                    while True:  # one row per transaction: SQLITE_FULL rolls back only the last
                        c.execute("INSERT INTO events (time, kind, person, detail, private) "
                                  "VALUES (?, 'fault-filler', NULL, '{}', hex(zeroblob(?)))", (time.time(), size))
                        c.commit()
                except sqlite3.Error:
                    pass
            self._limited.append(c)
        return 0

    @staticmethod
    def limit(conn: sqlite3.Connection) -> None:
        """max_page_count: this connection may not grow its file any more."""
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    def free(self) -> None:
        if self.is_filesystem:
            with contextlib.suppress(FileNotFoundError):
                self._filler.unlink()
            return
        for c in self._limited:
            with contextlib.suppress(sqlite3.Error):
                c.execute("PRAGMA max_page_count = 1073741823")
                c.execute("DELETE FROM events WHERE kind = 'fault-filler'")
                c.commit()
        self._limited.clear()

    def close(self) -> None:
        if self.is_filesystem:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
        if self._image is not None:
            with contextlib.suppress(OSError):
                self._image.unlink()


def scenario_disk(work: Path, cast: Cast, *, method: str = "auto", seed: int = 0, tag: str = "disk") -> dict:
    work.mkdir(parents=True, exist_ok=True)
    from gpiozero.pins.mock import MockFactory

    from lock.daemon import Daemon
    from lock.gallery import Gallery

    m0, m1 = cast.members
    frames = recording(work / "frames", cast, [("", 5), (m0, 14), ("", 22)], seed=seed)
    store = Store(work / "store", method)
    result: dict[str, Any] = {"method": store.method, "not_used": store.attempts}
    say(tag, f"full disk made with: {store.method}" + (f" (not possible: {'; '.join(store.attempts)})"
                                                       if store.attempts else ""))
    s = make_settings(store.path, frames, control={"socket": str(work / "control.sock")})
    cfg = write_config(s, work / "config.yaml")
    runs: list[InProcess] = []
    try:
        enrolled = enroll(s, cast, [m0])
        model_hash = pipeline().model_hash

        def start(factory) -> InProcess:
            notes = Notifications()
            run = InProcess(Daemon(s, pin_factory=factory, notify=notes))
            runs.append(run)
            run.start()
            if not wait_until(lambda: notes.times("READY"), 90):
                raise RuntimeError("the daemon did not become ready")
            return run

        def unlocks_while(run: InProcess, factory, timeout: float = 40.0) -> tuple[int, int]:
            """Wait for the next recognized event and its relay pulse."""
            t, p0 = time.time(), relay_pulses(factory)
            wait_until(lambda: run.kinds(ev.RECOGNIZED, since=t) and relay_pulses(factory) > p0, timeout)
            return len(run.kinds(ev.RECOGNIZED, since=t)), relay_pulses(factory) - p0

        # Phase 1: the disk fills while the daemon runs.
        f1 = MockFactory()
        run = start(f1)
        rec, pulses = unlocks_while(run, f1)
        audit_before = audit_rows(s.audit.path)
        gallery_before = template_counts(s.gallery.path)
        say(tag, f"before: door works ({rec} recognized, {pulses} pulse); {len(audit_before)} audit rows; "
                 f"gallery {gallery_before}")
        mark = CAPTURE.mark()
        if store.is_filesystem:
            filled = store.fill()
        else:
            with run.daemon.audit._lock:  # the daemon's own connection: no write of its own meanwhile
                filled = store.fill([run.daemon.audit._conn])
        say(tag, f"filled: {filled} bytes of filler, {store.free_kb() if store.is_filesystem else '-'} KiB free")
        rec, pulses = unlocks_while(run, f1)
        audit_err = CAPTURE.since(mark, logger="lock.audit", level=logging.ERROR)
        say(tag, f"while full: {rec} recognized, {pulses} relay pulse(s); audit log said: "
                 f"{audit_err[0] if audit_err else 'NOTHING'} ({len(audit_err)} error line(s))")
        result.update(full_recognized=rec, full_pulses=pulses, audit_error=audit_err[:1],
                      audit_error_lines=len(audit_err))

        # An enrollment while full: in process, and with the CLI when the full disk is a real file system.
        try:
            with Gallery(s.gallery.path, model_hash) as g:
                if store.is_filesystem:
                    from lock.enroll import enroll_files
                    enroll_files(pipeline(), g, m1, cast.train(m1)[:4])
                else:
                    # The file may not grow; 64 templates (32 KiB) cannot fit in its pages' free space.
                    from lock.enroll import template_from_frame
                    embs = []
                    for p in cast.train(m1):
                        with contextlib.suppress(ValueError):
                            embs.append(template_from_frame(pipeline(), load_image(p))[0])
                    store.limit(g._db)
                    g.enroll(m1, (embs * 64)[:64], [1.0] * 64)
            enroll_error = "NO ERROR: the enrollment was stored"
        except LockError as exc:
            enroll_error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # not a LockError: the CLI would show a traceback
            enroll_error = f"UNCLEAR {type(exc).__name__}: {exc}"
        say(tag, f"enroll while full (in process): {enroll_error}")
        result["enroll_error"] = enroll_error
        cli_error = None
        if store.is_filesystem:
            photos = work / "photos"
            photos.mkdir(exist_ok=True)
            for p in cast.train(m1)[:4]:
                shutil.copy(p, photos / p.name)
            p = subprocess.run([sys.executable, "-m", "lock", "--config", str(cfg), "enroll", m1, str(photos)],
                               cwd=ROOT, env=daemon_env(), capture_output=True, text=True, timeout=300)
            lines = [ln for ln in (p.stdout + p.stderr).strip().splitlines() if ln.strip()]
            cli_error = {"exit": p.returncode, "last_line": lines[-1] if lines else "",
                         "traceback": "Traceback" in p.stderr}
            say(tag, f"`lock enroll` while full: exit {p.returncode}: {cli_error['last_line']}"
                     f"{' (with a TRACEBACK)' if cli_error['traceback'] else ''}")
        result["cli_enroll"] = cli_error

        # Phase 2: a (re)start on a full disk, the databases closed cleanly before it filled (no -wal or
        # -shm files left to reuse): what systemd does after a crash, a watchdog kill or a reboot.
        restart = None
        if store.is_filesystem:
            run.close()
            store.free()
            for path in (s.gallery.path, s.audit.path):  # a last connection checkpoints and removes -wal/-shm
                c = sqlite3.connect(path)
                c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                c.close()
            leftovers = sorted(p.name for p in store.path.iterdir() if p.name.endswith(("-wal", "-shm")))
            store.fill()
            say(tag, f"daemon stopped, databases closed cleanly (-wal/-shm left: {leftovers or 'none'}), disk "
                     f"full again ({store.free_kb()} KiB free); starting the daemon")
            mark2 = CAPTURE.mark()
            f2 = MockFactory()
            try:
                run = start(f2)
                rec, pulses = unlocks_while(run, f2)
                restart = {"started": True, "recognized": rec, "pulses": pulses}
            except Exception as exc:
                restart = {"started": False, "error": f"{type(exc).__name__}: {exc}"}
            errs = CAPTURE.since(mark2, level=logging.WARNING, logger="lock")
            restart["log"] = [e for e in errs if "gallery" in e or "audit" in e][:3]
            say(tag, f"restart while full: {restart}")
        result["restart_while_full"] = restart

        # Phase 3: space again.
        mark3 = CAPTURE.mark()
        if store.is_filesystem:
            store.free()
        else:
            with run.daemon.audit._lock:
                store.free()
        n_before_free = len(audit_rows(s.audit.path))
        wrote_again = False
        if restart is None or restart.get("started"):
            t_free = time.time()
            wrote_again = wait_until(lambda: any(r[1] >= t_free for r in audit_rows(s.audit.path)), 120, 0.5)
        again = CAPTURE.since(mark3, logger="lock", level=logging.INFO, contains="again")
        say(tag, f"space freed: audit log records again: {wrote_again} ({'; '.join(again) or 'no log line'})")
        for r in runs:
            r.close()
        runs.clear()
        g_int, a_int = integrity(s.gallery.path), integrity(s.audit.path)
        gallery_after = template_counts(s.gallery.path)
        audit_after = {r[0]: r for r in audit_rows(s.audit.path)}
        kept = all(audit_after.get(r[0]) == r for r in audit_before)
        clean, why = opens_cleanly(s, model_hash)
        say(tag, f"after: integrity gallery {g_int}, audit {a_int}; gallery {gallery_after} "
                 f"(unchanged: {gallery_after == gallery_before}); the {len(audit_before)} audit rows from before "
                 f"kept: {kept}; {len(audit_after) - n_before_free} rows added after the space came back; "
                 f"reopen {why}")
        result.update(enrolled=enrolled, gallery_integrity=g_int, audit_integrity=a_int,
                      gallery_unchanged=gallery_after == gallery_before, audit_rows_kept=kept,
                      audit_writes_again=wrote_again, reopened_cleanly=clean)
        result["ok"] = bool(result["full_recognized"] and result["full_pulses"] and audit_err
                            and enroll_error.startswith(("GalleryError", "EnrollmentError"))
                            and (cli_error is None or (cli_error["exit"] != 0 and not cli_error["traceback"]))
                            and (restart is None or (restart["started"] and restart["pulses"]))
                            and g_int == "ok" and a_int == "ok" and result["gallery_unchanged"] and kept
                            and clean and wrote_again)
    finally:
        for r in runs:
            with contextlib.suppress(Exception):
                r.close()
        store.close()
    return result


# =========================================================================== 6. soak

def scenario_soak(work: Path, cast: Cast, *, minutes: float = 30.0, sample_seconds: float = 30.0,
                  mqtt: bool = True, seed: int = 0, tag: str = "soak") -> dict:
    work.mkdir(parents=True, exist_ok=True)
    from lock.control import request

    m0, m1 = cast.members
    frames = recording(work / "frames", cast, [("", 25), (m0, 15), ("", 30), (cast.stranger, 18), ("", 30),
                                               (m1, 15), ("", 40)], seed=seed)
    broker = None
    sections: dict[str, Any] = {}
    if mqtt:
        Broker, _ = _broker_class()
        (work / "mosquitto").mkdir(parents=True, exist_ok=True)
        broker = Broker(work / "mosquitto")
        broker.start()
        sections["mqtt"] = broker.settings().model_dump()
    s = make_settings(work, frames, **sections)
    cfg = write_config(s, work / "config.yaml")
    enroll(s, cast, [m0, m1])
    notify = NotifySocket(work / "notify.sock")
    duration = minutes * 60.0
    warmup = min(60.0, max(10.0, duration * 0.2))
    proc = spawn_daemon(cfg, work / "daemon.log", notify.path)
    samples: list[dict] = []
    result: dict[str, Any] = {"minutes": minutes, "fps_setting": s.camera.fps, "mqtt": mqtt}
    try:
        if not wait_until(lambda: notify.times("READY") or proc.poll() is not None, 120):
            raise RuntimeError("`lock run` did not become ready within 120 s")
        if proc.poll() is not None:
            raise RuntimeError(f"`lock run` exited with {proc.returncode}; see {work / 'daemon.log'}")
        rss_ready = proc_rss_kb(proc.pid)
        say(tag, f"`lock run` pid {proc.pid} ready; RSS {rss_ready / 1024:.1f} MB, {len(proc_fds(proc.pid))} fds; "
                 f"warm-up {warmup:.0f} s, then {duration / 60:g} min measured, sampled every {sample_seconds:g} s")
        time.sleep(warmup)
        base_rss, base_fds = proc_rss_kb(proc.pid), stable_fds(proc.pid)
        base_anon = proc_rss_kb(proc.pid, "RssAnon")
        say(tag, f"start (after warm-up): RSS {base_rss / 1024:.1f} MB (anonymous {base_anon / 1024:.1f} MB), "
                 f"{len(base_fds)} fds")
        t_base = time.monotonic()
        next_sample = t_base
        while True:
            now = time.monotonic()
            if proc.poll() is not None:
                raise RuntimeError(f"`lock run` died with {proc.returncode} during the soak")
            if now >= next_sample:
                rss, anon, fds = proc_rss_kb(proc.pid), proc_rss_kb(proc.pid, "RssAnon"), len(stable_fds(proc.pid))
                st = {}
                with contextlib.suppress(Exception):
                    st = list(request(s.control.socket, {"cmd": "status"}))[-1].get("status", {})
                sample = {"t": round(now - t_base), "rss_kb": rss, "anon_kb": anon, "fds": fds,
                          "frames": st.get("frames"), "fps": st.get("fps"), "camera": st.get("camera_healthy"),
                          "mqtt": st.get("mqtt_connected"), "kicks": len(notify.times("WATCHDOG=1"))}
                samples.append(sample)
                say(tag, f"t={sample['t']:5d}s RSS {sample['rss_kb'] / 1024:6.1f} MB (anon {anon / 1024:6.1f})  "
                         f"fds {sample['fds']:3d}  "
                         f"frames {sample['frames']}  fps {sample['fps']}  camera {sample['camera']}  "
                         f"mqtt {sample['mqtt']}  watchdog kicks {sample['kicks']}")
                next_sample += sample_seconds
            if now - t_base >= duration:
                break
            time.sleep(min(1.0, max(0.05, next_sample - time.monotonic())))
        end_rss, end_fds = proc_rss_kb(proc.pid), stable_fds(proc.pid)
        end_anon = proc_rss_kb(proc.pid, "RssAnon")
        end_status = {}
        with contextlib.suppress(Exception):
            end_status = list(request(s.control.socket, {"cmd": "status"}))[-1].get("status", {})
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        rows = audit_rows(s.audit.path)
        by_kind: dict[str, int] = {}
        for r in rows:
            by_kind[r[2]] = by_kind.get(r[2], 0) + 1
        post = [x for x in samples if x["t"] >= 0]
        if len(post) >= 3 and duration >= 600:  # a trend over less than 10 minutes is noise
            t = np.array([x["t"] for x in post], float)
            r = np.array([x["rss_kb"] for x in post], float) / 1024
            slope = float(np.polyfit(t, r, 1)[0]) * 3600
            a = np.array([x["anon_kb"] for x in post], float) / 1024
            anon_slope = float(np.polyfit(t, a, 1)[0]) * 3600
        else:
            slope = anon_slope = None
        added = sorted(set(end_fds) - set(base_fds))
        gone = sorted(set(base_fds) - set(end_fds))
        result.update({
            "rss_ready_mb": round(rss_ready / 1024, 1), "rss_start_mb": round(base_rss / 1024, 1),
            "rss_end_mb": round(end_rss / 1024, 1),
            "rss_max_mb": round(max([base_rss, end_rss] + [x["rss_kb"] for x in samples]) / 1024, 1),
            "rss_growth_mb": round((end_rss - base_rss) / 1024, 2),
            "rss_slope_mb_per_hour": None if slope is None else round(slope, 2),
            "anon_start_mb": round(base_anon / 1024, 1), "anon_end_mb": round(end_anon / 1024, 1),
            "anon_max_mb": round(max([base_anon, end_anon] + [x["anon_kb"] for x in samples]) / 1024, 1),
            "anon_growth_mb": round((end_anon - base_anon) / 1024, 2),
            "anon_slope_mb_per_hour": None if anon_slope is None else round(anon_slope, 2),
            "fds_start": len(base_fds), "fds_end": len(end_fds),
            "fds_min": min([len(base_fds)] + [x["fds"] for x in samples]),
            "fds_max": max([len(base_fds)] + [x["fds"] for x in samples]),
            "fds_added": added[:10], "fds_gone": gone[:10],
            "frames": end_status.get("frames"), "fps": end_status.get("fps"),
            "watchdog_kicks": len(notify.times("WATCHDOG=1")),
            "audit_by_kind": by_kind, "exit_status_on_sigterm": rc,
        })
        say(tag, f"end: RSS {end_rss / 1024:.1f} MB (start {base_rss / 1024:.1f}, max {result['rss_max_mb']}, "
                 f"growth {result['rss_growth_mb']:+.2f} MB, trend {result['rss_slope_mb_per_hour']} MB/h); fds "
                 f"{len(end_fds)} (start {len(base_fds)}, range {result['fds_min']}-{result['fds_max']}"
                 f"{', added ' + str(added[:5]) if added else ''}{', gone ' + str(gone[:5]) if gone else ''})")
        say(tag, f"anonymous memory (heap): {end_anon / 1024:.1f} MB at the end (start {base_anon / 1024:.1f}, max "
                 f"{result['anon_max_mb']}, growth {result['anon_growth_mb']:+.2f} MB, trend "
                 f"{result['anon_slope_mb_per_hour']} MB/h)")
        say(tag, f"{result['frames']} frames at {result['fps']} fps; audit log: {by_kind}; exit status on "
                 f"SIGTERM {rc}")
        # VmRSS also holds mapped files (the models), which the kernel may drop and reload: the heap
        # (RssAnon) must not grow either.
        result["ok"] = bool(result["rss_growth_mb"] < 5.0 and result["anon_growth_mb"] < 5.0
                            and len(end_fds) == len(base_fds) and rc == 0
                            and by_kind.get(ev.RECOGNIZED))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
        if broker is not None:
            broker.stop()
    return result


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SCENARIOS),
                    help=f"comma-separated scenarios to run (default all: {','.join(SCENARIOS)})")
    ap.add_argument("--quick", action="store_true", help="small counts and durations (a few minutes in all)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", default=None, help="working folder (default: a new temporary one, kept)")
    ap.add_argument("--photos", default=None, help="photo folder (default: fetched with tools.photos)")
    ap.add_argument("--broker-restarts", type=int, default=None, help="default 20 (quick: 3)")
    ap.add_argument("--camera-outage", type=float, default=None, help="seconds; default 30 (quick: 3)")
    ap.add_argument("--camera-retry-max", type=float, default=None,
                    help="camera.retry_max_seconds for the outage (default: the config default; quick: 0.5)")
    ap.add_argument("--kill-run", type=float, default=None, help="seconds of `lock run` to kill in; default 120 (quick: 20)")
    ap.add_argument("--kills", type=int, default=None, help="SIGKILLs of `lock run`; default 20 (quick: 4)")
    ap.add_argument("--restart-sec", type=float, default=None, help="wait before each restart; default 2 as in "
                    "lock.service (quick: 0.5)")
    ap.add_argument("--enroll-kills", type=int, default=None, help="SIGKILLs of `lock enroll`; default 20 (quick: 4)")
    ap.add_argument("--writer-kills", type=int, default=None, help="SIGKILLs of a gallery writer; default 20 (quick: 5)")
    ap.add_argument("--disk-method", default="auto", choices=("auto", "tmpfs", "loop", "pages"))
    ap.add_argument("--soak-minutes", type=float, default=None, help="default 30 (quick: 1)")
    ap.add_argument("--soak-sample", type=float, default=None, help="seconds between soak samples (default 60; quick 10)")
    ap.add_argument("--no-soak-mqtt", action="store_true", help="soak without the MQTT bridge")
    args = ap.parse_args(argv)

    def pick(value, full, quick):
        return value if value is not None else (quick if args.quick else full)

    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="lock-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    setup_logging(work / "faults.log")
    if args.photos:
        root = Path(args.photos)
    else:
        from tools.photos import fetch
        root = fetch()
    cast = Cast(root)
    print(f"fault suite: {', '.join(only)}{' (quick)' if args.quick else ''}; work folder {work}; logs in "
          f"{work / 'faults.log'}; members {cast.members}, stranger {cast.stranger}", flush=True)
    plans: dict[str, Callable[[Path], dict]] = {
        "broker": lambda w: scenario_broker(w, cast, restarts=pick(args.broker_restarts, 20, 3),
                                            up=(1.5, 2.5) if args.quick else (2.0, 4.0),
                                            down=(0.5, 1.5) if args.quick else (1.0, 3.0), seed=args.seed),
        "camera": lambda w: scenario_camera(w, cast, outage=pick(args.camera_outage, 30.0, 3.0),
                                            retry_max=pick(args.camera_retry_max, None, 0.5),
                                            before=3.0 if args.quick else 5.0, after=5.0 if args.quick else 10.0,
                                            seed=args.seed),
        "kill": lambda w: scenario_kill(w, cast, run_seconds=pick(args.kill_run, 120.0, 20.0),
                                        kills=pick(args.kills, 20, 4), restart_sec=pick(args.restart_sec, 2.0, 0.5),
                                        seed=args.seed),
        "enroll": lambda w: scenario_enroll(w, cast, kills=pick(args.enroll_kills, 20, 4),
                                            writer_kills=pick(args.writer_kills, 20, 5), seed=args.seed),
        "disk": lambda w: scenario_disk(w, cast, method=args.disk_method, seed=args.seed),
        "soak": lambda w: scenario_soak(w, cast, minutes=pick(args.soak_minutes, 30.0, 1.0),
                                        sample_seconds=pick(args.soak_sample, 60.0, 10.0),
                                        mqtt=not args.no_soak_mqtt, seed=args.seed),
    }
    results: dict[str, dict] = {}
    t_all = time.monotonic()
    for name in only:
        print(f"--- {name}", flush=True)
        t0 = time.monotonic()
        try:
            r = plans[name](work / name)
        except Exception as exc:
            log.exception("scenario %s failed to run", name)
            say(name, f"could not run: {type(exc).__name__}: {exc}")
            r = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        r["seconds"] = round(time.monotonic() - t0, 1)
        results[name] = r
        say(name, f"{'PASS' if r.get('ok') else 'FAIL'} in {r['seconds']} s")
    summary = {"faults": results, "ok": all(r.get("ok") for r in results.values()),
               "seconds": round(time.monotonic() - t_all, 1), "work": str(work)}
    print(json.dumps(summary, default=str), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
