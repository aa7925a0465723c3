"""Abuse: malformed images, hostile MQTT traffic, a hostile control-socket client, score leaks.

The image half runs one file of every kind from bench/abuse.py (the 500+ file
corpus is `python bench/abuse.py`) through the library and the real CLI.  The
rest runs a real Daemon (recorded frames, MockFactory relay) against a real
mosquitto and its real control socket.
"""

from __future__ import annotations

import grp
import importlib.util
import json
import logging
import os
import pwd
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from gpiozero.pins.mock import MockFactory
from PIL import Image

from lock import control as control_mod
from lock import events as ev
from lock.audit import AuditLog
from lock.config import AuditSettings
from lock.control import ControlServer, request
from lock.daemon import Daemon
from lock.enroll import enroll_files
from lock.gallery import Gallery
from lock.imageio import load_image
from lock.mqtt import CODE_LOCKOUT_AFTER, Topics, discovery_messages
from lock.vision.pipeline import FacePipeline
from tests import scenario
from tests.scenario import Running, active_spans, relay_history

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("bench_abuse", ROOT / "bench" / "abuse.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


abuse = _bench()


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return FacePipeline(scenario.settings(tmp_path_factory.mktemp("p"))).open()


# =========================================================================== images

def _non_utf8(case) -> bool:
    return "non-UTF-8" in case.kind


def test_one_of_every_malformed_image_kind(tmp_path, photos):
    """Library and CLI: no crash, a message per rejected file, the gallery untouched by each of them."""
    res = abuse.run(tmp_path, seed=0, count=0, batch=500, quick=True, select=lambda c: not _non_utf8(c))
    results = res.pop("_results")
    assert res["files"] >= 60
    problems = [f"{n}: {p}" for n, p in res["problem_list"]]
    assert not problems, "\n".join(problems)
    assert res["crashes"] == 0
    outcomes = res["outcomes"]
    for outcome in (abuse.ENROLLED, abuse.NO_FACE, abuse.SEVERAL, abuse.NOT_IMAGE, abuse.EMPTY, abuse.TOO_LARGE,
                    abuse.TOO_SMALL, abuse.MISSING, abuse.DIRECTORY, abuse.UNREADABLE):
        assert outcomes.get(outcome), f"the corpus produced no {outcome!r} case: {outcomes}"
    by_name = {r.case.name: r for r in results}
    # the bombs were refused from their headers: fast, and as too large
    for name in ("bomb_30000.png", "bomb_real.png", "bomb.jpg", "bomb.gif", "bomb.bmp", "bomb.tif"):
        assert by_name[name].outcome == abuse.TOO_LARGE and by_name[name].seconds < 1.0, by_name[name]
    # the CLI really ran on them: verify counted the faces of what the library decoded
    assert by_name["upright.jpg"].cli_faces == 1 and by_name["two_faces.jpg"].cli_faces >= 2
    for o in (3, 6, 8):
        assert by_name[f"exif{o}.jpg"].outcome == abuse.ENROLLED and by_name[f"exif{o}.jpg"].cli_faces == 1


def test_file_names_that_are_not_utf8(tmp_path, photos):
    res = abuse.run(tmp_path, seed=0, count=0, batch=500, quick=True, select=_non_utf8)
    res.pop("_results")
    assert res["files"] == 2
    assert not res["problem_list"], res["problem_list"]


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_photo_is_turned_upright(tmp_path, photos, pipe, orientation):
    upright = Image.open(photos.singles[1]).convert("RGB")
    path = tmp_path / f"exif{orientation}.jpg"
    path.write_bytes(abuse.with_orientation(abuse.exif_stored(upright, orientation), orientation))
    stored = np.asarray(Image.open(path).convert("RGB"))      # the pixels as the file holds them
    want = np.asarray(upright)
    got = load_image(path)
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want).mean() < 3.0        # the real photo again (JPEG noise aside)
    assert stored.shape != want.shape or np.abs(stored.astype(int) - want).mean() > 20  # the file is not
    faces, ref = pipe.detect(got), pipe.detect(want)
    assert len(faces) == 1 and len(ref) == 1
    assert np.abs(faces.boxes[0] - ref.boxes[0]).max() < 0.05 * (ref.boxes[0][2] - ref.boxes[0][0])
    with Gallery(tmp_path / "g.db", pipe.model_hash) as g:
        assert enroll_files(pipe, g, "rotated", [path]).stored == [str(path)]


# =========================================================================== MQTT

CODE = "4321"


def _mqtt_daemon(tmp_path, broker, monkeypatch, **mqtt):
    frames = scenario.write_frames(tmp_path / "frames", scenario.empty(3))
    monkeypatch.setenv("LOCK_ABUSE_CODE", CODE)
    m = broker.settings(code_env="LOCK_ABUSE_CODE", **mqtt).model_dump()
    s = scenario.settings(tmp_path, frames, mqtt=m, camera={"loop": True})
    return s, MockFactory()


def _blast(collector, items, qos=1):
    """Publish (topic, payload) pairs as fast as paho takes them; wait for the last to be acknowledged."""
    infos = [collector.client.publish(topic, payload, qos=qos) for topic, payload in items]
    infos[-1].wait_for_publish(timeout=30)
    assert infos[-1].is_published()


def _processed_so_far(collector, s):
    """Home Assistant's `online` makes the bridge send discovery again: once that arrives, the bridge has
    handled every message published before it (one connection, one network thread, in order)."""
    t = Topics.of(s.mqtt)
    topic = discovery_messages(s.mqtt, False)[0][0]
    n = len(collector.on(topic))
    collector.publish(t.ha_status, "online")
    collector.wait_until(lambda c: len(c.on(topic)) > n, timeout=30)


def _errors(caplog):
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_mqtt_garbage_wrong_topics_and_codes_never_act(tmp_path, mqtt_broker, mqtt_subscriber, monkeypatch,
                                                        caplog):
    caplog.set_level(logging.INFO, logger="lock")
    # Every malformed and wrong command must be refused on its own merits here, not by the wrong-code
    # lockout (tested in test_mqtt.py and below), which would refuse all but the first five unread.
    monkeypatch.setattr("lock.mqtt.CODE_LOCKOUT_AFTER", 10**6)
    s, factory = _mqtt_daemon(tmp_path, mqtt_broker, monkeypatch, commands_per_minute=100000)
    t = Topics.of(s.mqtt)
    right = json.dumps({"action": "UNLOCK", "code": CODE})
    rng = np.random.default_rng(7)
    noise = [rng.integers(0, 256, int(rng.integers(1, 900)), dtype=np.uint8).tobytes() for _ in range(60)]
    ignored = (
        [(t.lock_command, b) for b in noise] + [(t.switch_command, b) for b in noise]
        + [(t.lock_command, json.dumps({"action": "UNLOCK", "code": CODE, "pad": "x" * 2000})),  # too long
           (t.lock_command, json.dumps({"action": "UNLOCK", "code": CODE}).encode() + b" " * 1024 * 1024),
           (t.lock_command, '{"action": "UNLOCK", "code": "4321", "x": ' + "[" * 990),  # deep nesting
           (t.lock_command, b"\xff\xfeU\x00N\x00L\x00O\x00C\x00K\x00"),  # UTF-16
           (t.lock_command, "UNLOCK\x00"), (t.lock_command, "UNLOCK" * 5), (t.lock_command, "  "),
           (t.lock_command, json.dumps({"action": "EXPLODE", "code": CODE})),
           (t.lock_command, json.dumps({"action": ["UNLOCK"], "code": CODE})),
           (t.lock_command, json.dumps(["UNLOCK", CODE])), (t.lock_command, json.dumps({"code": CODE})),
           (t.lock_command, json.dumps({"action": "ＵＮＬＯＣＫ", "code": CODE})),  # full-width letters
           (t.switch_command, right), (t.switch_command, "ONN"), (t.switch_command, "1"),
           (t.switch_command, '{"action": "OFF", "x": ' + "[" * 990)]  # deep nesting: unreadable
        + [(topic, right) for topic in (  # the right command on the wrong topic
            f"{t.lock_command}/x", f"{t.lock_command}/", t.lock_command.upper(), f"/{t.lock_command}",
            t.lock_command.replace("/set", ""), t.lock_state, t.event, t.availability, t.ha_status,
            "homeassistant/lock/face_lock/lock/set", "face_lock/lock/set ", "face-lock/lock/set")])
    wrong_code = [json.dumps({"action": a, "code": c}) for a, c in (
        ("UNLOCK", "0000"), ("UNLOCK", ""), ("UNLOCK", None), ("UNLOCK", CODE + " "), ("UNLOCK", " " + CODE),
        ("UNLOCK", CODE + "0"), ("UNLOCK", CODE[:-1]), ("UNLOCK", "４３２１"), ("UNLOCK", 4321.0),
        ("UNLOCK", True), ("UNLOCK", [CODE]), ("UNLOCK", {"code": CODE}), ("OPEN", "1234"), ("LOCK", "x"),
        ("unlock", "0" * 900))]
    wrong_code += ['{"action": "UNLOCK", "code": "\\ud800"}',    # a lone surrogate: not even encodable
                   "UNLOCK", "unlock", "OPEN", json.dumps({"action": "UNLOCK", "Code": CODE})]
    sub = mqtt_subscriber(mqtt_broker, "#")
    d = Daemon(s, pin_factory=factory)
    with Running(d, stop_when_exhausted=False) as run:
        assert scenario.wait_until(lambda: d.mqtt.connected, 10)
        for qos in (0, 1, 2):
            _blast(sub, ignored, qos=qos)
        _blast(sub, [(t.lock_command, p) for p in wrong_code])
        _processed_so_far(sub, s)
        assert active_spans(relay_history(factory)) == [], "nothing but the right command may unlock"
        assert not run.kinds(ev.REMOTE_UNLOCK)
        assert d.door.state == "LOCKED" and d.status()["face_unlock"] is True
        denied = run.kinds(ev.DENIED)
        assert len(denied) == len(wrong_code), "each well-formed command with a wrong code is refused, once"
        assert all(e.detail.get("reason") == "bad_code" for e in denied)
        assert not _errors(caplog), [r.getMessage() for r in _errors(caplog)]
        # the right command still works, exactly once
        sub.publish(t.lock_command, right)
        assert scenario.wait_until(lambda: len(run.kinds(ev.REMOTE_UNLOCK)) == 1, 5)
        assert scenario.wait_until(lambda: len(active_spans(relay_history(factory))) == 1, 5)
        assert d.mqtt.connected and list(request(s.control.socket, {"cmd": "status"}))[-1]["ok"]
    assert relay_history(factory)[-1][1] is False


def test_mqtt_a_thousand_commands_in_a_second(tmp_path, mqtt_broker, mqtt_subscriber, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="lock")
    s, factory = _mqtt_daemon(tmp_path, mqtt_broker, monkeypatch)  # commands_per_minute: the default
    per_minute = s.mqtt.commands_per_minute
    t = Topics.of(s.mqtt)
    right = json.dumps({"action": "UNLOCK", "code": CODE})
    wrong = json.dumps({"action": "UNLOCK", "code": "0000"})
    sub = mqtt_subscriber(mqtt_broker, "#")
    d = Daemon(s, pin_factory=factory)
    with Running(d, stop_when_exhausted=False) as run:
        assert scenario.wait_until(lambda: d.mqtt.connected, 10)
        frames_before = d.stats.frames
        t0 = time.monotonic()
        _blast(sub, [(t.lock_command, right)] * 1000)
        sent = time.monotonic() - t0
        _processed_so_far(sub, s)
        refill = int((time.monotonic() - t0) * per_minute / 60) + 1
        acted = len(run.kinds(ev.REMOTE_UNLOCK))
        assert per_minute <= acted <= per_minute + refill, (acted, sent)
        _blast(sub, [(t.lock_command, wrong)] * 1000)
        _processed_so_far(sub, s)
        # refused on a budget of their own: the first few wrong codes, the wrong-code lockout, then one
        # event for the commands it refused (not 995)
        assert [e.detail.get("reason") for e in run.kinds(ev.DENIED)] == \
            ["bad_code"] * CODE_LOCKOUT_AFTER + ["code_lockout", "locked_out"]
        assert len(run.kinds(ev.REMOTE_UNLOCK)) == acted, "a wrong code never unlocks"
        # 2000 dropped commands are a handful of log lines, not 2000 (an SD card wears out)
        mqtt_warnings = [r for r in caplog.records if r.name == "lock.mqtt" and r.levelno == logging.WARNING]
        assert len(mqtt_warnings) <= 10, len(mqtt_warnings)
        assert any("dropped" in r.getMessage() for r in mqtt_warnings)
        # and the daemon is still up: frames flow, the broker link holds, the control socket answers
        assert scenario.wait_until(lambda: d.stats.frames > frames_before + 3, 10)
        assert d.mqtt.connected and list(request(s.control.socket, {"cmd": "status"}))[-1]["ok"]
        assert scenario.wait_until(lambda: d.door.state == "LOCKED", 5)
        assert not _errors(caplog), [r.getMessage() for r in _errors(caplog)]
    assert relay_history(factory)[-1][1] is False


def test_mqtt_home_assistant_online_flood_is_not_amplified(tmp_path, mqtt_broker, mqtt_subscriber, monkeypatch):
    """Each `online` re-sends discovery; a thousand of them must not queue (and send) a thousand copies."""
    s, factory = _mqtt_daemon(tmp_path, mqtt_broker, monkeypatch)
    t = Topics.of(s.mqtt)
    n_discovery = len(discovery_messages(s.mqtt, False))
    sub = mqtt_subscriber(mqtt_broker, "homeassistant/#")
    d = Daemon(s, pin_factory=factory)
    with Running(d, stop_when_exhausted=False):
        assert scenario.wait_until(lambda: d.mqtt.connected, 10)
        sub.wait_until(lambda c: len([m for m in c.messages if m[0].endswith("/config")]) >= n_discovery)
        before = len([m for m in sub.messages if m[0].endswith("/config")])
        _blast(sub, [(t.ha_status, "online")] * 1000)
        assert scenario.wait_until(lambda: not d.mqtt._control, 30), "the bridge never caught up"
        time.sleep(0.5)
        sent = len([m for m in sub.messages if m[0].endswith("/config")]) - before
        print(f"discovery messages sent for 1000 onlines: {sent}")
        assert n_discovery <= sent <= 1000 * n_discovery // 5, sent
        assert d.mqtt.connected


# =========================================================================== control socket

def _other_group() -> grp.struct_group:
    """A group that exists and is not ours (nor nobody's)."""
    nobody_gid = pwd.getpwnam("nobody").pw_gid
    for g in sorted(grp.getgrall(), key=lambda g: g.gr_gid):
        if g.gr_gid not in (os.getgid(), nobody_gid, 0):
            return g
    pytest.fail("no group other than our own exists on this system")


CONNECT_AS = """
import json, os, socket, sys
path, uid, gid, groups = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
os.setgroups(groups); os.setgid(gid); os.setuid(uid)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(path)
except PermissionError:
    print("denied"); sys.exit(0)
s.sendall(b'{"cmd": "status"}\\n')
print(json.loads(s.makefile().readline())["ok"])
"""


def _connect_as(path: Path, uid: int, gid: int, groups: list[int]) -> str:
    r = subprocess.run([sys.executable, "-c", CONNECT_AS, str(path), str(uid), str(gid), json.dumps(groups)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_control_socket_mode_group_and_other_users(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("only root can act as another user to try the socket (run the suite as root to check it)")
    group = _other_group()
    nobody = pwd.getpwnam("nobody")
    # a folder everyone may traverse, so that only the socket's own mode and group decide
    folder = Path(tempfile.mkdtemp(prefix="lock-abuse-", dir="/tmp"))
    try:
        os.chmod(folder, 0o711)
        path = folder / "control.sock"
        server = ControlServer(str(path), lambda req, progress: {"ok": True}, group=group.gr_name)
        server.start()
        try:
            st = os.stat(path)
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
            assert st.st_gid == group.gr_gid
            assert _connect_as(path, nobody.pw_uid, nobody.pw_gid, []) == "denied"
            assert _connect_as(path, nobody.pw_uid, nobody.pw_gid, [group.gr_gid]) == "True"  # a member may
        finally:
            server.close()
        assert not path.exists()
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


def _connect(path: str, timeout: float = 5.0) -> socket.socket:
    """Connect, waiting (as a blocking client would) while the listen queue is full."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(path)
            return s
        except BlockingIOError:  # EAGAIN: the queue of not yet accepted connections is full
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _exchange(path: str, payload: bytes, *, shut: bool = True, timeout: float = 5.0) -> dict | None:
    """Send raw bytes, half-close, read the one reply line (None if the daemon closed without one)."""
    s = _connect(path, timeout)
    with s:
        try:
            s.sendall(payload)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon stopped reading (request too large): its reply is still there to read
        data = b""
        while b"\n" not in data:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return json.loads(data.split(b"\n")[0]) if b"\n" in data else None


@pytest.fixture
def thread_errors(monkeypatch):
    """Exceptions that escaped any thread (the control server's included)."""
    seen = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_value))
    return seen


def test_control_socket_malformed_requests_get_an_error(tmp_path, thread_errors):
    group = _other_group() if os.geteuid() == 0 else None
    frames = scenario.write_frames(tmp_path / "frames", scenario.empty(3))
    s = scenario.settings(tmp_path, frames, camera={"loop": True},
                          control={"group": group.gr_name if group else None})
    factory = MockFactory()
    d = Daemon(s, pin_factory=factory)
    rng = np.random.default_rng(3)
    bad = {
        "random bytes": rng.integers(0, 256, 3000, dtype=np.uint8).tobytes() + b"\n",
        "NUL bytes": b"\0" * 100 + b"\n",
        "not UTF-8": b'{"cmd": "st\xffatus"}\n',
        "huge line": b"x" * (2 * 1024 * 1024),
        "huge JSON line": b'{"cmd": "status", "pad": "' + b"y" * (200 * 1024) + b'"}\n',
        "array": b"[1, 2, 3]\n", "string": b'"status"\n', "number": b"42\n", "null": b"null\n",
        "cmd not text": b'{"cmd": 5}\n', "no cmd": b"{}\n", "unknown cmd": b'{"cmd": "explode"}\n',
        "deep nesting": b"[" * 60000 + b"\n",
        "nested cmd": b'{"cmd": {"cmd": "unlock"}}\n',
        "half a request, then half-closed": b'{"cmd": "sta',
        "nothing, then half-closed": b"",
        "enroll without a name": b'{"cmd": "enroll", "count": 3}\n',
        "enroll with a silly count": b'{"cmd": "enroll", "name": "x", "count": 100000}\n',
    }
    with Running(d, stop_when_exhausted=False):
        sock = s.control.socket
        st = os.stat(sock)
        assert stat.S_IMODE(st.st_mode) == 0o660
        if group:
            assert st.st_gid == group.gr_gid
        for what, payload in bad.items():
            reply = _exchange(sock, payload)
            assert reply is not None, f"{what}: the daemon closed the connection without an answer"
            assert reply["ok"] is False and reply["error"], (what, reply)
            assert list(request(sock, {"cmd": "status"}))[-1]["ok"], f"status after {what}"
        # a client that connects and leaves at once
        for _ in range(20):
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(sock)
        assert list(request(sock, {"cmd": "status"}))[-1]["ok"]
        assert d.door.state == "LOCKED" and active_spans(relay_history(factory)) == []
    assert not thread_errors, thread_errors


def test_control_socket_many_connections(tmp_path, thread_errors):
    frames = scenario.write_frames(tmp_path / "frames", scenario.empty(3))
    s = scenario.settings(tmp_path, frames, camera={"loop": True})
    d = Daemon(s, pin_factory=MockFactory())
    with Running(d, stop_when_exhausted=False):
        sock = s.control.socket
        assert list(request(sock, {"cmd": "status"}))[-1]["ok"]
        threads_before = threading.active_count()
        idle = []
        try:
            for _ in range(300):  # connect and say nothing
                idle.append(_connect(sock))
            time.sleep(0.5)
            grown = threading.active_count() - threads_before
            limit = getattr(control_mod, "MAX_CLIENTS", 32)
            assert grown <= limit + 2, f"{grown} threads for 300 idle connections"
            # beyond the limit, a connection is told at once that the daemon is busy
            busy = _exchange(sock, b'{"cmd": "status"}\n', timeout=3)
            assert busy is not None and busy["ok"] is False and "busy" in busy["error"], busy
            # many clients at once, each asking for the status, while the idle ones hold on
            replies, errors = [], []

            def ask():
                try:
                    replies.append(_exchange(sock, b'{"cmd": "status"}\n', timeout=5))
                except OSError as exc:
                    errors.append(exc)
            askers = [threading.Thread(target=ask) for _ in range(50)]
            for a in askers:
                a.start()
            for a in askers:
                a.join(10)
            assert not errors and len(replies) == 50 and all(r is not None for r in replies), (errors, replies)
        finally:
            for c in idle:
                c.close()
        # the idle ones are gone: status answers again, and the daemon has let go of their threads
        assert scenario.wait_until(lambda: _exchange(sock, b'{"cmd": "status"}\n').get("ok") is True, 10)
        assert scenario.wait_until(lambda: threading.active_count() <= threads_before + 2, 10)
    assert not thread_errors, thread_errors


# =========================================================================== no score leaves the device

SCOREISH = ("score", "similar", "cosine", "distance", "confidence", "margin", "closest")


def _numbers_and_keys(obj, keys, numbers):
    if isinstance(obj, dict):
        for k, v in obj.items():
            keys.append(str(k).lower())
            _numbers_and_keys(v, keys, numbers)
    elif isinstance(obj, list):
        for v in obj:
            _numbers_and_keys(v, keys, numbers)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        numbers.append(float(obj))
    elif isinstance(obj, str):
        keys.append(obj.lower())  # values that are words count too ("score: 0.8" in a string)


def leaks(payload: bytes | str | dict, scores: list[float]) -> list[str]:
    """What in a payload looks like a similarity score: a score-ish word, or one of the actual scores."""
    if isinstance(payload, (bytes, bytearray)):
        payload = payload.decode("utf-8", "replace")
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            pass
    keys, numbers = [], []
    _numbers_and_keys(payload, keys, numbers)
    found = [k for k in keys if any(w in k for w in SCOREISH)]
    found += [f"{n} (a score)" for n in numbers for sc in scores if abs(n - sc) < 5e-5]
    return found


def _words(text: str) -> list[str]:
    return text.replace(":", " ").replace(",", " ").split()


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


def test_no_similarity_score_leaves_the_device(tmp_path, pipe, photos, mqtt_broker, mqtt_subscriber):
    train, val = photos.celebrities("train"), photos.celebrities("val")
    names = sorted(train)
    a, stranger = names[0], names[-1]
    frames = scenario.write_frames(tmp_path / "frames", scenario.walk(val[a][0], 12) + scenario.empty(20)
                                   + scenario.walk(val[stranger][0], 15) + scenario.empty(5))
    s = scenario.settings(tmp_path, frames, mqtt=mqtt_broker.settings().model_dump())
    with Gallery(s.gallery.path, pipe.model_hash) as g:
        enroll_files(pipe, g, a, train[a][:6])
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(s.model_dump()))
    sub = mqtt_subscriber(mqtt_broker, "#")
    t = Topics.of(s.mqtt)
    d = Daemon(s, pin_factory=MockFactory())
    with Running(d, stop_when_exhausted=False) as run:
        assert scenario.wait_until(lambda: run.kinds(ev.RECOGNIZED) and run.kinds(ev.UNKNOWN), 120)
        sub.wait_until(lambda c: len(c.json(t.event)) >= 2, timeout=15)
        # the scores exist (the audit log keeps them) ...
        scores = [float(e.private["score"]) for e in run.events if "score" in e.private]
        assert scores, "the decisions carried no score at all"
        # ... but not in the control socket's status, nor in `lock status` (text and JSON)
        reply = list(request(s.control.socket, {"cmd": "status"}))[-1]
        assert reply["ok"] and not leaks(reply, scores), leaks(reply, scores)
        for extra in ([], ["--json"]):
            r = subprocess.run([sys.executable, "-m", "lock", "--config", str(cfg), "status", *extra],
                               capture_output=True, text=True, timeout=60, cwd=str(ROOT))
            assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
            text = r.stdout
            if extra:
                assert json.loads(text)["people"] == 1 and not leaks(text, scores), (leaks(text, scores), text)
            else:
                assert "people: 1" in text, text
                assert not [w for w in SCOREISH if w in text.lower()], text
                assert not leaks({"numbers": [float(x) for x in _words(text) if _is_number(x)]}, scores), text
        # the audit log has them, and only its owner can read it (the WAL and shared memory too)
        for suffix in ("", "-wal", "-shm"):
            p = Path(s.audit.path + suffix)
            assert p.exists(), f"{p} missing while the daemon runs"
            assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, f"{p} is mode {stat.S_IMODE(p.stat().st_mode):o}"
        rows = d.audit.recent(50)
        assert any(r.kind == ev.RECOGNIZED and "score" in r.private for r in rows)
    payloads = [(topic, p) for topic, p, _ in sub.messages]
    assert any(topic == t.event for topic, _ in payloads)
    for topic, p in payloads:
        assert not leaks(p, scores), (topic, p, leaks(p, scores))
    # the check itself sees a score when one is there (what publish_scores: true would send)
    recognized = run.kinds(ev.RECOGNIZED)[0]
    assert leaks(json.dumps(recognized.public_dict(include_private=True)), scores)


def test_audit_log_files_are_private_whatever_was_there(tmp_path, monkeypatch):
    """Created 0600 under a permissive umask; stale 0644 files from elsewhere are made 0600 too."""
    old = os.umask(0)
    try:
        fresh = AuditLog(AuditSettings(path=str(tmp_path / "fresh" / "audit.db")))
        assert fresh.open()
        fresh.record(ev.Event.now(ev.RECOGNIZED, "someone", private={"score": 0.9}))
        stale_path = tmp_path / "stale" / "audit.db"
        stale_path.parent.mkdir()
        for suffix in ("", "-wal", "-shm"):
            p = Path(f"{stale_path}{suffix}")
            p.write_bytes(b"")
            os.chmod(p, 0o644)
        stale = AuditLog(AuditSettings(path=str(stale_path)))
        assert stale.open()
        stale.record(ev.Event.now(ev.RECOGNIZED, "someone", private={"score": 0.9}))
        for log_ in (fresh, stale):
            for suffix in ("", "-wal", "-shm"):
                p = Path(f"{log_.path}{suffix}")
                assert p.exists() and stat.S_IMODE(p.stat().st_mode) == 0o600, (p, oct(p.stat().st_mode))
        fresh.close()
        stale.close()
    finally:
        os.umask(old)
