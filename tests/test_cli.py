"""The vision commands of the CLI, run as a person would."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest


def lock(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "lock", *args], capture_output=True, text=True, timeout=timeout)


def test_embed_jsonl_contract(tmp_path, photos):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    for p in photos.singles[:2]:
        (d / "sub" / p.name).write_bytes(p.read_bytes())
    (d / "blank.png").write_bytes(
        __import__("cv2").imencode(".png", np.full((300, 300, 3), 90, np.uint8))[1].tobytes())
    r = lock("embed", str(d), str(photos.singles[3]), "--jsonl")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 4
    by_name = {row["path"].rsplit("/", 1)[1]: row for row in rows}
    assert by_name["blank.png"]["faces"] == [] and by_name["blank.png"]["embedding"] is None
    for name in (photos.singles[0].name, photos.singles[1].name, photos.singles[3].name):
        row = by_name[name]
        assert set(row) >= {"path", "faces", "embedding"}
        assert len(row["faces"]) == 1
        face = row["faces"][0]
        assert len(face["box"]) == 4 and len(face["landmarks"]) == 5 and 0 < face["score"] <= 1
        e = np.array(row["embedding"])
        assert e.shape == (128,) and abs(np.linalg.norm(e) - 1) < 1e-3
    same = np.dot(by_name["obama.jpg"]["embedding"], by_name["obama2.jpg"]["embedding"])
    other = np.dot(by_name["obama.jpg"]["embedding"], by_name["biden.jpg"]["embedding"])
    assert same > other + 0.2


def test_verify_prints_faces_and_similarities(tmp_path, photos):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0garbage")
    r = lock("verify", str(photos.singles[0]), str(photos.singles[1]), str(bad))
    assert r.returncode == 1  # one file could not be read
    assert "Traceback" not in r.stderr + r.stdout
    assert "broken.jpg" in r.stdout and "1 face(s)" in r.stdout
    assert "similarity" in r.stdout


def test_bench_prints_every_stage(photos):
    r = lock("bench", "--frames", "3", "--repeat", "1")
    assert r.returncode == 0, r.stderr
    for label in ("pyramid+P-Net", "R-Net", "O-Net", "align", "embed", "runtime ai_edge_litert"):
        assert label in r.stdout
    stages = json.loads(r.stdout.strip().splitlines()[-1])["stages"]
    assert stages["embed"]["median_ms"] > 0 and stages["pnet"]["median_ms"] > 0


def test_run_without_gpio_says_how_to_try_it_on_a_pc(tmp_path):
    """Before, `lock run` on a PC ended at gpiozero's "Unable to load any default pin factory!"."""
    import os
    from pathlib import Path

    import yaml

    from tests import scenario
    try:
        if "Raspberry Pi" in Path("/proc/device-tree/model").read_text(errors="replace"):
            pytest.skip("a Raspberry Pi: its GPIO can be used")
    except OSError:
        pass
    env = {k: v for k, v in os.environ.items() if k != "GPIOZERO_PIN_FACTORY"}
    probe = subprocess.run([sys.executable, "-W", "ignore", "-c", "from gpiozero import Device; "
                            "print(type(Device._default_pin_factory()).__name__)"],
                           capture_output=True, text=True, timeout=60, env=env)
    if probe.returncode == 0:   # asked of gpiozero itself: a crash of `lock run` is never taken for this
        pytest.skip(f"gpiozero loads a pin library on this machine ({probe.stdout.strip()}): the hint for a "
                    "machine without one cannot appear here")
    assert "Unable to load any default pin factory" in probe.stderr, probe.stderr
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(scenario.settings(tmp_path).model_dump()))
    r = subprocess.run([sys.executable, "-m", "lock", "--config", str(cfg), "run"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.rstrip().endswith(
        "not a Raspberry Pi? GPIOZERO_PIN_FACTORY=mock lock run ... drives a simulated pin"), r.stderr
    r = subprocess.run([sys.executable, "-m", "lock", "--config", str(tmp_path / "nothing.yaml"), "run"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "GPIOZERO_PIN_FACTORY" not in r.stderr  # only for that error


def test_a_reader_that_stops_early_is_no_error(photos):
    """`lock status | head -1` (or verify, list) ended in a BrokenPipeError traceback and status 1."""

    paths = [str(p) for p in photos.singles[:4]]
    a = subprocess.Popen([sys.executable, "-m", "lock", "verify", *paths], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    head = subprocess.run(["head", "-1"], stdin=a.stdout, capture_output=True, text=True, timeout=300)
    a.stdout.close()
    err = a.stderr.read().decode()
    assert a.wait(timeout=300) == 0 and head.stdout.endswith("face(s)\n")
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_control_socket_closed_under_the_request_is_an_error_not_a_quiet_success(tmp_path):
    """The BrokenPipeError of a closed stdout is no error (lock ... | head); one from the control socket is:
    `lock unlock` printed nothing and exited 0 when the daemon closed the connection first (re-check)."""
    import socket
    import threading

    from lock.control import request
    from lock.errors import ControlError
    path = str(tmp_path / "control.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def hang_up():
        conn, _ = server.accept()
        conn.close()

    t = threading.Thread(target=hang_up)
    t.start()
    with pytest.raises(ControlError, match="closed the connection"):
        list(request(path, {"cmd": "unlock", "pad": "x" * 4_000_000}, timeout=5.0))   # more than a socket buffer
    t.join(5)
    server.close()
