"""Enrolled people and their templates, in SQLite.

Every template carries the hash of the model that made it: templates of
another model are never matched (their scores mean nothing against this
model's embeddings); ``stale_templates()`` reports them so the person can be
re-enrolled.  Writes are single transactions (``BEGIN IMMEDIATE``), so an
enrollment never half-writes, and each bumps a counter in the ``meta`` table
so that any process holding the file sees ``version()`` change and reloads.

Name matching is case-insensitive ("Alice" and "alice" are one person) and
surrounding spaces are ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
import time
import unicodedata
import urllib.parse
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from lock.decide import Match
from lock.errors import EnrollmentError, GalleryError
from lock.schedule import Schedule

log = logging.getLogger(__name__)

EMBEDDING_DIM = 128
MAX_NAME = 64
SCHEMA_VERSION = 1
REOPEN_SECONDS = 30.0  # while read-only (full disk...), how often to try writing again

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS people (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    created REAL NOT NULL,
    schedule TEXT
);
CREATE TABLE IF NOT EXISTS templates (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    embedding BLOB NOT NULL,
    quality REAL NOT NULL,
    created REAL NOT NULL,
    model_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS templates_person ON templates(person_id);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', 1), ('version', 0);
"""


@dataclasses.dataclass(frozen=True)
class PersonInfo:
    """One enrolled person; ``templates`` counts those of the current model only."""

    name: str
    templates: int
    created: float                  # seconds since the epoch
    schedule: Schedule | None


class Matcher:
    """Best cosine per person over their templates, vectorised.

    ``names[i]`` owns row ``i`` of ``matrix`` (T, 128) float32 unit vectors.
    """

    def __init__(self, names: Sequence[str], matrix: np.ndarray) -> None:
        matrix = np.asarray(matrix, dtype=np.float32).reshape(-1, EMBEDDING_DIM)
        if len(names) != len(matrix):
            raise ValueError(f"{len(names)} names for {len(matrix)} templates")
        self.people: list[str] = list(dict.fromkeys(names))
        index = {n: i for i, n in enumerate(self.people)}
        self._owner = np.array([index[n] for n in names], dtype=np.intp)
        self._matrix = matrix

    def __len__(self) -> int:
        return len(self._matrix)

    def templates(self, person: str) -> np.ndarray:
        """The (k, 128) templates of ``person`` (a name as in :attr:`people`; k = 0 for anyone else)."""
        if person not in self.people:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        return self._matrix[self._owner == self.people.index(person)]

    def match(self, embedding: np.ndarray) -> Match:
        """The best person and the best other person for a unit (128,) embedding."""
        if not self.people:
            return Match(None, -1.0, None, -1.0)
        scores = self._matrix @ np.asarray(embedding, dtype=np.float32).reshape(EMBEDDING_DIM)
        best = np.full(len(self.people), -np.inf, dtype=np.float32)
        np.maximum.at(best, self._owner, scores)
        if len(best) == 1:
            return Match(self.people[0], float(best[0]), None, -1.0)
        second, first = np.argpartition(best, -2)[-2:]
        if best[second] > best[first]:
            first, second = second, first
        return Match(self.people[first], float(best[first]), self.people[second], float(best[second]))


def name_key(name: str) -> str:
    """What two names must share to be the same person: Unicode NFC, case folded.

    SQLite's NOCASE only folds ASCII letters, so the gallery compares names
    with this key itself ("Élan" and "élan" are one name, as "Guest" and
    "guest" are).
    """
    return unicodedata.normalize("NFC", name).casefold()


def check_name(name: str) -> str:
    """The name as stored (spaces around it removed, NFC), or EnrollmentError saying what is wrong."""
    if not isinstance(name, str):
        raise EnrollmentError(f"a name must be text, got {type(name).__name__}")
    clean = name.strip()
    if not clean:
        raise EnrollmentError("the name is empty")
    if len(clean) > MAX_NAME:
        raise EnrollmentError(f"the name {clean[:20]!r}... is {len(clean)} characters long (at most {MAX_NAME})")
    if any(unicodedata.category(c).startswith("C") for c in clean):
        raise EnrollmentError(f"the name {clean!r} contains control or invisible characters")
    return unicodedata.normalize("NFC", clean)


def file_id(path: str | os.PathLike) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at ``path`` now, None if there is none: SQLite keeps using the file it
    opened whatever happens to the name, so the gallery and the audit log compare this with the one open."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _owned_like_its_folder(path: Path) -> None:
    """A gallery made by root (`sudo lock enroll`) in the service user's folder goes to that user.

    Left to root (mode 0600), the service could not open it at all.  SQLite
    gives its -wal and -shm files the database file's owner when it runs as root.
    """
    if os.geteuid() != 0:
        return
    folder = os.stat(path.parent)
    if folder.st_uid != 0:
        os.chown(path, folder.st_uid, folder.st_gid)


class Gallery:
    """The SQLite gallery at ``path`` for the model whose hash is ``model_hash``.

    No I/O until :meth:`open`.  Safe to share between threads of one process
    (one connection behind a lock); several processes may open the same file.
    """

    def __init__(self, path: str | os.PathLike, model_hash: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        if not model_hash:
            raise ValueError("model_hash is empty")
        self.path = Path(path)
        self.model_hash = model_hash
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._read_only = False
        self._reopen_at = 0.0
        self._frozen: tuple | None = None  # file signature when opened immutable (read-only fallback)
        self._opened_id: tuple[int, int] | None = None   # (st_dev, st_ino) of the file the connection is on
        self._lost_at: float | None = None   # monotonic time the file went and what came in its place would not open
        self._stale_wal: str | None = None   # why a file put in place beside the old -wal is refused (for good)
        # Counts the times the file at gallery.path was found to be another one and opened afresh: its
        # version counter starts again, so version() alone cannot say that everything changed.
        self.generation = 0

    # -- life cycle ------------------------------------------------------------

    def open(self) -> "Gallery":
        if self._db is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():   # biometric data: readable by its owner only
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
                _owned_like_its_folder(self.path)
        except OSError as exc:
            raise GalleryError(f"{self.path}: cannot create the gallery: {exc.strerror or exc} "
                               "(check gallery.path and the directory's owner)") from None
        try:
            db, schema = self._connect()
        except sqlite3.OperationalError as exc:
            # Not damage: a full disk, an I/O error, permissions, a lock.  The door only reads the
            # gallery, so open it read-only if that can be done, and say plainly what is wrong.
            db, schema = self._connect_read_only(exc)
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"{self.path}: not a usable gallery database ({exc}); move it aside and "
                               "re-enroll everyone, or restore it from a backup") from None
        if schema > SCHEMA_VERSION:
            db.close()
            raise GalleryError(f"{self.path}: made by a newer version of this program (schema {schema}); "
                               "upgrade it")
        self._db = db
        self._opened_id = file_id(self.path)
        stale = self.stale_templates()
        if stale:
            log.warning("%s: %d templates were made by another model and are ignored; re-enroll %s",
                        self.path, sum(stale.values()), ", ".join(sorted(stale)))
        return self

    def _connect(self) -> tuple[sqlite3.Connection, int]:
        """A read-write connection (WAL, schema in place) and the schema version; raises sqlite3.Error."""
        db = None
        try:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 10000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA foreign_keys = ON")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {ok}")
            db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
        except BaseException:
            if db is not None:
                db.close()
            raise
        return db, schema

    def _trouble(self, exc: BaseException) -> str:
        """What went wrong opening or writing the file, in words (a full disk said as such)."""
        try:
            st = os.statvfs(self.path.parent)
            free = st.f_bavail * st.f_frsize
        except OSError:
            free = None
        text = str(exc)
        if free is not None and free < 256 * 1024:
            return f"{text}: the file system holding it is full ({free // 1024} KiB free); free some space"
        if "full" in text:
            where = f"{free // 1024} KiB free on its file system" if free is not None else "free space unknown"
            return f"{text} ({where}: check quotas and the space for temporary files)"
        if "locked" in text or "busy" in text:
            return f"{text}: another process is writing it; try again"
        if any(w in text for w in ("I/O", "readonly", "read-only", "unable to open", "permission")):
            return f"{text}: check the disk, and that the file and its folder belong to the service user"
        return text

    def _connect_read_only(self, cause: BaseException) -> tuple[sqlite3.Connection, int]:
        """After ``cause`` prevented a read-write open: a read-only connection, or a clear GalleryError."""
        why = self._trouble(cause)
        uri = "file:" + urllib.parse.quote(str(self.path.resolve()))
        tries = [uri + "?mode=ro"]
        wal = Path(f"{self.path}-wal")
        # immutable skips the -shm file a full disk or a read-only mount cannot create; only right
        # when no WAL holds changes.  SQLite then never looks at the file again, so the file's
        # signature is kept and a change by another process (`sudo lock faces remove ...`)
        # makes _maybe_reopen open it afresh (https://www.sqlite.org/uri.html#uriimmutable).
        if not wal.exists() or wal.stat().st_size == 0:
            tries.append(uri + "?immutable=1")
        for target in tries:
            db = None
            signature = self._signature()
            try:
                db = sqlite3.connect(target, uri=True, timeout=10.0, isolation_level=None,
                                     check_same_thread=False)
                db.execute("PRAGMA busy_timeout = 10000")
                if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    raise sqlite3.DatabaseError("integrity check failed")
                schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
            except sqlite3.Error:
                if db is not None:
                    db.close()
                continue
            log.error("%s: cannot open the gallery for writing (%s); opened it READ-ONLY: the door "
                      "recognises the people enrolled, and this process cannot change the gallery until this "
                      "is fixed (tried again every %.0f s; changes made by other processes are read)",
                      self.path, why, REOPEN_SECONDS)
            self._read_only = True
            self._frozen = signature if target.endswith("immutable=1") else None
            self._reopen_at = time.monotonic() + REOPEN_SECONDS
            return db, schema
        raise GalleryError(f"{self.path}: cannot open the gallery ({why}); nothing in it was changed") from None

    def _follow_file(self) -> None:
        """The file at gallery.path is no longer the one open (moved aside, deleted, a backup copied over it
        or renamed into place): open what is there now, so that people removed that way are not let in.

        SQLite keeps reading the file it opened, whatever happens to the name.  A missing file is a new,
        empty gallery (as `lock enroll` would make); one that cannot be opened leaves the gallery closed,
        so nobody is recognised (GalleryError), and is tried again every REOPEN_SECONDS.
        """
        with self._lock:
            if self._stale_wal:
                raise GalleryError(self._stale_wal)
            if self._lost_at is None:
                if self._db is None or file_id(self.path) == self._opened_id:
                    return
                log.warning("%s: the gallery file was replaced, moved or deleted since it was opened: "
                            "opening what is there now", self.path)
                self.close()
                self.generation += 1
            elif time.monotonic() - self._lost_at < REOPEN_SECONDS:
                raise GalleryError(f"{self.path}: the gallery file was replaced by one that cannot be opened; "
                                   "nobody is recognised until it is fixed")
            try:
                self._no_stale_wal()
                self.open()
            except GalleryError:
                self._lost_at = time.monotonic()
                raise
            self._lost_at = None

    def _no_stale_wal(self) -> None:
        """After the file was replaced under a running daemon: its -wal, if it holds anything, is the old
        file's, and SQLite reads those pages over the new file, in this process or any other
        (https://www.sqlite.org/howtocorrupt.html: a database file and its -wal or -journal must stay
        together).  Which pages win can no longer be known here, so nobody is recognised until a restart:
        the way back is `lock faces restore`, which goes through SQLite."""
        wal = Path(f"{self.path}-wal")
        try:
            stale = wal.stat().st_size > 0
        except OSError:
            return
        if stale:
            self._stale_wal = (
                f"{self.path}: the gallery file was replaced while in use, beside the old file's {wal.name}, "
                "which SQLite reads over it: what the door would match is unknown, so nobody is recognised. "
                "Put the backup back with `lock faces restore BACKUP` (never with mv or cp), then restart "
                "the service (systemctl restart lock)")
            raise GalleryError(self._stale_wal)

    def restore(self, source: str | os.PathLike) -> int:
        """Make the gallery hold exactly what the gallery file ``source`` holds (a backup); returns the
        number of people.  One transaction through SQLite, so a running daemon sees it like any other
        change, and a gallery file is never swapped under its -wal (see _no_stale_wal).  ``source`` is
        only read; a file that is not a readable gallery changes nothing."""
        src_path = Path(source)
        uri = "file:" + urllib.parse.quote(str(src_path.resolve())) + "?mode=ro"
        try:
            if not src_path.is_file():
                raise sqlite3.OperationalError("no such file")
            src = sqlite3.connect(uri, uri=True, timeout=10.0)
            try:
                if src.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    raise sqlite3.DatabaseError("integrity check failed")
                schema = src.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
                people = src.execute("SELECT id, name, created, schedule FROM people ORDER BY id").fetchall()
                templates = src.execute("SELECT person_id, embedding, quality, created, model_hash FROM templates "
                                        "ORDER BY id").fetchall()
            finally:
                src.close()
        except (sqlite3.Error, TypeError) as exc:
            raise GalleryError(f"{src_path}: not a gallery that can be restored ({exc}); nothing was changed") from None
        if schema > SCHEMA_VERSION:
            raise GalleryError(f"{src_path}: made by a newer version of this program (schema {schema}); "
                               "nothing was changed")
        bad = sorted({name for pid, name, *_ in people for p, blob, *_ in templates
                      if p == pid and (not isinstance(blob, bytes) or len(blob) != 4 * EMBEDDING_DIM)})
        if bad:
            raise GalleryError(f"{src_path}: damaged templates for {', '.join(bad)}; nothing was changed")
        with self._write() as db:
            db.execute("DELETE FROM templates")
            db.execute("DELETE FROM people")
            db.executemany("INSERT INTO people (id, name, created, schedule) VALUES (?, ?, ?, ?)", people)
            db.executemany("INSERT INTO templates (person_id, embedding, quality, created, model_hash) "
                           "VALUES (?, ?, ?, ?, ?)", templates)
        log.info("restored the gallery from %s: %d people", src_path, len(people))
        return len(people)

    def _signature(self) -> tuple:
        """Inode, size and mtime of the file and its WAL: changes whenever anyone writes it."""
        sig = []
        for p in (self.path, Path(f"{self.path}-wal")):
            try:
                st = p.stat()
                sig.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                sig.append(None)
        return tuple(sig)

    def _maybe_reopen(self, force: bool = False) -> None:
        """While read-only, try a read-write open now and then; switch to it once it works.

        An immutable read-only connection is also opened afresh as soon as the
        file changes: otherwise a person removed by another process would still
        be let in by this one.
        """
        if not self._read_only:
            return
        changed = self._frozen is not None and self._signature() != self._frozen
        if not (force or changed) and time.monotonic() < self._reopen_at:
            return
        self._reopen_at = time.monotonic() + REOPEN_SECONDS
        try:
            db, _ = self._connect()
            writable = True
        except sqlite3.Error as exc:
            if not changed:
                return
            try:
                db, _ = self._connect_read_only(exc)
            except GalleryError as err:
                # Kept: the old connection.  Most likely a writer is still at work (its WAL not yet
                # folded back): tried again when the file changes again, as it does when it closes.
                self._frozen = self._signature()
                log.error("%s", err)
                return
            writable = False
        with self._lock:
            if self._db is None:   # closed meanwhile
                db.close()
                return
            old, self._db = self._db, db
            self._read_only = not writable
            if writable:
                self._frozen = None
        old.close()
        if writable:
            log.warning("%s: the gallery can be written again", self.path)

    @property
    def read_only(self) -> bool:
        """Opened read-only because it could not be written (full disk...): changes fail, matching works."""
        return self._read_only

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
            self._read_only = False
            self._frozen = None
            if db is not None:
                db.close()

    @property
    def closed(self) -> bool:
        return self._db is None

    def __enter__(self) -> "Gallery":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise GalleryError(f"{self.path}: the gallery is not open")
        return self._db

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn()
            except sqlite3.Error as exc:
                raise GalleryError(f"{self.path}: cannot read the gallery: {exc}") from None

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction: everything in it is stored, or nothing is."""
        self._maybe_reopen(force=True)
        with self._lock:
            db = self._conn()
            if self._read_only:
                raise GalleryError(f"{self.path}: nothing was changed: the gallery is open read-only "
                                   f"({self._trouble(sqlite3.OperationalError('cannot write it'))})")
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise GalleryError(f"{self.path}: cannot write the gallery: {self._trouble(exc)}") from None
            try:
                yield db
                db.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
                db.execute("COMMIT")
            except BaseException as exc:
                # SQLite may already have rolled the transaction back itself (SQLITE_FULL, SQLITE_IOERR);
                # a second ROLLBACK would raise and hide the real error.
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error as rb:
                        log.warning("%s: rollback failed: %s", self.path, rb)
                if isinstance(exc, sqlite3.Error):
                    raise GalleryError(f"{self.path}: nothing was changed: {self._trouble(exc)}") from None
                raise

    @staticmethod
    def _find(db: sqlite3.Connection, name: str) -> int | None:
        """The id of the person called ``name``: the exact stored name first, else the same :func:`name_key`."""
        rows = db.execute("SELECT id, name FROM people").fetchall()
        for pid, stored in rows:
            if stored == name:
                return pid
        key = name_key(name)
        return next((pid for pid, stored in rows if name_key(stored) == key), None)

    def _person_id(self, db: sqlite3.Connection, name: str) -> int:
        pid = self._find(db, name)
        if pid is None:
            raise EnrollmentError(f"no one named {name!r} is enrolled")
        return pid

    # -- writes --------------------------------------------------------------------

    def enroll(self, name: str, embeddings: Sequence[np.ndarray], qualities: Sequence[float],
               replace: bool = False, check: Callable[[Matcher], None] | None = None) -> PersonInfo:
        """Store templates for ``name``, all or nothing.

        A new name creates the person.  An existing name gets these templates
        *added* to theirs; with ``replace=True`` their templates (of every
        model) are replaced instead.  Embeddings must be finite, non-zero
        (128,) vectors; they are stored normalised to unit length.
        ``check`` is called inside the write transaction with a matcher over the
        gallery as it is then (damaged templates left out), and may refuse by
        raising: two enrollments at once cannot both pass a check the other
        would have failed.
        """
        name = check_name(name)
        if len(embeddings) == 0:
            raise EnrollmentError(f"nothing enrolled for {name!r}: no templates given")
        if len(embeddings) != len(qualities):
            raise EnrollmentError(f"nothing enrolled for {name!r}: {len(embeddings)} embeddings "
                                  f"but {len(qualities)} quality values")
        rows = []
        for i, (emb, q) in enumerate(zip(embeddings, qualities), 1):
            e = np.asarray(emb, dtype=np.float32)
            if e.shape != (EMBEDDING_DIM,):
                raise EnrollmentError(f"nothing enrolled for {name!r}: template {i} has shape {e.shape}, "
                                      f"not ({EMBEDDING_DIM},)")
            norm = float(np.linalg.norm(e)) if np.isfinite(e).all() else float("nan")
            if not np.isfinite(norm) or norm < 1e-6:
                raise EnrollmentError(f"nothing enrolled for {name!r}: template {i} is not a finite, "
                                      "non-zero vector")
            if not np.isfinite(float(q)):
                raise EnrollmentError(f"nothing enrolled for {name!r}: quality {i} is {q!r}")
            rows.append(((e / norm).astype("<f4").tobytes(), float(q)))
        now = self._clock()
        with self._write() as db:
            if check is not None:
                check(self._load_matcher(db, skip_damaged=True))
            pid = existing = self._find(db, name)
            if existing is None:
                pid = db.execute("INSERT INTO people (name, created) VALUES (?, ?)", (name, now)).lastrowid
            else:
                name = db.execute("SELECT name FROM people WHERE id = ?", (pid,)).fetchone()[0]
                if replace:
                    db.execute("DELETE FROM templates WHERE person_id = ?", (pid,))
            db.executemany(
                "INSERT INTO templates (person_id, embedding, quality, created, model_hash) VALUES (?, ?, ?, ?, ?)",
                [(pid, blob, q, now, self.model_hash) for blob, q in rows])
        info = self.person(name)
        if existing is None:
            log.info("enrolled %s with %d templates", info.name, len(rows))
        elif replace:
            log.info("replaced the templates of %s: now %d", info.name, info.templates)
        else:
            log.info("added %d templates to %s: now %d", len(rows), info.name, info.templates)
        return info

    def remove(self, name: str) -> None:
        """Forget a person and all their templates."""
        name = check_name(name)
        with self._write() as db:
            db.execute("DELETE FROM people WHERE id = ?", (self._person_id(db, name),))
        log.info("removed %s", name)

    def rename(self, old: str, new: str) -> None:
        old, new = check_name(old), check_name(new)
        with self._write() as db:
            pid = self._person_id(db, old)
            clash = self._find(db, new)
            if clash is not None and clash != pid:
                raise EnrollmentError(f"cannot rename {old!r} to {new!r}: that name is already enrolled")
            db.execute("UPDATE people SET name = ? WHERE id = ?", (new, pid))
        log.info("renamed %s to %s", old, new)

    def set_schedule(self, name: str, schedule: Schedule | None) -> None:
        """Limit when ``name`` may enter; None lets them in at any time."""
        name = check_name(name)
        text = None if schedule is None else schedule.to_json()
        with self._write() as db:
            db.execute("UPDATE people SET schedule = ? WHERE id = ?", (text, self._person_id(db, name)))

    def purge_stale(self) -> int:
        """Delete templates made by other models; returns how many.  People stay (with their schedules)."""
        with self._write() as db:
            n = db.execute("DELETE FROM templates WHERE model_hash != ?", (self.model_hash,)).rowcount
        if n:
            log.info("deleted %d templates made by another model", n)
        return n

    # -- reads -----------------------------------------------------------------------

    def people(self) -> list[PersonInfo]:
        """Everyone enrolled, by name."""
        with self._read() as db:
            rows = db.execute(
                "SELECT p.name, COUNT(t.id), p.created, p.schedule FROM people p "
                "LEFT JOIN templates t ON t.person_id = p.id AND t.model_hash = ? "
                "GROUP BY p.id ORDER BY p.name", (self.model_hash,)).fetchall()
        return [PersonInfo(n, count, created, self._schedule(n, s)) for n, count, created, s in rows]

    def person(self, name: str) -> PersonInfo:
        name = check_name(name)
        people = self.people()
        for p in people:  # the exact stored name first (what the matcher reports)
            if p.name == name:
                return p
        key = name_key(name)
        for p in people:
            if name_key(p.name) == key:
                return p
        raise EnrollmentError(f"no one named {name!r} is enrolled")

    def schedule(self, name: str) -> Schedule | None:
        return self.person(name).schedule

    def stale_templates(self) -> dict[str, int]:
        """Templates made by another model, per person: they are ignored until re-enrolled."""
        with self._read() as db:
            rows = db.execute(
                "SELECT p.name, COUNT(*) FROM templates t JOIN people p ON p.id = t.person_id "
                "WHERE t.model_hash != ? GROUP BY p.id ORDER BY p.name", (self.model_hash,)).fetchall()
        return dict(rows)

    def matcher(self, skip_damaged: bool = False) -> Matcher:
        """A matcher over this model's templates only; GalleryError if any is damaged (or, with
        ``skip_damaged``, those left out)."""
        with self._read() as db:
            return self._load_matcher(db, skip_damaged)

    def _load_matcher(self, db: sqlite3.Connection, skip_damaged: bool = False) -> Matcher:
        rows = db.execute(
            "SELECT p.name, t.embedding FROM templates t JOIN people p ON p.id = t.person_id "
            "WHERE t.model_hash = ? ORDER BY p.name, t.id", (self.model_hash,)).fetchall()
        bad = sorted({n for n, blob in rows if len(blob) != 4 * EMBEDDING_DIM})
        if bad and not skip_damaged:
            raise GalleryError(f"{self.path}: damaged templates for {', '.join(bad)}; re-enroll them "
                               "with --replace, or remove them")
        rows = [(n, blob) for n, blob in rows if len(blob) == 4 * EMBEDDING_DIM]
        matrix = np.frombuffer(b"".join(blob for _, blob in rows), dtype="<f4").reshape(-1, EMBEDDING_DIM)
        return Matcher([n for n, _ in rows], matrix.astype(np.float32))

    def version(self) -> int:
        """Changes whenever any process commits a change to this gallery (and :attr:`generation` when the
        file itself was replaced)."""
        self._follow_file()
        self._maybe_reopen()
        with self._read() as db:
            return int(db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])

    def _schedule(self, name: str, text: str | None) -> Schedule | None:
        if text is None:
            return None
        try:
            return Schedule.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise GalleryError(f"{self.path}: the schedule of {name!r} is damaged ({exc}); "
                               "set it again with the schedule command") from None
