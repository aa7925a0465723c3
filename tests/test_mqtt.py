"""The MQTT bridge against a real mosquitto (tests/plugins/broker.py)."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from lock import events
from lock.events import Event, EventBus
from lock.mqtt import (CODE_LOCKOUT_AFTER, CODE_LOCKOUT_MAX_SECONDS, CODE_LOCKOUT_SECONDS, CONFLICT_SECONDS,
                       MAX_COMMAND_BYTES, MqttBridge, Topics, check, discovery_messages)
from tests.plugins.broker import make_test_ca


class RecordingHandler:
    """The daemon's side of the commands: records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self._lock = threading.Lock()

    def _add(self, name: str, arg: object) -> None:
        with self._lock:
            self.calls.append((name, arg))

    def unlock(self, source: str) -> None:
        self._add("unlock", source)

    def open(self, source: str) -> None:
        self._add("open", source)

    def lock(self, source: str) -> None:
        self._add("lock", source)

    def set_face_unlock(self, enabled: bool) -> None:
        self._add("face_unlock", enabled)


class CountingBridge(MqttBridge):
    """Counts the commands it has finished handling, so a test knows a refused command was seen (other
    locks' hellos on <base>/instance are not counted)."""

    handled = 0

    def _handle_message(self, message) -> None:
        try:
            super()._handle_message(message)
        finally:
            if message.topic in (self.topics.lock_command, self.topics.switch_command):
                self.handled += 1


def send(publisher, bridge: CountingBridge, payloads, topic: str = "face_lock/lock/set") -> None:
    """Publish ``payloads`` in order and wait until the bridge has handled every one of them."""
    target = bridge.handled + len(payloads)
    for payload in payloads:
        publisher.publish(topic, payload)
    wait(lambda: bridge.handled >= target)


def wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


@pytest.fixture
def bus_events():
    """A bus and the list of everything published on it."""
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(seen.append)
    return bus, seen


@pytest.fixture
def make_bridge(bus_events):
    bridges: list[MqttBridge] = []

    def make(settings, handler=None, start=True, cls=MqttBridge, **kwargs) -> MqttBridge:
        bridge = cls(settings, bus_events[0], handler or RecordingHandler(), **kwargs)
        bridges.append(bridge)
        if start:
            bridge.start()
            wait(lambda: bridge.connected)
        return bridge

    yield make
    for bridge in bridges:
        bridge.stop(flush_seconds=0.5)


# ----------------------------------------------------------------------------- discovery (pure)

def test_discovery_messages_are_complete(mqtt_broker):
    settings = mqtt_broker.settings()
    msgs = dict(discovery_messages(settings, has_contact=False))
    components = sorted(topic.split("/")[1] for topic in msgs)
    assert components == ["binary_sensor", "event", "lock", "sensor", "sensor", "sensor", "switch"]
    unique = {p["unique_id"] for p in msgs.values()}
    assert len(unique) == len(msgs)
    for topic, payload in msgs.items():
        assert topic.startswith("homeassistant/") and topic.endswith("/config")
        assert payload["device"]["identifiers"] and payload["device"]["name"] == "Front door"
        assert payload["availability"][0]["topic"] == "face_lock/availability"
        assert "state_topic" in payload or "command_topic" in payload
    lock = next(p for t, p in msgs.items() if "/lock/" in t)
    assert lock["command_topic"] == "face_lock/lock/set" and lock["payload_open"] == "OPEN"
    assert lock["state_jammed"] == "JAMMED" and "code_format" not in lock
    event = next(p for t, p in msgs.items() if "/event/" in t)
    assert set(event["event_types"]) == set(events.DOOR_EVENTS)
    diag = [p for p in msgs.values() if p.get("entity_category") == "diagnostic"]
    assert len(diag) == 3
    camera = next(p for t, p in msgs.items() if t.endswith("/camera/config"))
    assert camera["device_class"] == "problem" and camera["state_topic"] == "face_lock/stats"

    full = dict(discovery_messages(settings.model_copy(update={"unknown_image": True, "code_env": "X"}), True))
    door = next(p for t, p in full.items() if t.endswith("/door/config"))
    assert door["device_class"] == "door"
    image = next(p for t, p in full.items() if "/image/" in t)
    assert image["content_type"] == "image/jpeg" and image["image_topic"] == "face_lock/unknown_face"
    lock = next(p for t, p in full.items() if "/lock/" in t)
    assert "code_format" in lock and "code" in lock["command_template"]


def test_unique_ids_are_stable_and_distinct_per_device(mqtt_broker):
    a = discovery_messages(mqtt_broker.settings(), False)
    assert a == discovery_messages(mqtt_broker.settings(), False)
    b = discovery_messages(mqtt_broker.settings(base_topic="back_door"), False)
    assert {p["unique_id"] for _, p in a}.isdisjoint(p["unique_id"] for _, p in b)


# ----------------------------------------------------------------------------- on a broker

def test_discovery_and_availability_are_published_retained(mqtt_broker, mqtt_subscriber, make_bridge):
    settings = mqtt_broker.settings(unknown_image=True)
    bridge = make_bridge(settings, has_contact=True)
    expected = [topic for topic, _ in discovery_messages(settings, has_contact=True)]
    late = mqtt_subscriber(mqtt_broker)  # joins after: sees retained copies only
    late.wait_until(lambda c: all(c.on(t) for t in expected + ["face_lock/availability"]))
    for topic in expected:
        # a copy may also come live (flag cleared) when the late subscriber joins while discovery is still going out
        copies = late.on(topic)
        assert any(retained for _, _, retained in copies) and len({p for _, p, _ in copies}) == 1, copies
        config = json.loads(copies[0][1])
        assert config["unique_id"] and config["device"] and config["availability"]
    assert late.on("face_lock/availability")[-1][1:] == (b"online", True)

    bridge.stop()
    assert not bridge.connected
    after = mqtt_subscriber(mqtt_broker, "face_lock/availability")
    after.wait_for("face_lock/availability")
    assert after.on("face_lock/availability")[-1][1:] == (b"offline", True)


def test_entities_switched_off_are_removed_from_home_assistant(mqtt_broker, mqtt_subscriber, make_bridge):
    """A run with the door contact and the unknown-face image, then one without: their configs go."""
    settings = mqtt_broker.settings(unknown_image=True)
    first = make_bridge(settings, has_contact=True)
    gone = [t for t, _ in discovery_messages(settings, True) if t.endswith("/door/config") or "/image/" in t]
    assert len(gone) == 2
    mqtt_subscriber(mqtt_broker).wait_until(lambda c: all(c.on(t) for t in gone))   # retained on the broker
    first.stop()
    plain = mqtt_broker.settings()
    make_bridge(plain, has_contact=False)
    watch = mqtt_subscriber(mqtt_broker, "homeassistant/#")
    watch.wait_until(lambda c: all(c.on(t) for t, _ in discovery_messages(plain, False)))
    time.sleep(0.5)
    assert all(not watch.on(t) for t in gone), "switched-off entities still retained"


def test_discovery_resent_when_home_assistant_comes_online(mqtt_broker, mqtt_subscriber, make_bridge):
    make_bridge(mqtt_broker.settings())
    sub = mqtt_subscriber(mqtt_broker, "homeassistant/lock/#")
    sub.wait_until(lambda c: len(c.messages) == 1)
    sub.publish("homeassistant/status", "online")
    sub.wait_until(lambda c: len(c.messages) == 2)


def test_a_flood_of_online_does_not_hold_back_events(mqtt_broker, mqtt_subscriber, make_bridge, bus_events):
    """Any client may publish "online": discovery goes out again at most every REDISCOVERY_SECONDS."""
    from lock.mqtt import REDISCOVERY_SECONDS
    bus, _ = bus_events
    make_bridge(mqtt_broker.settings())
    disc = mqtt_subscriber(mqtt_broker, "homeassistant/lock/#")
    got = mqtt_subscriber(mqtt_broker, "face_lock/event")
    disc.wait_until(lambda c: len(c.messages) == 1)
    flooder = mqtt_subscriber(mqtt_broker, "nothing/here")
    stop = threading.Event()

    def flood():
        while not stop.is_set():
            for _ in range(200):
                flooder.client.publish("homeassistant/status", "online", qos=0)
            time.sleep(0.01)
    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        for k in range(5):
            bus.publish(Event(events.EXIT_BUTTON, time=float(k)))
        got.wait_for("face_lock/event", 5, timeout=10)
        took = time.monotonic() - started
    finally:
        stop.set()
        t.join()
    assert took < 3.0
    flood_seconds = time.monotonic() - started + 0.5
    assert len(disc.messages) <= 2 + flood_seconds / REDISCOVERY_SECONDS, len(disc.messages)


def test_events_keep_original_time_and_hide_scores(mqtt_broker, mqtt_subscriber, make_bridge, bus_events):
    bus, _ = bus_events
    make_bridge(mqtt_broker.settings())
    sub = mqtt_subscriber(mqtt_broker, "face_lock/#")
    event = Event(events.RECOGNIZED, time=1000.5, person="resident", detail={"votes": 2}, private={"score": 0.91})
    bus.publish(event)
    (_, payload, retained), = sub.wait_for("face_lock/event")
    assert json.loads(payload) == {"event_type": "recognized", "time": 1000.5, "person": "resident", "votes": 2,
                                   "id": event.uid}
    assert not retained
    assert sub.wait_for("face_lock/last_person")[0][1] == b"resident"

    bus.publish(Event(events.LOCK_STATE, time=1001.0, detail={"state": "UNLOCKED"}))
    bus.publish(Event(events.FACE_UNLOCK, time=1002.0, detail={"enabled": False}))
    bus.publish(Event(events.STATS, time=1003.0, detail={"fps": 9.5, "latency_ms": 80.0}))
    assert json.loads(sub.wait_for("face_lock/stats")[0][1])["fps"] == 9.5
    late = mqtt_subscriber(mqtt_broker, "face_lock/#")  # states are retained: a late subscriber gets them
    late.wait_until(lambda c: len(c.messages) >= 4)
    assert late.on("face_lock/lock/state")[0][1:] == (b"UNLOCKED", True)
    assert late.on("face_lock/face_unlock/state")[0][1:] == (b"OFF", True)
    assert late.on("face_lock/last_person")[0][1:] == (b"resident", True)
    assert late.on("face_lock/event") == []


def test_scores_published_only_when_turned_on(mqtt_broker, mqtt_subscriber, make_bridge, bus_events):
    bus, _ = bus_events
    make_bridge(mqtt_broker.settings(publish_scores=True))
    sub = mqtt_subscriber(mqtt_broker, "face_lock/event")
    bus.publish(Event(events.UNKNOWN, time=5.0, private={"score": 0.2}))
    assert json.loads(sub.wait_for("face_lock/event")[0][1])["score"] == 0.2


def test_unlock_command_calls_the_handler(mqtt_broker, mqtt_subscriber, make_bridge):
    handler = RecordingHandler()
    make_bridge(mqtt_broker.settings(), handler)
    sub = mqtt_subscriber(mqtt_broker, "none")
    sub.publish("face_lock/lock/set", "UNLOCK")
    sub.publish("face_lock/lock/set", "open")
    sub.publish("face_lock/face_unlock/set", "OFF")
    sub.publish("face_lock/face_unlock/set", "ON")   # mqtt.remote_face_unlock_on is true by default
    wait(lambda: len(handler.calls) == 4)
    assert handler.calls == [("unlock", "mqtt"), ("open", "mqtt"), ("face_unlock", False), ("face_unlock", True)]


def test_retained_unlock_is_ignored(mqtt_broker, mqtt_subscriber, make_bridge):
    sub = mqtt_subscriber(mqtt_broker, "none")
    sub.publish("face_lock/lock/set", "UNLOCK", retain=True)
    handler = RecordingHandler()
    make_bridge(mqtt_broker.settings(), handler)
    sub.publish("face_lock/lock/set", "LOCK")  # same topic, so it arrives after the retained one
    wait(lambda: handler.calls)
    time.sleep(0.2)
    assert handler.calls == [("lock", "mqtt")]


def test_a_retained_unlock_published_while_connected_is_not_obeyed_either(mqtt_broker, mqtt_subscriber,
                                                                          make_bridge):
    """MQTT 5 Retain As Published: the flag reaches the lock on live delivery too; the command is cleared."""
    handler = RecordingHandler()
    make_bridge(mqtt_broker.settings(), handler)
    sub = mqtt_subscriber(mqtt_broker, "face_lock/lock/set")
    sub.publish("face_lock/lock/set", "UNLOCK", retain=True)
    sub.wait_until(lambda c: c.payloads("face_lock/lock/set")[-1:] == [b""])   # cleared by the lock
    sub.publish("face_lock/lock/set", "LOCK")
    wait(lambda: handler.calls)
    time.sleep(0.2)
    assert handler.calls == [("lock", "mqtt")]
    late = mqtt_subscriber(mqtt_broker, "face_lock/lock/set")   # nothing retained is left on the broker
    time.sleep(0.5)
    assert late.on("face_lock/lock/set") == []


def test_a_huge_message_never_reaches_the_lock(mqtt_broker, mqtt_subscriber, make_bridge, caplog):
    """The lock's MQTT 5 Maximum Packet Size: the broker drops an 8 MB command instead of sending it."""
    handler = RecordingHandler()
    bridge = make_bridge(mqtt_broker.settings(), handler)
    sub = mqtt_subscriber(mqtt_broker, "none")
    with caplog.at_level("WARNING", logger="lock.mqtt"):
        sub.publish("face_lock/lock/set", b"U" * (8 << 20))
        sub.publish("face_lock/lock/set", "U" * (MAX_COMMAND_BYTES + 1))   # small enough to arrive: refused
        sub.publish("face_lock/lock/set", "LOCK")
        wait(lambda: handler.calls)
        time.sleep(0.3)
    assert handler.calls == [("lock", "mqtt")] and bridge.connected
    sizes = [r.getMessage() for r in caplog.records if "-byte command" in r.getMessage()]
    assert len(sizes) == 1 and f"{MAX_COMMAND_BYTES + 1}-byte" in sizes[0], sizes   # the 8 MB never came


def test_code_is_required_when_configured(mqtt_broker, mqtt_subscriber, make_bridge, bus_events, monkeypatch):
    monkeypatch.setenv("LOCK_TEST_CODE", "4321")
    _, seen = bus_events
    handler = RecordingHandler()
    make_bridge(mqtt_broker.settings(code_env="LOCK_TEST_CODE"), handler)
    sub = mqtt_subscriber(mqtt_broker, "none")
    sub.publish("face_lock/lock/set", json.dumps({"action": "UNLOCK", "code": "1234"}))
    sub.publish("face_lock/lock/set", "UNLOCK")  # no code at all
    wait(lambda: len([e for e in seen if e.kind == events.DENIED]) == 2)
    assert handler.calls == []
    assert all(e.detail["reason"] == "bad_code" for e in seen if e.kind == events.DENIED)
    sub.publish("face_lock/lock/set", json.dumps({"action": "UNLOCK", "code": "4321"}))
    wait(lambda: handler.calls)
    assert handler.calls == [("unlock", "mqtt")]


CODE = "4321"
RIGHT = json.dumps({"action": "LOCK", "code": CODE})
WRONG = [json.dumps({"action": "UNLOCK", "code": "0000"}), "UNLOCK", json.dumps({"action": "OPEN", "code": "1234"}),
         json.dumps({"action": "LOCK", "code": CODE + "0"}), json.dumps({"action": "UNLOCK"})]   # wrong or missing


def lockouts(seen) -> list:
    return [e.detail["seconds"] for e in seen if e.kind == events.DENIED and e.detail["reason"] == "code_lockout"]


@pytest.fixture
def coded(mqtt_broker, mqtt_subscriber, make_bridge, monkeypatch):
    """A bridge whose commands need CODE, with a monotonic clock the test moves: (bridge, handler, publisher, now)."""
    monkeypatch.setenv("LOCK_TEST_CODE", CODE)
    now = [1000.0]
    handler = RecordingHandler()
    bridge = make_bridge(mqtt_broker.settings(code_env="LOCK_TEST_CODE", commands_per_minute=200), handler,
                         cls=CountingBridge, monotonic=lambda: now[0])
    return bridge, handler, mqtt_subscriber(mqtt_broker, "none"), now


def test_wrong_codes_lock_remote_commands_out_for_a_doubling_time(coded, bus_events, caplog):
    """5 wrong or missing codes in a row: every lock command is refused, even with the right code, for
    60 s, then 120 s after the next 5, and so on up to an hour."""
    assert (CODE_LOCKOUT_AFTER, CODE_LOCKOUT_SECONDS, CODE_LOCKOUT_MAX_SECONDS) == (5, 60, 3600)
    bridge, handler, ha, now = coded
    _, seen = bus_events
    expected = [60, 120, 240, 480, 960, 1920, 3600, 3600]
    for k, seconds in enumerate(expected):
        with caplog.at_level("WARNING", logger="lock.mqtt"):
            send(ha, bridge, WRONG[:4])
            assert lockouts(seen) == expected[:k], "a lockout before the 5th wrong code"
            send(ha, bridge, WRONG[4:])
        assert lockouts(seen) == expected[:k + 1]
        assert any(f"refused for {seconds} s" in r.getMessage() for r in caplog.records)
        caplog.clear()
        send(ha, bridge, [RIGHT])            # the right code during the lockout: refused, not even checked
        now[0] += seconds - 1
        send(ha, bridge, [RIGHT])            # a second before the end: still refused
        assert handler.calls == [], seconds
        assert bridge.code_lockout_remaining == pytest.approx(1.0)   # lock status shows it
        now[0] += 1.5
    lockout_events = [e for e in seen if e.kind == events.DENIED and e.detail["reason"] == "code_lockout"]
    assert all(e.detail["source"] == "mqtt" for e in lockout_events)
    bad_code = [e for e in seen if e.kind == events.DENIED and e.detail["reason"] == "bad_code"]
    assert len(bad_code) == 5 * len(expected), "commands refused during a lockout are not code checks"
    # each lockout's first refused command is in the audit log, once: someone kept trying, not a flood
    locked_out = [e for e in seen if e.kind == events.DENIED and e.detail["reason"] == "locked_out"]
    assert [(e.detail["action"], e.detail["source"]) for e in locked_out] == [("lock", "mqtt")] * len(expected)
    assert [e.detail["seconds_left"] for e in locked_out] == expected
    send(ha, bridge, [RIGHT])                # the last lockout is over
    assert handler.calls == [("lock", "mqtt")]


def test_a_right_code_starts_the_count_and_the_doubling_afresh(coded, bus_events):
    bridge, handler, ha, now = coded
    _, seen = bus_events
    send(ha, bridge, WRONG[:4] + [RIGHT] + WRONG[:4] + [RIGHT])   # 8 wrong, never 5 in a row
    assert handler.calls == [("lock", "mqtt")] * 2 and lockouts(seen) == []
    send(ha, bridge, WRONG)
    assert lockouts(seen) == [60]
    now[0] += 61
    send(ha, bridge, [RIGHT] + WRONG)        # the right code after the lockout: the next one is 60 s again
    assert handler.calls == [("lock", "mqtt")] * 3 and lockouts(seen) == [60, 60]


def test_wrong_codes_count_even_when_junk_emptied_the_refused_budget(mqtt_broker, mqtt_subscriber, make_bridge,
                                                                     bus_events, monkeypatch):
    """The refused budget only limits logging: a guesser who drains it with junk is still counted."""
    monkeypatch.setenv("LOCK_TEST_CODE", CODE)
    _, seen = bus_events
    handler = RecordingHandler()
    bridge = make_bridge(mqtt_broker.settings(code_env="LOCK_TEST_CODE", commands_per_minute=3), handler,
                         cls=CountingBridge)
    ha = mqtt_subscriber(mqtt_broker, "none")
    send(ha, bridge, [b"EXPLODE"] * 10 + WRONG)
    assert lockouts(seen) == [60]
    assert len([e for e in seen if e.detail.get("reason") == "bad_code"]) == 0, "the budget limits the events"
    send(ha, bridge, [RIGHT])
    assert handler.calls == []


def test_junk_from_another_client_never_starves_a_correctly_coded_lock(mqtt_broker, mqtt_subscriber, make_bridge,
                                                                      monkeypatch, caplog):
    """Junk spends the refused budget only: Home Assistant's coded commands keep theirs (default rate)."""
    monkeypatch.setenv("LOCK_TEST_CODE", CODE)
    handler = RecordingHandler()
    settings = mqtt_broker.settings(code_env="LOCK_TEST_CODE")
    bridge = make_bridge(settings, handler, cls=CountingBridge)
    flooder = mqtt_subscriber(mqtt_broker, "nothing/here")
    ha = mqtt_subscriber(mqtt_broker, "none")
    junk = [("face_lock/lock/set", p) for p in (b"EXPLODE", b"{not json", b'{"action": 7}', b"\xff\xfe", b"[1, 2]",
                                                 b"   ", os.urandom(40))] + [("face_lock/face_unlock/set", b"MAYBE")]
    stop = threading.Event()

    def flood():
        while not stop.is_set():
            for topic, payload in junk:
                flooder.client.publish(topic, payload, qos=0)
            time.sleep(0.02)
    t = threading.Thread(target=flood, daemon=True)
    with caplog.at_level("WARNING", logger="lock.mqtt"):
        t.start()
        try:
            wait(lambda: bridge.handled >= 5 * settings.commands_per_minute)   # every budget long spent
            for k in range(6):
                ha.publish("face_lock/lock/set", RIGHT)
                wait(lambda: len(handler.calls) == k + 1)
        finally:
            stop.set()
            t.join()
    assert handler.calls == [("lock", "mqtt")] * 6 and bridge.connected
    warnings = [r for r in caplog.records if r.levelno == 30]
    assert len(warnings) <= 20, [r.getMessage() for r in warnings]   # a flood is a few lines, not one each


def test_face_unlock_turned_on_only_at_the_device(mqtt_broker, mqtt_subscriber, make_bridge, bus_events, caplog):
    """mqtt.remote_face_unlock_on: false: the switch's ON is refused (with an event), its OFF obeyed."""
    _, seen = bus_events
    handler = RecordingHandler()
    bridge = make_bridge(mqtt_broker.settings(remote_face_unlock_on=False), handler, cls=CountingBridge)
    ha = mqtt_subscriber(mqtt_broker, "none")
    with caplog.at_level("WARNING", logger="lock.mqtt"):
        send(ha, bridge, ["ON", "OFF", "on"], topic="face_lock/face_unlock/set")
    assert handler.calls == [("face_unlock", False)]
    denied = [e.detail for e in seen if e.kind == events.DENIED]
    assert denied == [{"reason": "face_unlock_on_local_only", "source": "mqtt"}] * 2
    said = [r.getMessage() for r in caplog.records if "remote_face_unlock_on" in r.getMessage()]
    assert len(said) == 1, said   # rate-limited: one line per WARN_EVERY_SECONDS


def test_commands_are_rate_limited(mqtt_broker, mqtt_subscriber, make_bridge):
    handler = RecordingHandler()
    make_bridge(mqtt_broker.settings(commands_per_minute=5), handler)
    sub = mqtt_subscriber(mqtt_broker, "none")
    for _ in range(100):
        sub.publish("face_lock/lock/set", "UNLOCK")
    time.sleep(0.5)
    assert 5 <= len(handler.calls) <= 6


def test_garbage_is_ignored_and_the_bridge_keeps_working(mqtt_broker, mqtt_subscriber, make_bridge):
    handler = RecordingHandler()
    bridge = make_bridge(mqtt_broker.settings(commands_per_minute=100), handler)
    sub = mqtt_subscriber(mqtt_broker, "none")
    for payload in (os.urandom(64), b"\xff\xfe\x00", b"U" * 5000, b"EXPLODE", b"[1, 2]", b'{"action": 7}',
                    b'{"action": "UNLOCK"', b"", b"   ", "UNLOCK\u0000"):
        sub.publish("face_lock/lock/set", payload)
    sub.publish("face_lock/face_unlock/set", b"MAYBE")
    sub.publish("face_lock/lock/set", "UNLOCK")
    wait(lambda: handler.calls)
    time.sleep(0.2)
    assert handler.calls == [("unlock", "mqtt")] and bridge.connected


def test_events_survive_a_broker_outage_in_order(mqtt_broker_factory, mqtt_subscriber, make_bridge, bus_events):
    bus, _ = bus_events
    broker = mqtt_broker_factory(persistent=True)
    bridge = make_bridge(broker.settings(retry_max_seconds=2))
    sub = mqtt_subscriber(broker, "face_lock/event", client_id="outage-collector")
    broker.stop()
    wait(lambda: not bridge.connected)
    for t in (1.0, 2.0, 3.0):  # the door keeps working: publishing never blocks or fails
        bus.publish(Event(events.EXIT_BUTTON, time=t))
    assert bridge.queued == 3
    broker.start()
    got = sub.wait_for("face_lock/event", 3, timeout=20)
    assert [json.loads(p)["time"] for _, p, _ in got] == [1.0, 2.0, 3.0]
    assert bridge.queued == 0 and bridge.dropped == 0


def test_quick_broker_restarts_are_not_taken_for_another_lock(mqtt_broker_factory, make_bridge):
    """Restarts within seconds of each connection: the first reconnect is refused while the broker is away,
    which a client id taken by another lock never does."""
    broker = mqtt_broker_factory()
    bridge = make_bridge(broker.settings(retry_max_seconds=1))
    for _ in range(4):
        broker.stop()
        wait(lambda: not bridge.connected)
        time.sleep(1.5)   # longer than paho's first reconnect delay: that try is refused
        broker.start()
        wait(lambda: bridge.connected, timeout=15)
    assert bridge.conflict is None


def test_events_raised_while_the_broker_is_away_survive_a_restart_of_the_daemon(
        mqtt_broker_factory, mqtt_subscriber, make_bridge, bus_events, tmp_path):
    """The audit log is the outbox: what the broker never acknowledged is sent after the restart."""
    from lock.audit import AuditLog
    from lock.config import AuditSettings
    bus, _ = bus_events
    broker = mqtt_broker_factory(persistent=True)
    settings = broker.settings(retry_max_seconds=2)
    sub = mqtt_subscriber(broker, "face_lock/event", client_id="restart-collector")
    audit = AuditLog(AuditSettings(path=str(tmp_path / "audit.db")))
    audit.open()
    bus.subscribe(audit.record)
    bridge = make_bridge(settings, outbox=audit)
    now = time.time()
    bus.publish(Event(events.EXIT_BUTTON, time=now - 5))        # delivered while connected
    sub.wait_for("face_lock/event", 1, timeout=10)
    broker.stop()
    wait(lambda: not bridge.connected)
    for dt in (4.0, 3.0, 2.0):
        bus.publish(Event(events.EXIT_BUTTON, time=now - dt))
    bus.publish(Event(events.LOCK_STATE, time=now - 1, detail={"state": "LOCKED"}))   # a state, not an event
    bridge.stop(flush_seconds=0.2)            # the daemon stops (or is killed) before the broker is back
    bus.unsubscribe(audit.record)
    audit.close()

    audit = AuditLog(AuditSettings(path=str(tmp_path / "audit.db")))   # the next run
    audit.open()
    unsent = audit.unsent(now - 3600, 100)
    assert [e.time for e in unsent] == [now - 4, now - 3, now - 2]
    broker.start()
    bridge = make_bridge(settings, outbox=audit)
    got = sub.wait_for("face_lock/event", 4, timeout=20)
    assert [json.loads(p)["time"] for _, p, _ in got] == [now - 5, now - 4, now - 3, now - 2]
    # the id a consumer can drop a repeat by is the event's own, across the restart
    assert [json.loads(p)["id"] for _, p, _ in got[1:]] == [e.uid for e in unsent]
    wait(lambda: audit.unsent(now - 3600, 100) == [])
    bridge.stop(flush_seconds=0.5)
    make_bridge(settings, outbox=audit)       # and a third run sends nothing again
    time.sleep(1.0)
    assert len(sub.on("face_lock/event")) == 4
    audit.close()


def test_an_event_the_broker_refuses_is_not_marked_delivered(mqtt_broker_factory, mqtt_subscriber, make_bridge,
                                                            bus_events, tmp_path, caplog):
    """MQTT 5 PUBACK reason codes: refused by the broker's ACL is not delivered; the bridge goes on."""
    from lock.audit import AuditLog
    from lock.config import AuditSettings
    bus, _ = bus_events
    acl = "".join(f"topic readwrite {t}\n" for t in ("face_lock/availability", "face_lock/lock/#",
                                                     "face_lock/face_unlock/#", "face_lock/last_person",
                                                     "face_lock/door/#", "face_lock/stats", "face_lock/instance",
                                                     "homeassistant/#"))
    broker = mqtt_broker_factory(acl=acl)           # everything but face_lock/event
    audit = AuditLog(AuditSettings(path=str(tmp_path / "audit.db")))
    audit.open()
    bus.subscribe(audit.record)
    sub = mqtt_subscriber(broker, "face_lock/#")
    with caplog.at_level("WARNING", logger="lock.mqtt"):
        make_bridge(broker.settings(), outbox=audit)
        bus.publish(Event(events.RECOGNIZED, time=time.time(), person="resident"))
        sub.wait_for("face_lock/last_person", 1)    # sent after the refused event: the bridge went on
        time.sleep(0.3)
    assert [e.kind for e in audit.unsent(0, 10)] == ["recognized"]
    assert sub.on("face_lock/event") == []
    assert any("refused the message on face_lock/event" in r.getMessage() for r in caplog.records)
    audit.close()


def test_a_stop_waits_for_the_acknowledgement_of_the_message_in_flight(mqtt_broker, bus_events, tmp_path):
    """A normal stop right after an event: it is acknowledged and marked, not sent again by the next run."""
    from lock.audit import AuditLog
    from lock.config import AuditSettings
    bus, _ = bus_events
    audit = AuditLog(AuditSettings(path=str(tmp_path / "audit.db")))
    audit.open()
    bus.subscribe(audit.record)

    class SlowNetwork(MqttBridge):   # the broker's acknowledgement takes 0.3 s to come back
        def _on_publish(self, *args):
            time.sleep(0.3)
            super()._on_publish(*args)

    for k in range(3):
        bridge = SlowNetwork(mqtt_broker.settings(), bus, RecordingHandler(), outbox=audit)
        bridge.start()
        wait(lambda: bridge.connected and bridge.pending == 0, timeout=30)   # discovery and states acknowledged
        bus.publish(Event(events.EXIT_BUTTON, time=time.time()))
        time.sleep(0.05)                      # handed to paho, acknowledgement on its way
        bridge.stop(flush_seconds=2.0)
        assert audit.unsent(0, 10) == [], k
    audit.close()


def test_queue_overflow_drops_the_oldest_and_counts(mqtt_broker, mqtt_subscriber, make_bridge):
    bridge = make_bridge(mqtt_broker.settings(queue_size=3), start=False)
    for t in range(5):
        bridge.on_event(Event(events.UNKNOWN, time=float(t)))
    assert bridge.dropped == 2 and bridge.queued == 3
    sub = mqtt_subscriber(mqtt_broker, "face_lock/event")
    bridge.start()
    got = sub.wait_for("face_lock/event", 3)
    assert [json.loads(p)["time"] for _, p, _ in got] == [2.0, 3.0, 4.0]


def test_bad_credentials_never_connect_and_are_not_retried_in_a_loop(mqtt_broker_factory, make_bridge, tmp_path):
    broker = mqtt_broker_factory(users={"lock": "right-password"})
    secret = tmp_path / "mqtt-password"
    secret.write_text("wrong-password\n")
    bridge = make_bridge(broker.settings(username="lock", password_file=str(secret)), start=False)
    bridge.start()
    wait(lambda: bridge.last_error is not None)
    time.sleep(3)
    assert not bridge.connected
    assert "refused" in bridge.last_error and "reason code" in bridge.last_error
    attempts = broker.log().count("Sending CONNACK")  # one refused try in 3 s, not a loop
    assert attempts == 1, broker.log()

    secret.write_text("right-password\n")
    ok, why = check(broker.settings(username="lock", password_file=str(secret)))
    assert ok, why


@pytest.fixture
def tls_broker(mqtt_broker_factory, tmp_path):
    """A mosquitto that speaks only TLS, with a certificate from a CA made for this test."""
    return mqtt_broker_factory(tls=make_test_ca(tmp_path / "pki"))


def tls_settings(broker, **tls):
    return broker.settings(tls={"enabled": True, **tls})


def test_tls_with_the_ca_file_connects_and_delivers(tls_broker, mqtt_subscriber, make_bridge, bus_events):
    sub = mqtt_subscriber(tls_broker, "face_lock/event")
    bridge = make_bridge(tls_settings(tls_broker, ca_file=str(tls_broker.tls["ca"])), install="this-install")
    assert bridge.connected and bridge.last_error is None
    bus_events[0].publish(Event(events.UNKNOWN, time=5.0))
    assert [json.loads(p)["time"] for _, p, _ in sub.wait_for("face_lock/event")] == [5.0]
    ok, why = check(tls_settings(tls_broker, ca_file=str(tls_broker.tls["ca"])), install="this-install")
    assert ok and why.endswith("with TLS"), why


@pytest.mark.parametrize("ca", ["none", "other"])
def test_tls_without_the_right_ca_is_refused_and_not_retried_in_a_loop(ca, tls_broker, make_bridge, tmp_path):
    """No CA file (the system's CAs) or another CA's file: the broker's certificate is not trusted."""
    ca_file = None if ca == "none" else str(make_test_ca(tmp_path / "other", "other")["ca"])
    settings = tls_settings(tls_broker, ca_file=ca_file)
    bridge = make_bridge(settings, start=False)
    bridge.start()
    wait(lambda: bridge.last_error is not None)
    time.sleep(3)
    assert not bridge.connected
    assert "TLS" in bridge.last_error and "certificate verify failed" in bridge.last_error, bridge.last_error
    assert "mqtt.tls" in bridge.last_error
    # one refused handshake in 3 s, not a loop: mosquitto logs the client's "unknown ca" alert for each
    assert tls_broker.log().count("alert unknown ca") == 1, tls_broker.log()
    ok, why = check(settings)
    assert not ok and "TLS" in why and "certificate verify failed" in why, why


def test_tls_client_certificate_when_the_broker_requires_one(mqtt_broker_factory, make_bridge, tmp_path):
    pki = make_test_ca(tmp_path / "pki")
    broker = mqtt_broker_factory(tls={**pki, "require_certificate": True})
    without = tls_settings(broker, ca_file=str(pki["ca"]))
    ok, why = check(without)
    assert not ok, why
    bridge = make_bridge(tls_settings(broker, ca_file=str(pki["ca"]), cert_file=str(pki["client_cert"]),
                                      key_file=str(pki["client_key"])))
    assert bridge.connected and bridge.last_error is None
    missing = tls_settings(broker, ca_file=str(pki["ca"]), cert_file=str(tmp_path / "absent.pem"))
    ok, why = check(missing)
    assert not ok and "mqtt.tls.cert_file" in why and "absent.pem" in why, why
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    ok, why = check(tls_settings(broker, ca_file=str(garbage)))
    assert not ok and "mqtt.tls.ca_file" in why and "garbage.pem" in why, why
    bad = make_bridge(missing, start=False)
    bad.start()
    wait(lambda: bad.last_error is not None)
    assert not bad.connected and "mqtt.tls.cert_file" in bad.last_error and "absent.pem" in bad.last_error


def test_plain_client_gets_nothing_from_a_tls_listener(tls_broker, make_bridge, caplog):
    ok, why = check(tls_broker.settings())
    assert not ok and "without an MQTT answer" in why and "mqtt.tls.enabled" in why, why
    # the daemon's bridge says so in its log too (once), instead of retrying in silence
    with caplog.at_level("ERROR", logger="lock.mqtt"):
        bridge = make_bridge(tls_broker.settings(retry_max_seconds=1), start=False)
        bridge.start()
        wait(lambda: bridge.last_error is not None and "without an MQTT answer" in bridge.last_error)
        time.sleep(2.5)   # more tries
    said = [r.getMessage() for r in caplog.records if "without an MQTT answer" in r.getMessage()]
    assert len(said) == 1 and "mqtt.tls.enabled" in said[0] and not bridge.connected


def test_check_reports_plainly(mqtt_broker, tmp_path):
    ok, why = check(mqtt_broker.settings())
    assert ok and "connected" in why
    closed = mqtt_broker.settings()
    mqtt_broker.stop()
    ok, why = check(closed)
    assert not ok and "cannot reach" in why and str(closed.port) in why


def test_bad_password_check(mqtt_broker_factory, tmp_path):
    broker = mqtt_broker_factory(users={"lock": "pw"})
    secret = tmp_path / "pw"
    secret.write_text("nope")
    ok, why = check(broker.settings(username="lock", password_file=str(secret)))
    assert not ok and "refused" in why
    ok, why = check(broker.settings(username="lock", password_file=str(tmp_path / "absent")))
    assert not ok and f"mqtt.password_file: cannot read {tmp_path / 'absent'}" in why, why


def test_constructor_does_no_io(bus_events):
    from lock.config import MQTTSettings
    bridge = MqttBridge(MQTTSettings(port=1, password_file="/nonexistent"), bus_events[0], RecordingHandler())
    assert not bridge.connected and bridge.last_error is None
    assert Topics.of(bridge.settings).lock_command == "face_lock/lock/set"


def test_a_tls_client_on_a_plain_listener_is_told_so(mqtt_broker):
    """It said "Connection reset by peer (is it running? are mqtt.host and mqtt.port right?)"."""
    ok, why = check(mqtt_broker.settings(tls={"enabled": True}))
    assert not ok and "mqtt.tls.enabled is true" in why and "plain" in why, why


# ----------------------------------------------------------------------------- two locks on one broker

def test_two_locks_on_the_same_topics_refuse_remote_unlocks(mqtt_broker, mqtt_subscriber, make_bridge, bus_events,
                                                            caplog):
    """A second lock set up from a copy of the first one's config (only client_id changed): Home Assistant's
    UNLOCK for one opened both doors.  Now both see each other and refuse; LOCK-safe OFF still works."""
    front_handler, back_handler = RecordingHandler(), RecordingHandler()
    clock = [1000.0]
    with caplog.at_level("ERROR", logger="lock.mqtt"):
        front = make_bridge(mqtt_broker.settings(client_id="front"), front_handler, cls=CountingBridge,
                            monotonic=lambda: clock[0])
        back = make_bridge(mqtt_broker.settings(client_id="back", device_name="Back door"), back_handler,
                           cls=CountingBridge)
        wait(lambda: front.conflict is not None and back.conflict is not None)
    assert "mqtt.base_topic = face_lock" in front.conflict and "More than one lock" in back.conflict
    assert any("another lock" in r.getMessage() for r in caplog.records)
    sub = mqtt_subscriber(mqtt_broker, "none")
    send(sub, front, ["UNLOCK", "OPEN", "LOCK"])
    send(sub, front, ["ON", "OFF"], topic="face_lock/face_unlock/set")
    wait(lambda: len(back_handler.calls) >= 2)
    # LOCK (no code configured here) and OFF only make a door safer: obeyed; UNLOCK, OPEN and ON are not
    assert front_handler.calls == back_handler.calls == [("lock", "mqtt"), ("face_unlock", False)]
    denied = [e for e in bus_events[1] if e.kind == events.DENIED]
    assert {e.detail["reason"] for e in denied} == {"shared_topics"}

    # The other lock moved to its own topics (stopped here): after CONFLICT_SECONDS unheard, commands work again.
    back.stop(flush_seconds=0.5)
    clock[0] += CONFLICT_SECONDS + 1
    assert front.conflict is None
    send(sub, front, ["UNLOCK"])
    assert front_handler.calls[-1] == ("unlock", "mqtt")


def test_locks_with_their_own_topics_do_not_disturb_each_other(mqtt_broker, mqtt_subscriber, make_bridge):
    front_handler, back_handler = RecordingHandler(), RecordingHandler()
    front = make_bridge(mqtt_broker.settings(client_id="front"), front_handler, cls=CountingBridge)
    back = make_bridge(mqtt_broker.settings(client_id="back", base_topic="back_door"), back_handler,
                       cls=CountingBridge)
    time.sleep(1.0)   # both hellos have gone round
    assert front.conflict is None and back.conflict is None
    sub = mqtt_subscriber(mqtt_broker, "none")
    send(sub, front, ["UNLOCK"])
    assert front_handler.calls == [("unlock", "mqtt")] and back_handler.calls == []


def test_a_second_lock_with_the_same_client_id_is_noticed(mqtt_broker, make_bridge, caplog):
    """Same client id: the broker drops one for the other (Session taken over) on every reconnect."""
    with caplog.at_level("ERROR", logger="lock.mqtt"):
        first = make_bridge(mqtt_broker.settings(base_topic="one"))
        make_bridge(mqtt_broker.settings(base_topic="two"))
        wait(lambda: first.conflict is not None, timeout=40)
    assert "mqtt.client_id = face-lock" in first.conflict
    assert any("dropped this lock within seconds of connecting" in r.getMessage() for r in caplog.records)


def test_mqtt_check_finds_another_lock_on_the_same_topics(mqtt_broker, make_bridge):
    bridge = make_bridge(mqtt_broker.settings(client_id="front"), install="this-install")
    ok, why = check(mqtt_broker.settings(), install="this-install")   # the lock of this config: fine
    assert ok, why
    ok, why = check(mqtt_broker.settings(), install="a-copy-elsewhere")   # another lock answers
    assert not ok and "another lock" in why and "mqtt.base_topic" in why, why
    ok, why = check(mqtt_broker.settings(base_topic="back_door"))
    assert ok, why
    # A check never turns remote control off (before, one run by a user who could not read the daemon's
    # status, or on a laptop with a copy of the config, refused UNLOCK for 3 minutes).
    assert bridge.conflict is None


def test_a_retained_hello_is_no_lock(mqtt_broker, mqtt_subscriber, make_bridge):
    from lock.mqtt import Hello
    sub = mqtt_subscriber(mqtt_broker, "none")
    sub.publish("face_lock/instance", Hello("made-up", "x", "nowhere").dumps(), retain=True)
    time.sleep(0.3)
    bridge = make_bridge(mqtt_broker.settings())
    time.sleep(1.0)
    assert bridge.conflict is None


def test_a_lock_restarted_at_once_learns_at_once_that_it_is_not_alone(mqtt_broker, make_bridge):
    """The answer was rate-limited for all tokens at once: a lock restarted within 5 s of the other's last
    answer was not told, and obeyed Home Assistant's UNLOCK for up to a minute."""
    front = make_bridge(mqtt_broker.settings(client_id="front"))
    back = make_bridge(mqtt_broker.settings(client_id="back"))
    wait(lambda: front.conflict is not None and back.conflict is not None)
    back.stop(flush_seconds=0.2)
    again = make_bridge(mqtt_broker.settings(client_id="back"))
    wait(lambda: again.conflict is not None, timeout=3)


def test_lock_is_obeyed_during_a_conflict_and_tells_nothing_of_the_code(mqtt_broker, mqtt_subscriber, make_bridge,
                                                                        monkeypatch):
    """LOCK only makes a door safer: obeyed whatever code it carries (the other lock's, say).  Checking it
    while wrong codes were not counted let whoever could fake a conflict guess codes, one LOCK at a time."""
    monkeypatch.setenv("LOCK_TEST_CODE", "1234")
    handler = RecordingHandler()
    front = make_bridge(mqtt_broker.settings(client_id="front", code_env="LOCK_TEST_CODE"), handler,
                        cls=CountingBridge)
    make_bridge(mqtt_broker.settings(client_id="back", allow_no_code=True))
    wait(lambda: front.conflict is not None)
    sub = mqtt_subscriber(mqtt_broker, "none")
    send(sub, front, [json.dumps({"action": "LOCK", "code": code}) for code in ("9999", "1234", "0000")]
         + [json.dumps({"action": "UNLOCK", "code": "1234"})])
    assert handler.calls == [("lock", "mqtt")] * 3
