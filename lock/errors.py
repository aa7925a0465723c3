"""One exception root for everything a person may read.

Subclasses also inherit the matching builtin, the way gpiozero's exceptions do
(``gpiozero/exc.py``), so callers may catch either.  Every message says what
was wrong, where (file, config key, image) and, where it helps, what to do.
"""


class LockError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(LockError, ValueError):
    """The configuration file is missing, unreadable or invalid."""


class ModelError(LockError, RuntimeError):
    """A model file is missing, truncated, altered or cannot be loaded."""


class ImageError(LockError, ValueError):
    """An image file cannot be used (unreadable, truncated, too large, ...)."""


class EnrollmentError(LockError, ValueError):
    """Enrollment could not store anything; the gallery is unchanged."""


class GalleryError(LockError, RuntimeError):
    """The gallery database cannot be used as it is."""


class CameraError(LockError, RuntimeError):
    """The camera cannot deliver frames."""


class DoorError(LockError, RuntimeError):
    """The door hardware cannot be driven."""


class ControlError(LockError, RuntimeError):
    """The control socket cannot be reached or refused the request."""
