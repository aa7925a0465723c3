"""The local control socket: how the `lock` CLI talks to the running daemon.

A Unix stream socket, mode 0660, owned by a configurable group, so only root
and members of that group can connect.  One JSON object per line each way: a
request ``{"cmd": ...}``; zero or more ``{"progress": "..."}`` lines (for
enrollment from the camera); one final ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``.  A malformed request gets an error reply;
the daemon never falls over because of what a client sent.
"""

from __future__ import annotations

import fcntl
import grp
import json
import logging
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from lock.errors import ControlError

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
MAX_CLIENTS = 32          # connections served at once; more are told "busy" (no thread each)
REQUEST_TIMEOUT = 10.0    # seconds a client may take to send its request line
Handler = Callable[[dict, Callable[[str], None]], dict]


class ControlServer:
    """Serves requests on ``path`` with ``handler(request, progress) -> reply``."""

    def __init__(self, path: str, handler: Handler, *, group: str | None = None) -> None:
        self.path = Path(path)
        self.handler = handler
        self.group = group
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._claim: int | None = None     # fd of <socket>.lock, flock'ed while this daemon runs
        self._bound: tuple[int, int] | None = None   # (st_dev, st_ino) of the socket this process made

    def claim(self) -> None:
        """Be the only daemon of this control socket: an exclusive flock on ``<socket>.lock``.

        The daemon calls it before it touches the relay, the broker or anything else: a second
        ``lock run`` used to drive the relay pin, take the MQTT session and then, failing, delete the
        running daemon's socket.  The kernel drops the lock when the process ends, however it ends.
        """
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: whoever may write the folder (the service user, under systemd) must not make a
            # later `sudo lock run` empty some other file through a link planted here.
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ControlError(f"control.socket = {str(self.path)!r}: cannot make {lock_path}: "
                               f"{exc.strerror or exc} (as a service, systemd makes its folder: "
                               "RuntimeDirectory=face-lock; by hand, run as root or set control.socket "
                               "to a folder you can write; a symbolic link there is refused)") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):   # a FIFO or device planted there: not ours to write
            os.close(fd)
            raise ControlError(f"{lock_path}: not a plain file; remove it (control.socket)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise ControlError(f"{self.path}: another lock daemon is already running"
                               + (f" (pid {pid})" if pid.isdigit() else "")
                               + ": stop it first (systemctl stop lock)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._claim = fd

    def start(self) -> None:
        if self._claim is None:
            self.claim()
        try:
            if self.path.exists() or self.path.is_symlink():
                if _alive(self.path):
                    raise ControlError(f"{self.path}: another lock daemon is already running")
                self.path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o117)  # the socket is born 0660: no window where others could connect
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old)
            os.chmod(self.path, 0o660)
            st = os.stat(self.path)
            self._bound = (st.st_dev, st.st_ino)
        except OSError as exc:
            raise ControlError(f"control.socket = {str(self.path)!r}: cannot make the control socket: "
                               f"{exc.strerror or exc} (as a service, systemd makes its folder: "
                               "RuntimeDirectory=face-lock; by hand, run as root or set control.socket "
                               "to a folder you can write)") from None
        if self.group:
            try:
                os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
            except KeyError:
                log.warning("control socket: group %r does not exist; only %s's own group can use %s "
                            "(create it: groupadd %s)", self.group, os.getuid(), self.path, self.group)
            except PermissionError as exc:
                log.warning("control socket: cannot give %s to group %r: %s", self.path, self.group, exc)
        sock.listen(64)  # a burst of clients waits in the queue instead of failing with EAGAIN
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        log.info("control socket at %s", self.path)

    def _serve(self) -> None:
        sock = self._sock
        last_error = None
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except socket.timeout:
                continue
            except OSError as exc:  # closed by close(), or e.g. EMFILE: too many open files
                if self._stop.is_set():
                    break
                if str(exc) != last_error:
                    log.warning("control socket: accept failed: %s; going on", exc)
                last_error = str(exc)
                self._stop.wait(0.1)
                continue
            last_error = None
            # A flood of connections must neither take a thread each nor stop this loop.
            if not self._slots.acquire(blocking=False):
                _refuse(conn, f"busy: more than {MAX_CLIENTS} connections at once; try again")
                continue
            try:
                threading.Thread(target=self._client, args=(conn,), name="control-client", daemon=True).start()
            except RuntimeError:  # cannot start a new thread
                self._slots.release()
                _refuse(conn, "busy: cannot serve this connection now; try again")

    def _client(self, conn: socket.socket) -> None:
        try:
            self._serve_client(conn)
        finally:
            self._slots.release()

    def _serve_client(self, conn: socket.socket) -> None:
        conn.settimeout(REQUEST_TIMEOUT)
        with conn:
            def send(obj: dict) -> None:
                conn.sendall((json.dumps(obj) + "\n").encode())

            try:
                data = b""
                while b"\n" not in data and len(data) <= MAX_REQUEST:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if len(data) > MAX_REQUEST:
                    send({"ok": False, "error": f"request larger than {MAX_REQUEST} bytes"})
                    return
                try:
                    req = json.loads(data.split(b"\n", 1)[0].decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: [[[[...
                    send({"ok": False, "error": "malformed request: one JSON object per line expected"})
                    return
                if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                    send({"ok": False, "error": "malformed request: {\"cmd\": ...} expected"})
                    return
                conn.settimeout(None)
                try:
                    reply = self.handler(req, lambda msg: send({"progress": msg}))
                except Exception as exc:  # the daemon stays up whatever a request does
                    log.exception("control request %r failed", req.get("cmd"))
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                send(reply)
            except OSError as exc:
                log.debug("control client went away: %s", exc)

    def close(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        if self._bound is not None:   # only the socket this process made: never another daemon's
            try:
                st = os.stat(self.path)
                if self._bound == (st.st_dev, st.st_ino):
                    self.path.unlink()
            except OSError:
                pass
            self._bound = None
        if self._claim is not None:
            os.close(self._claim)   # releases the flock
            self._claim = None


def _refuse(conn: socket.socket, error: str) -> None:
    """Tell a client we will not serve it, without waiting for it."""
    try:
        conn.setblocking(False)
        conn.send((json.dumps({"ok": False, "error": error}) + "\n").encode())
    except OSError:
        pass
    finally:
        conn.close()


def _alive(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def daemon_running(path: str) -> bool:
    return _alive(Path(path))


def request(path: str, req: dict, *, timeout: float = 10.0) -> Iterator[dict]:
    """Send one request; yield progress lines and, last, the final reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except FileNotFoundError:
        raise ControlError(f"{path}: no control socket: is the lock daemon running? (systemctl status lock)") from None
    except PermissionError:
        raise ControlError(f"{path}: permission denied: run as root or as a member of the socket's group") from None
    except OSError as exc:
        raise ControlError(f"{path}: cannot reach the daemon: {exc}") from None
    with s:
        try:
            s.sendall((json.dumps(req) + "\n").encode())
        except OSError as exc:   # BrokenPipeError among them: lock/cli.py takes that one for its stdout
            raise ControlError(f"{path}: the daemon closed the connection: {exc}") from None
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                raise ControlError(f"{path}: the daemon did not answer within {timeout:.0f} s") from None
            if not chunk:
                raise ControlError(f"{path}: the daemon closed the connection without an answer")
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg: dict[str, Any] = json.loads(line)
                yield msg
                if "ok" in msg:
                    return
