"""The demo (`make demo`, `lock demo --config FILE`): the real pipeline on a recording, mock GPIO."""

from __future__ import annotations

import json

import yaml

from lock import config
from lock.config import REPO_ROOT
from lock.demo import demo


def test_the_demo_lets_the_member_in_and_leaves_a_live_lock_on_the_broker_alone(tmp_path, photos, mqtt_broker,
                                                                                    mqtt_subscriber, capsys):
    """`lock demo --config` with the live lock's file used the live lock's MQTT client id and topics: the
    broker dropped the live lock's connection, and Home Assistant took the demo's events for the door's."""
    data = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    # the shipped file leaves the relay's polarity blank: the demo's relay is a mock, so it needs none
    data["mqtt"].update(enabled=True, host=mqtt_broker.host, port=mqtt_broker.port, password_env=None,
                        allow_no_code=True)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(data))
    live = config.load(cfg, door=False).mqtt
    seen = mqtt_subscriber(mqtt_broker, "#")
    assert demo(str(cfg), photos=str(photos.root)) == 0
    out = capsys.readouterr().out
    assert "demo result: as expected" in out
    topics = {t for t, _, _ in seen.messages}
    assert not [t for t in topics if t.startswith(live.base_topic + "/")], topics
    events = [json.loads(p) for t, p, _ in seen.messages if t == f"{live.base_topic}_demo/event"]
    assert [e["event_type"] for e in events if e["event_type"] in ("recognized", "unknown")][:1] == ["recognized"]
    discovery = [json.loads(p) for t, p, _ in seen.messages if t.startswith(live.discovery_prefix + "/") and p]
    assert discovery and all(d["device"]["name"] == f"{live.device_name} (demo)" for d in discovery)


def test_the_demo_keeps_its_recording_for_lock_run(tmp_path, photos, capsys):
    """A new user had no recorded frames to run `lock run` on (the demo removed its own): --keep DIR keeps
    them, with the gallery, and the daemon on them lets the member in as the demo did."""
    from gpiozero.pins.mock import MockFactory

    from lock import events as ev
    from lock.daemon import Daemon
    from tests import scenario
    kept = tmp_path / "kept"
    assert demo(None, photos=str(photos.root), keep=str(kept)) == 0
    out = capsys.readouterr().out
    assert f"kept in {kept}" in out and "camera.path: " + str(kept / "frames") in out
    assert len(list((kept / "frames").glob("*.jpg"))) == 80 and (kept / "gallery.db").is_file()
    assert demo(None, photos=str(photos.root), keep=str(kept)) == 2          # never over an earlier one
    assert "the folder is not empty" in capsys.readouterr().err
    assert demo(None, photos=str(photos.root), keep=str(kept / "gallery.db")) == 2
    assert "not a folder" in capsys.readouterr().err
    s = scenario.settings(tmp_path / "run", kept / "frames", camera={"fps": 10},
                          gallery={"path": str(kept / "gallery.db")})
    (tmp_path / "run").mkdir()
    d = Daemon(s, pin_factory=MockFactory())
    with scenario.Running(d) as run:
        run.wait()
    assert len(run.kinds(ev.RECOGNIZED)) == 1 and len(run.kinds(ev.UNKNOWN)) >= 1
