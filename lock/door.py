"""The door: relay, door contact and exit button, through gpiozero.

The only module that imports gpiozero, and only inside :meth:`Door.open` and
:func:`force_off`, so importing it touches no hardware and registers nothing.
gpiozero picks the pin factory (lgpio on a Pi 5, ``GPIOZERO_PIN_FACTORY`` to
override); tests pass ``pin_factory=MockFactory()``.

Fail-secure: the relay rests de-energised (locked) and is energised only for
an unlock pulse of ``unlock_seconds``.  Every path ends with it off: the pulse
timer, :meth:`Door.lock`, :meth:`Door.close` (also on ``with`` exit), and
``python -m lock.door --off`` which the systemd unit runs after the daemon
stops, in case it died with the relay on.  When gpiozero releases a pin it
becomes an input, so wire the relay module so that an unconnected input means
locked (most modules do; else add a pull resistor to the inactive level).

With a door contact wired (a reed switch to ground, the internal pull-up on):
the door relocks as soon as it closes after opening during a pulse; it reports
``door_held_open`` once per opening after ``held_open_seconds``, and
``door_forced`` when it opens while the relay is off.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from lock import config
from lock.config import DoorSettings
from lock.errors import ConfigError, DoorError
from lock.events import (DOOR_CONTACT, DOOR_FORCED, DOOR_HELD_OPEN, EXIT_BUTTON, LOCK_STATE, Event,
                         EventBus)

log = logging.getLogger(__name__)

LOCKED, UNLOCKED, OPEN = "LOCKED", "UNLOCKED", "OPEN"



def _lgpio_workdir() -> None:
    """Give lgpio a folder of its own before gpiozero is first imported.

    lgpio (gpiozero's factory on a Pi 5) makes its notification pipes in the
    current directory, or in $LG_WD: the service runs in / and cannot write
    there, so without it lgpio fails and no factory is left (gpiozero#1106,
    joan2937/lg#22).  Not the shared /tmp: a pipe another user made there
    first is opened as it is (lgNotify.c), and its writer could then feed the
    lock fake exit-button presses.  The systemd unit sets LG_WD=/tmp with
    PrivateTmp (a /tmp of its own); elsewhere this makes a 0700 folder,
    removed at exit.
    """
    if not os.environ.get("LG_WD"):
        folder = tempfile.mkdtemp(prefix="face-lock-lgpio-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        os.environ["LG_WD"] = folder

# The relay the daemon holds, for `python -m lock.door --off` after it died:
# in systemd's $RUNTIME_DIRECTORY (/run/face-lock), which ExecStopPost sees too.
RECORD_NAME = "relay.json"


def record_path() -> Path | None:
    d = os.environ.get("RUNTIME_DIRECTORY")
    return Path(d.split(":")[0]) / RECORD_NAME if d else None


def _write_record(settings: DoorSettings) -> None:
    p = record_path()
    if p is None:
        return
    try:
        tmp = p.with_name(f".{RECORD_NAME}.tmp")
        tmp.write_text(json.dumps({"relay_pin": settings.relay_pin,
                                   "relay_active_high": settings.relay_active_high}))
        os.replace(tmp, p)
    except OSError as exc:
        log.warning("%s: cannot record the relay pin for the fail-secure stop (%s); ExecStopPost will "
                    "use the config file's door section", p, exc)


def _device(key: str, make: Callable[..., Any], pin: str, **kwargs: Any) -> Any:
    """Make one gpiozero device; failures become a DoorError naming the config key."""
    _lgpio_workdir()
    import gpiozero

    try:
        return make(pin, **kwargs)
    except gpiozero.GPIOZeroError as exc:
        raise DoorError(f"door.{key} = {pin!r}: cannot use this pin: {exc} "
                        "(check the pin name, that no other program holds it, and the GPIO library)") from exc


def _relay(settings: DoorSettings, pin_factory: Any) -> Any:
    _lgpio_workdir()
    import gpiozero

    # initial_value=False: the relay must never energise while we start up.
    return _device("relay_pin", gpiozero.DigitalOutputDevice, settings.relay_pin,
                   active_high=settings.relay_active_high, initial_value=False, pin_factory=pin_factory)


class Door:
    """Relay pulse, door contact and exit button; publishes state and alerts to ``bus``.

    Thread-safe: gpiozero callbacks, the pulse and held-open timers, and the
    daemon may all call in; events are published outside the internal lock.
    """

    def __init__(self, settings: DoorSettings, bus: EventBus, *, pin_factory: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._bus = bus
        self._pin_factory = pin_factory
        self._clock = clock
        self._lock = threading.RLock()
        self._relay: Any = None
        self._contact: Any = None
        self._button: Any = None
        self._contact_open: bool | None = None
        self._opened_during_pulse = False
        self._open_since: float | None = None
        self._pulse: threading.Timer | None = None
        self._held: threading.Timer | None = None
        self._published_state: str | None = None
        self._closed = False

    # -- life cycle -----------------------------------------------------------

    def open(self) -> "Door":
        """Claim the pins: relay off (locked), then the optional contact and exit button."""
        _lgpio_workdir()
        import gpiozero

        s = self.settings
        bounce = s.bounce_seconds or None
        events: list[Event] = []
        with self._lock:
            if self._closed:
                raise DoorError("this Door is closed; make a new one")
            if self._relay is not None:
                return self
            try:
                self._relay = _relay(s, self._pin_factory)
                _write_record(s)
                if s.contact_pin is not None:
                    self._contact = _device("contact_pin", gpiozero.DigitalInputDevice, s.contact_pin,
                                            pull_up=True, bounce_time=bounce, pin_factory=self._pin_factory)
                    self._contact_open = self._is_open(self._contact.is_active)
                    self._contact.when_activated = lambda: self._on_contact(True)
                    self._contact.when_deactivated = lambda: self._on_contact(False)
                    events.append(Event.now(DOOR_CONTACT, open=self._contact_open))
                    if self._contact_open:  # propped open across a restart: still "held open" in time
                        log.warning("the door is open as the lock starts")
                        self._open_since = self._clock()
                        self._start_held_timer()
                if s.exit_button_pin is not None:
                    self._button = _device("exit_button_pin", gpiozero.Button, s.exit_button_pin,
                                           pull_up=True, bounce_time=bounce, pin_factory=self._pin_factory)
                    self._button.when_pressed = self._on_exit_button
            except BaseException:
                self._close_devices()
                raise
            log.info("door ready: relay %s (active %s), contact %s, exit button %s", s.relay_pin,
                     "high" if s.relay_active_high else "low", s.contact_pin, s.exit_button_pin)
            events += self._state_changes()
        self._publish(events)
        return self

    def announce(self) -> None:
        """Publish the lock state (and the contact) as they are now, whatever was published before.

        For subscribers that came after :meth:`open` (the audit log, MQTT): a retained
        ``UNLOCKED`` left on the broker by a process killed mid-pulse must not stand.
        """
        with self._lock:
            self._require_open()
            state = self._published_state = self.state
            events = [Event.now(LOCK_STATE, state=state)]
            if self._contact is not None:
                events.append(Event.now(DOOR_CONTACT, open=self._contact_open))
        self._publish(events)
        with self._lock:  # a change published meanwhile may have gone out before ours: say the newest last
            now = self.state
            if now == state:
                return
            self._published_state = now
        self._publish([Event.now(LOCK_STATE, state=now)])

    def close(self) -> None:
        """Relay off first, then release every pin.  Safe to call twice."""
        events: list[Event] = []
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for timer in (self._pulse, self._held):
                if timer is not None:
                    timer.cancel()
            self._pulse = self._held = None
            try:
                if self._relay is not None and self._relay.is_active:
                    self._relay.off()
                    events.append(Event.now(LOCK_STATE, state=LOCKED))
                    log.info("relay off: door closing down")
            finally:
                self._close_devices()
        self._publish(events)

    def _close_devices(self) -> None:
        for device in (self._relay, self._contact, self._button):
            if device is not None:
                try:
                    device.close()
                except Exception:  # keep closing the others
                    log.exception("closing %r failed", device)
        self._relay = self._contact = self._button = None

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Door":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands -------------------------------------------------------------

    def unlock(self, reason: str = "") -> None:
        """Energise the relay for ``unlock_seconds``; a repeated unlock restarts the pulse."""
        events: list[Event] = []
        error: BaseException | None = None
        with self._lock:
            self._require_open()
            if not self._relay.is_active:
                # Already open (held open) counts as opened: closing it ends the pulse.
                self._opened_during_pulse = bool(self._contact_open)
            try:
                # The timer that ends the pulse is running before the relay is
                # energised: should it fail to start (no thread can be made),
                # the relay is left (or put) off, the state says so, and the error goes up.
                if self._pulse is not None:
                    self._pulse.cancel()
                pulse = self._pulse = threading.Timer(self.settings.unlock_seconds, self._pulse_over)
                pulse.args = (pulse,)
                pulse.daemon = True
                pulse.start()
                self._relay.on()
            except BaseException as exc:
                self._release("the unlock failed")
                error = exc
            else:
                log.info("unlocked for %.1f s (%s)", self.settings.unlock_seconds, reason or "no reason given")
            events += self._state_changes()
        self._publish(events)
        if error is not None:
            raise error

    def lock(self) -> None:
        """De-energise the relay now (no-op when it is off or the door is not open)."""
        events: list[Event] = []
        with self._lock:
            if self._relay is None:
                return
            self._release("lock requested")
            events += self._state_changes()
        self._publish(events)

    # -- state ----------------------------------------------------------------

    @property
    def state(self) -> str:
        """``OPEN`` while the contact shows the door open, else ``UNLOCKED`` while energised, else ``LOCKED``."""
        with self._lock:
            if self._contact_open:
                return OPEN
            return UNLOCKED if self._relay is not None and self._relay.is_active else LOCKED

    @property
    def contact_open(self) -> bool | None:
        """True/False from the door contact; None when no contact is wired (or not open yet)."""
        return self._contact_open

    # -- internals (called with or without the lock held; RLock) ---------------

    def _require_open(self) -> None:
        if self._closed:
            raise DoorError("the door is closed down; it cannot unlock")
        if self._relay is None:
            raise DoorError("the door is not open(); call open() before unlock()")

    def _is_open(self, active: bool) -> bool:
        # With the pull-up, "active" means the pin reads low.
        return active != self.settings.contact_open_when_high

    def _release(self, why: str) -> None:
        if self._pulse is not None:
            self._pulse.cancel()
            self._pulse = None
        if self._relay.is_active:
            self._relay.off()
            log.info("relay off: %s", why)
        self._opened_during_pulse = False

    def _pulse_over(self, timer: threading.Timer) -> None:
        events: list[Event] = []
        with self._lock:
            if self._closed or timer is not self._pulse:  # restarted, locked or closed meanwhile
                return
            try:
                self._release("pulse over")
            except Exception:  # noqa: BLE001  (the pulse is cleared: check() tries again, or stops the service)
                log.exception("the relay could not be turned off at the end of the pulse; trying again")
                return
            events += self._state_changes()
        self._publish(events)

    def check(self) -> None:
        """Energised with no pulse pending (turning it off at the end of one failed): off again now.

        Called by the daemon's loop every frame, or every second without frames.  Raises
        DoorError if the relay still cannot be turned off: the daemon then stops, and systemd's
        ExecStopPost (``python -m lock.door --off``, a fresh process) forces it off.
        """
        events: list[Event] = []
        with self._lock:
            if self._closed or self._relay is None or self._pulse is not None:
                return
            try:
                if not self._relay.is_active:
                    return
                self._release("energised with no unlock pending (ending the last pulse failed)")
            except Exception as exc:  # noqa: BLE001
                raise DoorError(f"the relay on door.relay_pin {self.settings.relay_pin} cannot be turned off: "
                                f"{exc}") from exc
            events += self._state_changes()
        self._publish(events)

    def _on_contact(self, active: bool) -> None:
        events: list[Event] = []
        with self._lock:
            if self._closed or self._relay is None:
                return
            is_open = self._is_open(active)
            if is_open == self._contact_open:
                return
            self._contact_open = is_open
            events.append(Event.now(DOOR_CONTACT, open=is_open))
            now = self._clock()
            if is_open:
                self._open_since = now
                if self._relay.is_active:
                    self._opened_during_pulse = True
                else:
                    log.warning("door opened while locked")
                    events.append(Event.now(DOOR_FORCED))
                self._start_held_timer()
            else:
                log.info("door closed after %.1f s open", now - (self._open_since or now))
                if self._held is not None:
                    self._held.cancel()
                    self._held = None
                if self._relay.is_active and self._opened_during_pulse:
                    self._release("door closed")
            events += self._state_changes()
        self._publish(events)

    def _start_held_timer(self) -> None:
        if self._held is not None:
            self._held.cancel()
        self._held = threading.Timer(self.settings.held_open_seconds, self._held_too_long)
        self._held.args = (self._held,)
        self._held.daemon = True
        self._held.start()

    def _held_too_long(self, timer: threading.Timer) -> None:
        with self._lock:
            if self._closed or timer is not self._held or not self._contact_open:
                return
            self._held = None
        log.warning("door held open for %.0f s", self.settings.held_open_seconds)
        self._publish([Event.now(DOOR_HELD_OPEN, seconds=self.settings.held_open_seconds)])

    def _on_exit_button(self) -> None:
        if self._closed:
            return
        self._publish([Event.now(EXIT_BUTTON)])
        self.unlock("exit_button")

    def _state_changes(self) -> list[Event]:
        state = self.state
        if state == self._published_state:
            return []
        self._published_state = state
        return [Event.now(LOCK_STATE, state=state)]

    def _publish(self, events: list[Event]) -> None:
        for event in events:
            self._bus.publish(event)


def force_off(settings: DoorSettings, pin_factory: Any = None) -> None:
    """Drive the relay pin to its inactive (locked) level and release it.

    For systemd's ExecStopPost: the daemon is gone, maybe with the relay on.
    Claiming the pin with ``initial_value=False`` is what drives it inactive.
    """
    _relay(settings, pin_factory).close()
    log.info("relay on %s (active %s) forced off", settings.relay_pin,
             "high" if settings.relay_active_high else "low")


def _gpio_name(pin: str) -> str:
    """One name for each header pin: "17", "BCM17", "BOARD11" and "J8:11" are all "GPIO17".

    gpiozero's mock factory only lends its 40-pin header table here (the same
    on every such Pi); nothing is claimed.  A name it does not know stays as it is.
    """
    try:
        from gpiozero.pins.mock import MockFactory
        return str(MockFactory().board_info.to_gpio(pin))
    except Exception:  # noqa: BLE001  (an unknown name, another board: compare as written)
        return str(pin)


def off_targets(config_path: str | None) -> tuple[list[DoorSettings], list[str]]:
    """The relays to force off, and what could not be read.

    The one the daemon recorded (it held that one, whatever the file says
    now), and the config file's door section, read on its own so that a
    mistake made meanwhile elsewhere in the file does not stop this.
    """
    targets: list[DoorSettings] = []
    problems: list[str] = []
    p = record_path()
    if p is not None and p.exists():
        try:
            targets.append(DoorSettings.model_validate(json.loads(p.read_text())))
        except (OSError, ValueError) as exc:
            problems.append(f"{p}: {exc}")
    try:
        door = config.load_door(config_path)
    except ConfigError as exc:
        problems.append(str(exc))
    else:
        held = next((t for t in targets if _gpio_name(t.relay_pin) == _gpio_name(door.relay_pin)), None)
        if held is None:
            targets.append(door)
        elif held.relay_active_high != door.relay_active_high:
            # Driving one pin "off" at both polarities would leave it at one of them: energised.
            # The daemon's record says how the relay on it was driven; that one wins.
            problems.append(f"door.relay_active_high is {door.relay_active_high} in the config but the daemon "
                            f"drove {door.relay_pin} as active {'high' if held.relay_active_high else 'low'}: "
                            "forced off as the daemon drove it")
    return targets, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lock.door",
                                     description="Force the door relay off (locked) and exit.")
    parser.add_argument("--off", action="store_true", help="drive the relay pin to its inactive level")
    parser.add_argument("--config", metavar="PATH", help="config.yaml (default: /etc/lock/config.yaml)")
    args = parser.parse_args(argv)
    if not args.off:
        parser.error("nothing to do: give --off")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    targets, problems = off_targets(args.config)
    for text in problems:
        sys.stderr.write(f"{text}\n")
    if not targets:
        sys.stderr.write("no relay to force off: neither the daemon's record nor the config's door section "
                         "could be read\n")
        return 2
    failed = 0
    for door in targets:
        try:
            force_off(door)
        except DoorError as exc:
            sys.stderr.write(f"{exc}\n")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
