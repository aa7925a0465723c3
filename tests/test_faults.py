"""Quick versions of the fault suite (bench/faults.py): the same scenarios, small counts and durations.

The full runs (20 broker restarts, a 30 s camera outage, 20 SIGKILLs of
`lock run` over 2 minutes, a 30-minute soak) are `python bench/faults.py`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import time

import numpy as np
import pytest

from bench import faults
from lock import audit as audit_mod
from lock import gallery as gallery_mod
from lock.audit import AuditLog
from lock.config import AuditSettings
from lock.errors import GalleryError
from lock.events import RECOGNIZED, Event
from lock.gallery import Gallery

MODEL = "m" * 64


@pytest.fixture
def cast(photos):
    return faults.Cast(photos.root)


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=128).astype(np.float32)
    return v / np.linalg.norm(v)


def test_camera_outage_starves_the_watchdog_and_recovers(tmp_path, cast):
    r = faults.scenario_camera(tmp_path, cast, outage=2.5, retry_max=0.5, before=2.0, after=4.0)
    assert r["log_lost"] and "camera lost" in r["log_lost"][0]
    assert r["log_back"] and "camera back" in r["log_back"][0]
    assert r["status_samples_during"] >= 3 and r["status_unhealthy_during"], r
    assert r["watchdog_kicks_before"] > 0
    assert r["watchdog_kicks_during_outage"] == 0, "WATCHDOG=1 sent while no frame arrived"
    assert r["watchdog_kicks_in_flight"] <= 2   # frames captured before it: one processed, one waiting
    assert r["recovered_after_seconds"] is not None and r["recovery_lag_seconds"] <= 1.5, r
    assert r["watchdog_kicks_after"] > 0 and r["status_healthy_after"], r
    assert r["daemon_loop_error"] is None
    assert r["ok"]


def test_sigkill_during_enrollment_leaves_all_or_nothing(tmp_path, cast):
    r = faults.scenario_enroll(tmp_path, cast, kills=3, writer_kills=3, seed=3)
    assert r["templates_per_enrollment"] > 0
    assert r["partial"] == 0 and r["none"] + r["all"] == r["kills"] == 3, r
    assert r["integrity_ok"] == 3 and r["others_unchanged"]
    # the writer does nothing but transactions: it was killed in the middle of them, and wrote some
    assert r["writer_alive_at_kill"] == 3 and r["writer_people"] > 0
    assert r["writer_partial"] == 0 and r["writer_integrity_ok"] == 3, r


def test_disk_full_by_max_page_count_door_still_opens(tmp_path, cast):
    r = faults.scenario_disk(tmp_path, cast, method="pages")
    assert r["method"] == "pages"
    assert r["full_recognized"] >= 1 and r["full_pulses"] >= 1, "the door must open while the log is full"
    assert r["audit_error_lines"] == 1 and "full" in r["audit_error"][0]
    assert r["enroll_error"].startswith("GalleryError") and "nothing was changed" in r["enroll_error"], r
    assert r["gallery_integrity"] == "ok" and r["audit_integrity"] == "ok"
    assert r["gallery_unchanged"] and r["audit_rows_kept"] and r["audit_writes_again"], r
    assert r["ok"]


def test_force_off_drives_a_relay_left_energised_to_its_inactive_level():
    r = faults.force_off_check()
    assert r["active_high"] == {"left_at": True, "driven_to": False, "ok": True}
    assert r["active_low"] == {"left_at": False, "driven_to": True, "ok": True}


def test_sigkill_of_lock_run_then_exec_stop_post(tmp_path, cast):
    r = faults.scenario_kill(tmp_path, cast, run_seconds=10.0, kills=2, restart_sec=0.2, seed=5)
    assert r["kills"] == 2
    assert r["stop_post_exit_0"] == 2, "python -m lock.door --off failed after a SIGKILL"
    assert r["gallery_integrity_ok"] == 2 and r["audit_integrity_ok"] == 2 and r["reopened_cleanly"] == 2
    assert r["force_off"]["ok"]


def test_broker_restarts_lose_no_event(tmp_path, cast):
    """A flapping broker: every door event delivered once, in order, with its own time, and the door works.
    Whether an event falls inside an outage here depends on timing (the full bench restarts it 20 times);
    tests/test_mqtt_daemon.py::test_broker_outage_loses_no_event raises one during an outage on purpose."""
    r = faults.scenario_broker(tmp_path, cast, restarts=2, up=(2.0, 3.0), down=(1.0, 1.5), seed=2)
    assert r["door_events_in_audit"] >= 1 and r["recognized_during_flapping"] >= 1, r
    assert r["missing"] == 0 and r["not_in_audit"] == 0, r
    assert r["in_order"] and r["times_equal"]
    assert r["relay_pulses"] >= r["recognized_during_flapping"]


# --- the gallery and the audit log on a really full file system (a tmpfs: needs root) ---------------

@pytest.fixture
def full_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "lockfault", str(mnt)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {p.stderr.decode().strip()}")
    filler = mnt / "filler"

    def fill() -> None:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for chunk in (1 << 16, 4096, 512):
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError:
                    pass
        finally:
            os.close(fd)

    def free() -> None:
        filler.unlink()

    yield mnt, fill, free
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_gallery_opens_read_only_on_a_full_disk_and_recovers(full_disk, monkeypatch, caplog):
    mnt, fill, free = full_disk
    path = mnt / "gallery.db"
    with Gallery(path, MODEL) as g:
        g.enroll("Resident", [unit(1), unit(2)], [0.9, 0.9])
    assert not os.path.exists(f"{path}-shm"), "closed cleanly: nothing left to reuse"
    fill()
    monkeypatch.setattr(gallery_mod, "REOPEN_SECONDS", 0.0)
    with caplog.at_level(logging.ERROR, logger="lock.gallery"):
        g = Gallery(path, MODEL).open()   # before: GalleryError "not a usable gallery ... move it aside"
    try:
        assert g.read_only
        assert "READ-ONLY" in caplog.text and "full" in caplog.text
        assert [p.name for p in g.people()] == ["Resident"]
        assert g.matcher().match(unit(1)).person == "Resident"
        with pytest.raises(GalleryError, match="nothing was changed.*full"):
            g.enroll("Visitor", [unit(3)], [0.9])
        free()
        g.version()
        assert not g.read_only
        g.enroll("Visitor", [unit(3)], [0.9])
        assert [p.name for p in g.people()] == ["Resident", "Visitor"]
    finally:
        g.close()


def test_enroll_on_a_full_disk_is_a_clear_gallery_error(full_disk):
    mnt, fill, free = full_disk
    with Gallery(mnt / "gallery.db", MODEL) as g:
        g.enroll("Resident", [unit(1)], [0.9])
        fill()
        # before: sqlite3.OperationalError "cannot rollback - no transaction is active" (SQLite had
        # already rolled back), a traceback for `lock enroll`
        with pytest.raises(GalleryError, match="nothing was changed: database or disk is full"):
            g.enroll("Visitor", [unit(i) for i in range(2, 40)], [0.9] * 38)
        free()
        assert [p.name for p in g.people()] == ["Resident"]
        assert g._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_audit_log_opened_on_a_full_disk_records_once_there_is_room(full_disk, monkeypatch, caplog):
    mnt, fill, free = full_disk
    settings = AuditSettings(path=str(mnt / "audit.db"))
    a = AuditLog(settings)
    assert a.open()
    a.record(Event(RECOGNIZED, time=time.time() - 2, person="resident"))
    a.close()
    fill()
    monkeypatch.setattr(audit_mod, "REOPEN_SECONDS", 0.0)
    a = AuditLog(settings)
    with caplog.at_level(logging.ERROR, logger="lock.audit"):
        assert not a.open()
        a.record(Event(RECOGNIZED, time=time.time() - 1, person="visitor"))
    assert "cannot open" in caplog.text
    free()
    a.record(Event(RECOGNIZED, time=time.time(), person="courier"))   # before: never reopened
    try:
        assert [r.person for r in a.recent(10)] == ["courier", "resident"]
    finally:
        a.close()
    c = sqlite3.connect(settings.path)
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    c.close()


@pytest.fixture
def read_only_view(tmp_path):
    """The folder ``rw`` and a read-only bind mount of it, ``ro`` (as the service sees a path outside
    its ReadWritePaths under ProtectSystem=strict).  Needs root."""
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    p = subprocess.run(["mount", "--bind", str(rw), str(ro)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root): {p.stderr.decode().strip()}")
    try:
        p = subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True)
        if p.returncode != 0:
            pytest.skip(f"cannot make the bind mount read-only: {p.stderr.decode().strip()}")
        yield rw, ro
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_a_read_only_gallery_sees_a_person_removed_by_another_process(read_only_view):
    """Opened read-only (immutable) by the door, the gallery still follows changes made elsewhere:
    before, a person removed with `sudo lock faces remove` was still let in."""
    rw, ro = read_only_view
    with Gallery(rw / "gallery.db", MODEL) as g:
        g.enroll("resident", [unit(1)], [0.9])
        g.enroll("former tenant", [unit(2)], [0.9])
    door = Gallery(ro / "gallery.db", MODEL).open()
    try:
        assert door.read_only
        v = door.version()
        assert door.matcher().match(unit(2)).person == "former tenant"
        with Gallery(rw / "gallery.db", MODEL) as admin:
            admin.remove("former tenant")
        assert door.version() != v
        assert door.read_only
        assert door.matcher().match(unit(2)).person != "former tenant"
        assert [p.name for p in door.people()] == ["resident"]
    finally:
        door.close()
