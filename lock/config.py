"""config.yaml → validated, frozen settings.

Every section is a pydantic model that forbids unknown keys and states its
defaults and bounds (the way Frigate's config models do).  A bad file raises
:class:`~lock.errors.ConfigError` whose message names the file, the key path,
the bad value and what is allowed; the CLI turns that into exit status 2.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from lock.errors import ConfigError

DEFAULT_PATHS = (Path("/etc/lock/config.yaml"), Path("config.yaml"))
REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _expand_user(v: object) -> object:
    return os.path.expanduser(v) if isinstance(v, str) else v


# A file or folder setting: "~/gallery.db" means the home folder, as in a shell.
PathStr = Annotated[str, BeforeValidator(_expand_user)]


class CameraSettings(Section):
    source: Literal["picamera2", "opencv", "files"] = "picamera2"
    device: str = Field("0", description="opencv: camera index, /dev/videoN or a stream URL")
    path: PathStr = Field("", description="files: a directory of images or a video file")
    width: int = Field(640, ge=64, le=4096)
    height: int = Field(480, ge=64, le=4096)
    fps: float = Field(10.0, gt=0, le=120)
    loop: bool = Field(False, description="files: start again at the end")
    retry_max_seconds: float = Field(5.0, gt=0, description="longest wait between reconnect tries (below systemd's watchdog)")

    @field_validator("device", mode="before")
    @classmethod
    def _index_as_str(cls, v: object) -> object:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class VisionSettings(Section):
    models_dir: PathStr = Field("", description="folder with the .tflite files and manifest.json; empty = the project's models/")
    threads: int = Field(2, ge=1, le=16)
    coral: bool = Field(False, description="use *_edgetpu.tflite through libedgetpu when present")
    min_face: int = Field(80, ge=20, le=1000, description="smallest face searched for, pixels of the frame")
    scale_factor: float = Field(0.709, gt=0.3, lt=0.95)
    thresholds: tuple[float, float, float] = Field((0.6, 0.7, 0.8), description="P-Net, R-Net, O-Net")
    fast_pyramid: bool = Field(True, description="pyramid levels and R-Net crops read from halved copies of the "
                                                 "frame (lock/vision/mtcnn.py, SHRINK_MARGIN)")

    @field_validator("thresholds")
    @classmethod
    def _unit(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(0.0 < t < 1.0 for t in v):
            raise ValueError("each threshold must be between 0 and 1")
        return v


class QualitySettings(Section):
    min_face: int = Field(80, ge=20, description="shorter box side in pixels")
    min_sharpness: float = Field(20.0, ge=0, description="variance of the Laplacian of the aligned face")
    max_yaw: float = Field(35.0, gt=0, le=90, description="degrees")
    max_pitch: float = Field(30.0, gt=0, le=90, description="degrees")
    min_brightness: float = Field(40.0, ge=0, le=255)
    max_brightness: float = Field(220.0, ge=0, le=255)

    @model_validator(mode="after")
    def _brightness_range(self) -> "QualitySettings":
        if self.min_brightness >= self.max_brightness:
            raise ValueError(f"min_brightness ({self.min_brightness:g}) must be below max_brightness "
                             f"({self.max_brightness:g})")
        return self


class MatchSettings(Section):
    # Defaults from the door trial (bench/door_trial.py) with the int8 models on lfw-dev;
    # config.yaml states what they let in and what they cost.
    # At least 0.5: below it, more than 1 in 1,000 pairs of different people's photos in lfw-dev
    # match (FAR 1e-3 is at 0.517), and a lock that lets strangers in is not one to run.
    threshold: float = Field(0.72, ge=0.5, lt=1, description="cosine similarity a vote needs (0.5 to 1)")
    margin: float = Field(0.05, ge=0, lt=2, description="lead over the runner-up a vote needs")


# While every face in view is decided, the daemon detects only this often, or a third of
# decide.track_timeout_seconds if that is shorter (lock/daemon.py).
DECIDED_DETECT_SECONDS = 0.5


class DecideSettings(Section):
    votes: int = Field(2, ge=1, le=50, description="agreeing votes a track needs to unlock")
    window_seconds: float = Field(3.0, gt=0)
    # At most 200: far above it, the lockout's weight of a face that left (seen frames / unknown_after)
    # comes near zero, and no 'unknown' is ever said: the lockout would be off in all but name.
    unknown_after: int = Field(4, ge=1, le=200, description="embedded frames without an accept before 'unknown'")
    track_iou: float = Field(0.3, gt=0, lt=1)
    # At least three frame intervals (checked against camera.fps below): else a face would lose its
    # track between two frames, and a person standing at the door be decided (let in) again and again.
    track_timeout_seconds: float = Field(1.5, gt=0)
    lockout_after: int = Field(5, ge=1, description="unknown faces within lockout_window_seconds (unknown_after embedded frames of faces that left undecided weigh one)")
    lockout_window_seconds: float = Field(120.0, gt=0)
    lockout_seconds: float = Field(60.0, gt=0)
    lockout_max_seconds: float = Field(3600.0, gt=0)
    schedules_need_time_sync: bool = Field(True, description="a person with a schedule is let in only once a time "
                                           "server has set the clock since boot (false: trust the clock as it is: "
                                           "a clock battery and no network, or chrony instead of timesyncd)")

    @model_validator(mode="after")
    def _votes_fit(self) -> "DecideSettings":
        if self.unknown_after < self.votes:
            raise ValueError(f"unknown_after ({self.unknown_after}) must be at least votes ({self.votes}): "
                             "with fewer, everyone would be 'unknown' before they could be let in")
        return self


class DoorSettings(Section):
    relay_pin: str = Field("GPIO17", description="gpiozero pin name or number")
    relay_active_high: bool = True
    unlock_seconds: float = Field(3.0, gt=0, le=60)
    contact_pin: str | None = None
    contact_open_when_high: bool = Field(True, description="with the pull-up on, an open reed switch reads high")
    held_open_seconds: float = Field(30.0, gt=0)
    exit_button_pin: str | None = None
    bounce_seconds: float = Field(0.05, ge=0, le=1, description="debounce for the door contact and the exit "
                                  "button; a bouncing reed switch would otherwise look like a forced door")

    @field_validator("relay_pin", "contact_pin", "exit_button_pin", mode="before")
    @classmethod
    def _pin_as_str(cls, v: object) -> object:
        return str(v) if isinstance(v, int) else v


class IdleSettings(Section):
    """The cheap change gate in front of the detector: idle costs little, arrival costs nothing."""

    change_threshold: float = Field(3.0, ge=0, description="mean abs grey change (0-255) of a 32x24 thumbnail that counts as movement; 0 = always detect")
    detect_every_seconds: float = Field(1.0, gt=0, description="with no change and nobody in view, still detect this often")


class GallerySettings(Section):
    path: PathStr = "/var/lib/lock/gallery.db"


class AuditSettings(Section):
    path: PathStr = "/var/lib/lock/audit.db"
    keep_days: int = Field(90, ge=1)


OLD_SOCKET = "/run/lock/control.sock"   # the default before the unit's RuntimeDirectory became face-lock


class ControlSettings(Section):
    socket: PathStr = "/run/face-lock/control.sock"
    group: str | None = Field("lock", description="group allowed to use the socket (mode 0660)")

    @field_validator("socket")
    @classmethod
    def _moved(cls, v: str) -> str:
        # A config.yaml copied before the move still names the old default, where the service may no
        # longer write (/run/lock is the system's lock-file directory): use the new one.
        if v == OLD_SOCKET:
            new = cls.model_fields["socket"].default
            log.warning("control.socket %s is the old default; using %s (update your config.yaml)", v, new)
            return new
        return v


class TLSSettings(Section):
    enabled: bool = False
    ca_file: PathStr | None = None
    cert_file: PathStr | None = None
    key_file: PathStr | None = None
    verify: bool = True


class MQTTSettings(Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = "face-lock"
    username: str | None = None
    password_file: PathStr | None = None
    password_env: str | None = Field("LOCK_MQTT_PASSWORD", description="environment variable holding the password")
    tls: TLSSettings = TLSSettings()
    base_topic: str = "face_lock"
    discovery_prefix: str = "homeassistant"
    device_name: str = "Front door"
    code_file: PathStr | None = Field(None, description="file holding the code remote commands must carry")
    code_env: str | None = Field(None, description="environment variable holding that code")
    allow_no_code: bool = Field(False, description="true: with neither code_file nor code_env, UNLOCK and OPEN "
                                "are obeyed from whoever may publish (the broker's ACL alone decides)")
    remote_face_unlock_on: bool = Field(True, description="false: the face unlock switch can be turned off "
                                        "remotely but only back on at the device (lock face-unlock on)")
    publish_scores: bool = False
    unknown_image: bool = False
    queue_size: int = Field(1000, ge=1)

    commands_per_minute: int = Field(10, ge=1)
    keepalive: int = Field(30, ge=5)
    retry_max_seconds: int = Field(15, ge=1, description="longest wait between reconnect tries (doubles from 1 s)")
    refused_retry_seconds: int = Field(300, ge=5, description="wait before trying again after the broker refused us "
                                       "(bad credentials, not authorised, TLS failure)")

    @field_validator("base_topic", "discovery_prefix")
    @classmethod
    def _plain_topic(cls, v: str) -> str:
        # A wildcard makes the broker refuse the last will, and so every connection.
        if not v.strip("/") or any(c in v for c in "+#\0"):
            raise ValueError(f"{v!r} is not a topic the lock can publish under: it must not be empty or "
                             "hold '+', '#' or NUL")
        return v

    @model_validator(mode="after")
    def _code_or_consent(self) -> "MQTTSettings":
        # A line lost from the file (a cut-off write, an edit) must not quietly open the door to anyone
        # who can publish: no code is a choice the file has to state.
        if self.enabled and not (self.code_file or self.code_env or self.allow_no_code):
            raise ValueError("mqtt.enabled is true but neither mqtt.code_file nor mqtt.code_env is set: give "
                             "the code remote UNLOCK/OPEN must carry, or set mqtt.allow_no_code: true if the "
                             "broker's ACL alone should decide who may unlock")
        return self


class Settings(Section):
    camera: CameraSettings = CameraSettings()
    vision: VisionSettings = VisionSettings()
    quality: QualitySettings = QualitySettings()
    match: MatchSettings = MatchSettings()
    decide: DecideSettings = DecideSettings()
    idle: IdleSettings = IdleSettings()
    door: DoorSettings = DoorSettings()
    gallery: GallerySettings = GallerySettings()
    audit: AuditSettings = AuditSettings()
    control: ControlSettings = ControlSettings()
    mqtt: MQTTSettings = MQTTSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _tracks_outlive_frames(self) -> "Settings":
        least = 3.0 / self.camera.fps
        if self.decide.track_timeout_seconds < least:
            raise ValueError(f"decide.track_timeout_seconds ({self.decide.track_timeout_seconds:g}) must be at "
                             f"least three frame intervals at camera.fps {self.camera.fps:g} ({least:.2f} s)")
        return self


def _describe(err: dict) -> str:
    path = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{path}: unknown key (check the spelling; config.yaml in the project lists every key)"
    value = err.get("input")
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if isinstance(value, dict):  # a whole section: its keys are named in the message
        return f"{path}: {msg}"
    return f"{path}: {msg} (got {value!r})"


def _null_sections_as_defaults(data: dict, model: type[BaseModel]) -> dict:
    """A section whose keys are all commented out reads as null: it means its defaults (at any depth)."""
    out = {}
    for k, v in data.items():
        field = model.model_fields.get(k) if isinstance(k, str) else None
        sub = type(field.default) if field is not None and isinstance(field.default, BaseModel) else None
        if sub is not None and v is None:
            v = {}
        if sub is not None and isinstance(v, dict):
            v = _null_sections_as_defaults(v, sub)
        out[k] = v
    return out


def parse(data: object, source: str = "<config>") -> Settings:
    """Validate a mapping (as read from YAML) into frozen settings."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    data = _null_sections_as_defaults(data, Settings)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError(f"{source}: invalid configuration:\n  " + "\n  ".join(lines)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice (the second would silently win)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *defaults": its keys may be overridden
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            again = key in seen
        except TypeError:  # a list or mapping as a key
            raise yaml.constructor.ConstructorError(None, None, f"a key must be a plain word, not {key!r}",
                                                    key_node.start_mark) from None
        if again:
            raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def find_config(path: str | os.PathLike | None) -> Path:
    """The file to read: the one given, else /etc/lock/config.yaml, else ./config.yaml."""
    if path is not None:
        return Path(path)
    for candidate in DEFAULT_PATHS:
        if candidate.is_file():
            return candidate
    raise ConfigError("no configuration file: give --config PATH, or create /etc/lock/config.yaml "
                      "(copy config.yaml from the project)")


def _read(path: str | os.PathLike | None) -> tuple[Path, object]:
    p = find_config(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read it: {exc}") from None
    try:
        return p, yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None


# Keys a config file must state itself: their defaults are right for some installations and
# dangerous for others (a relay board that switches on a low level, driven "off" with a high default,
# is held open), so a file cut short or a section lost in an edit is refused, not filled in.
REQUIRED_KEYS = (("door", "relay_pin"), ("door", "relay_active_high"))


def _blank_required(data: dict) -> list[tuple[str, str]]:
    """The REQUIRED_KEYS the file has but left blank (empty, ~, null, "")."""
    return [(section, key) for section, key in REQUIRED_KEYS
            if isinstance(data.get(section), dict) and key in data[section] and data[section][key] in (None, "")]


def _require_explicit(p: Path, data: object, blank_only: bool = False) -> None:
    """Refuse a file without the REQUIRED_KEYS; ``blank_only``: only keys present and left blank
    (checked before the rest, so that a blank gets this message rather than "not a valid boolean")."""
    if data is None:
        raise ConfigError(f"{p}: the configuration file is empty (copy config.yaml from the project and edit it)")
    if not isinstance(data, dict):
        return  # parse() names the problem
    blank = _blank_required(data)
    missing = [".".join(k) for k in REQUIRED_KEYS
               if k in blank or (not blank_only and (not isinstance(data.get(k[0]), dict) or k[1] not in data[k[0]]))]
    if missing:
        raise ConfigError(f"{p}: {', '.join(missing)} not set: the file must say which pin drives the relay and "
                          "whether the relay board switches on a high (true) or low (false, most boards) level; "
                          "a file without them may have been cut short, and a wrong guess holds the door open")


def load(path: str | os.PathLike | None = None, *, door: bool = True) -> Settings:
    """Read and validate a config file; errors name the file and the key path.

    ``door=False``: for commands that never touch the relay (verify, embed,
    bench), the relay's pin and polarity need not be stated.
    """
    p, data = _read(path)
    if isinstance(data, dict):
        _paths_from(data, p.resolve().parent)
    if door:
        _require_explicit(p, data, blank_only=True)
    elif isinstance(data, dict):
        # a blank pin or polarity would fail validation: the defaults stand in, never used for a relay
        for section, key in _blank_required(data):
            del data[section][key]
    settings = parse(data, str(p))
    if door:
        _require_explicit(p, data)
    return settings


def load_door(path: str | os.PathLike | None = None) -> DoorSettings:
    """Only the ``door`` section of a config file, the rest unchecked.

    For ``python -m lock.door --off`` after a crash: a mistake made meanwhile
    in another section must not stop it from turning the relay off.
    """
    p, data = _read(path)
    if data is not None and not isinstance(data, dict):   # not the defaults: they may be the wrong polarity
        raise ConfigError(f"{p}: not a configuration file (expected keys such as door: at the top level)")
    door = data.get("door") if isinstance(data, dict) else None
    _require_explicit(p, data, blank_only=True)
    try:
        settings = DoorSettings.model_validate({} if door is None else door)
    except ValidationError as exc:
        lines = [_describe({**e, "loc": ("door", *e["loc"])}) for e in exc.errors()]
        raise ConfigError(f"{p}: invalid configuration:\n  " + "\n  ".join(lines)) from None
    _require_explicit(p, data)
    return settings


# Settings that name a file or folder: a relative one is taken from the config file's folder
# (the service runs in /, a shell anywhere: neither is what a relative path in a file means).
PATH_KEYS = ("camera.path", "vision.models_dir", "gallery.path", "audit.path", "control.socket",
             "mqtt.password_file", "mqtt.code_file", "mqtt.tls.ca_file", "mqtt.tls.cert_file", "mqtt.tls.key_file")


def _paths_from(data: dict, base: Path) -> None:
    for dotted in PATH_KEYS:
        *sections, key = dotted.split(".")
        node = data
        for name in sections:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(key), str):
            value = node[key]
            if value and not value.startswith("~") and not os.path.isabs(value):
                node[key] = str(base / value)


def models_dir(settings: Settings) -> Path:
    return Path(settings.vision.models_dir) if settings.vision.models_dir else REPO_ROOT / "models"
