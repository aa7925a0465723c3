"""The door, gallery and daemon commands of `lock` (the vision ones are in cli.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from lock import config as config_mod
from lock.errors import ControlError, DoorError

log = logging.getLogger(__name__)


def _load(args: argparse.Namespace) -> config_mod.Settings:
    return config_mod.load(args.config)


def _config_path(args: argparse.Namespace) -> str:
    return str(config_mod.find_config(args.config))


def _gallery(settings: config_mod.Settings, model_hash: str | None = None):
    from lock.gallery import Gallery
    if model_hash is None:
        from lock.vision.runtime import Runtime
        rt = Runtime(config_mod.models_dir(settings)).open()
        model_hash = rt.model_hash("facenet.tflite")
    return Gallery(settings.gallery.path, model_hash).open()


def _ask(settings: config_mod.Settings, req: dict, timeout: float = 10.0) -> dict:
    final: dict = {}
    for msg in __import__("lock.control", fromlist=["request"]).request(settings.control.socket, req, timeout=timeout):
        if "progress" in msg:
            print(msg["progress"], flush=True)
        else:
            final = msg
    if not final.get("ok"):
        raise ControlError(final.get("error", "the daemon refused the request"))
    return final


# --- run ----------------------------------------------------------------------

def _on_a_pi() -> bool:
    try:
        return "Raspberry Pi" in Path("/proc/device-tree/model").read_text(errors="replace")
    except OSError:
        return False


def cmd_run(args: argparse.Namespace) -> int:
    from lock.daemon import run
    settings = _load(args)
    logging.getLogger().setLevel(settings.log_level if not args.verbose else "DEBUG")
    try:
        return run(settings, _config_path(args))
    except DoorError as exc:
        if "Unable to load any default pin factory" in str(exc) and not _on_a_pi():  # gpiozero's words
            raise DoorError(f"{exc}\nnot a Raspberry Pi? GPIOZERO_PIN_FACTORY=mock lock run ... drives a "
                            "simulated pin") from exc
        raise


# --- enrollment and the gallery -----------------------------------------------

def cmd_enroll(args: argparse.Namespace) -> int:
    from lock.control import daemon_running
    from lock.enroll import enroll_files, enroll_frames
    from lock.imageio import IMAGE_EXTENSIONS, iter_images
    from lock.vision.pipeline import FacePipeline

    settings = _load(args)
    # The name forgotten (`lock enroll photos/a.jpg photos/b.jpg`) would enroll a person called
    # "photos/a.jpg".  A plain word that is also a folder here (`lock enroll alice alice/`) is fine.
    looks_like_path = Path(args.name).suffix.lower() in IMAGE_EXTENSIONS or (
        os.path.lexists(args.name) and ("/" in args.name.rstrip("/") or os.path.isfile(args.name)))
    if looks_like_path:
        print(f"error: the name {args.name!r} is a photo or a path: give the person's name first "
              "(lock enroll NAME PHOTO|DIR ...)", file=sys.stderr)
        return 2
    if args.count < 1:
        print(f"error: --count must be at least 1 (got {args.count})", file=sys.stderr)
        return 2
    if args.camera:
        if args.sources:
            print("error: give either --camera or image files, not both", file=sys.stderr)
            return 2
        if daemon_running(settings.control.socket):
            print("the lock daemon owns the camera: asking it to enroll", flush=True)
            reply = _ask(settings, {"cmd": "enroll", "name": args.name, "count": args.count,
                                    "replace": args.replace}, timeout=120)
            print(f"enrolled {args.name}: {reply['stored']} views")
            return 0
        from lock.camera import make_camera
        pipe = FacePipeline(settings).open()
        cam = make_camera(settings.camera)
        cam.open()

        def frames():
            while True:
                f = cam.read(timeout=2.0)
                if f is None and getattr(cam, "exhausted", False):
                    return
                if f is not None:
                    yield f.image
        try:
            with _gallery(settings, pipe.model_hash) as gallery:
                report = enroll_frames(pipe, gallery, args.name, frames(), count=args.count, timeout=60,
                                       say=lambda m: print(m, flush=True), replace=args.replace,
                                       lookalike=settings.match.threshold)
        finally:
            cam.close()
        print(f"enrolled {args.name}: {len(report.stored)} views")
        return 0
    if not args.sources:
        print("error: give image files or folders, or --camera", file=sys.stderr)
        return 2
    paths, skipped = [], []
    for source in args.sources:
        trouble: list[tuple[str, str]] = []  # missing, or not ours to read: named with the reason
        found = iter_images([source], skipped=trouble)
        if not found and not trouble and os.path.isdir(source):
            trouble.append((source, f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder"))
        paths += found
        skipped += trouble
    for what, why in skipped:
        print(f"{what}: skipped: {why}")
    if not paths:
        print(f"error: nothing enrolled for {args.name!r}: no image files given", file=sys.stderr)
        return 1
    pipe = FacePipeline(settings).open()

    def bar(items):
        if len(items) > 3 and sys.stderr.isatty():
            from tqdm import tqdm
            return tqdm(items, desc=f"enrolling {args.name}", unit="photo")
        return items

    with _gallery(settings, pipe.model_hash) as gallery:
        report = enroll_files(pipe, gallery, args.name, paths, replace=args.replace, progress=bar,
                              lookalike=settings.match.threshold, force=args.force)
    for line in report.lines():
        print(line)
    if report.stored:
        again = f", {len(report.already)} already stored" if report.already else ""
        print(f"enrolled {args.name}: {len(report.stored)} template(s) from {len(paths)} image(s){again}")
    else:
        print(f"nothing new for {args.name}: {len(report.already)} photo(s) already stored")
    # 0: the person is enrolled with every usable photo given (the others are named above); a
    # failure to store anything raised EnrollmentError (status 1, the gallery as it was).
    return 0


def cmd_faces(args: argparse.Namespace) -> int:
    from lock.schedule import Schedule
    settings = _load(args)
    if not os.path.lexists(settings.gallery.path) and args.action != "restore":
        # Nothing to read or change: create nothing (a gallery made by root would lock the service out).
        failed = args.action in ("remove", "rename", "schedule")
        print(f"{'error: ' if failed else ''}no gallery at {settings.gallery.path} yet: nobody is enrolled "
              "(lock enroll NAME PHOTOS...)", file=sys.stderr if failed else sys.stdout)
        return 1 if failed else 0
    with _gallery(settings) as g:
        if args.action == "list":
            people = g.people()
            if not people:
                print(f"nobody is enrolled in {settings.gallery.path} (lock enroll NAME PHOTOS...)")
            for p in people:
                sched = f", schedule {p.schedule}" if p.schedule else ""
                print(f"{p.name}: {p.templates} template(s){sched}")
            stale = g.stale_templates()
            for name, n in sorted(stale.items()):
                print(f"{name}: {n} template(s) from another model, ignored: re-enroll {name}")
        elif args.action == "remove":
            g.remove(args.name)
            print(f"removed {args.name}")
        elif args.action == "rename":
            g.rename(args.name, args.new)
            print(f"renamed {args.name} to {args.new}")
        elif args.action == "schedule":
            if args.clear:
                g.set_schedule(args.name, None)
                print(f"{args.name}: no schedule (any time)")
            else:
                try:
                    sched = Schedule.parse(args.days, args.hours)
                except ValueError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
                g.set_schedule(args.name, sched)
                print(f"{args.name}: allowed {sched}")
                from lock.doctor import daemon_status, time_synced
                status = daemon_status(settings)   # the running lock's own view, else the files it keeps
                synced = status["clock_synchronized"] if "clock_synchronized" in status else time_synced(settings)
                if settings.decide.schedules_need_time_sync and not sched.always and not synced:
                    print(f"note: no time server has set this clock since boot (see `lock doctor`): {args.name} "
                          "is refused until one has (README: Schedules and the clock)")
        elif args.action == "purge-stale":
            n = g.purge_stale()
            print(f"removed {n} template(s) made by another model")
        elif args.action == "restore":
            n = g.restore(args.backup)
            print(f"restored {settings.gallery.path} from {args.backup}: {n} people "
                  "(a running daemon matches against them from its next detection)")
    return 0


# --- talking to the daemon ----------------------------------------------------

def cmd_status(args: argparse.Namespace) -> int:
    settings = _load(args)
    st = _ask(settings, {"cmd": "status"})["status"]
    if args.json:
        print(json.dumps(st))
    else:
        for k, v in st.items():
            print(f"{k}: {v}")
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    _ask(_load(args), {"cmd": "unlock"})
    print("unlocked")
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    _ask(_load(args), {"cmd": "lock"})
    print("locked")
    return 0


def cmd_face_unlock(args: argparse.Namespace) -> int:
    _ask(_load(args), {"cmd": "face_unlock", "enabled": args.state == "on"})
    print(f"face unlock {args.state}")
    return 0


def cmd_mqtt_test(args: argparse.Namespace) -> int:
    from lock.doctor import daemon_status, mqtt_secrets
    from lock.mqtt import check, install_id
    settings = _load(args)
    problems, warnings = mqtt_secrets(settings.mqtt)  # the code: the daemon reads it only at start
    for msg in problems:
        print(f"failed: {msg}")
    for msg in warnings:
        print(f"warning: {msg}")
    status = daemon_status(settings)   # {} when no daemon answers
    if status.get("mqtt_conflict"):
        problems.append(status["mqtt_conflict"])
        print(f"failed: the running lock says: {status['mqtt_conflict']}")
    ok, why = check(settings.mqtt, install=install_id(settings.control.socket))
    print(("ok: " if ok else "failed: ") + why)
    return 0 if ok and not problems else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from lock.doctor import doctor
    return doctor(args.config)


def cmd_demo(args: argparse.Namespace) -> int:
    from lock.demo import demo
    return demo(args.config, photos=args.photos, fps=args.fps, keep=args.keep)


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("run", help="run the lock (what the systemd service does)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("enroll", help="enroll a person from photos or the camera")
    s.add_argument("name")
    s.add_argument("sources", nargs="*", help="image files or folders")
    s.add_argument("--camera", action="store_true", help="guided capture from the camera")
    s.add_argument("--count", type=int, default=5, help="views to capture with --camera")
    s.add_argument("--replace", action="store_true", help="replace the person's templates instead of adding")
    s.add_argument("--force", action="store_true",
                   help="store photos even if they do not all look like one person (a face that looks like "
                        "someone else enrolled is still refused)")
    s.set_defaults(func=cmd_enroll)

    s = sub.add_parser("faces", help="list, remove, rename enrolled people; schedules")
    fs = s.add_subparsers(dest="action", metavar="ACTION")
    fs.required = True
    fs.add_parser("list", help="everyone enrolled: templates and schedule")
    r = fs.add_parser("remove", help="forget NAME and all their templates"); r.add_argument("name")
    r = fs.add_parser("rename", help="rename NAME to NEW"); r.add_argument("name"); r.add_argument("new")
    r = fs.add_parser("schedule", help="allow NAME only on DAYS between HOURS (local time)")
    r.add_argument("name")
    r.add_argument("days", nargs="?", default="mon-sun", help="mon-fri, or mon,wed,sat (default: every day)")
    r.add_argument("hours", nargs="?", default="00:00-24:00",
                   help="HH:MM-HH:MM, the end not included; 22:00-06:00 runs past midnight (the early "
                        "hours belong to the day the range starts: sat,sun 22:00-06:00 includes Monday 00:00-06:00); "
                        "24:00 is the end of the day (default: 00:00-24:00)")
    r.add_argument("--clear", action="store_true", help="remove NAME's schedule: any day, any time")
    fs.add_parser("purge-stale", help="remove templates made by another model")
    r = fs.add_parser("restore", help="make the gallery hold exactly what the gallery file BACKUP holds "
                                      "(safe while the service runs; never put a file in place with mv or cp)")
    r.add_argument("backup")
    s.set_defaults(func=cmd_faces)

    s = sub.add_parser("status", help="the running daemon's state")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    sub.add_parser("unlock", help="unlock the door now (one pulse)").set_defaults(func=cmd_unlock)
    sub.add_parser("lock", help="lock the door now").set_defaults(func=cmd_lock)
    s = sub.add_parser("face-unlock", help="turn face unlock on or off (Home Assistant's switch, at the device)")
    s.add_argument("state", choices=("on", "off"))
    s.set_defaults(func=cmd_face_unlock)
    sub.add_parser("mqtt-test", help="try the configured MQTT broker and say what happened").set_defaults(func=cmd_mqtt_test)
    sub.add_parser("doctor", help="check config, models, runtime, Coral, camera, GPIO, gallery, MQTT").set_defaults(func=cmd_doctor)

    s = sub.add_parser("demo", help="the lock on recorded frames with a mock relay (no Pi needed)",
                       description="Enroll one person from the test photographs, make a recording (empty porch, "
                                   "that person walking up, empty porch, a stranger walking up) and run the real "
                                   "daemon on it with a mock relay, printing each event. With --config, that "
                                   "file's settings (MQTT included) under a device of their own.")
    s.add_argument("--photos", default=None, help="photo folder (default: the fetched test photographs)")
    s.add_argument("--fps", type=float, default=10.0)
    s.add_argument("--keep", metavar="DIR", default=None,
                   help="write the recording (frames/) and the demo's gallery into DIR and keep them, e.g. for "
                        "`lock run` with camera.source: files and camera.path: DIR/frames")
    s.set_defaults(func=cmd_demo)
