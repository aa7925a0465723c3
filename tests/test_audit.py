"""The local audit log (SQLite)."""

from __future__ import annotations

import logging
import stat

from lock import events
from lock.audit import DAY, AuditLog
from lock.config import AuditSettings
from lock.events import Event, EventBus


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(tmp_path, clock=None, keep_days: int = 90) -> AuditLog:
    audit = AuditLog(AuditSettings(path=str(tmp_path / "var" / "audit.db"), keep_days=keep_days),
                     clock=clock or Clock(1_700_000_000.0))
    assert audit.open()
    return audit


def test_records_and_reads_back_with_scores(tmp_path):
    audit = make(tmp_path)
    bus = EventBus()
    bus.subscribe(audit.record)
    bus.publish(Event(events.RECOGNIZED, time=1_700_000_000.0, person="resident", detail={"votes": 2},
                      private={"score": 0.93, "margin": 0.2}))
    bus.publish(Event(events.UNKNOWN_FACE_IMAGE, time=1_700_000_001.0, detail={"jpeg": b"\xff\xd8" * 10}))
    rows = audit.recent(10)
    assert [r.kind for r in rows] == ["unknown_face_image", "recognized"]
    assert rows[0].detail == {"jpeg": {"bytes": 20}}  # images are not stored
    assert rows[1].person == "resident" and rows[1].time == 1_700_000_000.0
    assert rows[1].detail == {"votes": 2} and rows[1].private == {"score": 0.93, "margin": 0.2}
    audit.close()
    again = make(tmp_path)
    assert len(again.recent(10)) == 2
    again.close()


def test_file_is_private(tmp_path):
    audit = make(tmp_path)
    audit.record(Event(events.EXIT_BUTTON, time=1.0e9))
    for p in (tmp_path / "var").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    audit.close()


def test_rotation_deletes_old_rows_at_open_and_daily(tmp_path, monkeypatch):
    monkeypatch.setattr("lock.audit.KEEP_NEWEST", 0)   # time alone decides here (the floor: below)
    clock = Clock(1_700_000_000.0)
    audit = make(tmp_path, clock, keep_days=7)
    audit.record(Event(events.UNKNOWN, time=clock.now - 10 * DAY))
    audit.record(Event(events.UNKNOWN, time=clock.now - 1 * DAY))
    audit.close()

    audit = make(tmp_path, clock, keep_days=7)  # at open
    assert [r.time for r in audit.recent(10)] == [clock.now - DAY]

    clock.now += 6.5 * DAY  # the 1-day-old row is now 7.5 days old; the next write after a day rotates
    audit.record(Event(events.DENIED, time=clock.now))
    assert [r.kind for r in audit.recent(10)] == ["denied"]
    audit.close()


def test_unusable_path_is_logged_clearly_and_never_raises(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    audit = AuditLog(AuditSettings(path=str(blocker / "audit.db")))
    with caplog.at_level(logging.ERROR, logger="lock.audit"):
        assert not audit.open()
        for _ in range(5):
            audit.record(Event(events.UNKNOWN, time=1.0))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "not-a-dir" in errors[0].getMessage()
    assert audit.recent() == []


def test_failing_writes_keep_stored_rows_and_log_once(tmp_path, caplog):
    audit = make(tmp_path)
    audit.record(Event(events.RECOGNIZED, time=1.0e9, person="visitor", private={"score": 0.8}))
    # Simulate a full disk: SQLite answers SQLITE_FULL once the file may not grow.
    pages = audit._conn.execute("PRAGMA page_count").fetchone()[0]
    audit._conn.execute(f"PRAGMA max_page_count={pages}")
    with caplog.at_level(logging.ERROR, logger="lock.audit"):
        for i in range(200):
            audit.record(Event(events.UNKNOWN, time=1.0e9 + i, detail={"pad": "x" * 2000}))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "full" in errors[0].getMessage()
    rows = audit.recent(1000)
    assert rows[-1].person == "visitor" and rows[-1].private == {"score": 0.8}
    assert audit._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    audit.close()


def test_telemetry_is_not_stored(tmp_path):
    a = AuditLog(AuditSettings(path=str(tmp_path / "audit.db")))
    a.open()
    try:
        a.record(Event(events.STATS, time=1.0e9, detail={"fps": 10.0, "latency_ms": 40.0}))
        a.record(Event(events.UNKNOWN, time=1.0e9 + 1))
        assert [r.kind for r in a.recent(10)] == [events.UNKNOWN]
    finally:
        a.close()


def test_an_audit_log_from_before_the_outbox_gains_it_with_its_rows_counted_delivered(tmp_path):
    import sqlite3
    path = tmp_path / "audit.db"
    conn = sqlite3.connect(path)
    conn.executescript("""CREATE TABLE events (id INTEGER PRIMARY KEY, time REAL NOT NULL, kind TEXT NOT NULL,
                          person TEXT, detail TEXT NOT NULL, private TEXT NOT NULL);
                          INSERT INTO events (time, kind, person, detail, private)
                          VALUES (1.0e9, 'recognized', 'alice', '{}', '{}');""")
    conn.commit()
    conn.close()
    log = AuditLog(AuditSettings(path=str(path), keep_days=100000))
    assert log.open()
    assert log.unsent(0, 100) == []                  # history is not sent to Home Assistant again
    log.record(Event(events.UNKNOWN, time=1.1e9))
    log.record(Event(events.LOCK_STATE, time=1.1e9 + 1, detail={"state": "LOCKED"}))
    (pending,) = log.unsent(0, 100)
    assert pending.kind == events.UNKNOWN and pending.time == 1.1e9
    log.mark_sent(pending.uid)
    assert log.unsent(0, 100) == [] and [r.kind for r in log.recent()][-1] == "recognized"
    log.close()


def test_a_clock_that_jumps_ahead_does_not_delete_the_newest_events(tmp_path, monkeypatch):
    """A wall clock 200 days ahead (no real-time clock, a bad time server) deleted the whole log."""
    monkeypatch.setattr("lock.audit.KEEP_NEWEST", 3)
    clock = Clock(1_700_000_000.0)
    audit = make(tmp_path, clock, keep_days=90)
    for k in range(5):
        audit.record(Event(events.UNKNOWN, time=clock.now + k, detail={"k": k}))
    clock.now += 200 * DAY
    audit.record(Event(events.RECOGNIZED, time=clock.now, person="resident"))   # rotates (a day went by)
    audit.rotate()
    assert [(r.kind, r.detail.get("k")) for r in audit.recent(10)] == [
        ("recognized", None), ("unknown", 4), ("unknown", 3)]
    audit.close()


def test_door_events_are_not_queued_for_mqtt_when_it_is_off(tmp_path):
    """Turning MQTT on sent a day of old events (recorded while it was off) to Home Assistant as new."""
    path = str(tmp_path / "audit.db")
    off = AuditLog(AuditSettings(path=path), outbox=False)
    assert off.open()
    off.record(Event(events.RECOGNIZED, time=1.0e9, person="resident"))
    off.close()
    on = AuditLog(AuditSettings(path=path, keep_days=100000))
    assert on.open()
    assert on.unsent(0, 100) == [] and [r.person for r in on.recent()] == ["resident"]
    on.record(Event(events.UNKNOWN, time=1.0e9 + 1))
    assert [e.kind for e in on.unsent(0, 100)] == [events.UNKNOWN]   # from now on, MQTT's to deliver
    on.close()


def test_a_log_deleted_while_in_use_is_started_afresh(tmp_path, caplog):
    """Before, every later event went into the deleted file, unseen, until a restart."""
    import sqlite3

    audit = make(tmp_path)
    audit.record(Event(events.RECOGNIZED, time=1_700_000_000.0, person="resident"))
    for f in audit.path.parent.glob("audit.db*"):
        f.unlink()
    with caplog.at_level(logging.WARNING, logger="lock.audit"):
        audit.record(Event(events.REMOTE_UNLOCK, time=1_700_000_001.0, detail={"source": "mqtt"}))
    assert "removed or replaced while in use" in caplog.text
    assert [r.kind for r in audit.recent(10)] == ["remote_unlock"]
    audit.close()
    db = sqlite3.connect(audit.path)   # in the file that is at the path now
    try:
        assert [k for (k,) in db.execute("SELECT kind FROM events")] == ["remote_unlock"]
    finally:
        db.close()
    assert stat.S_IMODE(audit.path.stat().st_mode) == 0o600


def test_the_memory_sqlite_holds_for_the_log_stops_growing_early(tmp_path):
    """SQLite's default page cache (2,000 KiB) filled as the log grew: the daemon's RSS rose by about 0.2 MB
    an hour in the soak (bench/faults.py), for as long as that took.  Read from the library Python's
    sqlite3 uses (bench/audit_memory.py prints the whole curve)."""
    import ctypes
    import ctypes.util

    from lock.audit import CACHE_KIB
    lib = ctypes.CDLL(ctypes.util.find_library("sqlite3"))
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    before_open = lib.sqlite3_memory_used()
    audit = make(tmp_path)
    opened = lib.sqlite3_memory_used()
    assert opened > before_open        # the library this reads is the one the log uses
    for n in range(8000):             # about 3 MB of log: the default cache would hold 1.3 MB more by now
        audit.record(Event.now(events.UNKNOWN, private={"score": 0.5}, frames=4))
    assert lib.sqlite3_memory_used() - opened < 2 * CACHE_KIB * 1024
