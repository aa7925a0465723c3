"""The door on gpiozero's MockFactory: relay pulse, contact, exit button, force-off.

Timing checks allow for a slow machine: they assert order and generous bounds.
"""

from __future__ import annotations

import json
import threading
import time

import gpiozero
import pytest
from gpiozero.pins.mock import MockFactory

from lock.config import DoorSettings
from lock.door import Door, force_off, main
from lock.errors import DoorError
from lock.events import EventBus

RELAY, CONTACT, BUTTON = 17, 27, 22


@pytest.fixture
def factory():
    return MockFactory()


@pytest.fixture
def events():
    return []


def make(factory, events, **kw) -> Door:
    base = dict(relay_pin=f"GPIO{RELAY}", unlock_seconds=0.2, held_open_seconds=30.0, bounce_seconds=0)
    base.update(kw)
    bus = EventBus()
    bus.subscribe(events.append)
    return Door(DoorSettings(**base), bus, pin_factory=factory)


def wired(factory, events, **kw) -> Door:
    """A door with contact and exit button, opened, the door shut, events cleared."""
    door = make(factory, events, contact_pin=f"GPIO{CONTACT}", exit_button_pin=f"GPIO{BUTTON}", **kw).open()
    factory.pin(CONTACT).drive_low()   # reed switch closed: door shut
    events.clear()
    return door


def wait_for(predicate, timeout=5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def summary(events) -> list:
    return [(e.kind, dict(e.detail)) for e in events]


def states(factory, pin=RELAY) -> list[bool]:
    return [s.state for s in factory.pin(pin).states]


# -- relay -----------------------------------------------------------------------

def test_constructor_touches_no_pin_and_open_rests_locked(factory, events):
    door = make(factory, events)
    assert factory.pin(RELAY).function == "input"
    door.open()
    assert factory.pin(RELAY).function == "output"
    assert states(factory) == [False]            # never energised, not even for a moment
    assert door.state == "LOCKED" and door.contact_open is None
    assert summary(events) == [("lock_state", {"state": "LOCKED"})]
    door.close()


def test_unlock_pulses_the_relay_for_unlock_seconds(factory, events):
    with make(factory, events, unlock_seconds=0.2) as door:
        door.unlock("test")
        assert factory.pin(RELAY).state is True and door.state == "UNLOCKED"
        assert wait_for(lambda: not factory.pin(RELAY).state)
        assert door.state == "LOCKED"
    history = factory.pin(RELAY).states
    assert [s.state for s in history] == [False, True, False]
    assert 0.19 <= history[2].timestamp < 2.0    # time spent energised
    assert summary(events)[1:] == [("lock_state", {"state": "UNLOCKED"}), ("lock_state", {"state": "LOCKED"})]


def test_repeated_unlock_restarts_the_pulse(factory, events):
    with make(factory, events, unlock_seconds=0.3) as door:
        door.unlock()
        time.sleep(0.2)
        door.unlock()
        assert wait_for(lambda: not factory.pin(RELAY).state)
    history = factory.pin(RELAY).states
    assert [s.state for s in history] == [False, True, False]  # one continuous pulse
    assert history[2].timestamp >= 0.45


@pytest.mark.parametrize("during_pulse", [False, True])
def test_an_unlock_whose_pulse_timer_cannot_start_leaves_the_relay_off(factory, events, monkeypatch, during_pulse):
    """No thread for the pulse's end (say, at the unit's memory limit): the relay is not left energised."""
    with make(factory, events, unlock_seconds=5) as door:
        if during_pulse:
            door.unlock()                     # a pulse is running; the second unlock restarts it
        def no_thread(self):
            raise RuntimeError("can't start new thread")
        monkeypatch.setattr(threading.Timer, "start", no_thread)
        with pytest.raises(RuntimeError, match="new thread"):
            door.unlock("test")
        assert factory.pin(RELAY).state is False and door.state == "LOCKED"
        monkeypatch.undo()
        door.unlock()                         # and the next unlock works
        assert factory.pin(RELAY).state is True
        door.lock()
    published = [state for kind, d in summary(events) if kind == "lock_state" for state in [d["state"]]]
    assert published == ["LOCKED"] + ["UNLOCKED", "LOCKED"] * (2 if during_pulse else 1), published


def test_active_low_relay_inverts_levels(factory, events):
    with make(factory, events, relay_active_high=False, unlock_seconds=0.2) as door:
        assert factory.pin(RELAY).state is True      # inactive = high
        door.unlock()
        assert factory.pin(RELAY).state is False
        assert wait_for(lambda: factory.pin(RELAY).state)
    assert states(factory)[-3:] == [True, False, True]


def test_lock_ends_the_pulse_now(factory, events):
    with make(factory, events, unlock_seconds=30) as door:
        door.unlock()
        door.lock()
        assert factory.pin(RELAY).state is False and door.state == "LOCKED"
        door.lock()                                   # harmless when already locked
    assert states(factory) == [False, True, False]


def test_close_while_energised_turns_the_relay_off_and_releases_pins(factory, events):
    door = make(factory, events, unlock_seconds=30).open()
    door.unlock()
    door.close()
    assert factory.pin(RELAY).state is False and door.closed
    assert factory.pin(RELAY).function == "input"
    assert summary(events)[-1] == ("lock_state", {"state": "LOCKED"})
    door.close()                                      # idempotent
    with pytest.raises(DoorError):
        door.unlock()


def test_exception_in_with_block_leaves_the_relay_off(factory, events):
    with pytest.raises(RuntimeError):
        with make(factory, events, unlock_seconds=30) as door:
            door.unlock()
            raise RuntimeError("boom")
    assert factory.pin(RELAY).state is False


def test_unlock_before_open_is_an_error(factory, events):
    with pytest.raises(DoorError, match="open"):
        make(factory, events).unlock()


def test_a_bad_pin_names_the_key_and_releases_what_was_claimed(factory, events):
    door = make(factory, events, contact_pin="GPIO99")   # kept alive: gpiozero closes devices on GC
    with pytest.raises(DoorError, match="door.contact_pin"):
        door.open()
    assert factory.pin(RELAY).function == "input"
    make(factory, events).open().close()              # the relay pin is free again


# -- door contact ----------------------------------------------------------------

def test_door_relocks_as_soon_as_it_closes_after_opening(factory, events):
    with wired(factory, events, unlock_seconds=30) as door:
        door.unlock("face")
        factory.pin(CONTACT).drive_high()             # door opens
        assert door.state == "OPEN" and door.contact_open is True
        assert factory.pin(RELAY).state is True
        factory.pin(CONTACT).drive_low()              # and shuts
        assert factory.pin(RELAY).state is False and door.state == "LOCKED"
    assert summary(events) == [
        ("lock_state", {"state": "UNLOCKED"}),
        ("door_contact", {"open": True}), ("lock_state", {"state": "OPEN"}),
        ("door_contact", {"open": False}), ("lock_state", {"state": "LOCKED"}),
    ]


def test_contact_polarity_can_be_inverted(factory, events):
    door = make(factory, events, contact_pin=f"GPIO{CONTACT}", contact_open_when_high=False).open()
    assert door.contact_open is False                 # pull-up reads high: shut
    factory.pin(CONTACT).drive_low()
    assert door.contact_open is True
    door.close()


def test_door_held_open_raises_one_event(factory, events):
    with wired(factory, events, unlock_seconds=0.1, held_open_seconds=0.2) as door:
        door.unlock()
        factory.pin(CONTACT).drive_high()
        assert wait_for(lambda: any(e.kind == "door_held_open" for e in events))
        time.sleep(0.4)
        assert [e.kind for e in events].count("door_held_open") == 1
        assert door.state == "OPEN" and factory.pin(RELAY).state is False   # the pulse still ended
        factory.pin(CONTACT).drive_low()
        assert door.state == "LOCKED"
    assert "door_forced" not in [e.kind for e in events]


def test_a_door_already_open_when_the_lock_starts_is_reported_held_open(factory, events):
    """Propped open while the service restarted: the held-open alert still comes (and no 'forced')."""
    factory.pin(CONTACT).drive_high()   # reed switch apart: open
    with make(factory, events, contact_pin=f"GPIO{CONTACT}", held_open_seconds=0.2) as door:
        assert door.state == "OPEN"
        assert wait_for(lambda: any(e.kind == "door_held_open" for e in events))
        factory.pin(CONTACT).drive_low()
        assert door.state == "LOCKED"
    assert [e.kind for e in events].count("door_held_open") == 1
    assert "door_forced" not in [e.kind for e in events]


def test_held_open_timer_stops_when_the_door_shuts(factory, events):
    with wired(factory, events, held_open_seconds=0.2) as door:
        door.unlock()
        factory.pin(CONTACT).drive_high()
        factory.pin(CONTACT).drive_low()
        time.sleep(0.4)
    assert "door_held_open" not in [e.kind for e in events]


def test_door_forced_when_it_opens_while_locked(factory, events):
    with wired(factory, events) as door:
        factory.pin(CONTACT).drive_high()
        assert door.state == "OPEN"
    assert [e.kind for e in events][:3] == ["door_contact", "door_forced", "lock_state"]


# -- exit button -----------------------------------------------------------------

def test_exit_button_unlocks(factory, events):
    with wired(factory, events, unlock_seconds=30):
        factory.pin(BUTTON).drive_low()               # pressed (pull-up, switch to ground)
        factory.pin(BUTTON).drive_high()
        assert factory.pin(RELAY).state is True
    assert summary(events)[:2] == [("exit_button", {}), ("lock_state", {"state": "UNLOCKED"})]


# -- force_off and python -m lock.door --off -------------------------------------

@pytest.mark.parametrize("active_high", [True, False])
def test_force_off_drives_the_pin_inactive(factory, active_high):
    crashed = gpiozero.DigitalOutputDevice(RELAY, active_high=active_high, pin_factory=factory)
    crashed.on()
    crashed.close()                                   # the process died with the relay on
    assert factory.pin(RELAY).state is active_high
    force_off(DoorSettings(relay_pin=str(RELAY), relay_active_high=active_high), pin_factory=factory)
    assert factory.pin(RELAY).state is (not active_high)


def test_main_off_exits_2_on_bad_config(tmp_path, capsys):
    bad = tmp_path / "config.yaml"
    bad.write_text("door:\n  relay_pins: 17\n")
    assert main(["--off", "--config", str(bad)]) == 2
    assert "door.relay_pins" in capsys.readouterr().err


def test_main_off_forces_the_relay_off(tmp_path, monkeypatch):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setattr(gpiozero.Device, "pin_factory", None)   # restored after the test
    good = tmp_path / "config.yaml"
    good.write_text("door:\n  relay_pin: 23\n  relay_active_high: false\n")
    assert main(["--off", "--config", str(good)]) == 0
    assert gpiozero.Device.pin_factory.pin(23).state is True    # active-low: off is high


def test_off_after_a_crash_uses_the_relay_the_daemon_held_whatever_the_file_says_now(tmp_path, monkeypatch):
    """Before, --off re-read the whole config: a typo made meanwhile in another section (exit 2) or a
    relay_pin changed without a restart (the wrong pin forced off) left the real relay energised."""
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setattr(gpiozero.Device, "pin_factory", None)   # restored after the test
    held = DoorSettings(relay_pin="GPIO22", relay_active_high=False)
    door = Door(held, EventBus()).open()                        # the daemon, with the default factory
    assert json.loads((tmp_path / "relay.json").read_text()) == {"relay_pin": "GPIO22",
                                                                  "relay_active_high": False}
    door._relay.on()                                            # it dies mid-pulse:
    door._relay.close()                                         # gone, the pin left energised
    pin = gpiozero.Device.pin_factory.pin(22)
    assert pin.state is False                                   # active-low: energised
    cfg = tmp_path / "config.yaml"
    cfg.write_text("door:\n  relay_pin: GPIO27\nmqtt:\n  enabeld: true\n")   # edited since, with a typo
    assert main(["--off", "--config", str(cfg)]) == 0
    assert pin.state is True                                    # the held relay: off
    assert gpiozero.Device.pin_factory.pin(27).state is False   # the file's (active-high): off too


def test_off_without_a_record_reads_only_the_door_section(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setattr(gpiozero.Device, "pin_factory", None)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("door:\n  relay_pin: 24\n  relay_active_high: false\nmqtt:\n  enabeld: true\n")
    assert main(["--off", "--config", str(cfg)]) == 0
    assert gpiozero.Device.pin_factory.pin(24).state is True
    assert capsys.readouterr().err == ""


def test_off_never_drives_the_held_pin_at_both_polarities(tmp_path, monkeypatch, capsys):
    """The config edited to the other polarity of the same pin: forcing off both would leave it energised."""
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setattr(gpiozero.Device, "pin_factory", None)
    door = Door(DoorSettings(relay_pin="GPIO17", relay_active_high=True), EventBus()).open()
    door._relay.on()
    door._relay.close()                                         # died mid-pulse, pin high (energised)
    cfg = tmp_path / "config.yaml"
    for spelling in ("GPIO17", "17", "BCM17", "BOARD11"):       # one pin, however it is written
        cfg.write_text(f"door:\n  relay_pin: '{spelling}'\n  relay_active_high: false\n")
        assert main(["--off", "--config", str(cfg)]) == 0
        assert gpiozero.Device.pin_factory.pin(17).state is False, spelling   # off as the daemon drove it
        assert "forced off as the daemon drove it" in capsys.readouterr().err


class _FailingWrites:
    """Make the relay pin's writes to 'off' fail (an I/O error on the GPIO) while ``on``."""

    def __init__(self, pin, active_high: bool = True) -> None:
        self.pin, self.off_level, self.on = pin, not active_high, False
        self._orig = pin._set_state

    def __enter__(self):
        def flaky(value):
            if self.on and bool(value) == self.off_level:
                raise OSError(5, "Input/output error (test)")
            return self._orig(value)
        self.pin._set_state = flaky
        return self

    def __exit__(self, *exc):
        self.pin._set_state = self._orig


def test_a_failed_write_at_the_end_of_a_pulse_is_retried(factory, events):
    """One failed write when the pulse ended left the strike released for good (nothing tried again)."""
    door = make(factory, events).open()
    pin = factory.pin(RELAY)
    with _FailingWrites(pin) as fail:
        door.unlock("test")
        fail.on = True
        assert wait_for(lambda: door._pulse is None, 3.0)       # the pulse ended, and turning off failed
        assert pin.state is True and door.state == "UNLOCKED"
        with pytest.raises(DoorError) as err:                    # still failing: the daemon must stop
            door.check()
        assert f"GPIO{RELAY}" in str(err.value) and "cannot be turned off" in str(err.value)
        fail.on = False                                          # the GPIO answers again
        events.clear()
        door.check()
    assert pin.state is False and door.state == "LOCKED"
    assert ("lock_state", {"state": "LOCKED"}) in summary(events)
    door.check()                                                 # nothing to do: no error, no event
    door.close()


def test_the_daemon_stops_when_the_relay_cannot_be_turned_off(tmp_path):
    """`lock run` exits (status 1) so that systemd's ExecStopPost forces the relay off from a fresh process."""
    import os

    from lock import daemon as daemon_mod
    from lock.control import request
    from tests import scenario
    frames = scenario.write_frames(tmp_path / "frames", scenario.empty(3))
    s = scenario.settings(tmp_path, frames, camera={"loop": True}, door={"unlock_seconds": 0.2})
    factory = MockFactory()
    pin = factory.pin(RELAY)
    unlocked = threading.Event()

    def unlock_then_fail():   # from the side, as `lock unlock` would: run() holds the main thread
        assert wait_for(lambda: os.path.exists(s.control.socket), 30)
        fail.on = True        # from now on the relay can be turned on, not off
        unlocked.set()
        list(request(s.control.socket, {"cmd": "unlock"}))

    import signal
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        with _FailingWrites(pin) as fail:
            side = threading.Thread(target=unlock_then_fail, daemon=True)
            side.start()
            # Should the loop not stop by itself, a SIGTERM stops it (rc 0: the test fails, not hangs).
            stopper = threading.Timer(60, os.kill, (os.getpid(), signal.SIGTERM))
            stopper.start()
            rc = daemon_mod.run(s, None, pin_factory=factory)   # (installs its signal handlers)
            stopper.cancel()
            side.join(10)
            fail.on = False
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert unlocked.is_set() and rc == 1


def test_lgpio_gets_a_private_folder_outside_systemd(tmp_path):
    """lgpio's notification pipes went in the shared /tmp, where another user could make them first."""
    import os
    import subprocess
    import sys
    code = ("import os, stat\n"
            "from gpiozero.pins.mock import MockFactory\n"
            "from lock.config import DoorSettings\n"
            "from lock.door import Door\n"
            "from lock.events import EventBus\n"
            "Door(DoorSettings(), EventBus(), pin_factory=MockFactory()).open().close()\n"
            "d = os.environ['LG_WD']\n"
            "print(d, oct(stat.S_IMODE(os.stat(d).st_mode)))\n")
    env = {k: v for k, v in os.environ.items() if k != "LG_WD"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    folder, mode = r.stdout.split()
    assert mode == "0o700" and folder != "/tmp" and "face-lock-lgpio-" in folder
    assert not os.path.exists(folder)                           # removed at exit
