"""config.yaml and its validation; `lock` exits 2 with the key path on a bad file."""

from __future__ import annotations

import re

import subprocess
import sys

import pytest
import yaml

from lock import config
from lock.config import REPO_ROOT


def test_config_yaml_lists_every_setting_with_its_default(tmp_path):
    """Every setting with its default, but the relay's polarity, which the installer must state."""
    text = (REPO_ROOT / "config.yaml").read_text()
    line = next(x for x in text.splitlines() if x.lstrip().startswith("relay_active_high:"))
    assert "REQUIRED" in line
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text.replace(line, "  relay_active_high: true"))
    assert config.load(cfg) == config.Settings()

    def keys(model, prefix=""):
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if isinstance(value, config.Section):
                yield from keys(value, prefix + name + ".")
            else:
                yield prefix + name

    data = yaml.safe_load(text)
    for key in keys(config.Settings()):
        node = data
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"config.yaml does not list {key}"
            node = node[part]


@pytest.mark.parametrize("doc, where", [
    ({"camera": {"fps": 0}}, "camera.fps"),
    ({"camera": {"source": "webcam"}}, "camera.source"),
    ({"door": {"unlock_seconds": "long"}}, "door.unlock_seconds"),
    ({"match": {"threshold": 3}}, "match.threshold"),
    ({"mqtt": {"port": 70000}}, "mqtt.port"),
    ({"mqtt": {"base_topic": "door/+"}}, "mqtt.base_topic"),
    ({"mqtt": {"discovery_prefix": "/"}}, "mqtt.discovery_prefix"),
    ({"mqtt": {"tls": {"verify": "maybe"}}}, "mqtt.tls.verify"),
    ({"vision": {"thresholds": [0.6, 0.7]}}, "vision.thresholds"),
    ({"vision": {"thresholds": [0.6, 0.7, 1.5]}}, "vision.thresholds"),
    ({"decide": {"votes": 0}}, "decide.votes"),
    ({"decide": {"votes": 3, "unknown_after": 2}}, "decide: unknown_after (2) must be at least votes (3)"),
    ({"decide": {"unknown_after": 100000}}, "decide.unknown_after"),
    ({"decide": {"track_timeout_seconds": 0.25}}, "decide.track_timeout_seconds (0.25) must be at least three frame"),
    ({"camera": {"fps": 1}}, "at camera.fps 1 (3.00 s)"),
    ({"quality": {"min_brightness": 200, "max_brightness": 100}}, "quality: min_brightness (200) must be below"),
    ({"match": {"threshold": 0.0}}, "match.threshold: Input should be greater than or equal to 0.5"),
    ({"door": {"relay_pn": 17}}, "door.relay_pn"),
    ({"cameras": {}}, "cameras"),
])
def test_bad_values_name_the_key_path(doc, where):
    with pytest.raises(config.ConfigError, match=re.escape(where)) as err:
        config.parse(doc, "test.yaml")
    assert "{" not in str(err.value)  # never the whole config (or section) dumped into the message


def test_forgiving_where_the_meaning_is_plain(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    old = config.parse({"control": {"socket": "/run/lock/control.sock"}}, "t.yaml")   # a config from before
    assert old.control.socket == config.Settings().control.socket == "/run/face-lock/control.sock"
    s = config.parse({"camera": {"device": 0}, "gallery": {"path": "~/gallery.db"}, "mqtt": None}, "t.yaml")
    assert s.camera.device == "0" and s.gallery.path == str(tmp_path / "gallery.db")
    assert s.mqtt == config.MQTTSettings()    # a section with every key commented out: its defaults
    s = config.parse({"mqtt": {"enabled": True, "tls": None, "code_env": "LOCK_CODE"}}, "t.yaml")
    assert s.mqtt.enabled and s.mqtt.tls == config.TLSSettings()


def test_yaml_merge_keys_still_work():
    """``<<: *anchor`` then a key of its own overrides the merged one; that is not a key given twice."""
    text = "a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  q: 3\n"
    assert yaml.load(text, Loader=config._UniqueKeyLoader) == {"a": {"p": 1, "q": 2}, "b": {"p": 1, "q": 3}}


@pytest.mark.parametrize("body, where", [
    ("camera:\n  fps: 5\ncamera:\n  fps: 6\n", "the key 'camera' is given twice"),
    ("camera:\n  fps: 5\n  fps: 6\n", "the key 'fps' is given twice"),
    ("camera:\n  ? [a, b]\n  : 1\n", "a key must be a plain word"),
])
def test_a_key_given_twice_is_refused(tmp_path, body, where):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(body)
    with pytest.raises(config.ConfigError, match=where):
        config.load(cfg)


def run_lock(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lock", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("body, where", [
    ("camera:\n  fps: -3\n", "camera.fps"),
    ("door:\n  relay_active_high: sometimes\n", "door.relay_active_high"),
    ("gallery: [1, 2]\n", "gallery"),
    ("mqtt:\n  enabled: true\n  port: abc\n", "mqtt.port"),
    ("camera:\n  fps: [oops\n", "not valid YAML"),
    ("- a list\n", "top level"),
    ("decide:\n  lockout_seconds: -1\n", "decide.lockout_seconds"),
])
def test_cli_exits_2_with_the_key_path(tmp_path, body, where):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(body)
    r = run_lock("--config", str(cfg), "run")
    assert r.returncode == 2, r.stderr
    assert where in r.stderr and str(cfg) in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_config_file_is_named(tmp_path):
    r = run_lock("--config", str(tmp_path / "nope.yaml"), "run")
    assert r.returncode == 2 and "nope.yaml" in r.stderr


def test_relative_paths_are_taken_from_the_config_files_folder(tmp_path, monkeypatch):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "config.yaml").write_text("door:\n  relay_pin: GPIO17\n  relay_active_high: true\n"
                                     "gallery:\n  path: data/gallery.db\nmqtt:\n  tls:\n    ca_file: ca.pem\n"
                                     "audit:\n  path: /var/tmp/audit.db\n")
    monkeypatch.chdir(tmp_path)                       # anywhere else
    s = config.load("etc/config.yaml")
    assert s.gallery.path == str(etc / "data" / "gallery.db")
    assert s.mqtt.tls.ca_file == str(etc / "ca.pem")
    assert s.audit.path == "/var/tmp/audit.db"       # absolute: as written


def test_a_file_cut_short_is_refused_not_filled_in_with_defaults(tmp_path):
    """A config file cut off before the relay's polarity (a write interrupted by a power cut) loaded with
    relay_active_high: true, and a relay board that switches on a low level was then held open."""
    text = "".join(("  relay_active_high: false\n" if x.lstrip().startswith("relay_active_high:") else x)
                   for x in (REPO_ROOT / "config.yaml").read_text().splitlines(keepends=True))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    assert config.load(cfg).door.relay_active_high is False and config.load_door(cfg).relay_active_high is False
    lines = text.splitlines(keepends=True)
    polarity = next(i for i, line in enumerate(lines) if "relay_active_high" in line)
    for cut in (0, polarity - 5, polarity - 1, polarity):       # empty; before door:; between its keys
        cfg.write_text("".join(lines[:cut]))
        for loader in (config.load, config.load_door):
            with pytest.raises(config.ConfigError) as err:
                loader(cfg)
            message = str(err.value)
            assert str(cfg) in message
            assert ("empty" in message) if cut == 0 else ("door.relay_active_high" in message)


def test_the_shipped_config_must_be_told_the_relay_polarity(tmp_path, monkeypatch):
    """config.yaml said relay_active_high: true, and systemd/install.sh installed it as it was: on the common
    low-level-trigger boards the lock then held the door open. Left blank, it is refused until it is set."""
    shipped = REPO_ROOT / "config.yaml"
    monkeypatch.chdir(REPO_ROOT)                       # also as the ./config.yaml fallback
    for path in (shipped, None):
        if path is None and config.DEFAULT_PATHS[0].is_file():
            continue                                   # a real /etc/lock/config.yaml comes first
        for loader in (config.load, config.load_door):
            with pytest.raises(config.ConfigError) as err:
                loader(path)
            assert "config.yaml" in str(err.value) and "door.relay_active_high not set" in str(err.value)
            assert "low (false, most boards)" in str(err.value)
    cfg = tmp_path / "config.yaml"
    for blank in ("", " ~", " null", ' ""', " ''"):
        cfg.write_text(f"door:\n  relay_pin: GPIO17\n  relay_active_high:{blank}\n")
        for loader in (config.load, config.load_door):
            with pytest.raises(config.ConfigError, match="door.relay_active_high not set"):
                loader(cfg)


@pytest.mark.parametrize("body", ["just text\n", "- door\n", "[]\n", "42\n"])
def test_the_relay_is_never_driven_from_a_file_that_is_not_a_config(tmp_path, body):
    """`python -m lock.door --off` (ExecStopPost) took such a file for an empty door: section and drove
    GPIO17 as active high: on a low-level-trigger board, that energised the relay."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(body)
    for loader in (config.load, config.load_door):
        with pytest.raises(config.ConfigError) as err:
            loader(cfg)
        assert str(cfg) in str(err.value)


def test_mqtt_without_a_code_must_say_so():
    with pytest.raises(config.ConfigError) as err:
        config.parse({"mqtt": {"enabled": True}}, "t.yaml")
    assert "mqtt.allow_no_code" in str(err.value) and "mqtt.code_file" in str(err.value)
    assert config.parse({"mqtt": {"enabled": True, "allow_no_code": True}}).mqtt.allow_no_code
    assert config.parse({"mqtt": {"enabled": True, "code_file": "/etc/lock/code"}}).mqtt.code_file
    assert not config.parse({"mqtt": {"enabled": False}}).mqtt.enabled   # off: nothing to say
