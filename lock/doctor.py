"""`lock doctor`: check everything the lock needs and say plainly what to fix."""

from __future__ import annotations

import ctypes.util
import os
from pathlib import Path

from lock import config as config_mod
from lock.errors import LockError


def doctor(config_path: str | None) -> int:
    problems = 0

    def ok(what: str, msg: str) -> None:
        print(f"[ ok ] {what}: {msg}")

    def bad(what: str, msg: str) -> None:
        nonlocal problems
        problems += 1
        print(f"[FAIL] {what}: {msg}")

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
        tpu = list(Path(rt.models_dir).glob("*_edgetpu.tflite"))
        if not lib:
            bad("coral", "libedgetpu is not installed (apt install libedgetpu1-std); the CPU is used")
        elif not tpu:
            bad("coral", f"no *_edgetpu.tflite in {rt.models_dir} (see models/README.md); the CPU is used")
        else:
            ok("coral", f"{lib}, {len(tpu)} Edge TPU model(s)")
    else:
        ok("coral", "off in config (vision.coral)")

    from lock.control import daemon_running
    running = daemon_running(settings.control.socket)
    if running:
        ok("daemon", f"running (control socket {settings.control.socket}); camera and GPIO are in its hands")
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
            bad("gpio", f"relay {settings.door.relay_pin}: {exc} (on a Pi: pip install lgpio; user in group gpio)")

    if model_hash and not Path(settings.gallery.path).exists():  # a check creates nothing
        bad("gallery", f"{settings.gallery.path}: no gallery yet: nobody enrolled (lock enroll NAME PHOTOS...)")
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
                bad("gallery", f"{settings.gallery.path}: nobody enrolled yet (lock enroll NAME PHOTOS...)")
            else:
                ok("gallery", f"{settings.gallery.path}: {len(people)} people")
        except Exception as exc:
            bad("gallery", f"{settings.gallery.path}: {exc}")

    if settings.mqtt.enabled:
        from lock.mqtt import check
        good, why = check(settings.mqtt)
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
    print("all good" if not problems else f"{problems} problem(s) found")
    return 0 if not problems else 1
