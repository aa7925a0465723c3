"""Enrollment from files with the real pipeline; the gallery is never half-written."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from lock.enroll import enroll_files
from lock.errors import EnrollmentError
from lock.gallery import Gallery
from lock.imageio import load_image
from lock.scenes import background
from lock.vision.pipeline import FacePipeline
from tests import scenario
from tests.test_imageio import as_nobody, shut, user  # noqa: F401  (shut is a fixture)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return FacePipeline(scenario.settings(tmp_path_factory.mktemp("p"))).open()


def mixed_folder(tmp_path, photos):
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(photos.singles[0], d / "good.jpg")
    a, b = load_image(photos.singles[0]), load_image(photos.singles[3])
    h = 600
    a = np.asarray(Image.fromarray(a).resize((a.shape[1] * h // a.shape[0], h)))
    b = np.asarray(Image.fromarray(b).resize((b.shape[1] * h // b.shape[0], h)))
    Image.fromarray(np.concatenate([a, b], axis=1)).save(d / "two_faces.jpg")
    Image.fromarray(background((480, 640))).save(d / "no_face.jpg")
    data = photos.singles[1].read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return d


def snapshot(path, model_hash):
    with Gallery(path, model_hash) as g:
        return [(p.name, p.templates) for p in g.people()], g.stale_templates()


def test_folder_stores_the_good_one_and_names_the_others(tmp_path, pipe, photos):
    d = mixed_folder(tmp_path, photos)
    path = tmp_path / "gallery.db"
    with Gallery(path, pipe.model_hash) as g:
        report = enroll_files(pipe, g, "first person", sorted(d.iterdir()))
    assert report.stored == [str(d / "good.jpg")]
    why = dict(report.rejected)
    assert "2 faces" in why[str(d / "two_faces.jpg")]
    assert "no face" in why[str(d / "no_face.jpg")]
    assert "truncated" in why[str(d / "truncated.jpg")]
    assert snapshot(path, pipe.model_hash)[0] == [("first person", 1)]


def test_failed_enrollment_leaves_the_gallery_as_it_was(tmp_path, pipe, photos):
    d = mixed_folder(tmp_path, photos)
    path = tmp_path / "gallery.db"
    with Gallery(path, pipe.model_hash) as g:
        enroll_files(pipe, g, "first person", [d / "good.jpg"])
    before = snapshot(path, pipe.model_hash)
    raw_before = path.read_bytes()
    with Gallery(path, pipe.model_hash) as g:
        with pytest.raises(EnrollmentError, match="nothing enrolled"):
            enroll_files(pipe, g, "second person", [d / "two_faces.jpg", d / "no_face.jpg", d / "truncated.jpg"])
        with pytest.raises(EnrollmentError):
            enroll_files(pipe, g, "first person", [d / "no_face.jpg"])
    assert snapshot(path, pipe.model_hash) == before
    assert path.read_bytes() == raw_before


def test_cli_enroll_reports_each_file_by_name(tmp_path, photos):
    d = mixed_folder(tmp_path, photos)
    s = scenario.settings(tmp_path)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(s.model_dump()))
    r = subprocess.run([sys.executable, "-m", "lock", "--config", str(cfg), "enroll", "first person", str(d)],
                       capture_output=True, text=True, timeout=300)
    # Status 0: the person is enrolled (before: 1 whenever a photo was skipped, so a script saw a failure).
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    for name in ("two_faces.jpg", "no_face.jpg", "truncated.jpg"):
        assert f"{name}: skipped: " in r.stdout
    assert "enrolled first person: 1 template(s)" in r.stdout
    r = subprocess.run([sys.executable, "-m", "lock", "--config", str(cfg), "enroll", "first person", str(d)],
                       capture_output=True, text=True, timeout=300)                 # the same command again
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{d / 'good.jpg'}: skipped: already stored: 'first person' has a template from the same photo" \
        in r.stdout
    assert "nothing new for first person: 1 photo(s) already stored" in r.stdout
    r = subprocess.run([sys.executable, "-m", "lock", "--config", str(cfg), "faces", "list"],
                       capture_output=True, text=True, timeout=120)
    assert "first person: 1 template(s)" in r.stdout, r.stdout + r.stderr
    for bad in ("two_faces.jpg", "no_face.jpg", "truncated.jpg"):                  # nothing usable: status 1
        r = subprocess.run([sys.executable, "-m", "lock", "--config", str(cfg), "enroll", "first person",
                            str(d / bad)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 1 and "nothing enrolled for 'first person'" in r.stderr, r.stdout + r.stderr


def test_enrolling_the_same_photos_again_stores_nothing_new(tmp_path, pipe, photos):
    """Before, running one enrollment twice doubled the person's templates (7 -> 14)."""
    obama, obama2, obama3, _ = photos.singles
    path = tmp_path / "gallery.db"
    with Gallery(path, pipe.model_hash) as g:
        enroll_files(pipe, g, "resident", [obama, obama2])
    raw_before = path.read_bytes()
    with Gallery(path, pipe.model_hash) as g:
        report = enroll_files(pipe, g, "Resident", [obama, obama2, obama])
        assert report.stored == [] and report.already == [str(obama), str(obama2), str(obama)]
        assert report.lines()[0] == f"{obama}: skipped: already stored: 'Resident' has a template from the same photo"
        assert [(p.name, p.templates) for p in g.people()] == [("resident", 2)]
    assert path.read_bytes() == raw_before                                           # not even opened for writing
    with Gallery(path, pipe.model_hash) as g:
        report = enroll_files(pipe, g, "resident", [obama, obama3, obama2])          # one new photo among them
        assert report.stored == [str(obama3)] and report.already == [str(obama), str(obama2)]
        assert [(p.name, p.templates) for p in g.people()] == [("resident", 3)]
        assert len(enroll_files(pipe, g, "resident", [obama, obama2], replace=True).stored) == 2  # afresh
        assert [(p.name, p.templates) for p in g.people()] == [("resident", 2)]


def test_cli_enroll_says_permission_denied_for_what_it_may_not_read(shut):
    """Before: "closed: skipped: no image files (...) in this folder" and, for a photo in it,
    "skipped: no such file or folder", for a folder the user running `lock enroll` may not list."""
    import contextlib
    import io
    import lock.cli
    import lock.commands
    import lock.control  # noqa: F401  (imported here: the child running as nobody may not read the stdlib)
    import lock.vision.pipeline  # noqa: F401

    s = scenario.settings(shut)
    cfg = shut / "config.yaml"
    cfg.write_text(yaml.safe_dump(s.model_dump()))
    cfg.chmod(0o644)
    closed = shut / "closed"

    def enroll():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = lock.cli.main(["--config", str(cfg), "enroll", "resident", str(closed), str(closed / "a.jpg")])
        return rc, out.getvalue(), err.getvalue(), user()

    rc, out, err, who = as_nobody(enroll)
    assert rc == 1 and "nothing enrolled for 'resident'" in err, out + err
    assert f"{closed}: skipped: permission denied: user {who} cannot list this folder\n" in out
    assert f"{closed / 'a.jpg'}: skipped: permission denied: user {who} cannot reach it" in out
    assert "no image files" not in out and "no such file" not in out
    assert not (shut / "gallery.db").exists()


def test_the_same_face_under_a_second_name_is_refused(tmp_path, pipe, photos):
    """Two names for one face would make the door refuse both (margin rule): refuse at enrollment."""
    path = tmp_path / "gallery.db"
    obama, obama2, obama3, _ = photos.singles
    with Gallery(path, pipe.model_hash) as g:
        enroll_files(pipe, g, "first person", [obama, obama2], lookalike=0.72)
        enroll_files(pipe, g, "FIRST PERSON", [obama3], lookalike=0.72)      # more of the same person: fine
        before = snapshot(path, pipe.model_hash)
        with pytest.raises(EnrollmentError, match=r"obama\.jpg looks like 'first person', who is already enrolled"):
            enroll_files(pipe, g, "second person", [obama], lookalike=0.72)
        with pytest.raises(EnrollmentError, match="looks like 'first person'"):
            enroll_files(pipe, g, "second person", [obama2], replace=True, lookalike=0.72)
    assert snapshot(path, pipe.model_hash) == before == ([("first person", 3)], {})


def test_photos_of_two_people_under_one_name_are_refused(tmp_path, pipe, photos):
    path = tmp_path / "gallery.db"
    obama, obama2, obama3, biden = photos.singles
    train = photos.celebrities("train")
    with Gallery(path, pipe.model_hash) as g:
        with pytest.raises(EnrollmentError, match=r"not look like the same person.*: \S*biden\.jpg;"):
            enroll_files(pipe, g, "one person", [obama, obama2, biden])
        two_folders = train["elton_john"] + train["jerry_seinfeld"]
        with pytest.raises(EnrollmentError, match="not look like the same person"):
            enroll_files(pipe, g, "one person", two_folders)
        enroll_files(pipe, g, "one person", [obama, obama2])
        with pytest.raises(EnrollmentError, match="the 2 template.s. already enrolled for 'one person'.*biden"):
            enroll_files(pipe, g, "one person", [biden])                     # unlike the enrolled ones
    assert snapshot(path, pipe.model_hash)[0] == [("one person", 2)]
    with Gallery(path, pipe.model_hash) as g:                                # the owner insists
        stored = enroll_files(pipe, g, "two people", two_folders, force=True, lookalike=0.72).stored
        assert {"elton_john", "jerry_seinfeld"} <= {p.split("/")[-2] for p in stored}
        with pytest.raises(EnrollmentError, match="looks like 'one person'"):  # force does not skip this
            enroll_files(pipe, g, "another person", [obama], force=True, lookalike=0.72)
    assert snapshot(path, pipe.model_hash)[0] == [("one person", 2), ("two people", len(stored))]


def test_someone_elses_photos_cannot_be_added_to_an_enrolled_person(tmp_path, pipe, photos):
    """Before, new photos that outnumbered a person's templates were never the odd ones out: two photos
    of a second person (or one photo given twice) were added, and let that person in under the name."""
    path = tmp_path / "gallery.db"
    obama, obama2, obama3, biden = photos.singles
    with Gallery(path, pipe.model_hash) as g:
        enroll_files(pipe, g, "resident", [biden])
        for tries in ([obama, obama2], [obama, obama], [obama, obama2, obama3]):
            with pytest.raises(EnrollmentError, match=r"do not look like the 1 template\(s\) already enrolled "
                                                      r"for 'resident'.*obama\.jpg.*--replace"):
                enroll_files(pipe, g, "resident", tries, lookalike=0.72)
        with pytest.raises(EnrollmentError, match="already enrolled for 'resident'"):  # force does not skip it
            enroll_files(pipe, g, "resident", [obama, obama2], force=True)
        assert [(p.name, p.templates) for p in g.people()] == [("resident", 1)]
        assert g.matcher().match(pipe_embedding(pipe, obama3)).score < 0.72
        # the owner starts the person afresh, knowingly
        assert len(enroll_files(pipe, g, "resident", [obama, obama2], replace=True).stored) == 2


def test_a_photo_given_twice_is_stored_once(tmp_path, pipe, photos):
    obama, obama2, _, _ = photos.singles
    copy = tmp_path / "copy of obama.jpg"
    shutil.copy(obama, copy)
    with Gallery(tmp_path / "gallery.db", pipe.model_hash) as g:
        report = enroll_files(pipe, g, "resident", [obama, obama2, obama, copy])
        assert report.stored == [str(obama), str(obama2)]
        assert report.rejected == [(str(obama), f"the same photo as {obama}"), (str(copy), f"the same photo as {obama}")]
        assert [(p.name, p.templates) for p in g.people()] == [("resident", 2)]


def pipe_embedding(pipe, path):
    from lock.enroll import template_from_frame
    return template_from_frame(pipe, load_image(path))[0]


def test_cli_enroll_mistakes(tmp_path, photos):
    s = scenario.settings(tmp_path)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(s.model_dump()))
    obama, obama2 = photos.singles[:2]

    def lock(*args):
        return subprocess.run([sys.executable, "-m", "lock", *args], capture_output=True, text=True, timeout=300)

    r = lock("--config", str(cfg), "enroll", str(obama), str(obama2))            # the name forgotten
    assert r.returncode == 2 and "is a photo or a path: give the person's name first" in r.stderr
    r = lock("enroll", "a person", "--replace", str(obama), "--config", str(cfg))  # options anywhere
    assert r.returncode == 0, r.stdout + r.stderr
    assert "enrolled a person: 1 template(s)" in r.stdout
    r = lock("faces", "list", "--config", str(cfg))
    assert "a person: 1 template(s)" in r.stdout, r.stdout + r.stderr
    r = lock("--config", str(cfg), "enroll", "another person", str(obama))
    assert r.returncode == 1 and "looks like 'a person'" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "resident").mkdir()                                              # a folder named after them
    shutil.copy(photos.singles[3], tmp_path / "resident" / "1.jpg")
    r = subprocess.run([sys.executable, "-m", "lock", "--config", str(cfg), "enroll", "resident", "resident/"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and "enrolled resident: 1 template(s)" in r.stdout, r.stdout + r.stderr


def test_a_gallery_made_by_root_in_the_service_users_folder_is_the_service_users(tmp_path):
    """Before, `sudo lock enroll` (a failed one too) left a gallery owned by root, mode 0600, in the
    service user's folder: the service could not open it at all."""
    import os
    if os.geteuid() != 0:
        pytest.skip("needs root: this is about what root leaves behind")
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 12345, 12345)                      # the service user's folder (any uid will do)
    s = scenario.settings(tmp_path, gallery={"path": str(state / "gallery.db")})
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(s.model_dump()))
    Image.fromarray(background((480, 640))).save(tmp_path / "no_face.jpg")
    r = subprocess.run([sys.executable, "-m", "lock", "--config", str(cfg), "enroll", "resident",
                        str(tmp_path / "no_face.jpg")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "no face found" in r.stderr + r.stdout, r.stdout + r.stderr
    left = sorted(state.iterdir())
    assert left and all((p.stat().st_uid, p.stat().st_gid) == (12345, 12345) for p in left), \
        [(p.name, p.stat().st_uid) for p in left]


def test_faces_restore_on_the_command_line(tmp_path):
    """`lock faces restore BACKUP`: into a new install (no gallery yet) and over a gallery in use; a file that
    is no gallery is refused, naming it, and changes nothing."""
    import numpy as np

    from lock.gallery import Gallery
    s = scenario.settings(tmp_path)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(s.model_dump()))
    backup = tmp_path / "backup.db"
    v = np.zeros(128, np.float32)
    v[0] = 1.0
    with Gallery(backup, "sha256:any") as b:
        b.enroll("a resident", [v], [0.9])

    def lock(*args):
        return subprocess.run([sys.executable, "-m", "lock", "--config", str(cfg), *args], capture_output=True,
                              text=True, timeout=120)

    r = lock("faces", "restore", str(backup))
    assert r.returncode == 0 and "1 people" in r.stdout, r.stdout + r.stderr
    assert "a resident: 0 template(s)" in lock("faces", "list").stdout   # another model's hash: listed apart
    junk = tmp_path / "junk.db"
    junk.write_text("not a gallery\n" * 50)
    r = lock("faces", "restore", str(junk))
    assert r.returncode == 1 and str(junk) in r.stderr and "nothing was changed" in r.stderr
    assert "Traceback" not in r.stderr
    assert "a resident" in lock("faces", "list").stdout


def test_faces_schedule_says_when_the_person_will_be_refused_for_want_of_a_time_server(tmp_path, pipe,
                                                                                       monkeypatch, capsys):
    """`lock faces schedule` sets the schedule and, while no time server has set the clock since boot
    (systemd-timesyncd's file, a real one in tmp_path here), says the person is refused until one has."""
    from lock import schedule
    from lock.cli import main
    synced = tmp_path / "synchronized"
    monkeypatch.setattr(schedule, "TIME_SYNC_FILE", str(synced))
    s = scenario.settings(tmp_path)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(s.model_dump()))
    with Gallery(s.gallery.path, pipe.model_hash) as g:
        e = np.zeros(128, np.float32)
        e[0] = 1.0
        g.enroll("cleaner", [e], [1.0])
    assert main(["--config", str(cfg), "faces", "schedule", "cleaner", "mon-fri", "09:00-12:00"]) == 0
    out = capsys.readouterr().out
    assert "cleaner: allowed mon,tue,wed,thu,fri 09:00-12:00" in out
    assert "note: no time server has set this clock since boot" in out and "cleaner is refused until" in out
    synced.touch()
    assert main(["--config", str(cfg), "faces", "schedule", "cleaner", "mon-fri", "09:00-13:00"]) == 0
    out = capsys.readouterr().out
    assert "cleaner: allowed mon,tue,wed,thu,fri 09:00-13:00" in out and "note:" not in out
    with Gallery(s.gallery.path, pipe.model_hash) as g:
        assert str(g.schedule("cleaner")) == "mon,tue,wed,thu,fri 09:00-13:00"
