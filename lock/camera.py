"""Sources of frames; the one place that touches cameras.

Every camera runs a capture thread that keeps only the newest frame: a slow
consumer gets the latest picture of the door, never a backlog (older frames
are dropped and counted).  A camera that fails is reopened with exponential
backoff, logged once per outage, and never kills the process; ``healthy``
and ``last_frame_time`` tell the daemon when frames have stopped, so it can
stop feeding the systemd watchdog.

Subclasses implement three hooks, all called on the capture thread:
``_connect()`` (open the device), ``_grab()`` (block until the next frame;
return an RGB frame, ``None`` at the end of a finite source, or raise) and
``_disconnect()``.  ``_prepare()`` runs in ``open()`` on the caller's
thread for problems no retry can fix (library missing, no such file).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import urllib.parse
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from lock.config import CameraSettings
from lock.errors import CameraError, ImageError
from lock.imageio import IMAGE_EXTENSIONS, iter_images, load_image

log = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 0.1   # first wait after a failure; doubles up to retry_max_seconds
STALE_AFTER_SECONDS = 2.0   # no frame for this long (or 5 frame periods, if longer) = unhealthy


@dataclasses.dataclass(frozen=True)
class Frame:
    """A captured picture: uint8 (H, W, 3) RGB, its time.monotonic() capture time, a running index."""

    image: np.ndarray
    time: float
    index: int


class Camera:
    """Base: the latest-frame capture thread, reconnects and health."""

    name = "camera"

    def __init__(self, settings: CameraSettings) -> None:
        self.settings = settings
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._latest: Frame | None = None
        self._returned = -1          # index of the last frame read() handed out
        self._next_index = 0
        self._frames_dropped = 0
        self._exhausted = False
        self._outage_since: float | None = None
        self._opened = False
        self._closed = False

    # -- public -------------------------------------------------------------

    def open(self) -> "Camera":
        """Start capturing.  Raises CameraError only for what no retry can fix."""
        if self._opened:
            return self
        self._prepare()
        self._opened = True
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-capture", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the capture thread and release the device.  Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                log.warning("%s: capture thread did not stop within 5 s (device hung?)", self.name)
        if self._thread is None or not self._thread.is_alive():
            self._safe_disconnect()

    def __enter__(self) -> "Camera":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, timeout: float | None = 1.0) -> Frame | None:
        """The newest frame not returned before, waiting up to ``timeout`` seconds for one.

        Returns None on timeout, once a finite source is exhausted, or after close().
        """
        if not self._opened:
            raise CameraError(f"{self.name}: read() before open()")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                f = self._latest
                if f is not None and f.index > self._returned:
                    self._returned = f.index
                    return f
                if self._closed or self._exhausted:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def exhausted(self) -> bool:
        """A finite source (files without loop) has delivered its last frame."""
        return self._exhausted

    @property
    def frames_dropped(self) -> int:
        """Frames replaced by a newer one before anyone read them."""
        return self._frames_dropped

    @property
    def last_frame_time(self) -> float | None:
        """time.monotonic() of the newest frame, None before the first."""
        f = self._latest
        return None if f is None else f.time

    @property
    def healthy(self) -> bool:
        """Open, not in an outage, and a frame arrived recently."""
        t = self.last_frame_time
        if not self._opened or self._closed or self._outage_since is not None or t is None:
            return False
        return time.monotonic() - t < max(STALE_AFTER_SECONDS, 5.0 / self.settings.fps)

    # -- hooks for subclasses -------------------------------------------------

    def _prepare(self) -> None:
        """Check, on the caller's thread, what no retry can fix."""

    def _connect(self) -> None:
        """Open the device (capture thread)."""

    def _grab(self) -> np.ndarray | None:
        """Block until the next frame; an RGB uint8 array, None at the end, or raise."""
        raise NotImplementedError

    def _disconnect(self) -> None:
        """Release the device (capture thread, or close())."""

    # -- the capture thread ---------------------------------------------------

    def _run(self) -> None:
        connected = False
        delay = RETRY_FIRST_SECONDS
        while not self._stop.is_set():
            try:
                if not connected:
                    self._connect()
                    connected = True
                image = self._grab()
            except Exception as exc:  # any failure of the device is an outage, never fatal
                if self._stop.is_set():
                    break
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    log.warning("%s: camera lost: %s; retrying", self.name, exc)
                else:
                    log.debug("%s: still failing: %s", self.name, exc)
                if connected:
                    self._safe_disconnect()
                    connected = False
                self._stop.wait(delay)
                delay = min(delay * 2, self.settings.retry_max_seconds)
                continue
            if self._stop.is_set():
                break
            if image is None:
                log.info("%s: end of the source", self.name)
                with self._cond:
                    self._exhausted = True
                    self._cond.notify_all()
                break
            if self._outage_since is not None:
                log.warning("%s: camera back after %.1f s", self.name, time.monotonic() - self._outage_since)
                self._outage_since = None
            delay = RETRY_FIRST_SECONDS
            self._publish(image)
        if connected:
            self._safe_disconnect()

    def _publish(self, image: np.ndarray) -> None:
        with self._cond:
            old = self._latest
            if old is not None and old.index > self._returned:
                self._frames_dropped += 1
            self._latest = Frame(image=image, time=time.monotonic(), index=self._next_index)
            self._next_index += 1
            self._cond.notify_all()

    def _safe_disconnect(self) -> None:
        try:
            self._disconnect()
        except Exception as exc:
            log.debug("%s: error while releasing the device: %s", self.name, exc)


class PicameraCamera(Camera):
    """A Raspberry Pi camera through picamera2 (libcamera)."""

    name = "picamera2"

    def __init__(self, settings: CameraSettings) -> None:
        super().__init__(settings)
        self._cam = None
        self._picamera2 = None

    def _prepare(self) -> None:
        try:
            from picamera2 import Picamera2  # lazily: only on a Pi
        except ImportError as exc:
            raise CameraError(
                f"camera.source is picamera2 but it cannot be imported ({exc}): on Raspberry Pi OS run "
                "`sudo apt install python3-picamera2` and make the venv with --system-site-packages, "
                "or set camera.source to opencv or files") from None
        except Exception as exc:  # e.g. apt's simplejpeg, built for numpy 1.x, under a numpy 2 in the venv
            import numpy
            hint = (f"; with numpy {numpy.__version__} in the venv: apt's picamera2 needs numpy 1.x, which "
                    "pip install -e '.[pi]' keeps" if int(numpy.__version__.split(".")[0]) >= 2 else "")
            raise CameraError(f"camera.source is picamera2 but importing it failed "
                              f"({type(exc).__name__}: {exc}){hint}") from None
        self._picamera2 = Picamera2

    def _connect(self) -> None:
        s = self.settings
        cam = self._picamera2()
        try:
            config = cam.create_preview_configuration(
                main={"size": (s.width, s.height), "format": "RGB888"},
                controls={"FrameRate": s.fps})
            cam.configure(config)
            cam.start()
        except Exception:
            cam.close()
            raise
        self._cam = cam

    def _grab(self) -> np.ndarray:
        arr = self._cam.capture_array("main")
        # "RGB888 - 24 bits per pixel, ordered [B, G, R]" (The Picamera2 Library manual,
        # section "Image formats"): libcamera names formats by a little-endian word, so
        # the bytes in memory are B, G, R.  Reverse them to the package's RGB.
        return np.ascontiguousarray(arr[:, :, 2::-1])

    def _disconnect(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()


_SECRET_QUERY_KEYS = {"pass", "passwd", "password", "pwd", "key", "token", "auth", "secret"}


def _redact(source: str) -> str:
    """A stream URL without its password (user:password@ or ?password=...), for logs."""
    # Up to the last "@": a password may itself hold "@", "/", "?" or "#" (over-redacting is safe).
    source = re.sub(r"^([a-z][a-z0-9+.-]*://[^:/@?#]+:).*@", r"\1***@", source, flags=re.IGNORECASE)
    parts = urllib.parse.urlsplit(source)
    if not parts.scheme or not parts.query:
        return source
    query = "&".join(f"{k}=***" if k.lower() in _SECRET_QUERY_KEYS else (f"{k}={v}" if v or "=" in pair else k)
                     for pair in parts.query.split("&") if pair
                     for k, _, v in [pair.partition("=")])
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class OpenCVCamera(Camera):
    """A USB/V4L2 camera (index or /dev/videoN) or a network stream URL through OpenCV."""

    def __init__(self, settings: CameraSettings) -> None:
        super().__init__(settings)
        self._cap: cv2.VideoCapture | None = None
        self.name = f"opencv {_redact(settings.device)}"

    def _connect(self) -> None:
        s = self.settings
        dev = s.device.strip()
        cap = cv2.VideoCapture(int(dev) if dev.isdigit() else dev)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"cannot open camera {_redact(dev)!r} (camera.device)")
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, s.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, s.height)
        cap.set(cv2.CAP_PROP_FPS, s.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)   # fewer stale frames queued in the driver
        self._cap = cap

    def _grab(self) -> np.ndarray:
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise CameraError("the camera returned no frame")
        # Many webcams ignore the size asked for, and a stream has its own: frames larger than
        # camera.width x camera.height are shrunk, as the detector was sized for that.
        return _fit(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.settings.width, self.settings.height)

    def _disconnect(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Shrink (never enlarge) to fit inside width x height, keeping the aspect ratio."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class FileCamera(Camera):
    """Replays a directory of images (sorted) or a video file at ``fps``, for tests and demos.

    Frames larger than width x height are shrunk to fit, keeping the aspect
    ratio.  Unreadable images are skipped with a warning.  With ``loop`` off,
    the camera is ``exhausted`` after the last frame and read() returns None.
    """

    def __init__(self, settings: CameraSettings) -> None:
        super().__init__(settings)
        self.path = Path(settings.path)
        self.name = f"files {self.path}"
        self._files: list[Path] = []
        self._bad: set[Path] = set()
        self._video = False
        self._cap: cv2.VideoCapture | None = None
        self._pos = 0                 # next file, or next video frame
        self._due = 0.0               # when the next frame may be delivered

    def _prepare(self) -> None:
        if not self.settings.path:
            raise CameraError("camera.source is files but camera.path is empty: give a directory "
                              "of images or a video file")
        if not self.path.exists():
            raise CameraError(f"{self.path}: no such file or directory (camera.path)")
        if self.path.is_dir():
            self._files = iter_images([self.path])
            if not self._files:
                raise CameraError(f"{self.path}: no images in it (camera.path; looked for "
                                  f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
        elif self.path.suffix.lower() in IMAGE_EXTENSIONS:
            self._files = [self.path]
        else:
            # Anything else must be a video OpenCV reads: say so now, not by retrying for ever.
            cap = cv2.VideoCapture(str(self.path))
            try:
                readable = cap.isOpened() and cap.read()[0]
            finally:
                cap.release()
            if not readable:
                raise CameraError(f"{self.path}: not a folder of images, an image "
                                  f"({', '.join(sorted(IMAGE_EXTENSIONS))}) or a video OpenCV can read "
                                  "(camera.path)")
            self._video = True

    def _connect(self) -> None:
        if not self._video:
            if (self._bad or not self._files) and self.path.is_dir():   # after an outage (below): the folder now
                self._files, self._bad, self._pos = iter_images([self.path]), set(), 0
            return
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"{self.path}: cannot open it as a video (camera.path)")
        if self._pos:
            cap.set(cv2.CAP_PROP_POS_FRAMES, self._pos)   # carry on where a reconnect left off
        self._cap = cap

    def _disconnect(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def _grab(self) -> np.ndarray | None:
        self._pace()
        image = self._next_video() if self._video else self._next_image()
        if image is None:
            return None
        return _fit(image, self.settings.width, self.settings.height)

    def _pace(self) -> None:
        now = time.monotonic()
        if self._due > now:
            self._stop.wait(self._due - now)
        # the next frame is one period after this one (the first interval too)
        self._due = max(self._due, time.monotonic()) + 1.0 / self.settings.fps

    def _next_image(self) -> np.ndarray | None:
        while len(self._bad) < len(self._files):
            if self._pos >= len(self._files):
                if not self.settings.loop:
                    return None
                self._pos = 0
            path = self._files[self._pos]
            self._pos += 1
            if path in self._bad:
                continue
            try:
                return load_image(path)
            except ImageError as exc:
                log.warning("%s: skipping it: %s", self.name, exc)
                self._bad.add(path)
        if self.settings.loop:   # an outage, not the end: the folder is read again after a wait (_connect)
            raise CameraError("none of its images can be read (emptied, or being rewritten?)")
        log.error("%s: none of its images can be read", self.name)
        return None

    def _next_video(self) -> np.ndarray | None:
        ok, bgr = self._cap.read()
        if not ok and self.settings.loop and self._pos > 0:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._pos = 0
            ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        self._pos += 1
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def make_camera(settings: CameraSettings) -> Camera:
    """The camera camera.source names (not yet opened)."""
    kinds = {"picamera2": PicameraCamera, "opencv": OpenCVCamera, "files": FileCamera}
    try:
        return kinds[settings.source](settings)
    except KeyError:
        raise CameraError(f"camera.source {settings.source!r}: use one of {', '.join(kinds)}") from None
