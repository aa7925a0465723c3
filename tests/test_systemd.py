"""The systemd unit: valid, fail-secure after any exit, notify + watchdog."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from lock.config import REPO_ROOT
from tests import scenario

UNIT = REPO_ROOT / "systemd" / "lock.service"


def rendered(tmp_path):
    out = tmp_path / "lock.service"
    out.write_text(UNIT.read_text().replace("@PREFIX@", str(REPO_ROOT)))
    return out


def test_unit_passes_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (.ci/run does)")
    unit = rendered(tmp_path)
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr


def test_unit_settings():
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=always", "ExecStopPost=", "-m lock.door --off",
                 "NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=lock"):
        assert line in text


def test_runtime_directory_is_ours_and_holds_the_control_socket():
    """Not /run/lock: that is the system's lock-file directory, which systemd would chown and delete."""
    from pathlib import PurePosixPath
    from lock.config import Settings

    lines = dict(l.split("=", 1) for l in UNIT.read_text().splitlines() if "=" in l and not l.startswith("#"))
    runtime = lines["RuntimeDirectory"]
    assert runtime not in ("lock", "user", "systemd", "shm", "log")
    for config_default in (Settings().control.socket,
                           yaml.safe_load((REPO_ROOT / "config.yaml").read_text())["control"]["socket"]):
        assert PurePosixPath(config_default).parent == PurePosixPath("/run") / runtime


def test_exec_stop_post_command_drives_the_relay_off(tmp_path):
    """The ExecStopPost command line, as systemd runs it, with a mock pin factory and an active-low relay:
    it runs, finds the config, and says it forced the relay off."""
    s = scenario.settings(tmp_path, door={"relay_active_high": False})
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(s.model_dump()))
    line = next(l for l in UNIT.read_text().splitlines() if l.startswith("ExecStopPost="))
    args = line.split("=", 1)[1].replace("@PREFIX@/.venv/bin/python", sys.executable)
    args = args.replace("/etc/lock/config.yaml", str(cfg)).split()
    r = subprocess.run(args, capture_output=True, text=True, env={"GPIOZERO_PIN_FACTORY": "mock",
                                                                   "PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 0, r.stderr
    # the pin level itself is checked in tests/test_door.py (test_main_off_forces_the_relay_off)
    assert "forced off" in r.stderr and "active low" in r.stderr, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("door:\n  relay_pin: [1]\n")
    r = subprocess.run([sys.executable, "-m", "lock.door", "--off", "--config", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "door.relay_pin" in r.stderr


def test_force_off_sets_the_inactive_level():
    from lock.config import DoorSettings
    from lock.door import force_off
    for active_high, inactive in ((True, False), (False, True)):
        factory = MockFactory()
        pin = factory.pin("GPIO17")
        pin.function = "output"
        pin.state = not inactive  # as if a crash left the relay energised
        force_off(DoorSettings(relay_active_high=active_high), pin_factory=factory)
        assert pin.state == inactive
