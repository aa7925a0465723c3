"""`lock doctor` says plainly what is right and what is wrong."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests import scenario


def doctor(cfg, env=None):
    return subprocess.run([sys.executable, "-m", "lock", "--config", str(cfg), "doctor"], capture_output=True,
                          text=True, timeout=300, env=env)


def test_doctor_reports_each_part(tmp_path, photos):
    frames = scenario.write_frames(tmp_path / "frames", scenario.empty(2))
    s = scenario.settings(tmp_path, frames, camera={"loop": True},
                          mqtt={"enabled": True, "host": "127.0.0.1", "port": 1, "password_env": None,
                                "allow_no_code": True})
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(s.model_dump()))
    import os
    r = doctor(cfg, env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
    out = r.stdout
    assert "[ ok ] config" in out
    assert "[ ok ] models" in out and "sha256 as in the manifest" in out
    assert "[ ok ] camera: files" in out
    assert "[ ok ] gpio" in out
    # before the first enrollment (the README's order: doctor, then enroll): a caution, not a failure
    assert "[WARN] gallery" in out and "nobody enrolled, no face opens the door" in out
    assert "[FAIL] mqtt" in out and "127.0.0.1:1" in out
    assert "[WARN] mqtt: mqtt.allow_no_code is on and no code is set" in out
    assert r.returncode == 1 and "1 problem(s) found, 2 warning(s)" in out
    assert "Traceback" not in r.stderr


def test_doctor_names_an_altered_model(tmp_path):
    import shutil
    from lock.config import REPO_ROOT
    models = tmp_path / "models"
    shutil.copytree(REPO_ROOT / "models", models, ignore=shutil.ignore_patterns("float", "*.py", "*.md"))
    data = bytearray((models / "pnet.tflite").read_bytes())
    data[100] ^= 0x55
    (models / "pnet.tflite").write_bytes(bytes(data))
    frames = scenario.write_frames(tmp_path / "frames", scenario.empty(2))
    s = scenario.settings(tmp_path, frames, vision={"models_dir": str(models)})
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(s.model_dump()))
    r = doctor(cfg)
    assert "[FAIL] models" in r.stdout and "pnet.tflite" in r.stdout and "altered" in r.stdout
    assert r.returncode == 1


def mqtt_config(tmp_path, **mqtt):
    frames = scenario.write_frames(tmp_path / "frames", scenario.empty(2))
    s = scenario.settings(tmp_path, frames, camera={"loop": True},
                          mqtt={"enabled": True, "host": "127.0.0.1", "port": 1, "password_env": None, **mqtt})
    data = s.model_dump()
    data["mqtt"].update(mqtt)  # relative file names as given: taken from the config file's folder
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def mqtt_test(cfg, env=None):
    return subprocess.run([sys.executable, "-m", "lock", "--config", str(cfg), "mqtt-test"], capture_output=True,
                          text=True, timeout=120, env=env)


def test_doctor_and_mqtt_test_read_the_code_as_the_daemon_does(tmp_path):
    """Before, both said nothing of a code they could not read: the daemon then refused every LOCK,
    UNLOCK and OPEN, and only its log said why."""
    import os
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    env.pop("LOCK_TEST_CODE", None)
    code = tmp_path / "nocode.txt"
    refused = "the lock would refuse every LOCK, UNLOCK and OPEN"
    cfg = mqtt_config(tmp_path, code_file="nocode.txt")
    r = doctor(cfg, env)
    assert f"[FAIL] mqtt: mqtt.code_file: cannot read {code}: No such file or directory; {refused}" in r.stdout
    assert r.returncode == 1 and "Traceback" not in r.stderr
    r = mqtt_test(cfg, env)
    assert f"failed: mqtt.code_file: cannot read {code}: No such file or directory; {refused}" in r.stdout
    assert r.returncode == 1
    code.write_text(" \n")
    code.chmod(0o600)
    r = mqtt_test(cfg, env)
    assert f"failed: mqtt.code_file: {code} is empty; {refused}" in r.stdout
    cfg = mqtt_config(tmp_path, code_env="LOCK_TEST_CODE")
    r = mqtt_test(cfg, env)   # this shell's environment is not the service's: a warning, not a failure
    assert "warning: mqtt.code_env: LOCK_TEST_CODE is not set here; the service needs it" in r.stdout
    assert "failed: mqtt.code_env" not in r.stdout
    r = mqtt_test(cfg, {**env, "LOCK_TEST_CODE": "1234"})
    assert "mqtt.code_env" not in r.stdout and "failed: cannot reach the broker at 127.0.0.1:1" in r.stdout


def test_secret_files_open_to_others_are_a_warning(tmp_path):
    """README: the code and password files readable by the service user only; before, nothing said so."""
    import os
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    code, password = tmp_path / "code.txt", tmp_path / "password.txt"
    code.write_text("1234\n")
    password.write_text("secret\n")
    code.chmod(0o644)
    password.chmod(0o640)
    cfg = mqtt_config(tmp_path, code_file=str(code), password_file=str(password), username="lock")
    r = doctor(cfg, env)
    group = __import__("grp").getgrgid(code.stat().st_gid).gr_name
    assert (f"[WARN] mqtt: mqtt.code_file: {code} is open to group {group} and everyone (mode 0644); it holds a "
            f"secret: make it readable by the service user only (chmod 600 {code})") in r.stdout
    assert f"[WARN] mqtt: mqtt.password_file: {password} is open to group {group} (mode 0640)" in r.stdout
    assert "[FAIL] mqtt: mqtt.code_file" not in r.stdout
    assert "1 problem(s) found, 3 warning(s)" in r.stdout  # the broker; the gallery and the two files warn
    r = mqtt_test(cfg, env)
    assert f"warning: mqtt.code_file: {code} is open to" in r.stdout
    code.chmod(0o600)
    password.chmod(0o400)
    r = mqtt_test(cfg, env)
    assert "warning" not in r.stdout and "failed: cannot reach the broker" in r.stdout
    password.chmod(0o600)
    password.write_text("\n")
    r = mqtt_test(cfg, env)
    assert f"failed: mqtt.password_file: {password} is empty" in r.stdout and r.returncode == 1


def test_doctor_says_when_the_running_daemon_lets_no_face_in(tmp_path):
    """`lock doctor` said "all good" while face unlock was off (the Home Assistant switch) or a lockout ran."""
    import os

    from gpiozero.pins.mock import MockFactory

    from lock.daemon import Daemon
    frames = scenario.write_frames(tmp_path / "frames", scenario.empty(2))
    s = scenario.settings(tmp_path, frames, camera={"loop": True})
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(s.model_dump()))
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
    d = Daemon(s, pin_factory=MockFactory())
    with scenario.Running(d, stop_when_exhausted=False):
        assert "[WARN] state" not in doctor(cfg, env).stdout
        d.set_face_unlock(False)
        out = doctor(cfg, env).stdout
        assert "[WARN] state" in out and "face unlock is OFF" in out and "lock face-unlock on" in out, out


def test_doctor_checks_the_coral_facenet_file_against_the_manifest(tmp_path, monkeypatch, capsys):
    """The Coral check counted any *_edgetpu.tflite, though the lock uses only FaceNet's and only when the
    manifest lists it (libedgetpu itself is not on this machine: its lookup is stood in for)."""
    import ctypes.util
    import json
    import shutil
    from lock.config import REPO_ROOT
    from lock.doctor import doctor as run_doctor
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libedgetpu.so.1" if name == "edgetpu" else None)
    frames = scenario.write_frames(tmp_path / "frames", scenario.empty(2))

    def coral_line(label, prepare):
        models = tmp_path / label
        shutil.copytree(REPO_ROOT / "models", models, ignore=shutil.ignore_patterns("float", "*.py", "*.md"))
        prepare(models)
        s = scenario.settings(tmp_path / (label + "-state"), frames, vision={"models_dir": str(models), "coral": True})
        cfg = tmp_path / f"{label}.yaml"
        cfg.write_text(yaml.safe_dump(s.model_dump()))
        run_doctor(str(cfg))
        return next(x for x in capsys.readouterr().out.splitlines() if "] coral" in x)

    def other_model(models):
        shutil.copy(models / "pnet.tflite", models / "pnet_edgetpu.tflite")

    def unlisted(models):
        shutil.copy(models / "facenet.tflite", models / "facenet_edgetpu.tflite")

    def listed(models):
        unlisted(models)
        manifest = json.loads((models / "manifest.json").read_text())
        manifest["models"]["facenet_edgetpu"] = {**manifest["models"]["facenet"], "file": "facenet_edgetpu.tflite"}
        (models / "manifest.json").write_text(json.dumps(manifest))

    assert coral_line("other", other_model).startswith("[FAIL] coral: no ")
    line = coral_line("unlisted", unlisted)
    assert line.startswith("[FAIL] coral:") and "not listed in" in line and "the CPU is" in line
    assert coral_line("listed", listed) == ("[ ok ] coral: libedgetpu.so.1, facenet_edgetpu.tflite "
                                           "(FaceNet; P/R/O-Net run on the CPU)")


def test_doctor_warns_when_schedules_cannot_be_kept_for_want_of_a_time_server(tmp_path, monkeypatch, capsys):
    """A person with a schedule is refused until the clock comes from a time server (lock.decide); doctor
    says so, naming them, and why.  systemd-timesyncd's file is a real file here, in tmp_path."""
    import json

    import numpy as np
    from lock import schedule
    from lock.config import models_dir
    from lock.doctor import doctor as run_doctor
    from lock.gallery import Gallery
    from lock.vision.runtime import Runtime
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    synced = tmp_path / "timesync" / "synchronized"
    monkeypatch.setattr(schedule, "TIME_SYNC_FILE", str(synced))
    frames = scenario.write_frames(tmp_path / "frames", scenario.empty(2))

    def clock_line(**decide):
        s = scenario.settings(tmp_path, frames, decide=decide)
        cfg = tmp_path / "config.yaml"
        cfg.write_text(yaml.safe_dump(s.model_dump()))
        run_doctor(str(cfg))
        return s, next(x for x in capsys.readouterr().out.splitlines() if "] clock" in x)

    s, line = clock_line()
    assert line == "[ ok ] clock: nobody has a schedule (or only every day, the whole day)"
    rt = Runtime(models_dir(s)).open()
    with Gallery(s.gallery.path, rt.model_hash("facenet.tflite")) as g:
        e = np.zeros(128, np.float32)
        e[0] = 1.0
        g.enroll("cleaner", [e], [1.0])
        g.enroll("resident", [np.roll(e, 1)], [1.0])
        g.enroll("lodger", [np.roll(e, 2)], [1.0])
        g.set_schedule("cleaner", schedule.Schedule.parse("mon-fri", "09:00-12:00"))
        g.set_schedule("lodger", schedule.Schedule.parse("mon-sun", "00:00-24:00"))   # no clock can matter
    _, line = clock_line()
    assert line.startswith("[WARN] clock: systemd-timesyncd is not running") and "cannot tell" in line
    assert "people with a schedule (cleaner) are refused" in line and "decide.schedules_need_time_sync" in line
    assert "resident" not in line and "lodger" not in line
    synced.parent.mkdir()
    _, line = clock_line()
    assert line.startswith("[WARN] clock: not set from a time server since boot: people with a schedule "
                           "(cleaner) are refused until it is; no time server has answered systemd-timesyncd yet")
    synced.touch()
    assert clock_line()[1] == "[ ok ] clock: set from a time server since boot: schedules are kept"
    synced.unlink()                # timesyncd restarted; the lock saw the file earlier in this boot
    (tmp_path / "state.json").write_text(json.dumps({"face_unlock": True, "time_synced_boot": schedule.boot_id()}))
    assert clock_line()[1] == "[ ok ] clock: set from a time server since boot: schedules are kept"
    (tmp_path / "state.json").write_text(json.dumps({"face_unlock": True, "time_synced_boot": "an earlier boot"}))
    assert clock_line()[1].startswith("[WARN] clock:")
    _, line = clock_line(schedules_need_time_sync=False)
    assert line.startswith("[ ok ] clock: schedules (cleaner) are read against the clock as it is")
