"""The one place that reads image files.

Whatever the file (JPEG, PNG, GIF, ...; grayscale, palette, CMYK, 16-bit,
with alpha, rotated by EXIF), :func:`load_image` returns the package's frame
convention: a uint8 (H, W, 3) RGB array, upright.  Whatever goes wrong, it
raises :class:`~lock.errors.ImageError` naming the file and the problem.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from lock.errors import ImageError

log = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000   # a 40 MP photo is already larger than any phone's
MIN_SIDE = 32             # smaller cannot hold a face worth matching
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# The formats photos come in (the extensions above); Pillow's other decoders
# (EPS runs Ghostscript; PPM, SGI, PCX, ... raise ValueError on bad headers)
# are never handed an untrusted file.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")

# Pillow's own guard agrees with ours: Image.open refuses larger images before
# decoding a single pixel.  Truncated files must fail, never decode half-grey.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False

_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as a uint8 (H, W, 3) RGB array, upright.

    Refuses images above :data:`MAX_PIXELS` before decoding them, and images
    smaller than :data:`MIN_SIDE` on either side.  Alpha is composited on
    white; 16-bit images are scaled to 8 bits; an animated image gives its
    first frame.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"{p}: no such file") from None
    except PermissionError:
        raise ImageError(f"{p}: {_denied('reach it (a folder on its path is closed to them)')}") from None
    except OSError as exc:
        raise ImageError(f"{p}: cannot read it: {exc.strerror or exc}") from None
    if p.is_dir():
        raise ImageError(f"{p}: is a directory, not an image")
    if size == 0:
        raise ImageError(f"{p}: empty file")

    # Pillow's and numpy's warnings about a damaged file (corrupt EXIF, odd tags) are noise on
    # the terminal: the file is either decoded or refused with one line saying why.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(p, formats=FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            m = _BOMB_PIXELS.search(str(exc))
            what = f"{int(m.group(1)) / 1e6:.0f} megapixels" if m else "the image"
            raise ImageError(f"{p}: {what} is larger than the {MAX_PIXELS // 1_000_000} MP limit; "
                             "use a smaller photo") from None
        except UnidentifiedImageError:
            raise ImageError(f"{p}: not an image (or not one of {', '.join(FORMATS)})") from None
        except PermissionError:
            raise ImageError(f"{p}: {_denied('read this file')}") from None
        except MemoryError:
            raise
        except Exception as exc:  # OSError, ValueError, SyntaxError, struct.error, ... for a bad header
            raise ImageError(f"{p}: truncated or corrupt {_sniff(p)} ({exc})") from None
        with img:
            return _decode(p, img)


def _sniff(p: Path) -> str:
    """The format a file's first bytes claim, for messages about files Pillow could not open."""
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError:
        return "image"
    for magic, name in ((b"\xff\xd8", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
                        (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF")):
        if head.startswith(magic):
            return name
    return "WEBP" if head[:4] == b"RIFF" and head[8:12] == b"WEBP" else "image"


def _decode(p: Path, img: Image.Image) -> np.ndarray:
    fmt = img.format or "image"
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageError(f"{p}: {w}x{h} pixels is larger than the {MAX_PIXELS // 1_000_000} MP limit; "
                         "use a smaller photo")
    if w < MIN_SIDE or h < MIN_SIDE:
        raise ImageError(f"{p}: {w}x{h} pixels is too small (at least {MIN_SIDE}x{MIN_SIDE})")
    try:
        img.seek(0)   # the first frame of an animation
        img.load()
    except MemoryError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad data
        raise ImageError(f"{p}: truncated or corrupt {fmt} ({exc})") from None
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception as exc:  # a broken EXIF block should not reject a good photo
        log.warning("%s: cannot apply the EXIF orientation (%s); using the image as stored", p, exc)
        upright = img
    return _to_rgb(upright)


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.nan_to_num(np.asarray(img).astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if mode != "F" and a.max(initial=0) > 255:  # 16-bit samples: 0..65535
            a = a / 257.0
        gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


def iter_images(paths: Iterable[str | os.PathLike],
                skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """Image files among ``paths``: files as given, directories walked recursively.

    Files inside directories are kept when their extension is one of
    :data:`IMAGE_EXTENSIONS`, sorted by path; hidden files are skipped.  A path
    that does not exist or cannot be reached, and a folder (or subfolder) that
    cannot be listed, raise :class:`ImageError` naming it and why; given a
    ``skipped`` list, they are appended to it as (path, why) instead and the
    rest is still walked.
    """
    def trouble(p: str | os.PathLike, why: str) -> None:
        if skipped is None:
            raise ImageError(f"{p}: {why}")
        skipped.append((str(p), why))

    def unlistable(exc: OSError) -> None:  # os.walk's onerror: Path.rglob would swallow these
        if isinstance(exc, PermissionError):
            trouble(exc.filename, _denied("list this folder"))
        else:
            trouble(exc.filename, f"cannot list this folder: {exc.strerror or exc}")

    out: list[Path] = []
    for item in paths:
        p = Path(item)
        try:
            is_dir = stat.S_ISDIR(os.stat(p).st_mode)
        except PermissionError:  # os.path.lexists says False, Path.is_dir raises: it is there, not for us
            trouble(p, _denied("reach it (a folder on its path is closed to them)"))
            continue
        except (FileNotFoundError, NotADirectoryError):
            if os.path.islink(p):  # a broken link: load_image says what is wrong
                out.append(p)
            else:
                trouble(p, "no such file or directory")
            continue
        except OSError:  # a link loop, a name too long...: load_image says what is wrong
            out.append(p)
            continue
        if is_dir:
            found = []
            for folder, dirs, files in os.walk(p, onerror=unlistable):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [f for f in (Path(folder, name) for name in files if not name.startswith("."))
                          if f.suffix.lower() in IMAGE_EXTENSIONS and _file_or_unknown(f)]
            out.extend(sorted(found))
        else:  # a file: load_image says what is wrong with it, if anything
            out.append(p)
    return out


def _file_or_unknown(f: Path) -> bool:
    """Not a folder, a socket, ...: kept when it cannot be told (a link into a closed folder), for
    load_image to say why it cannot be read."""
    try:
        return f.is_file()
    except OSError:
        return True


def whoami() -> str:
    """The user this process runs as, for messages about permissions."""
    try:
        import pwd
        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"


def _denied(what: str) -> str:
    return f"permission denied: user {whoami()} cannot {what}"


def encode_jpeg(frame: np.ndarray, quality: int = 85) -> bytes:
    """A uint8 (H, W, 3) RGB frame as JPEG bytes."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) RGB frame, got {frame.dtype} {frame.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()
