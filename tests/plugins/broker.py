"""pytest plugin: a real mosquitto on 127.0.0.1 and a client that collects messages.

Fixtures:

* ``mqtt_broker``          an anonymous broker on a free port (stop()/start() keep the port);
* ``mqtt_broker_factory``  ``factory(users={"name": "password"})`` for a broker that requires a login,
                           ``factory(tls=make_test_ca(dir))`` for one that speaks only TLS;
* ``mqtt_subscriber``      ``factory(broker, topics="#")`` → :class:`Collector` (subscribed, ready).

Nothing here talks to anything but the brokers it started.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion


def _mosquitto() -> str:
    path = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if path is None:
        pytest.fail("mosquitto is not installed: run `apt-get install mosquitto` (Debian package)")
    return path


def make_test_ca(directory: Path, name: str = "test") -> dict[str, Path]:
    """A CA made here, and a server certificate (127.0.0.1) and a client one it signs (PEM files in ``directory``).

    Returns ``{"ca", "cert", "key", "client_cert", "client_key"}`` → paths.  Made with the ``cryptography``
    package: nothing leaves this machine and nothing is trusted by the system.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])

    def cert(subject: x509.Name, public_key, *extensions):
        """A certificate for ``public_key``, valid for a day, signed by the CA's key."""
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
             .public_key(public_key).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))
        for extension, critical in extensions:
            b = b.add_extension(extension, critical=critical)
        return b.sign(ca_key, hashes.SHA256())

    def named(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca = cert(ca_name, ca_key.public_key(),
              (x509.BasicConstraints(ca=True, path_length=None), True),
              (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                             encipher_only=False, decipher_only=False), True))
    server = cert(named("127.0.0.1"), key.public_key(),
                  (x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False))
    client = cert(named("face-lock"), client_key.public_key())
    directory.mkdir(parents=True, exist_ok=True)
    files = {"ca": directory / f"{name}-ca.pem", "cert": directory / f"{name}-server.pem",
             "key": directory / f"{name}-server.key", "client_cert": directory / f"{name}-client.pem",
             "client_key": directory / f"{name}-client.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for cert_name, key_name, c, k in (("cert", "key", server, key), ("client_cert", "client_key", client, client_key)):
        files[cert_name].write_bytes(c.public_bytes(serialization.Encoding.PEM))
        files[key_name].write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
        files[key_name].chmod(0o600)
    return files


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A mosquitto process with its own config in ``directory``."""

    host = "127.0.0.1"

    def __init__(self, directory: Path, users: dict[str, str] | None = None, persistent: bool = False,
                 tls: dict[str, Path] | None = None, acl: str | None = None) -> None:
        self.directory = directory
        self.port = _free_port()
        self.users = dict(users or {})
        self.tls = tls  # make_test_ca(): the listener then speaks only TLS
        self.log_file = directory / "mosquitto.log"
        self.conf = directory / "mosquitto.conf"
        # persistent=True keeps sessions across stop()/start() (for collectors with clean_session=False).
        lines = [f"listener {self.port} {self.host}", f"persistence {'true' if persistent else 'false'}",
                 f"persistence_location {directory}/", f"log_dest file {self.log_file}", "log_type all"]
        if tls:  # with tls["require_certificate"], clients must show a certificate the CA signed
            lines[1:1] = [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}",
                          f"require_certificate {'true' if tls.get('require_certificate') else 'false'}"]
        if os.geteuid() == 0:  # mosquitto drops to user "mosquitto" otherwise and cannot read tmp files
            lines.append(f"user {pwd.getpwuid(0).pw_name}")
        if self.users:
            passwd = directory / "passwd"
            passwd.touch(mode=0o600)
            tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
            for name, password in self.users.items():
                subprocess.run([tool, "-b", str(passwd), name, password], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:  # mosquitto acl_file text: what clients may read and write
            (directory / "acl").write_text(acl)
            lines.append(f"acl_file {directory / 'acl'}")
        self.conf.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 5.0) -> None:
        if self.running:
            return
        self._proc = subprocess.Popen([_mosquitto(), "-c", str(self.conf)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        err = self._proc.stderr.read().decode(errors="replace") if self._proc.poll() is not None else ""
        self.stop()
        log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        pytest.fail(f"mosquitto did not start on port {self.port}:\n{err}\n{log[-2000:]}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def settings(self, **overrides: Any):
        """MQTTSettings pointing at this broker.  Without code_file or code_env, allow_no_code is on
        (the config refuses mqtt.enabled without a code otherwise)."""
        from lock.config import MQTTSettings
        values = {"enabled": True, "host": self.host, "port": self.port, "password_env": None}
        values.update(overrides)
        if not (values.get("code_file") or values.get("code_env")):
            values.setdefault("allow_no_code", True)
        return MQTTSettings(**values)


class Collector:
    """A paho client that records every message it receives: ``(topic, payload bytes, retain)``."""

    def __init__(self, broker: Broker, topics: str | Iterable[str] = "#", *, username: str | None = None,
                 password: str | None = None, client_id: str | None = None) -> None:
        self.broker = broker
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        # A fixed client_id gives a persistent session (clean_session=False): on a persistent broker,
        # messages published while this collector is away are kept for it.
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-collector-{id(self)}",
                                  clean_session=client_id is None)
        if username:
            self.client.username_pw_set(username, password)
        if broker.tls:
            self.client.tls_set(ca_certs=str(broker.tls["ca"]))
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.reconnect_delay_set(1, 2)

    def start(self, timeout: float = 5.0) -> "Collector":
        self.client.connect_async(self.broker.host, self.broker.port)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            raise AssertionError(f"collector could not subscribe on {self.broker.host}:{self.broker.port}")
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client, userdata, message) -> None:
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))
            self._cond.notify_all()

    # -- reading

    def on(self, topic: str) -> list[tuple[str, bytes, bool]]:
        with self._cond:
            return [m for m in self.messages if m[0] == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [m[1] for m in self.on(topic)]

    def json(self, topic: str) -> list[Any]:
        return [json.loads(p) for p in self.payloads(topic)]

    def wait_until(self, predicate: Callable[["Collector"], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate(collector)`` is true (checked on each message and every 0.1 s)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                with self._cond:
                    seen = sorted({m[0] for m in self.messages})
                raise AssertionError(f"timed out after {timeout:g} s; topics seen: {seen}")
            with self._cond:
                self._cond.wait(min(remaining, 0.1))

    def wait_for(self, topic: str, count: int = 1, timeout: float = 10.0) -> list[tuple[str, bytes, bool]]:
        """Wait until ``count`` messages arrived on ``topic``; return all of them."""
        self.wait_until(lambda c: len(c.on(topic)) >= count, timeout)
        return self.on(topic)

    def publish(self, topic: str, payload: str | bytes, retain: bool = False, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=5)


@pytest.fixture
def mqtt_broker_factory(tmp_path_factory):
    brokers: list[Broker] = []

    def make(users: dict[str, str] | None = None, persistent: bool = False,
             tls: dict[str, Path] | None = None, acl: str | None = None) -> Broker:
        broker = Broker(tmp_path_factory.mktemp("mosquitto"), users, persistent, tls, acl)
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def mqtt_broker(mqtt_broker_factory) -> Broker:
    return mqtt_broker_factory()


@pytest.fixture
def mqtt_subscriber():
    collectors: list[Collector] = []

    def make(broker: Broker, topics: str | Iterable[str] = "#", **login: Any) -> Collector:
        collector = Collector(broker, topics, **login).start()
        collectors.append(collector)
        return collector

    yield make
    for collector in collectors:
        collector.close()
