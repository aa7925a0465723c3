"""MQTT bridge: door events out to Home Assistant, remote commands in.

The only module that imports paho-mqtt (2.x, ``CallbackAPIVersion.VERSION2``;
see https://eclipse.dev/paho/files/paho.mqtt.python/html/migrations.html).
The bridge only translates: events from the bus become MQTT messages, MQTT
commands become calls on a :class:`CommandHandler` (the daemon).

Topics (``<base>`` is ``mqtt.base_topic``)::

    <base>/availability      online / offline, retained (offline is the last will)
    <base>/lock/state        LOCKED UNLOCKED LOCKING UNLOCKING OPEN OPENING JAMMED, retained
    <base>/lock/set          commands LOCK UNLOCK OPEN (JSON {"action", "code"} when a code is set)
    <base>/event             JSON Event.public_dict() and "id" of door events (HA `event` entity)
    <base>/face_unlock/state ON / OFF, retained;  <base>/face_unlock/set  ON / OFF
    <base>/door/state        ON (open) / OFF (closed), retained
    <base>/last_person       name of the last person recognised, retained
    <base>/stats             JSON {"fps", "latency_ms", "camera": "ok" | "no_frames" | "blank"}
    <base>/unknown_face      JPEG of the last unknown face (only if mqtt.unknown_image)
    <base>/instance          JSON {"instance", "host", "reply"}: each lock's hello (see HELLO_EVERY_SECONDS)

Delivery: the bus callback only appends to a bounded queue; one sender thread
hands one message at a time (QoS 1) to paho while connected and removes it
only once the broker acknowledged it (PUBACK), so events raised while the
broker is away are delivered in order, with their original time, afterwards;
door events are also marked in the audit log once acknowledged, and a new run
sends the unmarked ones first (:class:`Outbox`).

MQTT 5, for two properties 3.1.1 lacks: Maximum Packet Size (the broker drops
what is larger than MAX_PACKET_BYTES instead of sending it) and Retain As
Published on the command topics (a retained command shows its flag on live
delivery too, and is never obeyed).  See the MQTT 5.0 spec, 3.1.2.11.4 and
3.8.3.1 (https://docs.oasis-open.org/mqtt/mqtt/v5.0/mqtt-v5.0.html).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import ssl
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from lock import __version__, events
from lock.config import MQTTSettings
from lock.events import Event, EventBus

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 1024
# MQTT 5 Maximum Packet Size the lock accepts: discovery it sends is a few kB; a command is under 1 KiB.
MAX_PACKET_BYTES = 64 * 1024
WARN_EVERY_SECONDS = 10.0  # a flood of bad commands gives one log line per kind per 10 s, not one each
LOCK_ACTIONS = ("LOCK", "UNLOCK", "OPEN")
LOCK_STATES = ("LOCKED", "UNLOCKED", "LOCKING", "UNLOCKING", "OPEN", "OPENING", "JAMMED")
ONLINE, OFFLINE = "online", "offline"
# Home Assistant's "online" makes the bridge send discovery and states again, at most this often: a
# flood of "online" (any client may publish it) must not keep the door events waiting behind them.
REDISCOVERY_SECONDS = 5.0
# Wrong-code lockout of the remote lock commands (LOCK, UNLOCK, OPEN): after CODE_LOCKOUT_AFTER wrong or
# missing codes in a row every lock command is refused, its code unchecked, for CODE_LOCKOUT_SECONDS,
# doubling with each further lockout up to CODE_LOCKOUT_MAX_SECONDS; a right code outside a lockout
# starts afresh.  The numbers of the face lockout (README): 5 tries let the owner mistype, a first
# minute barely bothers them, and the doubling leaves a guesser 5 codes an hour in the long run: about
# 6 weeks on average for a 4-digit code (12 h with the rate limit alone), 11 years for 6 digits.
CODE_LOCKOUT_AFTER = 5
CODE_LOCKOUT_SECONDS = 60
CODE_LOCKOUT_MAX_SECONDS = 3600
# Two locks on one broker must not share topics: Home Assistant's UNLOCK for one would open both doors,
# and each would count the other's codes as wrong ones.  (The defaults are the same on every install,
# so a second lock set up from a copy of the first one's config does exactly that.)  Each bridge says
# hello on <base>/instance when it connects and every HELLO_EVERY_SECONDS, with a token new at every
# start, and answers another's hello at once (at most every HELLO_REPLY_SECONDS); the broker does not
# echo a client's own messages (MQTT 5 No Local).  While a hello with another token was heard in the
# last CONFLICT_SECONDS, or the broker handed this lock's client id to another client, UNLOCK, OPEN and
# face unlock ON from MQTT are refused; LOCK and OFF are obeyed (they only make a door safer), LOCK
# whatever code it carries (the other lock's carry its own; a checked one would let whoever can make a
# conflict guess codes past the lockout).  Two clients with
# one id take the session from each other on every reconnect, so their hellos never meet: the broker may
# say so (MQTT 5 reason code 142, Session taken over; mosquitto 2.0 does not), else a connection closed
# without a reason (the socket just closed, as mosquitto does on a takeover) within TAKEOVER_SECONDS of
# its CONNACK, TAKEOVER_DROPS times in a row, each time taken back at the first try (a broker that is
# restarting refuses that first try), is taken for it.
HELLO_EVERY_SECONDS = 60.0
HELLO_REPLY_SECONDS = 5.0
CONFLICT_SECONDS = 180.0
SESSION_TAKEN_OVER = 142
TAKEOVER_SECONDS = 5.0
TAKEOVER_DROPS = 5
UNSPECIFIED_ERROR = 128   # paho's reason code when the socket closed without an MQTT DISCONNECT


class CommandHandler(Protocol):
    """What the bridge asks of the daemon when a valid remote command arrives."""

    def unlock(self, source: str) -> None: ...

    def open(self, source: str) -> None: ...

    def lock(self, source: str) -> None: ...

    def set_face_unlock(self, enabled: bool) -> None: ...


# --------------------------------------------------------------------------- topics and discovery

@dataclasses.dataclass(frozen=True)
class Topics:
    availability: str
    lock_state: str
    lock_command: str
    event: str
    switch_state: str
    switch_command: str
    door: str
    last_person: str
    stats: str
    image: str
    ha_status: str
    instance: str

    @classmethod
    def of(cls, settings: MQTTSettings) -> "Topics":
        b = settings.base_topic.rstrip("/")
        return cls(availability=f"{b}/availability", lock_state=f"{b}/lock/state",
                   lock_command=f"{b}/lock/set", event=f"{b}/event",
                   switch_state=f"{b}/face_unlock/state", switch_command=f"{b}/face_unlock/set",
                   door=f"{b}/door/state", last_person=f"{b}/last_person", stats=f"{b}/stats",
                   image=f"{b}/unknown_face", ha_status=f"{settings.discovery_prefix}/status",
                   instance=f"{b}/instance")


def device_id(settings: MQTTSettings) -> str:
    """Stable id of the device: the same config gives the same Home Assistant device."""
    raw = f"{settings.client_id}_{settings.base_topic}"
    return re.sub(r"[^a-zA-Z0-9_-]+", "_", raw).strip("_") or "face_lock"


def code_configured(settings: MQTTSettings) -> bool:
    return bool(settings.code_file or settings.code_env)


# Field names follow the Home Assistant MQTT platform pages:
# https://www.home-assistant.io/integrations/lock.mqtt/ (payload_open enables OPEN; states incl. jammed;
# command_template gets `value` and `code`), /integrations/event.mqtt/ (JSON with an `event_type` key
# among `event_types`), /integrations/switch.mqtt/, /integrations/binary_sensor.mqtt/,
# /integrations/sensor.mqtt/, /integrations/image.mqtt/ (image_topic carries the raw file bytes).
def discovery_messages(settings: MQTTSettings, has_contact: bool) -> list[tuple[str, dict[str, Any]]]:
    """Home Assistant discovery configs: ``[(config topic, payload dict)]``, published retained."""
    t = Topics.of(settings)
    dev_id = device_id(settings)
    device = {"identifiers": [dev_id], "name": settings.device_name, "manufacturer": "face-lock",
              "model": "Raspberry Pi face unlock", "sw_version": __version__}
    common = {"device": device, "availability": [
        {"topic": t.availability, "payload_available": ONLINE, "payload_not_available": OFFLINE}]}

    def entity(component: str, object_id: str, name: str | None, **fields: Any) -> tuple[str, dict[str, Any]]:
        payload = {"name": name, "unique_id": f"{dev_id}_{object_id}", **common, **fields}
        return f"{settings.discovery_prefix}/{component}/{dev_id}/{object_id}/config", payload

    lock_fields: dict[str, Any] = dict(
        # qos 0 for commands: at most once.  A QoS 1 UNLOCK queued by a disconnected client could
        # arrive, and open the door, long after it was asked for.
        command_topic=t.lock_command, state_topic=t.lock_state, qos=0, retain=False, optimistic=False,
        payload_lock="LOCK", payload_unlock="UNLOCK", payload_open="OPEN",
        state_locked="LOCKED", state_unlocked="UNLOCKED", state_locking="LOCKING",
        state_unlocking="UNLOCKING", state_open="OPEN", state_opening="OPENING", state_jammed="JAMMED")
    if code_configured(settings):
        lock_fields["code_format"] = "^.+$"
        # tojson quotes the code safely whatever characters it holds.
        lock_fields["command_template"] = '{"action": "{{ value }}", "code": {{ code | tojson }}}'
    messages = [
        entity("lock", "lock", None, **lock_fields),
        entity("event", "event", "Door event", state_topic=t.event, event_types=list(events.DOOR_EVENTS)),
        entity("switch", "face_unlock", "Face unlock", command_topic=t.switch_command, state_topic=t.switch_state,
               payload_on="ON", payload_off="OFF", qos=0, retain=False, icon="mdi:face-recognition"),
        entity("sensor", "last_person", "Last person recognized", state_topic=t.last_person,
               icon="mdi:account"),
        entity("sensor", "fps", "Camera frame rate", state_topic=t.stats, value_template="{{ value_json.fps }}",
               unit_of_measurement="fps", state_class="measurement", entity_category="diagnostic"),
        entity("sensor", "latency", "Recognition latency", state_topic=t.stats,
               value_template="{{ value_json.latency_ms }}", unit_of_measurement="ms",
               device_class="duration", state_class="measurement", entity_category="diagnostic"),
        # ON while the camera sends no new frame, or a blank picture, for 10 s (lock/daemon.py:
        # CAMERA_QUIET_SECONDS); https://www.home-assistant.io/integrations/binary_sensor/ device class problem.
        entity("binary_sensor", "camera", "Camera problem", state_topic=t.stats, device_class="problem",
               value_template="{{ 'OFF' if value_json.camera == 'ok' else 'ON' }}", payload_on="ON",
               payload_off="OFF", entity_category="diagnostic"),
    ]
    if has_contact:
        messages.append(entity("binary_sensor", "door", "Door", state_topic=t.door, device_class="door",
                               payload_on="ON", payload_off="OFF"))
    if settings.unknown_image:
        messages.append(entity("image", "unknown_face", "Last unknown face", image_topic=t.image,
                               content_type="image/jpeg"))
    return messages


def retired_discovery_topics(settings: MQTTSettings, has_contact: bool) -> list[str]:
    """Config topics of the optional entities that are off now: an empty retained message removes them
    from Home Assistant (and from the broker), so an entity switched off does not linger there."""
    dev_id = device_id(settings)
    off = [("binary_sensor", "door")] * (not has_contact) + [("image", "unknown_face")] * (not settings.unknown_image)
    return [f"{settings.discovery_prefix}/{component}/{dev_id}/{object_id}/config" for component, object_id in off]


# --------------------------------------------------------------------------- secrets and client

def read_password(settings: MQTTSettings) -> str | None:
    """The broker password from ``password_file`` or else ``password_env``; never from config.yaml."""
    if settings.password_file:
        try:
            return Path(settings.password_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ValueError(f"mqtt.password_file: cannot read {settings.password_file}: {why}") from None
    if settings.password_env:
        return os.environ.get(settings.password_env) or None
    return None


def read_code(settings: MQTTSettings) -> str | None:
    """The code commands must carry, or None when no code is configured."""
    if settings.code_file:
        code = Path(settings.code_file).read_text(encoding="utf-8").strip()
    elif settings.code_env:
        code = os.environ.get(settings.code_env, "").strip()
    else:
        return None
    if not code:
        raise ValueError("the configured code is empty")
    return code


def _make_client(settings: MQTTSettings, *, will: bool, client_id: str | None = None) -> paho.Client:
    """A configured paho client; reads the password and TLS files (raises OSError/ssl.SSLError)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or settings.client_id,
                         protocol=paho.MQTTv5)
    if settings.username:
        client.username_pw_set(settings.username, read_password(settings))
    elif settings.password_file:
        log.warning("MQTT: mqtt.password_file is set but mqtt.username is not: no password is sent")
    tls = settings.tls
    if tls.enabled:
        files = {key: getattr(tls, key) for key in ("ca_file", "cert_file", "key_file") if getattr(tls, key)}
        for key, path in files.items():  # ssl names neither the file nor the setting when one is missing
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ValueError(f"mqtt.tls.{key}: cannot read {path}: {exc.strerror or exc}") from None
        try:
            client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                           cert_reqs=ssl.CERT_REQUIRED if tls.verify else ssl.CERT_NONE)
        except ssl.SSLError as exc:
            named = ", ".join(f"mqtt.tls.{key} = {path}" for key, path in files.items())
            raise ValueError(f"not a usable PEM certificate or key among {named}: {exc}") from None
        if not tls.verify:
            log.warning("MQTT TLS certificate verification is OFF (mqtt.tls.verify: false)")
            client.tls_insecure_set(True)
    if will:
        client.will_set(Topics.of(settings).availability, OFFLINE, qos=1, retain=True)
    return client


def _connect_properties() -> Properties:
    """MQTT 5 CONNECT properties: the broker sends the lock nothing larger than MAX_PACKET_BYTES
    (it drops such a message for this client), so no publisher can make the daemon read megabytes."""
    props = Properties(PacketTypes.CONNECT)
    props.MaximumPacketSize = MAX_PACKET_BYTES
    return props


def _json_default(value: Any) -> Any:
    try:
        return float(value)  # numpy scalars
    except (TypeError, ValueError):
        return str(value)


def _dumps(payload: Any) -> str:
    return json.dumps(payload, default=_json_default, separators=(",", ":"))


def install_id(control_socket: str) -> str:
    """The installation a hello comes from: the machine and the daemon's control socket, the same for
    `lock run` and for `lock doctor` / `lock mqtt-test` run beside it with its config."""
    try:
        machine = Path("/etc/machine-id").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        machine = socket.gethostname()
    raw = f"{machine}\0{os.path.abspath(control_socket)}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Hello:
    """What a lock says on ``<base>/instance`` (see HELLO_EVERY_SECONDS)."""

    instance: str          # this run's token (random at every start)
    install: str = ""      # install_id()
    host: str = "?"
    reply: bool = False    # an answer to another's hello (never answered itself)
    probe: bool = False    # from `lock mqtt-test` / `lock doctor`: answered, never taken for another lock

    def dumps(self) -> str:
        return _dumps(dataclasses.asdict(self))

    @classmethod
    def read(cls, payload: bytes) -> "Hello | None":
        if len(payload) > MAX_COMMAND_BYTES:
            return None
        try:
            data = json.loads(payload.decode("utf-8"))
        except (ValueError, RecursionError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("instance"), str) or not data["instance"]:
            return None

        def text(key: str, default: str) -> str:
            v = data.get(key)
            return v[:64] if isinstance(v, str) and v.isprintable() else default

        return cls(data["instance"][:64], text("install", ""), text("host", "?"), data.get("reply") is True,
                   data.get("probe") is True)


def conflict_message(settings: MQTTSettings, host: str) -> str:
    return (f"another lock (host {host}) uses this lock's topics on the broker (mqtt.base_topic = "
            f"{settings.base_topic}): Home Assistant's commands for one would reach both; UNLOCK, OPEN and face "
            "unlock ON from MQTT are refused until each lock has its own mqtt.base_topic and mqtt.client_id "
            "(README: More than one lock)")


# --------------------------------------------------------------------------- bridge

@dataclasses.dataclass
class _Message:
    topic: str
    payload: str | bytes
    retain: bool = False
    coalesce: bool = False  # a newer message to the same topic replaces this one while queued
    uid: str | None = None  # a door event's Event.uid: marked delivered in the outbox once acknowledged


class Outbox(Protocol):
    """Where door events wait to be delivered across restarts (the audit log: lock/audit.py)."""

    def unsent(self, since: float, limit: int) -> list[Event]: ...

    def mark_sent(self, uid: str) -> None: ...


# Door events the broker never acknowledged are sent again after a restart for this long (then the
# audit log alone keeps them: an event days old would only confuse Home Assistant's history).
OUTBOX_MAX_AGE_SECONDS = 86400.0


class _TokenBucket:
    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _CodeLockout:
    """Counts wrong codes in a row and says whether lock commands are locked out (see CODE_LOCKOUT_AFTER).

    In memory only, not persisted: a restart of the daemon forgets the count and ends a lockout (a
    remote client cannot restart it; the lockout only slows guessing, the code is what keeps the door).
    ``clock`` is monotonic, so a step of the wall clock neither shortens nor lengthens a lockout.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._failures = 0
        self._until: float | None = None   # clock time the lockout in force ends
        self._reported: float | None = None   # the _until whose first refused command had its event
        self._next_seconds = CODE_LOCKOUT_SECONDS

    def first_refusal(self) -> bool:
        """True once per lockout: for the first command it refuses (that one gets an event)."""
        if self._until is None or self._reported == self._until:
            return False
        self._reported = self._until
        return True

    def remaining(self) -> float:
        """Seconds left of the lockout in force; 0 if none."""
        if self._until is None:
            return 0.0
        left = self._until - self._clock()
        if left <= 0:
            self._until = None
            return 0.0
        return left

    def failed(self) -> int | None:
        """One more wrong code: the length of the lockout it starts, or None."""
        self._failures += 1
        if self._failures < CODE_LOCKOUT_AFTER:
            return None
        seconds = self._next_seconds
        self._until = self._clock() + seconds
        self._failures = 0
        self._next_seconds = min(2 * seconds, CODE_LOCKOUT_MAX_SECONDS)
        return seconds

    def succeeded(self) -> None:
        self._failures = 0
        self._next_seconds = CODE_LOCKOUT_SECONDS


_NO_CODE = object()  # a code is configured but could not be read: refuse every lock command


class MqttBridge:
    """Publishes bus events to MQTT and turns MQTT commands into handler calls.

    The constructor does no I/O; :meth:`start` connects in the background
    and the door keeps working whatever the broker does.
    """

    def __init__(self, settings: MQTTSettings, bus: EventBus, handler: CommandHandler, *,
                 clock: Callable[[], float] = time.time, has_contact: bool = False,
                 outbox: Outbox | None = None, monotonic: Callable[[], float] = time.monotonic,
                 install: str = "") -> None:
        self.settings = settings
        self.instance = uuid.uuid4().hex   # this run's token in the hellos (HELLO_EVERY_SECONDS)
        self.install = install             # install_id(control.socket): lets `lock doctor` know its own lock
        self._monotonic = monotonic
        self._others: dict[str, tuple[str, float]] = {}   # another lock's token -> (host, last heard)
        self._taken_over_at: float | None = None
        self._connected_at = 0.0
        self._quick_drops = 0   # connections closed soon after their CONNACK, each reconnected at the first try
        self._failed_tries = 0
        self._next_hello = 0.0
        self._replied_at = -HELLO_REPLY_SECONDS
        self._outbox = outbox
        self.topics = Topics.of(settings)
        self._bus = bus
        self._handler = handler
        self._clock = clock
        self._has_contact = has_contact
        self._client: paho.Client | None = None
        self._cond = threading.Condition()
        self._queue: collections.deque[_Message] = collections.deque()
        self._control: collections.deque[_Message] = collections.deque()  # after each connect, sent first
        self._last_state: dict[str, _Message] = {}  # retained states, re-sent after each connect
        self._acked: dict[int, Any] = {}   # mid -> the PUBACK's reason code
        self._inflight: _Message | None = None   # handed to paho, PUBACK not in yet
        self._connected = False
        self._running = False
        self._closing = False
        self._last_error: str | None = None
        self._dropped = 0
        self._sender: threading.Thread | None = None
        # Three budgets (see _handle_message): lock commands with the right code (or any, without a code),
        # face unlock switch commands, and everything refused.  Junk and wrong codes spend only the last,
        # so they can never keep a correctly coded command from being obeyed.
        self._bucket = _TokenBucket(settings.commands_per_minute)
        self._switch_bucket = _TokenBucket(settings.commands_per_minute)
        self._refused_bucket = _TokenBucket(settings.commands_per_minute)
        self._lockout = _CodeLockout(monotonic)
        self._code: Any = None
        self._warned: dict[str, tuple[int, float]] = {}  # kind -> (suppressed since, last logged)
        self._answered = False   # this connection attempt got a CONNACK (see _on_disconnect)
        self._rediscover_at: float | None = None   # monotonic time to send discovery again (HA came online)
        self._rediscovered = -REDISCOVERY_SECONDS

    # -- public state

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def dropped(self) -> int:
        """Messages dropped because the queue was full (oldest first)."""
        return self._dropped

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged by the broker: queued, control (discovery, states) and in flight."""
        with self._cond:
            return len(self._queue) + len(self._control) + (self._inflight is not None)

    @property
    def code_lockout_remaining(self) -> float:
        """Seconds left of a wrong-code lockout of the remote lock commands; 0 if none."""
        return self._lockout.remaining()

    @property
    def conflict(self) -> str | None:
        """Why remote lock commands are refused just now (another lock on these topics), or None."""
        now = self._monotonic()
        with self._cond:
            heard = [(t, host) for host, t in self._others.values() if now - t < CONFLICT_SECONDS]
            taken = self._taken_over_at is not None and now - self._taken_over_at < CONFLICT_SECONDS
        if heard:
            return conflict_message(self.settings, max(heard)[1])
        if taken:
            return (f"the broker dropped this lock within seconds of connecting {TAKEOVER_DROPS} times in a row: "
                    f"most likely another MQTT client uses its client id (mqtt.client_id = "
                    f"{self.settings.client_id}), or the broker was restarted again and again; UNLOCK, OPEN and "
                    f"face unlock ON from MQTT are refused for {CONFLICT_SECONDS / 60:.0f} minutes after the last "
                    "such drop (README: More than one lock)")
        return None

    # -- life cycle

    def _read_code(self) -> Any:
        try:
            return read_code(self.settings)
        except (OSError, ValueError) as exc:
            log.error("MQTT: cannot read the command code (mqtt.code_file / mqtt.code_env): %s; "
                      "remote lock commands will all be refused until this is fixed", exc)
            return _NO_CODE

    def reload_code(self) -> None:
        """SIGHUP: read the code again, so that a code changed in mqtt.code_file (one that leaked: it
        travels in clear text) stops opening the door without a restart.  Unreadable: every lock
        command is refused, as at start."""
        if not self.settings.code_file:
            if self.settings.code_env:
                log.info("MQTT: mqtt.code_env is read at start only: restart the lock to change the code")
            return
        old, self._code = self._code, self._read_code()
        if self._code is not old and self._code != old and self._code is not _NO_CODE:
            log.info("MQTT: the command code was read again: the new one is in force")

    def start(self) -> None:
        """Subscribe to the bus and connect in the background; never raises for broker trouble."""
        if self._running:
            return
        self._code = self._read_code()
        if not code_configured(self.settings):
            log.warning("MQTT: mqtt.allow_no_code is on and there is no mqtt.code_file or mqtt.code_env: UNLOCK "
                        "and OPEN on %s are obeyed from any client the broker lets publish there; set a code, "
                        "or limit publishing to that topic with the broker's ACL", self.topics.lock_command)
        self._running = True
        self._closing = False
        self._bus.subscribe(self.on_event)
        self._requeue_unsent()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._sender.start()
        try:
            client = _make_client(self.settings, will=True)
        except (OSError, ValueError, ssl.SSLError) as exc:
            self._fail(f"cannot set up the MQTT client (password file or TLS files): {exc}")
            return
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.reconnect_delay_set(1, self.settings.retry_max_seconds)
        self._client = client
        log.info("MQTT: connecting to %s:%d in the background", self.settings.host, self.settings.port)
        client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive,
                             clean_start=True, properties=_connect_properties())
        client.loop_start()

    def stop(self, flush_seconds: float = 2.0) -> None:
        """Send what is queued (for up to ``flush_seconds``), publish ``offline`` and disconnect."""
        if not self._running:
            return
        self._bus.unsubscribe(self.on_event)
        deadline = time.monotonic() + flush_seconds
        with self._cond:
            while (self._connected and (self._queue or self._control or self._inflight)
                   and time.monotonic() < deadline):
                self._cond.wait(0.05)
            self._running = False
            self._closing = True
            self._cond.notify_all()
        if self._sender is not None:
            self._sender.join(timeout=flush_seconds + 2)
        client = self._client
        if client is not None:
            if self._connected:
                info = client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
                try:
                    info.wait_for_publish(timeout=2.0)
                except (RuntimeError, ValueError):
                    pass
            client.disconnect()
            client.loop_stop()
        self._connected = False
        log.info("MQTT: stopped")

    # -- events out (bus thread: never block)

    def on_event(self, event: Event) -> None:
        """Bus subscriber: translate and queue, nothing more."""
        t = self.topics
        kind = event.kind
        if kind in events.DOOR_EVENTS:
            self._enqueue(self._event_message(event))
            if kind == events.RECOGNIZED and event.person:
                self._enqueue(_Message(t.last_person, event.person, retain=True, coalesce=True))
        elif kind == events.LOCK_STATE:
            state = str(event.detail.get("state", "")).upper()
            if state in LOCK_STATES:
                self._enqueue(_Message(t.lock_state, state, retain=True, coalesce=True))
            else:
                log.warning("MQTT: lock_state event with unknown state %r not sent", state)
        elif kind == events.DOOR_CONTACT:
            self._enqueue(_Message(t.door, "ON" if event.detail.get("open") else "OFF", retain=True, coalesce=True))
        elif kind == events.FACE_UNLOCK:
            self._enqueue(_Message(t.switch_state, "ON" if event.detail.get("enabled") else "OFF",
                                   retain=True, coalesce=True))
        elif kind == events.STATS:
            stats = {k: event.detail[k] for k in ("fps", "latency_ms", "camera") if k in event.detail}
            self._enqueue(_Message(t.stats, _dumps({**stats, "time": event.time}), coalesce=True))
        elif kind == events.UNKNOWN_FACE_IMAGE:
            jpeg = event.detail.get("jpeg")
            if self.settings.unknown_image and isinstance(jpeg, (bytes, bytearray)):
                self._enqueue(_Message(t.image, bytes(jpeg), coalesce=True))

    def _event_message(self, event: Event) -> _Message:
        """A door event for Home Assistant's event entity, carrying its uid for the outbox."""
        # "id": the same for an event sent again after a restart (delivery is at least once), so a consumer
        # can drop the repeat; "time": when it happened (Home Assistant stamps it when it arrives).
        payload = {**event.public_dict(self.settings.publish_scores), "id": event.uid}
        return _Message(self.topics.event, _dumps(payload), uid=event.uid)

    def _requeue_unsent(self) -> None:
        """Door events an earlier run raised but the broker never acknowledged go first, in order."""
        if self._outbox is None:
            return
        old = self._outbox.unsent(self._clock() - OUTBOX_MAX_AGE_SECONDS, self.settings.queue_size)
        with self._cond:
            queued = {m.uid for m in self._queue if m.uid}
            msgs = [self._event_message(e) for e in old if e.uid not in queued]
            self._queue.extendleft(reversed(msgs))
            while len(self._queue) > self.settings.queue_size:
                self._queue.popleft()
                self._dropped += 1
            self._cond.notify_all()
        if msgs:
            log.info("MQTT: %d door event(s) not delivered before the last stop are queued again", len(msgs))

    def _enqueue(self, msg: _Message) -> None:
        with self._cond:
            if msg.uid and any(m.uid == msg.uid for m in self._queue):
                return   # already queued (from the outbox at start)
            if msg.retain:
                self._last_state[msg.topic] = msg
            if msg.coalesce:
                stale = [m for m in self._queue if m.topic == msg.topic]
                for m in stale:
                    self._queue.remove(m)
            if len(self._queue) >= self.settings.queue_size:
                self._queue.popleft()
                self._dropped += 1
                if self._dropped == 1 or self._dropped % 100 == 0:
                    log.warning("MQTT: queue full (%d messages), oldest dropped; %d dropped so far",
                                self.settings.queue_size, self._dropped)
            self._queue.append(msg)
            self._cond.notify_all()

    def _rediscover(self) -> None:
        """Called with the lock held: queue discovery and states again if Home Assistant asked and it is time."""
        now = time.monotonic()
        if self._rediscover_at is None or now < self._rediscover_at:
            return
        self._rediscover_at, self._rediscovered = None, now
        # Replace what is still waiting: repeated "online" must not grow the queue.
        fresh = self._discovery() + list(self._last_state.values())
        topics = {m.topic for m in fresh}
        kept = [m for m in self._control if m.topic not in topics]
        self._control.clear()
        self._control.extend(kept + fresh)

    def _hello(self, reply: bool = False) -> str:
        return Hello(self.instance, self.install, socket.gethostname(), reply=reply).dumps()

    def _periodic_hello(self) -> None:
        """Called with the lock held: say hello again every HELLO_EVERY_SECONDS while connected."""
        now = self._monotonic()
        if self._connected and now >= self._next_hello:
            self._next_hello = now + HELLO_EVERY_SECONDS
            self._control.append(_Message(self.topics.instance, self._hello()))

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                self._rediscover()
                self._periodic_hello()
                while not self._closing and not (self._connected and (self._control or self._queue)):
                    self._cond.wait(0.5)
                    self._rediscover()
                    self._periodic_hello()
                if self._closing:
                    return
                msg = self._control.popleft() if self._control else self._queue.popleft()
                self._acked.clear()
                self._inflight = msg
            try:
                outcome = self._deliver(msg)
            except Exception:  # e.g. a topic paho rejects: drop that message, keep the sender alive
                log.exception("MQTT: cannot publish to %s; message dropped", msg.topic)
                outcome = "dropped"
            if outcome == "acked" and msg.uid and self._outbox is not None:
                self._outbox.mark_sent(msg.uid)
            with self._cond:
                self._inflight = None
                if outcome == "retry":   # not handed over: put it back at the front, keep the order
                    self._queue.appendleft(msg)
                self._cond.notify_all()
            if outcome == "retry":
                time.sleep(0.2)

    def _deliver(self, msg: _Message) -> str:
        """Hand one message to paho and wait for its PUBACK: "acked"; "refused" if the PUBACK says the
        broker refused it; "retry" if paho did not take it; "dropped" if paho refused it; "closing"
        if the bridge stopped before the PUBACK came."""
        client = self._client
        if client is None:
            return "retry"
        info = client.publish(msg.topic, msg.payload, qos=1, retain=msg.retain)
        # NO_CONN: paho keeps a QoS 1 message and sends it after the reconnect, so it is taken too.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.error("MQTT: cannot publish to %s: %s; message dropped", msg.topic, paho.error_string(info.rc))
            return "dropped"
        with self._cond:
            while info.mid not in self._acked and not self._closing:
                self._cond.wait(0.5)
            code = self._acked.pop(info.mid, None)
            self._cond.notify_all()
        if code is None:
            return "closing"
        if code.is_failure:   # MQTT 5: the broker took the message but refused it (its ACL, say)
            self._warn("puback", "MQTT: the broker refused the message on %s: %s (check its ACL for the lock's "
                       "user); not delivered", msg.topic, code)
            return "refused"
        return "acked"

    # -- paho callbacks (network thread)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self._acked[mid] = reason_code
            self._cond.notify_all()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._answered = True   # a CONNACK came, refusing or not
        if reason_code.is_failure:
            self._connected = False
            self._failed_tries += 1
            # Not a tight loop: paho's next try waits refused_retry_seconds (reconnect_delay_set resets the wait).
            client.reconnect_delay_set(self.settings.refused_retry_seconds, self.settings.refused_retry_seconds)
            hint = ("the lock speaks MQTT 5: the broker must too (mosquitto 1.6 or later)"
                    if "protocol version" in str(reason_code).lower()
                    else "check mqtt.username and the password, and the broker's ACL")
            self._fail(f"broker {self.settings.host}:{self.settings.port} refused the connection: "
                       f"{reason_code} (reason code {reason_code.value}); {hint}; "
                       f"next try in {self.settings.refused_retry_seconds} s")
            return
        client.reconnect_delay_set(1, self.settings.retry_max_seconds)
        self._last_error = None
        if self._failed_tries:
            self._quick_drops = 0
        self._failed_tries = 0
        self._connected_at = self._monotonic()
        # Retain As Published: a command published with the retain flag keeps it when delivered live
        # too (MQTT 3.1.1 cleared it), so a retained command is never acted on, live or replayed.
        rap = SubscribeOptions(qos=1, retainAsPublished=True)
        client.subscribe([(self.topics.lock_command, rap), (self.topics.switch_command, rap),
                          (self.topics.ha_status, SubscribeOptions(qos=1)),
                          (self.topics.instance, SubscribeOptions(qos=1, noLocal=True))])
        with self._cond:
            self._control.clear()
            self._control.append(_Message(self.topics.availability, ONLINE, retain=True))
            self._control.append(_Message(self.topics.instance, self._hello()))
            self._next_hello = self._monotonic() + HELLO_EVERY_SECONDS
            self._control.extend(self._discovery())
            self._control.extend(self._last_state.values())
            self._connected = True
            self._cond.notify_all()
        log.info("MQTT: connected to %s:%d", self.settings.host, self.settings.port)

    def _discovery(self) -> list[_Message]:
        return ([_Message(topic, _dumps(payload), retain=True)
                 for topic, payload in discovery_messages(self.settings, self._has_contact)]
                + [_Message(topic, b"", retain=True)
                   for topic in retired_discovery_topics(self.settings, self._has_contact)])

    def _on_connect_fail(self, client, userdata) -> None:
        # paho calls this inside its `except OSError`, so the cause is still at hand.
        exc = sys.exc_info()[1]
        self._connected = False
        self._failed_tries += 1
        if isinstance(exc, ssl.SSLError):
            client.reconnect_delay_set(self.settings.refused_retry_seconds, self.settings.refused_retry_seconds)
            self._fail(f"TLS with {self.settings.host}:{self.settings.port} failed: {exc}; check mqtt.tls "
                       f"(ca_file, cert_file, key_file); next try in {self.settings.refused_retry_seconds} s")
        else:
            msg = f"cannot reach the broker at {self.settings.host}:{self.settings.port}: {exc or 'connect failed'}"
            if msg != self._last_error:
                log.warning("MQTT: %s; retrying with backoff (events are kept meanwhile)", msg)
            self._last_error = msg

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected
        with self._cond:
            self._connected = False
            self._cond.notify_all()
        if was and not self._closing:
            now = self._monotonic()
            bare = getattr(reason_code, "value", None) == UNSPECIFIED_ERROR
            quick = bare and now - self._connected_at < TAKEOVER_SECONDS
            self._quick_drops = self._quick_drops + 1 if quick else 0
            if getattr(reason_code, "value", None) == SESSION_TAKEN_OVER or self._quick_drops >= TAKEOVER_DROPS:
                with self._cond:
                    first = self._taken_over_at is None or now - self._taken_over_at >= CONFLICT_SECONDS
                    self._taken_over_at = now
                if first:
                    log.error("MQTT: %s", self.conflict)
        if was:
            if not self._closing:
                self._last_error = f"connection lost: {reason_code}"
                log.warning("MQTT: connection to %s:%d lost (%s); reconnecting, events are kept",
                            self.settings.host, self.settings.port, reason_code)
        elif not self._closing and not self._answered:
            self._failed_tries += 1
            # The broker hung up before answering: TLS on one side only, another service on the
            # port, or a topic the broker refuses.  `lock mqtt-test` tells which.
            tls = ("mqtt.tls.enabled is false: is this a TLS port (usually 8883)?" if not self.settings.tls.enabled
                   else "is this a plain (non-TLS) port, usually 1883?")
            self._fail(f"{self.settings.host}:{self.settings.port} closed the connection without an MQTT answer "
                       f"({reason_code}): {tls} (check mqtt.port and mqtt.tls.enabled; `lock mqtt-test` says more); "
                       "retrying with backoff, events are kept")
        self._answered = False

    def _fail(self, message: str) -> None:
        if message != self._last_error:
            log.error("MQTT: %s", message)
        self._last_error = message

    # -- commands in (network thread: never raise)

    def _on_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        try:
            self._handle_message(message)
        except Exception:  # a bad message must never take the network thread down
            log.exception("MQTT: error handling a message on %s", getattr(message, "topic", "?"))

    def _handle_message(self, message: paho.MQTTMessage) -> None:
        topic = message.topic
        if topic == self.topics.ha_status:
            if message.payload == ONLINE.encode():
                with self._cond:   # the sender does it, at most every REDISCOVERY_SECONDS
                    if self._rediscover_at is None:
                        log.info("MQTT: Home Assistant is online, sending discovery again")
                        self._rediscover_at = max(time.monotonic(), self._rediscovered + REDISCOVERY_SECONDS)
                        self._cond.notify_all()
            return
        if topic == self.topics.instance:
            if not message.retain:   # a retained hello is no lock that is there now
                self._instance_message(message.payload)
            return
        if topic not in (self.topics.lock_command, self.topics.switch_command):
            return
        if not message.payload:  # an empty message: a retained command being cleared (below)
            return
        if message.retain:
            # A retained command, replayed at (re)connect or published live with the flag (Retain As
            # Published, above): never act on it, and clear it so it is not replayed again.
            self._warn("retained", "MQTT: ignored and cleared a retained command on %s (commands must never "
                       "be retained)", topic)
            self._enqueue(_Message(topic, b"", retain=True, coalesce=True))
            return
        if len(message.payload) > MAX_COMMAND_BYTES:
            self._warn("size", "MQTT: ignored a %d-byte command on %s (limit %d)", len(message.payload), topic,
                       MAX_COMMAND_BYTES)
            return
        # Parse and check the code before spending any budget (cheap: at most MAX_COMMAND_BYTES), so
        # that what is refused spends only the refused budget, never the one of the commands obeyed.
        try:
            text = message.payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            self._refuse("utf8", "MQTT: ignored a command on %s that is not UTF-8 text", topic)
            return
        action, code = _parse_command(text)
        if action is None:
            self._refuse("unreadable", "MQTT: ignored an unreadable command on %s", topic)
            return
        if topic == self.topics.switch_command:
            self._switch_command(action)
        else:
            self._lock_command(action, code)

    def _instance_message(self, payload: bytes) -> None:
        """Another lock's hello (never this one's: No Local): note it, and answer it.

        A token not heard lately is always answered (a lock that restarts must learn at once that it is
        not alone); repeats at most every HELLO_REPLY_SECONDS.  A probe (`lock doctor`) is answered and
        never taken for another lock: a check must not turn remote control off."""
        said = Hello.read(payload)
        if said is None or said.instance == self.instance:
            return
        now = self._monotonic()
        with self._cond:
            seen = self._others.get(said.instance)
            new = seen is None or now - seen[1] >= CONFLICT_SECONDS
            if not said.probe:
                if said.instance not in self._others and len(self._others) >= 16:   # made-up tokens: bounded
                    self._others.pop(min(self._others, key=lambda k: self._others[k][1]))
                self._others[said.instance] = (said.host, now)
            if not said.reply and (new or now - self._replied_at >= HELLO_REPLY_SECONDS):
                self._replied_at = now
                self._control.append(_Message(self.topics.instance, self._hello(reply=True)))
            self._cond.notify_all()
        if new and not said.probe:
            log.error("MQTT: %s", conflict_message(self.settings, said.host))

    def _switch_command(self, action: str) -> None:
        # No code here, by design (README, Home Assistant): HA's switch cannot send one, and
        # ON only re-enables face recognition; it never opens the door by itself.
        if action not in ("ON", "OFF"):
            self._refuse("unknown", "MQTT: ignored unknown face unlock command %r", action[:20])
            return
        if action == "ON" and self.conflict:
            if self._refuse("conflict", "MQTT: face unlock ON refused: %s", self.conflict):
                self._bus.publish(Event.now(events.DENIED, clock=self._clock, reason="shared_topics",
                                            source="mqtt", action="face_unlock_on"))
            return
        if action == "ON" and not self.settings.remote_face_unlock_on:
            # Not published back: the switch has a state topic, so Home Assistant shows the state the
            # lock publishes (still OFF), as for any refused command.
            if self._refuse("face_unlock_on", "MQTT: face unlock ON refused: mqtt.remote_face_unlock_on is false "
                            "(turn it back on at the device: lock face-unlock on)"):
                self._bus.publish(Event.now(events.DENIED, clock=self._clock, reason="face_unlock_on_local_only",
                                            source="mqtt"))
            return
        if not self._switch_bucket.take():
            self._warn("switch_rate", "MQTT: face unlock command dropped: more than %d a minute",
                       self.settings.commands_per_minute)
            return
        log.info("MQTT: face unlock %s asked remotely", action)
        self._handler.set_face_unlock(action == "ON")

    def _lock_command(self, action: str, code: str | None) -> None:
        if action not in LOCK_ACTIONS:
            self._refuse("unknown", "MQTT: ignored unknown lock command %r", action[:20])
            return
        conflict = self.conflict
        if conflict:
            # The code is not looked at: the other lock's commands carry its code, not a wrong guess, and an
            # answer to it would let anyone who can make a conflict guess codes unchecked by the lockout.
            if action == "LOCK":   # only makes a door safer: obeyed, whatever code it carries
                if self._bucket.take():
                    log.info("MQTT: LOCK asked remotely (another lock shares the topics: its code is not checked)")
                    self._handler.lock("mqtt")
                else:
                    self._warn("rate", "MQTT: LOCK dropped: more than %d commands a minute",
                               self.settings.commands_per_minute)
                return
            if self._refuse("conflict", "MQTT: %s refused: %s", action, conflict):
                self._bus.publish(Event.now(events.DENIED, clock=self._clock, reason="shared_topics",
                                            source="mqtt", action=action.lower()))
            return
        left = self._lockout.remaining()
        if left > 0:   # the code is not even looked at: guessing during a lockout tells nothing
            self._refuse("lockout", "MQTT: %s refused: remote lock commands are locked out after wrong codes "
                         "(%.0f s left)", action, left)
            if self._lockout.first_refusal():   # one event a lockout: that someone kept trying, not a flood
                self._bus.publish(Event.now(events.DENIED, clock=self._clock, reason="locked_out", source="mqtt",
                                            action=action.lower(), seconds_left=round(left)))
            return
        if not self._code_ok(code):
            # Counted before any budget: junk that empties the refused budget must not hide guesses.
            # An unreadable code file makes every code wrong: that is no guessing, so no lockout.
            seconds = None if self._code is _NO_CODE else self._lockout.failed()
            if self._refuse("code", "MQTT: %s refused: wrong or missing code", action):
                self._bus.publish(Event.now(events.DENIED, clock=self._clock, reason="bad_code", source="mqtt",
                                            action=action.lower()))
            if seconds is not None:   # at most one a lockout: neither budgeted nor rate-limited
                log.warning("MQTT: %d wrong or missing codes in a row: every remote lock command is refused "
                            "for %d s", CODE_LOCKOUT_AFTER, seconds)
                self._bus.publish(Event.now(events.DENIED, clock=self._clock, reason="code_lockout",
                                            source="mqtt", seconds=seconds))
            return
        if self._code is not None:
            self._lockout.succeeded()
        if not self._bucket.take():
            self._warn("rate", "MQTT: %s dropped: more than %d commands a minute", action,
                       self.settings.commands_per_minute)
            return
        log.info("MQTT: %s asked remotely", action)
        if action == "UNLOCK":
            self._handler.unlock("mqtt")
        elif action == "OPEN":
            self._handler.open("mqtt")
        else:
            self._handler.lock("mqtt")

    def _refuse(self, kind: str, message: str, *args: Any) -> bool:
        """A refused command: log it (via _warn) if the refused budget allows; True if it did (the caller
        then publishes its event, if any).  That budget only limits this work, never what is obeyed."""
        if not self._refused_bucket.take():
            self._warn("refused_rate", "MQTT: more than %d refused commands a minute; the rest are dropped "
                       "unlogged", self.settings.commands_per_minute)
            return False
        self._warn(kind, message, *args)
        return True

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        """log.warning, at most once per WARN_EVERY_SECONDS per kind, saying how many were not logged."""
        now = time.monotonic()
        suppressed, last = self._warned.get(kind, (0, -WARN_EVERY_SECONDS))
        if now - last < WARN_EVERY_SECONDS:
            self._warned[kind] = (suppressed + 1, last)
            return
        if suppressed:
            message += f" ({suppressed} more like this in the last {now - last:.0f} s were not logged)"
        log.warning(message, *args)
        self._warned[kind] = (0, now)

    def _code_ok(self, given: str | None) -> bool:
        if self._code is None:
            return True
        if self._code is _NO_CODE or given is None:
            return False
        # surrogatepass: JSON may carry a lone surrogate ("\\ud800"), which plain UTF-8 cannot encode.
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                                   str(self._code).encode("utf-8", "surrogatepass"))


def _parse_command(text: str) -> tuple[str | None, str | None]:
    """``'UNLOCK'`` or ``'{"action": "UNLOCK", "code": "1234"}'`` → (action, code)."""
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: {"a": [[[[... within the size limit
            return None, None
        if not isinstance(data, dict) or not isinstance(data.get("action"), str):
            return None, None
        code = data.get("code")
        if code is not None and not isinstance(code, str):
            code = str(code) if isinstance(code, int) and not isinstance(code, bool) else None
        return data["action"].strip().upper(), (code or None)
    if not text or len(text) > 20 or not text.isprintable():
        return None, None
    return text.upper(), None


# --------------------------------------------------------------------------- lock mqtt-test

def check(settings: MQTTSettings, timeout: float = 5.0, *, install: str = "",
          listen: float = 1.0) -> tuple[bool, str]:
    """Connect once with these settings and say plainly whether it worked, and why not.

    It connects as ``<client_id>-test`` (the broker would drop a running lock that has the client id
    itself) and probes the lock's topics for ``listen`` seconds: a lock that answers from another
    installation than ``install`` (install_id() of this config) uses the same topics.  Locks answer a
    probe but never take it for another lock.
    """
    where = f"{settings.host}:{settings.port}"
    try:
        client = _make_client(settings, will=False, client_id=f"{settings.client_id}-test")
    except (OSError, ValueError, ssl.SSLError) as exc:
        return False, f"cannot set up the client: {exc}"
    done = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        result["rc"] = reason_code
        result["connack"] = True
        done.set()

    def on_disconnect(client, userdata, flags, reason_code, properties):
        result.setdefault("rc", reason_code)
        done.set()

    others: dict[str, str] = {}
    mine = Hello(uuid.uuid4().hex, install, socket.gethostname(), probe=True)

    def on_message(client, userdata, message):
        said = Hello.read(message.payload)
        if (said is not None and not message.retain and not said.probe and said.instance != mine.instance
                and not (install and said.install == install)):
            others[said.instance] = said.host

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    try:
        client.connect(settings.host, settings.port, keepalive=settings.keepalive, clean_start=True,
                       properties=_connect_properties())
    except ssl.SSLError as exc:
        return False, f"TLS with {where} failed: {exc} (check mqtt.tls: ca_file, cert_file, key_file)"
    except OSError as exc:
        if settings.tls.enabled and isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            # a plain (non-TLS) listener hangs up on a TLS handshake
            return False, (f"{where} hung up on the TLS handshake: {exc} (mqtt.tls.enabled is true: is this a "
                           "TLS port, usually 8883, and not a plain one, usually 1883?)")
        return False, f"cannot reach the broker at {where}: {exc} (is it running? are mqtt.host and mqtt.port right?)"
    client.loop_start()
    try:
        if not done.wait(timeout):
            return False, f"{where} accepted the connection but did not answer within {timeout:g} s"
        rc = result["rc"]
        if rc.is_failure and "connack" not in result:
            tls = ("mqtt.tls.enabled is false: is this a TLS port (usually 8883)?" if not settings.tls.enabled
                   else "is this a plain (non-TLS) port, usually 1883?")
            return False, (f"{where} closed the connection without an MQTT answer: {tls} "
                           "(check mqtt.port and mqtt.tls.enabled)")
        if rc.is_failure and "protocol version" in str(rc).lower():
            return False, f"{where} refused the connection: {rc}: the lock speaks MQTT 5 (mosquitto 1.6 or later)"
        if rc.is_failure:
            return False, f"{where} refused the connection: {rc} (check mqtt.username, the password and ACLs)"
        who = f" as {settings.username}" if settings.username else ""
        said = f"connected to {where}{who}" + (" with TLS" if settings.tls.enabled else "")
        if listen > 0:
            topic = Topics.of(settings).instance
            client.subscribe(topic, options=SubscribeOptions(qos=1, noLocal=True))
            client.publish(topic, mine.dumps(), qos=1)
            time.sleep(listen)
            if others:
                return False, f"{said}, but " + conflict_message(settings, sorted(others.values())[0])
        return True, said
    finally:
        client.disconnect()
        client.loop_stop()
