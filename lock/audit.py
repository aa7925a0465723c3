"""The local audit log: every event, with its scores, in SQLite.

This is the record of what happened at the door (MQTT is only a view of it).
The file is created mode 0600 (the service user only: it holds names and
similarity scores); SQLite makes the WAL and shared-memory files with the
same mode.  A failing write (disk full, read-only file system) is logged
once and never raised into the bus: the door keeps working, and SQLite's
transactions leave what is already stored intact.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable

from lock.config import AuditSettings
from lock.events import DOOR_EVENTS, STATS, Event
from lock.gallery import file_id

log = logging.getLogger(__name__)

DAY = 86400.0
REOPEN_SECONDS = 30.0  # after a failed open, how often record() tries again
KEEP_NEWEST = 1000    # rotation never deletes the newest this many events, however old the clock says
# SQLite's page cache for the log, in KiB.  Its default (2,000 KiB per connection) filled slowly as the log grew,
# and that was the daemon's slow RSS rise in the soak (`bench/audit_memory.py`: +1.2 MB over 40,000 events with
# the default, flat with this).  The daemon only appends and reads the few unsent rows, by index.
CACHE_KIB = 256

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY,
    time    REAL NOT NULL,      -- seconds since the epoch, when it happened
    kind    TEXT NOT NULL,
    person  TEXT,
    detail  TEXT NOT NULL,      -- JSON
    private TEXT NOT NULL       -- JSON (scores)
);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
"""
# Added later (an older file gets them by ALTER TABLE, its rows counting as delivered):
# uid names the event (Event.uid); mqtt_sent is 0 for a door event the MQTT bridge has not had
# acknowledged by the broker yet, 1 once it has, NULL for what MQTT does not carry as an event.
COLUMNS = (("uid", "TEXT"), ("mqtt_sent", "INTEGER"))


@dataclasses.dataclass(frozen=True)
class AuditRow:
    id: int
    time: float
    kind: str
    person: str | None
    detail: dict[str, Any]
    private: dict[str, Any]


def _json(value: Any) -> str:
    def default(v: Any) -> Any:
        if isinstance(v, (bytes, bytearray)):
            return {"bytes": len(v)}  # images are not kept here
        try:
            return float(v)  # numpy scalars
        except (TypeError, ValueError):
            return str(v)
    return json.dumps(dict(value), default=default, separators=(",", ":"))


class AuditLog:
    """SQLite audit log; :meth:`record` is a bus subscriber."""

    def __init__(self, settings: AuditSettings, *, clock: Callable[[], float] = time.time,
                 outbox: bool = True) -> None:
        """``outbox``: door events are the MQTT bridge's to deliver (mqtt.enabled).  Without it
        they are stored as not MQTT's (NULL), so that turning MQTT on later does not send a day
        of old events to Home Assistant as if they had just happened."""
        self.settings = settings
        self.outbox = outbox
        self.path = Path(settings.path)
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._failing = False
        self._last_rotation = 0.0
        self._wanted = False        # open() was called and close() was not
        self._reopen_at = 0.0
        self._opened_id: tuple[int, int] | None = None   # (st_dev, st_ino) of the file the connection is on

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def open(self) -> bool:
        """Open (creating it 0600) and drop rows older than ``keep_days``; False, logged, if unusable.

        After a failed open (a full disk, say) :meth:`record` tries again every
        ``REOPEN_SECONDS``, so recording resumes by itself once the cause is gone.
        """
        self._wanted = True
        try:
            conn = self._connect()
        except (OSError, sqlite3.Error) as exc:
            self._reopen_at = time.monotonic() + REOPEN_SECONDS
            self._report(f"cannot open {self.path}: {exc}")
            return False
        with self._lock:
            self._conn = conn
            self._opened_id = file_id(self.path)
        self.rotate()
        return True

    def _follow_file(self) -> None:
        """The file at audit.path is gone or another one (deleted to start afresh, rotated away by hand):
        SQLite would go on writing the old one, unseen.  Start on what is there now (a new log if none)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.close()
        log.warning("audit log %s was removed or replaced while in use: recording in the file now at that path",
                    self.path)
        self._reopen_at = 0.0
        self._retry_open()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            log.warning("audit log %s was readable by others (mode %o); setting it to 0600", self.path, mode)
            os.chmod(self.path, 0o600)
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=5.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # negative: KiB (https://www.sqlite.org/pragma.html#pragma_cache_size); per connection, not kept in the file
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            conn.executescript(SCHEMA)
            have = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
            for name, kind in COLUMNS:
                if name not in have:
                    conn.execute(f"ALTER TABLE events ADD COLUMN {name} {kind}")
                    if name == "mqtt_sent":
                        conn.execute("UPDATE events SET mqtt_sent = 1 WHERE kind IN (%s)"
                                     % ",".join("?" * len(DOOR_EVENTS)), DOOR_EVENTS)
            conn.execute("CREATE INDEX IF NOT EXISTS events_unsent ON events (mqtt_sent) WHERE mqtt_sent = 0")
            conn.execute("CREATE INDEX IF NOT EXISTS events_uid ON events (uid)")
            conn.commit()
        except BaseException:
            conn.close()
            raise
        return conn

    def _retry_open(self) -> None:
        """Opened once but failed (full disk...): try again, at most every REOPEN_SECONDS."""
        now = time.monotonic()
        if not self._wanted or now < self._reopen_at:
            return
        self._reopen_at = now + REOPEN_SECONDS
        try:
            conn = self._connect()
        except (OSError, sqlite3.Error):
            return
        with self._lock:
            if self._conn is not None or not self._wanted:   # opened or closed meanwhile
                conn.close()
                return
            self._conn = conn
            self._opened_id = file_id(self.path)
            if self._failing:
                log.info("audit log %s: open again, recording events", self.path)
                self._failing = False

    def close(self) -> None:
        with self._lock:
            self._wanted = False
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                log.warning("audit log %s: error while closing: %s", self.path, exc)

    def record(self, event: Event) -> None:
        """Store one event (bus subscriber); never raises.  Telemetry (``stats``, every 10 s) is not
        kept: it is not a door event, and a commit per sample would wear an SD card for nothing."""
        if event.kind == STATS:
            return
        if self._conn is not None and file_id(self.path) != self._opened_id:
            self._follow_file()
        if self._conn is None:
            self._retry_open()
        with self._lock:
            if self._conn is None:
                self._report(f"{self.path} is not open; event {event.kind} not recorded")
                return
            try:
                with self._conn:  # one transaction: all or nothing
                    self._conn.execute(
                        "INSERT INTO events (time, kind, person, detail, private, uid, mqtt_sent) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (float(event.time), event.kind, event.person, _json(event.detail), _json(event.private),
                         event.uid, 0 if self.outbox and event.kind in DOOR_EVENTS else None))
            except (sqlite3.Error, OSError) as exc:
                self._report(f"cannot write to {self.path}: {exc}")
                return
            if self._failing:
                log.info("audit log %s: writing again", self.path)
                self._failing = False
        if self._clock() - self._last_rotation >= DAY:
            self.rotate()

    def rotate(self) -> int:
        """Delete rows older than ``keep_days``, but never the newest ``KEEP_NEWEST``; returns how many.

        The floor is for a wall clock that jumped ahead (a Pi without a real-time
        clock, a bad time server): rotation by time alone then deleted the whole
        log, undelivered events with it.
        """
        now = self._clock()
        cutoff = now - self.settings.keep_days * DAY
        with self._lock:
            if self._conn is None:
                return 0
            self._last_rotation = now
            try:
                with self._conn:
                    deleted = self._conn.execute(
                        "DELETE FROM events WHERE time < ? AND id NOT IN "
                        "(SELECT id FROM events ORDER BY id DESC LIMIT ?)", (cutoff, KEEP_NEWEST)).rowcount
            except (sqlite3.Error, OSError) as exc:
                self._report(f"cannot delete old rows from {self.path}: {exc}")
                return 0
        if deleted:
            log.info("audit log: deleted %d events older than %d days", deleted, self.settings.keep_days)
        return deleted

    def recent(self, n: int = 20) -> list[AuditRow]:
        """The ``n`` newest events, newest first."""
        with self._lock:
            if self._conn is None:
                return []
            rows = self._conn.execute(
                "SELECT id, time, kind, person, detail, private FROM events ORDER BY time DESC, id DESC LIMIT ?",
                (int(n),)).fetchall()
        return [AuditRow(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5])) for r in rows]

    # -- the MQTT outbox: door events the broker has not acknowledged survive a restart of the daemon

    def unsent(self, since: float, limit: int) -> list[Event]:
        """Door events from ``since`` (epoch seconds) on that MQTT has not delivered, oldest first
        (at most the ``limit`` newest).  Empty when the log is not open or cannot be read."""
        with self._lock:
            if self._conn is None:
                return []
            try:
                rows = self._conn.execute(
                    "SELECT uid, time, kind, person, detail, private FROM events "
                    "WHERE mqtt_sent = 0 AND time >= ? ORDER BY id DESC LIMIT ?", (float(since), int(limit))).fetchall()
            except (sqlite3.Error, OSError) as exc:
                log.warning("audit log %s: cannot read the events MQTT has not delivered: %s", self.path, exc)
                return []
        return [Event(kind=r[2], time=r[1], person=r[3], detail=json.loads(r[4]), private=json.loads(r[5]), uid=r[0])
                for r in reversed(rows)]

    def mark_sent(self, uid: str) -> None:
        """The broker acknowledged this event; never raises (at worst it is sent again after a restart)."""
        with self._lock:
            if self._conn is None:
                return
            try:
                with self._conn:
                    self._conn.execute("UPDATE events SET mqtt_sent = 1 WHERE uid = ?", (uid,))
            except (sqlite3.Error, OSError) as exc:
                log.warning("audit log %s: cannot mark event %s delivered: %s (it will be sent again after a "
                            "restart)", self.path, uid, exc)

    def _report(self, message: str) -> None:
        # Once per failure spell: a full disk must not also fill the journal.
        if not self._failing:
            log.error("audit log: %s; events are NOT being recorded (check free space and permissions "
                      "of audit.path); the door keeps working", message)
            self._failing = True
