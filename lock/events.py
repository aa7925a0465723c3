"""Typed events and the small bus that carries them out of the daemon.

The daemon (and the door) publish; the MQTT bridge and the audit log
subscribe.  Subscribers are called synchronously on the publisher's thread,
so they must be quick and never block (queue the work, do not send it).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

# Events a person cares about (Home Assistant's `event` entity carries these).
RECOGNIZED = "recognized"        # an enrolled person was accepted; the door unlocks
UNKNOWN = "unknown"              # a face was seen enough times and matched nobody
DENIED = "denied"                # recognised but not allowed now (schedule, lockout, bad code)
LOCKOUT = "lockout"              # too many unknown faces: face unlock suspended
REMOTE_UNLOCK = "remote_unlock"  # unlock asked over MQTT or the control socket
EXIT_BUTTON = "exit_button"      # the exit button inside was pressed
DOOR_FORCED = "door_forced"      # the door opened while locked
DOOR_HELD_OPEN = "door_held_open"  # the door stayed open too long
DOOR_EVENTS = (RECOGNIZED, UNKNOWN, DENIED, LOCKOUT, REMOTE_UNLOCK, EXIT_BUTTON,
               DOOR_FORCED, DOOR_HELD_OPEN)

# State changes (mapped to Home Assistant state topics, not to the event entity).
LOCK_STATE = "lock_state"        # detail: {"state": "LOCKED" | "UNLOCKED" | "OPEN" | "JAMMED" | ...}
DOOR_CONTACT = "door_contact"    # detail: {"open": bool}
FACE_UNLOCK = "face_unlock"      # detail: {"enabled": bool}
STATS = "stats"                  # detail: {"fps": float, "latency_ms": float, "camera": "ok" / "no_frames" / "blank"}
UNKNOWN_FACE_IMAGE = "unknown_face_image"  # detail: {"jpeg": bytes} (only if enabled)
STATE_EVENTS = (LOCK_STATE, DOOR_CONTACT, FACE_UNLOCK, STATS, UNKNOWN_FACE_IMAGE)


@dataclasses.dataclass(frozen=True)
class Event:
    """Something that happened at the door.

    ``time`` is seconds since the epoch when it happened (not when it was
    sent), so events delivered late keep their original time.  ``detail``
    holds extra values; ``private`` holds what never leaves the device by
    default (similarity scores: an oracle for hill-climbing attacks), kept by
    the local audit log only.
    """

    kind: str
    time: float
    person: str | None = None
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    private: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Names this event in the audit log, so that the MQTT bridge can mark it delivered (lock/audit.py).
    uid: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex, compare=False, repr=False)

    @classmethod
    def now(cls, kind: str, person: str | None = None, *, clock: Callable[[], float] = time.time,
            private: Mapping[str, Any] | None = None, **detail: Any) -> "Event":
        return cls(kind=kind, time=clock(), person=person, detail=dict(detail),
                   private=dict(private or {}))

    def public_dict(self, include_private: bool = False) -> dict[str, Any]:
        """The JSON-able form sent off the device (scores only if asked)."""
        out: dict[str, Any] = {"event_type": self.kind, "time": self.time}
        if self.person is not None:
            out["person"] = self.person
        out.update({k: v for k, v in self.detail.items() if not isinstance(v, (bytes, bytearray))})
        if include_private:
            out.update(self.private)
        return out


Subscriber = Callable[[Event], None]


class EventBus:
    """Fan-out of events to subscribers; a failing subscriber never stops the others."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Subscriber) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Subscriber) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def publish(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(event)
            except Exception:  # a broken subscriber must not keep the door from working
                log.exception("event subscriber %r failed on %s", callback, event.kind)
