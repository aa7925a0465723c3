"""`lock doctor`: check everything the lock needs and say plainly what to fix."""

from __future__ import annotations

import ctypes.util
import os
from pathlib import Path

from lock import config as config_mod
from lock.errors import LockError


def mqtt_secrets(mqtt: config_mod.MQTTSettings) -> tuple[list[str], list[str]]:
    """(problems, warnings) with the MQTT code and password files, each naming its setting.

    The code is read as the daemon reads it at start: one it cannot read makes it refuse
    every LOCK, UNLOCK and OPEN, which otherwise only its log would say.  A code or
    password file that others than its owner may open is a warning, not a failure: the
    lock works, and a group that may read it (``lock``) may also unlock by the control
    socket; but README asks for them readable by the service user only.
    """
    from lock.imageio import whoami
    from lock.mqtt import Topics, code_configured, read_code

    problems: list[str] = []
    warnings: list[str] = []
    refused = "the lock would refuse every LOCK, UNLOCK and OPEN"
    try:
        read_code(mqtt)
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        user = f" (as user {whoami()})" if isinstance(exc, PermissionError) else ""
        problems.append(f"mqtt.code_file: cannot read {mqtt.code_file}{user}: {why}; {refused}")
    except ValueError as exc:  # read, but nothing in it (unless the message says otherwise)
        said = str(exc) if str(exc).startswith("mqtt.") else None
        if mqtt.code_file or said:
            problems.append(f"{said or f'mqtt.code_file: {mqtt.code_file} is empty'}; {refused}")
        else:
            # This shell's environment is not the service's (sudo -u resets it; systemd sets its own).
            warnings.append(f"mqtt.code_env: {mqtt.code_env} is not set here; the service needs it in its own "
                            f"environment (Environment= or EnvironmentFile= in its unit), else {refused}")
    if mqtt.password_file:
        try:
            if not Path(mqtt.password_file).read_text(encoding="utf-8").strip():
                problems.append(f"mqtt.password_file: {mqtt.password_file} is empty (the broker would be sent "
                                "an empty password)")
        except (OSError, UnicodeDecodeError):
            pass  # named by the broker check
    if mqtt.allow_no_code and not code_configured(mqtt):
        warnings.append(f"mqtt.allow_no_code is on and no code is set: UNLOCK and OPEN on "
                        f"{Topics.of(mqtt).lock_command} are obeyed from any client the broker lets publish "
                        "there (set mqtt.code_file, or limit publishing with the broker's ACL)")
    for key in ("code_file", "password_file"):
        path = getattr(mqtt, key)
        try:
            st = os.stat(path) if path else None
        except OSError:
            continue  # unreadable: said above (code) or by the broker check (password)
        if st is not None and st.st_mode & 0o077:
            import grp
            try:
                group = grp.getgrgid(st.st_gid).gr_name
            except KeyError:
                group = str(st.st_gid)
            who = [f"group {group}"] * bool(st.st_mode & 0o070) + ["everyone"] * bool(st.st_mode & 0o007)
            warnings.append(f"mqtt.{key}: {path} is open to {' and '.join(who)} (mode {st.st_mode & 0o777:04o}); "
                            f"it holds a secret: make it readable by the service user only (chmod 600 {path})")
    return problems, warnings


def daemon_status(settings) -> dict:
    """The running daemon's status (lock status), or {} when it does not answer."""
    from lock.control import request
    try:
        status = list(request(settings.control.socket, {"cmd": "status"}, timeout=5.0))[-1].get("status", {})
    except (OSError, LockError, ValueError, IndexError):
        return {}
    return status if isinstance(status, dict) else {}


def _face_unlock_notes(settings, status: dict) -> list[str]:
    """Why the running daemon would not let a face in just now (face unlock off, a lockout)."""
    notes = []
    if status.get("face_unlock") is False:
        from lock.daemon import turn_on_hint
        notes.append(f"face unlock is OFF: no face opens the door (turn it on with {turn_on_hint(settings)})")
    problem = status.get("camera_problem")
    if problem:
        notes.append("the camera sends no new frames (for 10 s or more): no face can be seen"
                     if problem == "no_frames" else
                     "the camera's picture shows nothing (lens covered, too dark, or the sun in it): no face can be seen")
    if status.get("locked_out"):
        notes.append(f"face unlock is suspended by a lockout after unknown faces: "
                     f"{status.get('lockout_remaining_s', 0):.0f} s left")
    return notes


def time_synced(settings) -> bool:
    """As the daemon sees it (lock.schedule.TimeSync): timesyncd's file, or the boot under which the
    daemon last saw it (state.json beside the gallery)."""
    import json

    from lock import schedule
    try:
        saved = json.loads(Path(settings.gallery.path).with_name("state.json").read_text())
    except (OSError, ValueError):
        saved = {}
    return schedule.TimeSync(saved.get("time_synced_boot") if isinstance(saved, dict) else None)()


def _clock(settings, scheduled: list[str] | None, status: dict, ok, warn) -> None:
    """Whether the schedules of ``scheduled`` (names; None: the gallery could not be read) are kept or
    their people held off for want of a time server (lock.schedule.TimeSync): the running daemon's view,
    else timesyncd's file or the boot it was last seen under (state.json)."""
    from lock import schedule
    if scheduled is None:
        return
    names = ", ".join(scheduled)
    if not scheduled:
        ok("clock", "nobody has a schedule (or only every day, the whole day)")
        return
    if not settings.decide.schedules_need_time_sync:
        ok("clock", f"schedules ({names}) are read against the clock as it is "
                    "(decide.schedules_need_time_sync is off)")
        return
    synced = bool(status["clock_synchronized"]) if "clock_synchronized" in status else time_synced(settings)
    if synced:
        ok("clock", "set from a time server since boot: schedules are kept")
        return
    folder = Path(schedule.TIME_SYNC_FILE).parent
    if folder.is_dir():
        warn("clock", f"not set from a time server since boot: people with a schedule ({names}) are refused "
                      "until it is; no time server has answered systemd-timesyncd yet (`timedatectl "
                      "timesync-status`; is the network up?). With a clock battery and no network, set "
                      "decide.schedules_need_time_sync: false")
    else:
        warn("clock", f"systemd-timesyncd is not running ({folder} does not exist): the lock cannot tell whether "
                      f"a time server has set the clock, so people with a schedule ({names}) are refused. With "
                      "another time client (chrony) or a clock battery and no network, set "
                      "decide.schedules_need_time_sync: false (README: Schedules and the clock)")


def doctor(config_path: str | None) -> int:
    problems = 0
    cautions = 0  # not "warnings": the module of that name is imported below

    def ok(what: str, msg: str) -> None:
        print(f"[ ok ] {what}: {msg}")

    def bad(what: str, msg: str) -> None:
        nonlocal problems
        problems += 1
        print(f"[FAIL] {what}: {msg}")

    def warn(what: str, msg: str) -> None:
        nonlocal cautions
        cautions += 1
        print(f"[WARN] {what}: {msg}")

    try:
        path = config_mod.find_config(config_path)
        settings = config_mod.load(path)
        ok("config", str(path))
    except LockError as exc:
        bad("config", str(exc))
        return 2

    from lock.vision.runtime import Runtime
    rt = Runtime(config_mod.models_dir(settings), threads=settings.vision.threads, coral=settings.vision.coral)
    model_hash = None
    try:
        rt.open()
        for name in ("pnet.tflite", "rnet.tflite", "onet.tflite", "facenet.tflite"):
            rt.model_path(name)
        model_hash = rt.model_hash("facenet.tflite")
        ok("models", f"{rt.models_dir}: 4 models, sha256 as in the manifest")
        ok("runtime", f"{rt.name}, {rt.threads} thread(s)")
    except LockError as exc:
        where = " (vision.models_dir)" if settings.vision.models_dir else ""
        bad("models", f"{exc}{where}")

    if settings.vision.coral:
        lib = ctypes.util.find_library("edgetpu")
        tpu = Path(rt.models_dir) / "facenet_edgetpu.tflite"
        if not lib:
            bad("coral", "libedgetpu is not installed (apt install libedgetpu1-std); the CPU is used")
        elif not tpu.is_file():
            bad("coral", f"no {tpu} (see models/README.md); the CPU is used")
        else:
            try:
                rt.model_path(tpu.name)
                ok("coral", f"{lib}, {tpu.name} (FaceNet; P/R/O-Net run on the CPU)")
            except LockError as exc:
                bad("coral", f"{exc}: not used, the CPU is (see models/README.md)")
    else:
        ok("coral", "off in config (vision.coral)")

    from lock.control import daemon_running
    running = daemon_running(settings.control.socket)
    status = daemon_status(settings) if running else {}
    if running:
        ok("daemon", f"running (control socket {settings.control.socket}); camera and GPIO are in its hands")
        for msg in _face_unlock_notes(settings, status):
            warn("state", msg)
    else:
        from lock.camera import make_camera
        try:
            cam = make_camera(settings.camera)
            cam.open()
            try:
                frame = cam.read(timeout=5.0)
            finally:
                cam.close()
            if frame is None:
                bad("camera", f"{settings.camera.source}: no frame within 5 s (is it connected? camera.* in the config)")
            else:
                ok("camera", f"{settings.camera.source}: frame {frame.image.shape[1]}x{frame.image.shape[0]}")
        except Exception as exc:  # any camera library error is a finding, not a crash
            bad("camera", f"{settings.camera.source}: {exc}")
        try:
            import warnings
            from lock.door import force_off
            with warnings.catch_warnings():  # gpiozero warns once per pin library it tries
                warnings.simplefilter("ignore")
                force_off(settings.door)
            ok("gpio", f"relay {settings.door.relay_pin} driven to its inactive (locked) level")
        except Exception as exc:
            bad("gpio", f"relay {settings.door.relay_pin}: {exc} (on a Pi: sudo apt install python3-lgpio; user in group gpio; not a Pi: GPIOZERO_PIN_FACTORY=mock)")

    scheduled: list[str] | None = None
    if model_hash and not Path(settings.gallery.path).exists():  # a check creates nothing
        warn("gallery", f"{settings.gallery.path}: no gallery yet: nobody enrolled, no face opens the door "
                        "(lock enroll NAME PHOTOS...)")
        scheduled = []
    elif model_hash:
        try:
            from lock.gallery import Gallery
            g = Gallery(settings.gallery.path, model_hash)
            g.open()
            try:
                people = g.people()
                stale = g.stale_templates()
            finally:
                g.close()
            if stale:
                bad("gallery", f"{sum(stale.values())} template(s) from another model: re-enroll {', '.join(stale)}")
            elif not people:
                warn("gallery", f"{settings.gallery.path}: nobody enrolled yet, no face opens the door "
                                "(lock enroll NAME PHOTOS...)")
            else:
                ok("gallery", f"{settings.gallery.path}: {len(people)} people")
            scheduled = [p.name for p in people if p.schedule is not None and not p.schedule.always]
        except Exception as exc:
            bad("gallery", f"{settings.gallery.path}: {exc}")
    _clock(settings, scheduled, status, ok, warn)

    if settings.mqtt.enabled:
        from lock.mqtt import check, install_id
        failures, notes = mqtt_secrets(settings.mqtt)
        for msg in failures:
            bad("mqtt", msg)
        for msg in notes:
            warn("mqtt", msg)
        if status.get("mqtt_conflict"):
            bad("mqtt", f"the running lock says: {status['mqtt_conflict']}")
        good, why = check(settings.mqtt, install=install_id(settings.control.socket))
        (ok if good else bad)("mqtt", why)
    else:
        ok("mqtt", "off in config (mqtt.enabled)")

    sock_dir = Path(settings.control.socket).parent
    if not running and sock_dir == Path("/run/face-lock") and not sock_dir.exists():
        ok("control", f"{sock_dir} does not exist yet: the service's RuntimeDirectory=face-lock makes it "
                      "at start (by hand: run as root, or set control.socket)")
    elif not running:
        base = next(p for p in (sock_dir, *sock_dir.parents) if p.exists())  # where mkdir would start
        if not os.access(base, os.W_OK):
            bad("control", f"cannot create {settings.control.socket}: {base} is not writable for this user "
                           "(the service can write /run/face-lock only)")
    noted = f", {cautions} warning(s)" if cautions else ""
    print(("all good" if not cautions else f"no problems{noted}") if not problems
          else f"{problems} problem(s) found{noted}")
    return 0 if not problems else 1
