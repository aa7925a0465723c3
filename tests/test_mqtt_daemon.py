"""The daemon and Home Assistant over a real mosquitto: events out, commands in, outages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from gpiozero.pins.mock import MockFactory

from lock import events as ev
from lock.daemon import Daemon
from lock.enroll import enroll_files
from lock.gallery import Gallery
from lock.mqtt import Topics
from lock.vision.pipeline import FacePipeline
from tests import scenario
from tests.scenario import Running, active_spans, relay_history


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return FacePipeline(scenario.settings(tmp_path_factory.mktemp("p"))).open()


@pytest.fixture
def people(photos):
    train, val = photos.celebrities("train"), photos.celebrities("val")
    names = sorted(train)
    return {"a": names[0], "stranger": names[-1], "train": train, "val": val}


def mqtt_settings(tmp_path, broker, frames, **mqtt):
    m = broker.settings(**mqtt).model_dump()
    return scenario.settings(tmp_path, frames, mqtt=m)


def enroll(pipe, s, name, photos):
    with Gallery(s.gallery.path, pipe.model_hash) as g:
        enroll_files(pipe, g, name, photos)


def test_walkups_reach_home_assistant(tmp_path, pipe, people, mqtt_broker, mqtt_subscriber):
    a, stranger = people["a"], people["stranger"]
    frames = scenario.write_frames(tmp_path / "frames",
                                   scenario.walk(people["val"][a][0], 12) + scenario.empty(20)
                                   + scenario.walk(people["val"][stranger][0], 15) + scenario.empty(5))
    s = mqtt_settings(tmp_path, mqtt_broker, frames)
    enroll(pipe, s, a, people["train"][a][:6])
    t = Topics.of(s.mqtt)
    sub = mqtt_subscriber(mqtt_broker, "#")
    with Running(Daemon(s, pin_factory=MockFactory())) as run:
        run.wait()
        sub.wait_until(lambda c: len(c.json(t.event)) >= 2, timeout=15)
        assert scenario.wait_until(lambda: b"LOCKED" in sub.payloads(t.lock_state)[1:], 5)
    states = [p.decode() for p in sub.payloads(t.lock_state)]
    assert "UNLOCKED" in states and "LOCKED" in states[states.index("UNLOCKED"):]
    events = sub.json(t.event)
    recognized = [e for e in events if e["event_type"] == "recognized"]
    unknown = [e for e in events if e["event_type"] == "unknown"]
    assert [e["person"] for e in recognized] == [a]
    assert len(unknown) == 1
    assert all("score" not in json.dumps(e) for e in events), "scores never leave the device by default"
    configs = [topic for topic, _, _ in sub.messages if topic.endswith("/config")]
    assert any("/lock/" in c for c in configs) and any("/event/" in c for c in configs)
    assert sub.payloads(t.availability)[-1] == b"offline"  # clean stop


def test_remote_commands_retained_and_wrong_code(tmp_path, mqtt_broker, mqtt_subscriber, monkeypatch):
    frames = scenario.write_frames(tmp_path / "frames", scenario.empty(3))
    monkeypatch.setenv("LOCK_TEST_CODE", "4321")
    s = mqtt_settings(tmp_path, mqtt_broker, frames, code_env="LOCK_TEST_CODE")
    s = s.model_copy(update={"camera": s.camera.model_copy(update={"loop": True})})
    t = Topics.of(s.mqtt)
    sub = mqtt_subscriber(mqtt_broker, "#")
    sub.publish(t.lock_command, json.dumps({"action": "UNLOCK", "code": "4321"}), retain=True)
    sub.publish(t.lock_state, "UNLOCKED", retain=True)   # left by a lock killed mid-pulse
    factory = MockFactory()
    d = Daemon(s, pin_factory=factory)
    with Running(d, stop_when_exhausted=False) as run:
        assert scenario.wait_until(lambda: d.mqtt.connected, 10)
        time.sleep(1.0)
        assert active_spans(relay_history(factory)) == [], "a retained UNLOCK must not unlock"
        assert sub.payloads(t.lock_state)[-1] == b"LOCKED", "the real state replaces a stale retained one"
        late = mqtt_subscriber(mqtt_broker, t.lock_command)               # the retained command was cleared
        time.sleep(0.5)
        assert late.payloads(t.lock_command) == []
        sub.publish(t.lock_command, json.dumps({"action": "UNLOCK", "code": "0000"}))
        assert scenario.wait_until(lambda: run.kinds(ev.DENIED), 5)
        assert active_spans(relay_history(factory)) == []
        assert run.kinds(ev.DENIED)[0].detail.get("reason") == "bad_code"
        sub.publish(t.lock_command, json.dumps({"action": "UNLOCK", "code": "4321"}))
        assert scenario.wait_until(lambda: len(active_spans(relay_history(factory))) == 1, 5)
        assert scenario.wait_until(lambda: run.kinds(ev.REMOTE_UNLOCK), 5)


KILL_HARNESS = """
import sys
from gpiozero.pins.mock import MockFactory
from lock import config
from lock.daemon import Daemon
d = Daemon(config.load(sys.argv[1]), pin_factory=MockFactory())
d.open()
d.run()
"""


def test_sigkill_leaves_the_last_will(tmp_path, mqtt_broker, mqtt_subscriber):
    frames = scenario.write_frames(tmp_path / "frames", scenario.empty(3))
    s = mqtt_settings(tmp_path, mqtt_broker, frames, keepalive=5)
    s = s.model_copy(update={"camera": s.camera.model_copy(update={"loop": True})})
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(s.model_dump()))
    t = Topics.of(s.mqtt)
    sub = mqtt_subscriber(mqtt_broker, t.availability)
    proc = subprocess.Popen([sys.executable, "-c", KILL_HARNESS, str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        sub.wait_until(lambda c: b"online" in c.payloads(t.availability), timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        sub.wait_until(lambda c: c.payloads(t.availability)[-1:] == [b"offline"], timeout=20)
    finally:
        proc.kill()


def test_broker_outage_loses_no_event(tmp_path, pipe, people, mqtt_broker_factory, mqtt_subscriber):
    broker = mqtt_broker_factory(persistent=True)
    a = people["a"]
    frames = scenario.write_frames(tmp_path / "frames", scenario.empty(10) + scenario.walk(people["val"][a][0], 12)
                                   + scenario.empty(5))
    s = mqtt_settings(tmp_path, broker, frames, retry_max_seconds=2)
    enroll(pipe, s, a, people["train"][a][:6])
    t = Topics.of(s.mqtt)
    sub = mqtt_subscriber(broker, t.event, client_id="outage-watcher")  # persistent session
    factory = MockFactory()
    d = Daemon(s, pin_factory=factory)
    d.open()
    try:
        assert scenario.wait_until(lambda: d.mqtt.connected, 10)
        broker.stop()
        assert scenario.wait_until(lambda: not d.mqtt.connected, 10)
        events = []
        d.bus.subscribe(events.append)
        d.run(stop_when_exhausted=True)
        recognized = [e for e in events if e.kind == ev.RECOGNIZED]
        assert [e.person for e in recognized] == [a]
        assert len(active_spans(relay_history(factory))) == 1, "the door works while the broker is away"
        time.sleep(1.0)
        broker.start()
        sub.wait_until(lambda c: any(e["event_type"] == "recognized" for e in c.json(t.event)), timeout=30)
        got = [e for e in sub.json(t.event) if e["event_type"] == "recognized"][0]
        assert got["time"] == pytest.approx(recognized[0].time, abs=1e-6)
        assert got["person"] == a
    finally:
        d.close()


def test_two_locks_set_up_from_one_config_open_neither_door(tmp_path, mqtt_broker, mqtt_subscriber, monkeypatch):
    """A second lock from a copy of the first one's config (client_id and device_name changed, base_topic
    not): Home Assistant's UNLOCK for the front door opened the back door too.  Both now refuse remote
    commands, say why in `lock status`, and `lock mqtt-test` names the problem."""
    monkeypatch.setenv("LOCK_TEST_CODE", "4321")
    daemons, factories, configs = [], [], []
    for name in ("front", "back"):
        frames = scenario.write_frames(tmp_path / name / "frames", scenario.empty(3))
        s = mqtt_settings(tmp_path / name, mqtt_broker, frames, code_env="LOCK_TEST_CODE", client_id=name)
        s = s.model_copy(update={"camera": s.camera.model_copy(update={"loop": True})})
        cfg = tmp_path / name / "config.yaml"
        cfg.write_text(yaml.safe_dump(s.model_dump()))
        configs.append(cfg)
        factories.append(MockFactory())
        daemons.append(Daemon(s, pin_factory=factories[-1]))
    t = Topics.of(daemons[0].settings.mqtt)
    sub = mqtt_subscriber(mqtt_broker, "none")
    with Running(daemons[0], stop_when_exhausted=False) as front, \
            Running(daemons[1], stop_when_exhausted=False):
        assert scenario.wait_until(lambda: all(d.status()["mqtt_conflict"] for d in daemons), 10)
        sub.publish(t.lock_command, json.dumps({"action": "UNLOCK", "code": "4321"}))
        assert scenario.wait_until(lambda: front.kinds(ev.DENIED), 5)
        time.sleep(0.5)
        assert [active_spans(relay_history(f)) for f in factories] == [[], []]
        assert {e.detail.get("reason") for e in front.kinds(ev.DENIED)} == {"shared_topics"}
        r = subprocess.run([sys.executable, "-m", "lock", "--config", str(configs[0]), "mqtt-test"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "another lock" in r.stdout and "mqtt.base_topic" in r.stdout, r.stdout
        assert "the running lock says" in r.stdout


def test_a_reload_puts_a_changed_code_in_force(tmp_path, mqtt_broker, mqtt_subscriber):
    """The code file was read once, at start: after the owner changed a leaked code and ran `systemctl reload
    lock`, the old code still opened the door and the new one was refused (adversarial review)."""
    frames = scenario.write_frames(tmp_path / "frames", scenario.empty(3))
    code = tmp_path / "code"
    code.write_text("1111\n")
    code.chmod(0o600)
    s = scenario.settings(tmp_path, frames, camera={"loop": True},
                          mqtt=mqtt_broker.settings(code_file=str(code)).model_dump())
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(s.model_dump(mode="json")))
    t = Topics.of(s.mqtt)
    sub = mqtt_subscriber(mqtt_broker, "#")
    factory = MockFactory()
    d = Daemon(s, config_path=str(cfg), pin_factory=factory)
    with Running(d, stop_when_exhausted=False) as run:
        assert scenario.wait_until(lambda: d.mqtt.connected, 10)
        code.write_text("9876\n")                 # the owner changes the leaked code...
        cfg.write_text("camera: [")               # (with config.yaml half-edited just then)
        d._reload.set()                           # ...and reloads (SIGHUP)
        assert scenario.wait_until(lambda: not d._reload.is_set(), 5)
        sub.publish(t.lock_command, json.dumps({"action": "UNLOCK", "code": "1111"}))
        assert scenario.wait_until(lambda: any(e.detail.get("reason") == "bad_code"
                                               for e in run.kinds(ev.DENIED)), 5)
        assert active_spans(relay_history(factory)) == [] and not run.kinds(ev.REMOTE_UNLOCK)
        sub.publish(t.lock_command, json.dumps({"action": "UNLOCK", "code": "9876"}))
        assert scenario.wait_until(lambda: run.kinds(ev.REMOTE_UNLOCK), 5)
