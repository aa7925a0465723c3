"""lock.gallery: enrollment transactions, model hashes, cross-process versions, the matcher's math."""

from __future__ import annotations

import datetime as dt
import sqlite3

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
    alice, bob, carol = unit(1), unit(2), unit(3)
    info = gallery.enroll("Alice", [near(alice, 1), near(alice, 2)], [0.9, 0.8])
    assert info == PersonInfo("Alice", 2, info.created, None)
    gallery.enroll("Bob", [near(bob, 3)], [0.7])
    m = gallery.matcher()
    assert len(m) == 3 and m.people == ["Alice", "Bob"]
    got = m.match(alice)
    assert isinstance(got, Match)
    assert got.person == "Alice" and got.runner_up == "Bob"
    expected_best = max(float(near(alice, 1) @ alice), float(near(alice, 2) @ alice))
    assert got.score == pytest.approx(expected_best, abs=1e-5)      # best over the templates
    assert got.runner_up_score == pytest.approx(float(near(bob, 3) @ alice), abs=1e-5)
    assert m.match(bob).person == "Bob"
    stranger = m.match(carol)
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
    gallery.enroll("Alice", [unit(1)], [0.9])
    assert gallery.enroll("alice", [unit(2), unit(3)], [0.9, 0.9]).templates == 3   # same person
    assert [p.name for p in gallery.people()] == ["Alice"]
    assert gallery.enroll("Alice", [unit(4)], [0.5], replace=True).templates == 1
    assert gallery.matcher().match(unit(4)).score == pytest.approx(1.0, abs=1e-5)


def test_embeddings_are_stored_unit_length(gallery):
    gallery.enroll("Alice", [3.0 * unit(1)], [1.0])
    assert gallery.matcher().match(unit(1)).score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("bad,message", [
    (np.full(128, np.nan, np.float32), "template 3 is not a finite"),
    (np.ones(127, np.float32), r"template 3 has shape \(127,\)"),
    (np.zeros(128, np.float32), "template 3 is not a finite, non-zero"),
])
def test_enroll_is_all_or_nothing(gallery, bad, message):
    gallery.enroll("Alice", [unit(1)], [0.9])
    gallery.set_schedule("Alice", Schedule.parse("mon-fri", "07:00-19:00"))
    before = snapshot(gallery)
    for name, replace in (("Alice", False), ("Alice", True), ("Bob", False)):
        with pytest.raises(EnrollmentError, match=message):
            gallery.enroll(name, [unit(2), unit(3), bad], [0.9, 0.9, 0.9], replace=replace)
    assert snapshot(gallery) == before


def test_a_failure_inside_the_transaction_rolls_back(gallery):
    gallery.enroll("Alice", [unit(1)], [0.9])
    before = snapshot(gallery)
    # The disk (here: a trigger) refuses the 3rd template row mid-write.
    db = sqlite3.connect(gallery.path)
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON templates WHEN NEW.quality = 0.333 "
               "BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    db.commit()
    db.close()
    for name, replace in (("Bob", False), ("Alice", True)):
        with pytest.raises(GalleryError, match="nothing was changed: disk says no"):
            gallery.enroll(name, [unit(2), unit(3), unit(4)], [0.9, 0.9, 0.333], replace=replace)
    assert snapshot(gallery) == before


@pytest.mark.parametrize("name,message", [
    ("", "empty"), ("   ", "empty"), ("x" * 65, "65 characters"),
    ("Al\nice", "control"), ("Ali\u200bce", "invisible"), ("Bob\x00", "control"),
])
def test_bad_names(gallery, name, message):
    with pytest.raises(EnrollmentError, match=message):
        gallery.enroll(name, [unit(1)], [0.9])
    assert gallery.people() == []


def test_nothing_given(gallery):
    with pytest.raises(EnrollmentError, match="no templates given"):
        gallery.enroll("Alice", [], [])
    with pytest.raises(EnrollmentError, match="2 embeddings but 1 quality"):
        gallery.enroll("Alice", [unit(1), unit(2)], [0.9])
    assert gallery.people() == [] and gallery.version() == 0


def test_remove_and_rename(gallery):
    gallery.enroll("Alice", [unit(1)], [0.9])
    gallery.enroll("Bob", [unit(2)], [0.9])
    gallery.rename("alice", "Alicia")
    assert [p.name for p in gallery.people()] == ["Alicia", "Bob"]
    assert gallery.matcher().match(unit(1)).person == "Alicia"
    with pytest.raises(EnrollmentError, match="already enrolled"):
        gallery.rename("Alicia", "BOB")
    gallery.rename("Alicia", "ALICIA")                    # a change of case only is fine
    with pytest.raises(EnrollmentError, match="no one named 'Carol'"):
        gallery.rename("Carol", "Dave")
    gallery.remove("bob")
    assert [p.name for p in gallery.people()] == ["ALICIA"]
    assert gallery.matcher().match(unit(2)).person == "ALICIA"
    assert len(gallery.matcher()) == 1                    # Bob's templates went with him
    with pytest.raises(EnrollmentError, match="no one named 'Bob'"):
        gallery.remove("Bob")


def test_schedules_round_trip(gallery):
    gallery.enroll("Alice", [unit(1)], [0.9])
    assert gallery.schedule("Alice") is None
    night = Schedule(days=("fri", "sat"), start=dt.time(22, 0), end=dt.time(6, 0))
    gallery.set_schedule("alice", night)
    assert gallery.schedule("Alice") == night
    with Gallery(gallery.path, MODEL) as again:
        assert again.people()[0].schedule == night
    gallery.set_schedule("Alice", None)
    assert gallery.schedule("Alice") is None
    with pytest.raises(EnrollmentError, match="no one named"):
        gallery.set_schedule("Nobody", night)


def test_other_models_templates_are_never_mixed_in(tmp_path, caplog):
    path = tmp_path / "g.db"
    with Gallery(path, OTHER) as old:
        old.enroll("Alice", [unit(1), unit(2)], [0.9, 0.9])
        old.enroll("Bob", [unit(3)], [0.9])
    with Gallery(path, MODEL) as g:
        assert "re-enroll Alice, Bob" in caplog.text
        assert len(g.matcher()) == 0
        assert g.matcher().match(unit(1)) == Match(None, -1.0, None, -1.0)
        assert g.stale_templates() == {"Alice": 2, "Bob": 1}
        assert [(p.name, p.templates) for p in g.people()] == [("Alice", 0), ("Bob", 0)]
        g.enroll("Alice", [unit(5)], [0.9])
        m = g.matcher()
        assert m.people == ["Alice"] and len(m) == 1
        assert m.match(unit(1)).score < 0.5               # the old template is not used
        assert g.purge_stale() == 3
        assert g.stale_templates() == {}
        assert [(p.name, p.templates) for p in g.people()] == [("Alice", 1), ("Bob", 0)]


def test_version_changes_after_a_write_by_another_instance(tmp_path):
    path = tmp_path / "g.db"
    with Gallery(path, MODEL) as daemon, Gallery(path, MODEL) as cli:
        v0 = daemon.version()
        assert daemon.version() == v0                     # reading does not change it
        cli.enroll("Alice", [unit(1)], [0.9])
        v1 = daemon.version()
        assert v1 != v0
        assert daemon.matcher().match(unit(1)).person == "Alice"
        cli.set_schedule("Alice", Schedule.parse("mon-fri", "08:00-18:00"))
        v2 = daemon.version()
        assert v2 != v1
        cli.remove("Alice")
        assert daemon.version() != v2
        assert daemon.people() == []


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
