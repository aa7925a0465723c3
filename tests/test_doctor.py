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
    assert "[FAIL] gallery" in out and "nobody enrolled" in out
    assert "[FAIL] mqtt" in out and "127.0.0.1:1" in out
    assert r.returncode == 1 and "2 problem(s) found" in out
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
