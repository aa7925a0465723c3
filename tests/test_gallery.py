"""lock.gallery: enrollment transactions, model hashes, cross-process versions, the matcher's math."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from lock.decide import Match
from lock.errors import EnrollmentError, GalleryError
from lock.gallery import Gallery, Matcher, PersonInfo
from lock.schedule import Schedule

MODEL = "sha256:aaaa"
OTHER = "sha256:bbbb"


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(128).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray, seed: int, noise: float = 0.2) -> np.ndarray:
    w = v + noise * unit(1000 + seed)
    return (w / np.linalg.norm(w)).astype(np.float32)


@pytest.fixture
def gallery(tmp_path):
    with Gallery(tmp_path / "state" / "gallery.db", MODEL) as g:
        yield g


def snapshot(g: Gallery):
    """Everything a reader can see, to compare before and after a failed write."""
    db = sqlite3.connect(g.path)
    try:
        rows = db.execute("SELECT p.name, p.created, p.schedule, t.embedding, t.quality, t.created, "
                          "t.model_hash FROM people p LEFT JOIN templates t ON t.person_id = p.id "
                          "ORDER BY p.id, t.id").fetchall()
    finally:
        db.close()
    return g.people(), rows, g.version()


def test_enroll_and_match(gallery):
    resident, visitor, courier = unit(1), unit(2), unit(3)
    info = gallery.enroll("Resident", [near(resident, 1), near(resident, 2)], [0.9, 0.8])
    assert info == PersonInfo("Resident", 2, info.created, None)
    gallery.enroll("Visitor", [near(visitor, 3)], [0.7])
    m = gallery.matcher()
    assert len(m) == 3 and m.people == ["Resident", "Visitor"]
    got = m.match(resident)
    assert isinstance(got, Match)
    assert got.person == "Resident" and got.runner_up == "Visitor"
    expected_best = max(float(near(resident, 1) @ resident), float(near(resident, 2) @ resident))
    assert got.score == pytest.approx(expected_best, abs=1e-5)      # best over the templates
    assert got.runner_up_score == pytest.approx(float(near(visitor, 3) @ resident), abs=1e-5)
    assert m.match(visitor).person == "Visitor"
    stranger = m.match(courier)
    assert stranger.score < 0.5


def test_matcher_edge_cases():
    empty = Matcher([], np.zeros((0, 128), np.float32))
    assert empty.match(unit(1)) == Match(None, -1.0, None, -1.0)
    one = Matcher(["Solo"], unit(1)[None])
    m = one.match(unit(1))
    assert m.person == "Solo" and m.score == pytest.approx(1.0) and m.runner_up is None and m.runner_up_score == -1.0
    # many people, many templates: same answer as a plain loop
    names = [f"p{i % 7}" for i in range(40)]
    mat = np.stack([unit(i) for i in range(40)])
    q = near(unit(12), 5)
    best = {}
    for n, row in zip(names, mat):
        best[n] = max(best.get(n, -2.0), float(row @ q))
    order = sorted(best, key=best.get, reverse=True)
    got = Matcher(names, mat).match(q)
    assert (got.person, got.runner_up) == (order[0], order[1])
    assert got.score == pytest.approx(best[order[0]], abs=1e-5)
    assert got.runner_up_score == pytest.approx(best[order[1]], abs=1e-5)


def test_existing_name_adds_templates_replace_replaces(gallery):
    gallery.enroll("Resident", [unit(1)], [0.9])
    assert gallery.enroll("resident", [unit(2), unit(3)], [0.9, 0.9]).templates == 3   # same person
    assert [p.name for p in gallery.people()] == ["Resident"]
    assert gallery.enroll("Resident", [unit(4)], [0.5], replace=True).templates == 1
    assert gallery.matcher().match(unit(4)).score == pytest.approx(1.0, abs=1e-5)


def test_embeddings_are_stored_unit_length(gallery):
    gallery.enroll("Resident", [3.0 * unit(1)], [1.0])
    assert gallery.matcher().match(unit(1)).score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("bad,message", [
    (np.full(128, np.nan, np.float32), "template 3 is not a finite"),
    (np.ones(127, np.float32), r"template 3 has shape \(127,\)"),
    (np.zeros(128, np.float32), "template 3 is not a finite, non-zero"),
])
def test_enroll_is_all_or_nothing(gallery, bad, message):
    gallery.enroll("Resident", [unit(1)], [0.9])
    gallery.set_schedule("Resident", Schedule.parse("mon-fri", "07:00-19:00"))
    before = snapshot(gallery)
    for name, replace in (("Resident", False), ("Resident", True), ("Visitor", False)):
        with pytest.raises(EnrollmentError, match=message):
            gallery.enroll(name, [unit(2), unit(3), bad], [0.9, 0.9, 0.9], replace=replace)
    assert snapshot(gallery) == before


def test_a_failure_inside_the_transaction_rolls_back(gallery):
    gallery.enroll("Resident", [unit(1)], [0.9])
    before = snapshot(gallery)
    # The disk (here: a trigger) refuses the 3rd template row mid-write.
    db = sqlite3.connect(gallery.path)
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON templates WHEN NEW.quality = 0.333 "
               "BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    db.commit()
    db.close()
    for name, replace in (("Visitor", False), ("Resident", True)):
        with pytest.raises(GalleryError, match="nothing was changed: disk says no"):
            gallery.enroll(name, [unit(2), unit(3), unit(4)], [0.9, 0.9, 0.333], replace=replace)
    assert snapshot(gallery) == before


@pytest.mark.parametrize("name,message", [
    ("", "empty"), ("   ", "empty"), ("x" * 65, "65 characters"),
    ("Al\nice", "control"), ("Ali\u200bce", "invisible"), ("Visitor\x00", "control"),
])
def test_bad_names(gallery, name, message):
    with pytest.raises(EnrollmentError, match=message):
        gallery.enroll(name, [unit(1)], [0.9])
    assert gallery.people() == []


def test_nothing_given(gallery):
    with pytest.raises(EnrollmentError, match="no templates given"):
        gallery.enroll("Resident", [], [])
    with pytest.raises(EnrollmentError, match="2 embeddings but 1 quality"):
        gallery.enroll("Resident", [unit(1), unit(2)], [0.9])
    assert gallery.people() == [] and gallery.version() == 0


def test_names_differing_only_in_case_are_one_person_beyond_ascii(gallery):
    """SQLite's NOCASE folds ASCII only; "Élan" and "élan" must still be one person with one schedule."""
    gallery.enroll("\u00c9lan", [unit(1)], [0.9])
    assert gallery.enroll("\u00e9lan", [unit(2)], [0.9]).templates == 2      # added, not a second person
    assert gallery.enroll("e\u0301lan", [unit(3)], [0.9]).templates == 3     # the same name, decomposed
    assert [p.name for p in gallery.people()] == ["\u00c9lan"]
    gallery.set_schedule("\u00e9lan", Schedule.parse("mon", "09:00-10:00"))
    assert gallery.schedule(gallery.matcher().match(unit(1)).person) is not None
    gallery.enroll("Visitor", [unit(4)], [0.9])
    with pytest.raises(EnrollmentError, match="already enrolled"):
        gallery.rename("Visitor", "\u00c9LAN")
    gallery.remove("\u00c9LAN")
    assert [p.name for p in gallery.people()] == ["Visitor"]


def test_remove_and_rename(gallery):
    gallery.enroll("Resident", [unit(1)], [0.9])
    gallery.enroll("Visitor", [unit(2)], [0.9])
    gallery.rename("resident", "Tenant")
    assert [p.name for p in gallery.people()] == ["Tenant", "Visitor"]
    assert gallery.matcher().match(unit(1)).person == "Tenant"
    with pytest.raises(EnrollmentError, match="already enrolled"):
        gallery.rename("Tenant", "VISITOR")
    gallery.rename("Tenant", "TENANT")                    # a change of case only is fine
    with pytest.raises(EnrollmentError, match="no one named 'Courier'"):
        gallery.rename("Courier", "Cleaner")
    gallery.remove("visitor")
    assert [p.name for p in gallery.people()] == ["TENANT"]
    assert gallery.matcher().match(unit(2)).person == "TENANT"
    assert len(gallery.matcher()) == 1                    # Visitor's templates went with him
    with pytest.raises(EnrollmentError, match="no one named 'Visitor'"):
        gallery.remove("Visitor")


def test_schedules_round_trip(gallery):
    gallery.enroll("Resident", [unit(1)], [0.9])
    assert gallery.schedule("Resident") is None
    night = Schedule(days=("fri", "sat"), start=dt.time(22, 0), end=dt.time(6, 0))
    gallery.set_schedule("resident", night)
    assert gallery.schedule("Resident") == night
    with Gallery(gallery.path, MODEL) as again:
        assert again.people()[0].schedule == night
    gallery.set_schedule("Resident", None)
    assert gallery.schedule("Resident") is None
    with pytest.raises(EnrollmentError, match="no one named"):
        gallery.set_schedule("Nobody", night)


def test_other_models_templates_are_never_mixed_in(tmp_path, caplog):
    path = tmp_path / "g.db"
    with Gallery(path, OTHER) as old:
        old.enroll("Resident", [unit(1), unit(2)], [0.9, 0.9])
        old.enroll("Visitor", [unit(3)], [0.9])
    with Gallery(path, MODEL) as g:
        assert "re-enroll Resident, Visitor" in caplog.text
        assert len(g.matcher()) == 0
        assert g.matcher().match(unit(1)) == Match(None, -1.0, None, -1.0)
        assert g.stale_templates() == {"Resident": 2, "Visitor": 1}
        assert [(p.name, p.templates) for p in g.people()] == [("Resident", 0), ("Visitor", 0)]
        g.enroll("Resident", [unit(5)], [0.9])
        m = g.matcher()
        assert m.people == ["Resident"] and len(m) == 1
        assert m.match(unit(1)).score < 0.5               # the old template is not used
        assert g.purge_stale() == 3
        assert g.stale_templates() == {}
        assert [(p.name, p.templates) for p in g.people()] == [("Resident", 1), ("Visitor", 0)]


def test_version_changes_after_a_write_by_another_instance(tmp_path):
    path = tmp_path / "g.db"
    with Gallery(path, MODEL) as daemon, Gallery(path, MODEL) as cli:
        v0 = daemon.version()
        assert daemon.version() == v0                     # reading does not change it
        cli.enroll("Resident", [unit(1)], [0.9])
        v1 = daemon.version()
        assert v1 != v0
        assert daemon.matcher().match(unit(1)).person == "Resident"
        cli.set_schedule("Resident", Schedule.parse("mon-fri", "08:00-18:00"))
        v2 = daemon.version()
        assert v2 != v1
        cli.remove("Resident")
        assert daemon.version() != v2
        assert daemon.people() == []


def _move_aside(path, to):
    to.mkdir()
    for f in path.parent.glob(path.name + "*"):   # the database, its -wal and -shm
        f.rename(to / f.name)


def test_a_gallery_moved_aside_or_replaced_is_followed(tmp_path, monkeypatch):
    """The running daemon kept matching against a gallery moved aside (its own error message suggests it) or
    replaced by a backup renamed into place: a person removed that way was let in until a restart."""
    import lock.gallery

    path = tmp_path / "state" / "gallery.db"
    with Gallery(path, MODEL) as daemon:
        with Gallery(path, MODEL) as cli:
            cli.enroll("Former", [unit(1)], [0.9])
        daemon.version()
        assert daemon.matcher().people == ["Former"] and daemon.generation == 0
        _move_aside(path, tmp_path / "aside")
        with Gallery(path, MODEL) as cli:   # starting afresh: a new user enrolled into a new file
            cli.enroll("Newcomer", [unit(2)], [0.9])
        daemon.version()
        assert daemon.matcher().people == ["Newcomer"] and daemon.generation == 1

        monkeypatch.setattr(lock.gallery, "REOPEN_SECONDS", 0.0)
        for f in path.parent.glob("gallery.db*"):   # deleted to start over: nobody, until someone is enrolled
            f.unlink()
        daemon.version()
        assert daemon.generation == 2 and daemon.people() == [] and len(daemon.matcher()) == 0

        (tmp_path / "junk.db").write_bytes(b"not a gallery\n" * 100)
        for f in path.parent.glob("gallery.db-*"):
            f.unlink()
        (tmp_path / "junk.db").replace(path)   # what came in its place is unusable: nobody is recognised
        with pytest.raises(GalleryError, match="not a usable gallery"):
            daemon.version()
        with pytest.raises(GalleryError):
            daemon.matcher()
        fixed = tmp_path / "fixed.db"
        with Gallery(fixed, MODEL) as f:
            f.enroll("Restored", [unit(3)], [0.9])
        fixed.replace(path)   # fixed (no -wal beside it): followed again
        daemon.version()
        assert daemon.matcher().people == ["Restored"]


def test_a_backup_put_in_place_beside_the_old_wal_is_never_trusted_and_restore_is_the_way(tmp_path):
    """A backup renamed over the gallery while the daemon runs: the old file's -wal stays beside it, and SQLite
    (the daemon, or any `lock faces list`) read the old pages over the backup, bringing back the people it
    should remove.  Nobody is recognised instead, until a restart; `lock faces restore` does it right."""
    path = tmp_path / "state" / "gallery.db"
    backup = tmp_path / "backup.db"
    with Gallery(backup, MODEL) as b:
        b.enroll("Kept", [unit(1)], [0.9])
    with Gallery(path, MODEL) as daemon:
        with Gallery(path, MODEL) as cli:
            cli.enroll("Kept", [unit(1)], [0.9])
        daemon.version()
        with Gallery(path, MODEL) as cli:   # a write while the daemon has the file open: it stays in the -wal
            cli.enroll("Removed", [unit(2)], [0.9])
        assert daemon.version() and Path(f"{path}-wal").stat().st_size > 0
        incoming = path.with_name("incoming.db")
        incoming.write_bytes(backup.read_bytes())
        incoming.replace(path)
        with pytest.raises(GalleryError, match="lock faces restore"):
            daemon.version()
        with pytest.raises(GalleryError):
            daemon.matcher()
        with Gallery(path, MODEL) as cli:   # what the old -wal does to the file put in place, in any process
            seen = [p.name for p in cli.people()]
        assert "Removed" in seen, seen
        with pytest.raises(GalleryError, match="lock faces restore"):   # the daemon stays refused
            daemon.version()
        with Gallery(path, MODEL) as cli:   # the way back: through SQLite
            assert cli.restore(backup) == 1
        with pytest.raises(GalleryError):   # still refused until the restart
            daemon.matcher()
    with Gallery(path, MODEL) as restarted:
        assert restarted.matcher().people == ["Kept"]


def test_restore_while_the_daemon_runs_is_seen_at_once_and_a_bad_backup_changes_nothing(tmp_path):
    path = tmp_path / "gallery.db"
    backup = tmp_path / "backup.db"
    with Gallery(backup, MODEL) as b:
        b.enroll("Kept", [unit(1), unit(5)], [0.9, 0.8])
        b.set_schedule("Kept", Schedule.parse("mon-fri", "08:00-18:00"))
    before_backup = backup.read_bytes()
    with Gallery(path, MODEL) as daemon, Gallery(path, MODEL) as cli:
        cli.enroll("Kept", [unit(1)], [0.9])
        cli.enroll("Removed", [unit(2)], [0.9])
        v = daemon.version()
        assert daemon.matcher().people == ["Kept", "Removed"]
        junk = tmp_path / "junk.db"
        junk.write_bytes(b"not a gallery\n" * 100)
        snap = snapshot(cli)
        for bad in (junk, tmp_path / "missing.db"):
            with pytest.raises(GalleryError, match="nothing was changed"):
                cli.restore(bad)
        assert snapshot(cli) == snap
        assert cli.restore(backup) == 1
        assert daemon.version() != v
        assert daemon.matcher().people == ["Kept"] and len(daemon.matcher()) == 2
        assert str(daemon.person("Kept").schedule) == str(Schedule.parse("mon-fri", "08:00-18:00"))
    assert backup.read_bytes() == before_backup, "the backup is only read"


def test_corrupt_file_names_it(tmp_path):
    path = tmp_path / "gallery.db"
    path.write_bytes(b"this is not sqlite at all, just some bytes\n" * 100)
    with pytest.raises(GalleryError, match=rf"{path}: not a usable gallery database .*move it aside"):
        Gallery(path, MODEL).open()


def test_damaged_pages_are_detected(tmp_path):
    path = tmp_path / "gallery.db"
    with Gallery(path, MODEL) as g:
        for i in range(30):
            g.enroll(f"p{i}", [unit(i), unit(i + 100)], [0.9, 0.9])
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 3 * 4096
    for page in range(4096, len(data), 4096):              # scribble over every b-tree page header
        data[page: page + 12] = b"\xa5" * 12
    path.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match=str(path)):
        with Gallery(path, MODEL) as g:
            g.people()
            g.matcher()


def test_file_is_private_and_use_after_close(tmp_path):
    g = Gallery(tmp_path / "deep" / "dir" / "g.db", MODEL).open()
    assert (g.path.stat().st_mode & 0o077) == 0
    g.close()
    g.close()
    with pytest.raises(GalleryError, match="not open"):
        g.people()


def test_a_check_runs_inside_the_write_so_two_enrollments_cannot_both_pass(tmp_path):
    """Enrolling one face under two names at once: the second's check sees the first's commit."""
    import threading
    import time

    from lock.enroll import check_identity

    path, face = tmp_path / "gallery.db", unit(1)
    inside, release, errors = threading.Event(), threading.Event(), []

    def hold(_matcher):   # the first enrollment, stopped inside its transaction
        inside.set()
        release.wait(10)

    def second(g):
        try:
            g.enroll("visitor", [face], [0.9], check=lambda m: check_identity(
                m, "visitor", [face], ["photo.jpg"], replace=False, lookalike=0.72))
        except EnrollmentError as exc:
            errors.append(str(exc))

    with Gallery(path, MODEL) as g1, Gallery(path, MODEL) as g2:   # two processes' connections
        first = threading.Thread(target=lambda: g1.enroll("resident", [face], [0.9], check=hold))
        first.start()
        assert inside.wait(10)
        other = threading.Thread(target=second, args=(g2,))
        other.start()
        time.sleep(0.5)                 # the second is now waiting for the first's transaction
        release.set()
        first.join(10)
        other.join(30)
        assert [p.name for p in g2.people()] == ["resident"]
    assert len(errors) == 1 and "photo.jpg looks like 'resident'" in errors[0], errors


def test_damaged_templates_can_be_replaced(tmp_path):
    """The error says "re-enroll them with --replace": that must work (its check skips damaged rows)."""
    from lock.enroll import check_identity

    path = tmp_path / "gallery.db"
    with Gallery(path, MODEL) as g:
        g.enroll("resident", [unit(1), near(unit(1), 1)], [0.9, 0.9])
        g.enroll("visitor", [unit(2)], [0.9])
    db = sqlite3.connect(path)
    db.execute("UPDATE templates SET embedding = substr(embedding, 1, 100) WHERE id = 1")
    db.commit()
    db.close()
    with Gallery(path, MODEL) as g:
        with pytest.raises(GalleryError, match="damaged templates for resident; re-enroll them with "
                                               "--replace, or remove them"):
            g.matcher()
        fresh = [near(unit(1), 2)]
        g.enroll("resident", fresh, [0.9], replace=True, check=lambda m: check_identity(
            m, "resident", fresh, ["new.jpg"], replace=True, lookalike=0.72))
        assert g.matcher().match(unit(1)).person == "resident"


def test_a_zoned_schedule_stored_by_an_older_version_shuts_out_only_its_person(gallery, caplog):
    gallery.enroll("resident", [unit(1)], [0.9])
    gallery.enroll("night guard", [unit(2)], [0.9])
    db = sqlite3.connect(gallery.path)
    db.execute("UPDATE people SET schedule = ? WHERE name = 'night guard'",
               ('{"days": ["mon"], "start": "00:00:00+00:00", "end": "23:59:00+00:00"}',))
    db.commit()
    db.close()
    assert gallery.schedule("resident") is None                 # before the fix: GalleryError for all
    assert not gallery.schedule("night guard").allows(dt.datetime(2024, 5, 6, 12, 0))
    assert "time zone" in caplog.text
    gallery.enroll("visitor", [unit(3)], [0.9])                 # and enrolling still reports success
