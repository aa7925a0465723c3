#!/usr/bin/env python3
"""Malformed images against `lock enroll` and `lock verify`: no traceback, a clear message, the gallery intact.

    python bench/abuse.py [--seed 0] [--count 520] [--batch 100] [--out DIR] [--keep]

Builds a corpus (deterministically from ``--seed``) out of the real test
photographs (tools/photos.py): the photos themselves and every variant a person
or an attacker may hand over (grayscale, CMYK, 16-bit, alpha, palette,
animated GIF, every EXIF orientation, wrong extensions, trailing bytes, BMP,
WEBP, TIFF, a 12 MP photo), files that claim huge sizes (30000x30000 PNG,
JPEG, GIF, BMP, TIFF, WEBP headers, and a real 16000x16000 zlib bomb), tiny
images, empty and text files, random bytes behind image magic numbers,
truncations at many offsets, bit flips, overwritten runs, special files (a
directory, a FIFO, /dev/null, dangling and looping symlinks) and file names
that are not UTF-8.  Then:

1. library: each file alone through ``lock.enroll.enroll_files`` with the real
   pipeline into a real gallery; a rejected file must raise EnrollmentError
   and leave the gallery's people, templates, version and file bytes as they
   were; an accepted one adds exactly one template.  Huge files must be
   refused in under a second (never decoded whole).
2. CLI: ``python -m lock --config CFG verify FILES...`` and ``... enroll NAME
   FILES...`` in batches (one process per batch; files that make the CLI stop
   early, such as a dangling link, run alone): exit status 0 or 1, never a
   "Traceback", one line naming each file (verify) or each skipped file
   (enroll), the same verdict as the library, and the gallery grown by
   exactly the accepted files.  The CLI runs with a strict UTF-8 stdout, as
   under a UTF-8 locale (en_GB.UTF-8 on Raspberry Pi OS).

Prints the outcome table (outcome → count), the problems found, and a last
JSON line.  Exit status 0 when no problem was found.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

# --------------------------------------------------------------------------- outcomes

ENROLLED = "enrolled"
NO_FACE = "no face"
SEVERAL = "several faces"
POOR = "poor quality"
EMPTY = "empty file"
NOT_IMAGE = "not an image"
CORRUPT = "truncated/corrupt"
TOO_LARGE = "too large"
TOO_SMALL = "too small"
MISSING = "missing"
DIRECTORY = "directory"
UNREADABLE = "unreadable"
CRASH = "CRASH"
FACE_FOUND = frozenset({ENROLLED, POOR})            # exactly one face in it
DECODED = frozenset({ENROLLED, POOR, NO_FACE, SEVERAL})
REFUSED = frozenset({EMPTY, NOT_IMAGE, CORRUPT, TOO_LARGE, TOO_SMALL, MISSING, DIRECTORY, UNREADABLE})
ORDER = [ENROLLED, NO_FACE, SEVERAL, POOR, CORRUPT, NOT_IMAGE, EMPTY, TOO_LARGE, TOO_SMALL, MISSING,
         DIRECTORY, UNREADABLE, CRASH]

_RULES = [
    (r"is a directory", DIRECTORY),
    (r"no face found", NO_FACE),
    (r"\d+ faces found", SEVERAL),
    (r"empty file", EMPTY),
    (r"not an image", NOT_IMAGE),
    (r"truncated or corrupt", CORRUPT),
    (r"larger than the \d+ MP limit", TOO_LARGE),
    (r"is too small", TOO_SMALL),
    (r"no such file", MISSING),
    (r"cannot read it", UNREADABLE),
]


def classify(why: str) -> str:
    """The outcome a rejection message stands for (quality reasons are everything else)."""
    for pattern, outcome in _RULES:
        if re.search(pattern, why):
            return outcome
    return POOR


# --------------------------------------------------------------------------- corpus

@dataclasses.dataclass
class Case:
    name: str                      # file name in the corpus folder
    kind: str
    path: Path
    expect: frozenset[str] | None  # allowed outcomes; None: any outcome but a crash
    same_as: str | None = None     # a case whose outcome (and face count) this one must match
    solo: bool = False             # the CLI runs it alone (it may stop a batch early)
    enroll_cli: bool = True        # give it to `lock enroll` (a directory is a folder of photos there)
    max_seconds: float | None = None


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h, with a token IDAT: what a decompression bomb's header looks like."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + _chunk(b"IEND", b""))


def png_zlib_bomb(w: int, h: int) -> bytes:
    """A complete, valid grayscale PNG of w x h zeros: a few hundred KB that inflate to w*h bytes."""
    comp = zlib.compressobj(9)
    row = b"\0" * (w + 1)  # filter byte + samples
    parts = []
    block = row * max(1, (1 << 22) // len(row))
    rows_per_block = len(block) // len(row)
    done = 0
    while done < h:
        n = min(rows_per_block, h - done)
        parts.append(comp.compress(block if n == rows_per_block else row * n))
        done += n
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def png16_rgb(a: np.ndarray) -> bytes:
    """A 16-bit-per-sample RGB PNG (Pillow cannot write one) of a uint8 (H, W, 3) array, scaled to 16 bits."""
    h, w, _ = a.shape
    s16 = (a.astype(">u2") * 257).astype(">u2")
    raw = b"".join(b"\0" + s16[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 6))
            + _chunk(b"IEND", b""))


def jpeg_claiming(data: bytes, w: int, h: int) -> bytes:
    """A real JPEG with its frame header (SOF0/SOF2) changed to claim w x h."""
    b = bytearray(data)
    i = 2
    while i + 9 < len(b):
        if b[i] != 0xFF:
            raise ValueError("not a JPEG marker")
        marker, seglen = b[i + 1], struct.unpack(">H", b[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            b[i + 5:i + 9] = struct.pack(">HH", h, w)
            return bytes(b)
        i += 2 + seglen
    raise ValueError("no SOF marker")


def gif_claiming(w: int, h: int) -> bytes:
    lsd = struct.pack("<HHBBB", w, h, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"  # 2-colour table
    desc = b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0)
    return b"GIF89a" + lsd + desc + b"\x02\x02\x44\x01\x00\x3b"


def bmp_claiming(w: int, h: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    body = b"\0" * 64
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(body), 0, 0, 54) + info + body


def tiff_claiming(w: int, h: int) -> bytes:
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, typ, n, v) if typ == 4 else struct.pack("<HHIHH", tag, typ, n, v, 0)
        for tag, typ, n, v in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 16


def webp_claiming(w: int, h: int) -> bytes:
    vp8x = bytes([0x10, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def exif_stored(upright: Image.Image, orientation: int) -> Image.Image:
    """The pixels a camera stores for ``upright`` with this EXIF orientation (so viewers turn it back)."""
    T = Image.Transpose
    inverse = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE,
               6: T.ROTATE_90, 7: T.TRANSVERSE, 8: T.ROTATE_270}[orientation]
    return upright.transpose(inverse)


def with_orientation(img: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    kw = {"quality": 95} if fmt == "JPEG" else {}
    return _encode(img, fmt, exif=exif.tobytes(), **kw)


MAGICS = {"jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
          "gif": b"GIF89a", "bmp": b"BM", "webp": b"RIFF\x00\x10\x00\x00WEBPVP8 ", "tif": b"II*\x00",
          "tiff": b"MM\x00*"}


class CorpusBuilder:
    def __init__(self, out: Path, photos: Path, seed: int) -> None:
        self.out = out
        self.rng = np.random.default_rng(seed)
        self.cases: list[Case] = []
        fr = photos / "face_recognition"
        self.singles = [fr / n for n in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")]
        self.celebs = sorted((photos / "celebrities").glob("*/*/*.jpg"))
        # obama2.jpg: its one face is found in every re-encoding (obama.jpg has a ~70 px face-like
        # patch that MTCNN finds or not depending on JPEG noise: "2 faces" is then right, but unstable).
        self.face = Image.open(self.singles[1]).convert("RGB")

    def add(self, name: str, kind: str, data: bytes | None, expect: Iterable[str] | None, **kw) -> Case:
        path = self.out / name
        if data is not None:
            path.write_bytes(data)
        case = Case(name, kind, path, None if expect is None else frozenset(expect), **kw)
        self.cases.append(case)
        return case

    def pick(self, items: list, n: int) -> list:
        idx = self.rng.choice(len(items), size=min(n, len(items)), replace=False)
        return [items[i] for i in sorted(idx)]

    # -- the fixed kinds: each appears once in every corpus (the quick one too) ----------------------

    def fixed(self) -> None:
        face, rng = self.face, self.rng
        src = self.add("upright.jpg", "real photo", self.singles[1].read_bytes(), {ENROLLED})
        self.add("obama.jpg", "real photo", self.singles[0].read_bytes(), {ENROLLED, SEVERAL})  # see above
        self.add("biden.jpg", "real photo", self.singles[3].read_bytes(), {ENROLLED})
        self.add("photo.png", "PNG", _encode(face, "PNG"), {ENROLLED})
        self.add("gray.jpg", "grayscale JPEG", _encode(face.convert("L"), "JPEG", quality=92), FACE_FOUND)
        self.add("gray.png", "grayscale PNG", _encode(face.convert("L"), "PNG"), FACE_FOUND)
        self.add("cmyk.jpg", "CMYK JPEG", _encode(face.convert("CMYK"), "JPEG", quality=92), FACE_FOUND)
        g16 = Image.fromarray((np.asarray(face.convert("L")).astype(np.uint16) * 257))
        self.add("gray16.png", "16-bit grayscale PNG", _encode(g16, "PNG"), FACE_FOUND)
        self.add("rgb16.png", "16-bit RGB PNG", png16_rgb(np.asarray(face)), FACE_FOUND)
        rgba = face.convert("RGBA")
        alpha = np.full(face.size[::-1], 255, np.uint8)
        alpha[:, : face.size[0] // 10] = 0  # a transparent strip
        rgba.putalpha(Image.fromarray(alpha))
        self.add("alpha.png", "RGBA PNG", _encode(rgba, "PNG"), FACE_FOUND)
        self.add("gray_alpha.png", "LA PNG", _encode(face.convert("LA"), "PNG"), FACE_FOUND)
        pal = face.resize((face.size[0] // 2, face.size[1] // 2)).convert("P", palette=Image.Palette.ADAPTIVE)
        self.add("palette.png", "palette PNG", _encode(pal, "PNG", transparency=0), FACE_FOUND)
        half = face.resize((face.size[0] // 2, face.size[1] // 2))  # palette quantisation is slow
        second = Image.fromarray(255 - np.asarray(half))              # the first frame is the one used
        self.add("animated.gif", "animated GIF",
                 _encode(half, "GIF", save_all=True, append_images=[second], duration=100, loop=0), FACE_FOUND)
        self.add("photo.bmp", "BMP", _encode(face, "BMP"), {ENROLLED})
        self.add("photo.webp", "WEBP", _encode(face, "WEBP", quality=90), FACE_FOUND)
        self.add("photo.tif", "TIFF (LZW)", _encode(face, "TIFF", compression="tiff_lzw"), {ENROLLED})
        self.add("progressive.jpg", "progressive JPEG", _encode(face, "JPEG", quality=90, progressive=True),
                 FACE_FOUND)
        self.add("q5.jpg", "JPEG quality 5", _encode(face, "JPEG", quality=5), None)
        w, h = face.size
        k = (12e6 / (w * h)) ** 0.5
        big = face.resize((round(w * k), round(h * k)), Image.Resampling.BICUBIC)
        self.add("12mp.jpg", "12 MP photo", _encode(big, "JPEG", quality=85), DECODED, max_seconds=30)
        for o in (2, 3, 4, 5, 6, 7, 8):
            self.add(f"exif{o}.jpg", f"EXIF orientation {o}", with_orientation(exif_stored(face, o), o),
                     FACE_FOUND, same_as=src.name)
        self.add("exif6.png", "EXIF orientation 6 (PNG)", with_orientation(exif_stored(face, 6), 6, "PNG"),
                 FACE_FOUND, same_as=src.name)
        broken = Image.Exif()
        broken[0x0112] = 9  # no such orientation
        self.add("exif_bad.jpg", "EXIF orientation out of range", _encode(face, "JPEG", quality=95,
                 exif=broken.tobytes()), FACE_FOUND)
        data = bytearray(_encode(face, "JPEG", quality=95, exif=with_exif_garbage()))
        self.add("exif_garbage.jpg", "garbage EXIF block", bytes(data), None)
        self.add("png_as.jpg", "PNG named .jpg", _encode(face, "PNG"), FACE_FOUND, same_as="photo.png")
        self.add("jpeg_as.png", "JPEG named .png", self.singles[1].read_bytes(), {ENROLLED}, same_as=src.name)
        self.add("jpeg_as.txt", "JPEG named .txt", self.singles[1].read_bytes(), {ENROLLED}, same_as=src.name)
        self.add("trailing.jpg", "bytes after the JPEG end", self.singles[1].read_bytes() + b"\0garbage" * 500,
                 {ENROLLED}, same_as=src.name)
        a = np.asarray(Image.open(self.singles[0]).convert("RGB"))
        b = np.asarray(Image.open(self.singles[3]).convert("RGB"))
        hh = 600
        a = np.asarray(Image.fromarray(a).resize((a.shape[1] * hh // a.shape[0], hh)))
        b = np.asarray(Image.fromarray(b).resize((b.shape[1] * hh // b.shape[0], hh)))
        self.add("two_faces.jpg", "two faces", _encode(Image.fromarray(np.concatenate([a, b], 1)), "JPEG",
                 quality=92), {SEVERAL})
        from lock.scenes import background
        self.add("porch.jpg", "no face (porch)", _encode(Image.fromarray(background((480, 640))), "JPEG"),
                 {NO_FACE})
        self.add("white.png", "no face (white)", _encode(Image.new("RGB", (640, 480), "white"), "PNG"), {NO_FACE})
        self.add("thin.png", "no face (32x20000)", _encode(Image.new("RGB", (20000, 32), "gray"), "PNG"), {NO_FACE})
        # too large: headers that claim it, and one real zlib bomb
        big_ok = self.singles[0].read_bytes()
        self.add("bomb_30000.png", "PNG header 30000x30000", png_header_only(30000, 30000), {TOO_LARGE},
                 max_seconds=1.0)
        self.add("bomb_48mp.png", "PNG header 8000x6000", png_header_only(8000, 6000), {TOO_LARGE}, max_seconds=1.0)
        self.add("bomb_real.png", "16000x16000 zlib bomb", png_zlib_bomb(16000, 16000), {TOO_LARGE},
                 max_seconds=1.0)
        self.add("bomb.jpg", "JPEG header 30000x30000", jpeg_claiming(big_ok, 30000, 30000), {TOO_LARGE},
                 max_seconds=1.0)
        self.add("bomb.gif", "GIF header 65535x65535", gif_claiming(65535, 65535), {TOO_LARGE}, max_seconds=1.0)
        self.add("bomb.bmp", "BMP header 30000x30000", bmp_claiming(30000, 30000), {TOO_LARGE}, max_seconds=1.0)
        self.add("bomb.tif", "TIFF header 30000x30000", tiff_claiming(30000, 30000), {TOO_LARGE}, max_seconds=1.0)
        self.add("bomb.webp", "WEBP header 16384x16384", webp_claiming(16384, 16384), {TOO_LARGE, CORRUPT},
                 max_seconds=1.0)
        # too small
        self.add("1x1.png", "1x1 PNG", _encode(Image.new("RGB", (1, 1)), "PNG"), {TOO_SMALL})
        self.add("1x1.jpg", "1x1 JPEG", _encode(Image.new("RGB", (1, 1)), "JPEG"), {TOO_SMALL})
        self.add("31x200.png", "31x200 PNG", _encode(face.resize((31, 200)), "PNG"), {TOO_SMALL})
        self.add("1x5000.gif", "1x5000 GIF", _encode(Image.new("P", (1, 5000)), "GIF"), {TOO_SMALL})
        self.add("huge_thin.png", "PNG header 100000x1", png_header_only(100000, 1), {TOO_SMALL})
        # not images
        self.add("empty.jpg", "zero bytes", b"", {EMPTY})
        self.add("one_byte.png", "one byte", b"\x89", {NOT_IMAGE})
        self.add("spaces.jpg", "whitespace", b" \n\t " * 10, {NOT_IMAGE})
        self.add("notes.jpg", "text named .jpg", b"this is not a photo\n" * 20, {NOT_IMAGE})
        self.add("page.png", "HTML named .png", b"<!doctype html><html><body>404</body></html>", {NOT_IMAGE})
        self.add("drawing.png", "SVG named .png", b'<svg xmlns="http://www.w3.org/2000/svg" width="9e9"/>',
                 {NOT_IMAGE})
        self.add("archive.jpg", "ZIP named .jpg", _zip_bytes(), {NOT_IMAGE})
        self.add("doc.jpg", "PDF named .jpg", _encode(face, "PDF"), {NOT_IMAGE})
        self.add("print.eps", "EPS (Ghostscript is never run)", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 "
                 b"100 100\nshowpage\n", {NOT_IMAGE})
        self.add("photo.ppm", "PPM with a broken header", b"P6\n" + bytes(rng.integers(0, 256, 64, np.uint8)),
                 {NOT_IMAGE})
        self.add("icon.ico", "ICO", _encode(face.resize((64, 64)), "ICO"), {NOT_IMAGE})
        # special files
        (self.out / "folder.jpg").mkdir()
        self.add("folder.jpg", "directory named .jpg", None, {DIRECTORY}, enroll_cli=False)
        os.mkfifo(self.out / "pipe.jpg")
        self.add("pipe.jpg", "FIFO named .jpg", None, {EMPTY}, max_seconds=1.0)
        os.symlink("/dev/null", self.out / "devnull.jpg")
        self.add("devnull.jpg", "symlink to /dev/null", None, {EMPTY})
        os.symlink(self.out / "nowhere.jpg", self.out / "dangling.jpg")
        self.add("dangling.jpg", "dangling symlink", None, {MISSING}, solo=True)
        os.symlink(self.out / "loop_b.jpg", self.out / "loop_a.jpg")
        os.symlink(self.out / "loop_a.jpg", self.out / "loop_b.jpg")
        self.add("loop_a.jpg", "symlink loop", None, {UNREADABLE, MISSING}, solo=True)
        # names that are not UTF-8 (bytes from an old camera or a FAT card)
        self.add(os.fsdecode(b"caf\xe9.jpg"), "non-UTF-8 name, a photo", self.singles[1].read_bytes(), {ENROLLED},
                 solo=True)
        self.add(os.fsdecode(b"\xff\xfe notes.jpg"), "non-UTF-8 name, text", b"not a photo", {NOT_IMAGE},
                 solo=True)

    # -- random damage: as many as asked ------------------------------------------------------------

    def sources(self) -> list[tuple[str, bytes]]:
        """(format, bytes) of real photos in each format, for the random damage."""
        rng = self.rng
        out = []
        for p in self.pick(self.celebs, 6) + self.singles[:2]:
            img = Image.open(p).convert("RGB")
            fmt = ["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"][int(rng.integers(6))]
            out.append(("JPEG", p.read_bytes()))
            out.append((fmt, _encode(img, fmt)))
        return out

    def damaged(self, n: int, quick: bool) -> None:
        rng = self.rng
        ext = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp", "TIFF": "tif"}
        srcs = self.sources()
        kinds = ["truncated", "bit flips", "overwritten run", "magic + random bytes", "real photo",
                 "wrong extension"]
        if quick:
            plan = kinds
        else:
            weights = np.array([0.3, 0.25, 0.12, 0.13, 0.12, 0.08])
            plan = list(rng.choice(kinds, size=n, p=weights / weights.sum()))
        for i, kind in enumerate(plan):
            fmt, data = srcs[int(rng.integers(len(srcs)))]
            b = bytearray(data)
            name = f"r{i:04d}_{kind.split()[0]}"
            if kind == "truncated":
                cut = int(rng.choice([1, 2, 8, 16, 64, 200, len(b) - 1, len(b) - 2,
                                      int(len(b) * rng.uniform(0.05, 0.99))]))
                self.add(f"{name}_{cut}.{ext[fmt]}", f"truncated ({fmt})", bytes(b[:max(1, cut)]), None)
            elif kind == "bit flips":
                k = int(rng.choice([1, 4, 32, 256]))
                for _ in range(k):
                    j = int(rng.integers(min(len(b) - 1, 20), len(b)))
                    b[j] ^= 1 << int(rng.integers(8))
                self.add(f"{name}_{k}.{ext[fmt]}", f"bit flips ({fmt})", bytes(b), None)
            elif kind == "overwritten run":
                j, k = int(rng.integers(len(b))), int(rng.integers(1, 512))
                b[j:j + k] = rng.integers(0, 256, len(b[j:j + k]), dtype=np.uint8).tobytes()
                self.add(f"{name}.{ext[fmt]}", f"random run ({fmt})", bytes(b), None)
            elif kind == "magic + random bytes":
                suffix = list(MAGICS)[int(rng.integers(len(MAGICS)))]
                body = rng.integers(0, 256, int(rng.integers(0, 5000)), dtype=np.uint8).tobytes()
                if rng.random() < 0.5:
                    body = struct.pack(">II", *(int(v) for v in rng.integers(1, 70000, 2))) + body
                self.add(f"{name}.{suffix}", f"magic + random bytes ({suffix.upper()})", MAGICS[suffix] + body,
                         None)
            elif kind == "real photo":
                p = self.celebs[int(rng.integers(len(self.celebs)))]
                self.add(f"{name}_{p.parent.name}_{p.name}", "celebrity photo", p.read_bytes(), DECODED)
            else:
                wrong = [e for e in ("jpg", "png", "gif", "bmp", "webp", "tif", "txt", "dat") if e != ext[fmt]]
                self.add(f"{name}.{wrong[int(rng.integers(len(wrong)))]}", f"wrong extension ({fmt})",
                         bytes(b), DECODED)


def with_exif_garbage() -> bytes:
    """An EXIF block whose IFD offset points past its end (Pillow warns; the photo must still load)."""
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 0x7FFFFFF0) + b"\xff" * 32


def _zip_bytes() -> bytes:
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("photo.jpg", b"x" * 100)
    return buf.getvalue()


def build_corpus(out: Path, seed: int = 0, count: int = 520, quick: bool = False) -> list[Case]:
    """The corpus in ``out`` (created empty): every fixed kind once, then random damage up to ``count``."""
    from tools.photos import fetch
    out.mkdir(parents=True, exist_ok=True)
    b = CorpusBuilder(out, fetch(), seed)
    b.fixed()
    b.damaged(max(0, count - len(b.cases)), quick)
    names = [c.name for c in b.cases]
    assert len(names) == len(set(names)), "corpus names must be unique"
    return b.cases


# --------------------------------------------------------------------------- the library pass

@dataclasses.dataclass
class Result:
    case: Case
    outcome: str = ""
    why: str = ""
    seconds: float = 0.0
    problems: list[str] = dataclasses.field(default_factory=list)
    cli_faces: int | None = None   # faces `lock verify` reported (None: refused or not run)


def gallery_state(path: Path, model_hash: str) -> tuple:
    """Everything a person can see of a gallery: people, template counts, version, the templates."""
    from lock.gallery import Gallery
    with Gallery(path, model_hash) as g:
        people = [(p.name, p.templates) for p in g.people()]
        templates = np.asarray(g.matcher()._matrix).tobytes()  # every stored vector, in order
        return people, g.stale_templates(), g.version(), templates


def file_bytes(path: Path) -> tuple[bytes, ...]:
    return tuple(p.read_bytes() if p.exists() else b"" for p in (path, Path(f"{path}-wal")))


def library_pass(cases: list[Case], pipeline, gallery_path: Path, name: str = "abuse library",
                 log: Callable[[str], None] = lambda s: None) -> list[Result]:
    """Each file alone through enroll_files into a real gallery; checks the gallery after each."""
    from lock.enroll import enroll_files
    from lock.errors import EnrollmentError
    from lock.gallery import Gallery

    results = []
    for i, case in enumerate(cases):
        r = Result(case)
        before, raw = gallery_state(gallery_path, pipeline.model_hash), file_bytes(gallery_path)
        t0 = time.perf_counter()
        # One person per file: the corpus mixes people, and variants of one photo, on purpose; this
        # suite is about the files, not the identity checks (tests/test_enroll.py has those).
        person = f"{name} {i}"
        try:
            with Gallery(gallery_path, pipeline.model_hash) as g:
                report = enroll_files(pipeline, g, person, [case.path], force=True)
            r.outcome = ENROLLED
        except EnrollmentError as exc:
            msg = str(exc)
            marker = f"{case.path}: "
            r.why = msg.split(marker, 1)[1].rstrip(")") if marker in msg else msg
            r.outcome = classify(r.why)
        except BaseException as exc:  # noqa: BLE001  (KeyboardInterrupt aside, everything is a finding)
            if isinstance(exc, KeyboardInterrupt):
                raise
            r.outcome, r.why = CRASH, f"{type(exc).__name__}: {exc}"
        r.seconds = time.perf_counter() - t0
        after, raw_after = gallery_state(gallery_path, pipeline.model_hash), file_bytes(gallery_path)
        if r.outcome == ENROLLED:
            grown = dict(after[0]).get(person, 0) - dict(before[0]).get(person, 0)
            if grown != 1 or len(report.stored) != 1:
                r.problems.append(f"accepted, but the gallery grew by {grown} template(s)")
        elif after != before or raw_after != raw:
            r.problems.append("rejected, yet the gallery changed")
        if r.outcome == CRASH:
            r.problems.append(f"crash: {r.why}")
        if case.expect is not None and r.outcome not in case.expect:
            r.problems.append(f"expected {'/'.join(sorted(case.expect))}, got {r.outcome} ({r.why})")
        if case.max_seconds is not None and r.seconds > case.max_seconds:
            r.problems.append(f"took {r.seconds:.1f} s (limit {case.max_seconds:g} s): decoded whole?")
        results.append(r)
        log(f"[{i + 1}/{len(cases)}] {case.name}: {r.outcome}")
    by_name = {r.case.name: r for r in results}
    for r in results:
        if r.case.same_as and r.case.same_as in by_name and r.outcome != by_name[r.case.same_as].outcome:
            r.problems.append(f"outcome {r.outcome} differs from {r.case.same_as}'s "
                              f"{by_name[r.case.same_as].outcome}")
    return results


# --------------------------------------------------------------------------- the CLI pass

def write_config(directory: Path) -> Path:
    import yaml
    directory.mkdir(parents=True, exist_ok=True)
    from lock import config
    s = config.parse({"gallery": {"path": str(directory / "gallery.db")},
                      "audit": {"path": str(directory / "audit.db")},
                      "control": {"socket": str(directory / "control.sock"), "group": None}}, "abuse")
    cfg = directory / "config.yaml"
    cfg.write_text(yaml.safe_dump(s.model_dump()))
    return cfg


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONIOENCODING"] = "utf-8"   # strict, as under en_GB.UTF-8 (C.UTF-8 would be forgiving)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONUTF8", None)
    return env


def run_cli(args: list[str], timeout: float = 600) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "lock", *args], capture_output=True, timeout=timeout,
                          env=cli_env(), cwd=str(ROOT))
    dec = lambda b: b.decode("utf-8", "surrogateescape")  # noqa: E731
    return proc.returncode, dec(proc.stdout), dec(proc.stderr)


def batches(results: list[Result], size: int) -> list[list[Result]]:
    normal = [r for r in results if not r.case.solo]
    out = [normal[i:i + size] for i in range(0, len(normal), size)]
    return out + [[r] for r in results if r.case.solo]


def _crashed(rc: int, err: str, out: str = "") -> str | None:
    if "Traceback" in err + out:
        where = err if "Traceback" in err else out
        after = where[where.rindex("Traceback"):].splitlines()[1:]
        tail = [ln for ln in after if ln and not ln.startswith(" ")][:1]  # the exception line
        return f"Traceback ({tail[0] if tail else '?'})"
    if rc not in (0, 1):
        return f"exit status {rc}"
    return None


def _printed_forms(path: Path) -> set[str]:
    """How a path may appear in the CLI's output: as is, or escaped (stderr backslash-escapes bad bytes)."""
    s = str(path)
    return {s, s.encode("utf-8", "backslashreplace").decode("utf-8")}


def cli_verify(results: list[Result], cfg: Path, size: int, log=lambda s: None) -> dict:
    stats = collections.Counter()
    for batch in batches(results, size):
        rc, out, err = run_cli(["--config", str(cfg), "verify", *[str(r.case.path) for r in batch]])
        stats["processes"] += 1
        crash = _crashed(rc, err, out)
        lines = out.splitlines()
        any_refused = False
        for r in batch:
            head = f"{r.case.path}: "
            mine = [ln for ln in lines if ln.startswith(head)]
            if not mine:
                r.problems.append(f"`lock verify` printed no line for it{f' ({crash})' if crash else ''}")
                stats["unnamed"] += 1
                continue
            rest = mine[0][len(head):]
            m = re.fullmatch(r"(\d+) face\(s\)", rest)
            library_refused = r.outcome in REFUSED
            if m:
                r.cli_faces = int(m.group(1))
                want = {NO_FACE: 0, SEVERAL: None}.get(r.outcome, 1)
                if library_refused:
                    r.problems.append(f"`lock verify` decoded it ({rest}) but the library refused it")
                elif want is not None and r.cli_faces != want or want is None and r.cli_faces < 2:
                    r.problems.append(f"`lock verify` found {r.cli_faces} face(s), the library {r.outcome}")
            else:
                any_refused = True
                if not library_refused:
                    r.problems.append(f"`lock verify` refused it ({rest}) but the library did not")
                elif classify(rest) != r.outcome:
                    r.problems.append(f"`lock verify` says {classify(rest)}, the library {r.outcome}")
        if crash:
            stats["crashes"] += 1
            for r in batch:
                r.problems.append(f"`lock verify` crashed on its batch: {crash}")
        elif rc != (1 if any_refused else 0):
            stats["bad_exit"] += 1
            batch[0].problems.append(f"`lock verify` exit status {rc} for a batch with"
                                     f"{'' if any_refused else 'out'} refused files")
        log(f"verify batch of {len(batch)}: exit {rc}")
    return dict(stats)


def cli_enroll(results: list[Result], directory: Path, model_hash: str, size: int,
               name: str = "abuse cli", log=lambda s: None) -> dict:
    stats = collections.Counter()
    todo = [r for r in results if r.case.enroll_cli]
    for number, batch in enumerate(batches(todo, size)):
        # One person in a gallery of their own per batch: the corpus mixes people and copies of photos
        # on purpose, which the identity checks would refuse across batches (see library_pass).
        person = f"{name} {number}"
        cfg = write_config(directory / f"enroll-{number}")
        gallery_path = directory / f"enroll-{number}" / "gallery.db"
        from lock.gallery import Gallery
        Gallery(gallery_path, model_hash).open().close()   # empty: a rejected batch must leave it byte-identical
        before = gallery_state(gallery_path, model_hash) if gallery_path.exists() else None
        raw = file_bytes(gallery_path)
        rc, out, err = run_cli(["--config", str(cfg), "enroll", "--force", person,
                                *[str(r.case.path) for r in batch]])
        stats["processes"] += 1
        crash = _crashed(rc, err, out)
        # a variant of a photo already in the batch (re-encoded, rotated...) is the same photo: stored once
        copies = {r.case.path for r in batch if r.outcome == ENROLLED
                  and any(ln.startswith(f"{r.case.path}: skipped: the same photo as ") for ln in out.splitlines())}
        stats["same_photo"] += len(copies)
        accepted = [r for r in batch if r.outcome == ENROLLED and r.case.path not in copies]
        after = gallery_state(gallery_path, model_hash) if gallery_path.exists() else None
        grown = (dict(after[0]).get(person, 0) if after else 0) - (dict(before[0]).get(person, 0) if before else 0)
        if crash:
            stats["crashes"] += 1
            for r in batch:
                r.problems.append(f"`lock enroll` crashed on its batch: {crash}")
        if grown != len(accepted) and not crash:
            stats["gallery_wrong"] += 1
            batch[0].problems.append(f"`lock enroll` added {grown} template(s) for {len(accepted)} good file(s)")
        if not accepted and (file_bytes(gallery_path) != raw or after != before):
            stats["gallery_changed_on_reject"] += 1
            batch[0].problems.append("`lock enroll` stored nothing, yet the gallery changed")
        want_rc = 0 if accepted else 1   # enrolled with the usable files, the others named: 0
        if not crash and rc != want_rc:
            stats["bad_exit"] += 1
            batch[0].problems.append(f"`lock enroll` exit status {rc}, expected {want_rc}")
        text = out + err
        for r in batch:
            if r.outcome == ENROLLED:
                continue   # (a copy among them is named by the "same photo" line found above)
            skipped = f"{r.case.path}: skipped: "
            hit = [ln for ln in out.splitlines() if ln.startswith(skipped)]
            if hit:
                if classify(hit[0][len(skipped):]) != r.outcome:
                    r.problems.append(f"`lock enroll` says {hit[0][len(skipped):]!r}, the library {r.outcome}")
            elif not any(form in text for form in _printed_forms(r.case.path)):
                r.problems.append("`lock enroll` did not name it")
                stats["unnamed"] += 1
        if accepted and not crash and f"enrolled {person}: {len(accepted)} template(s)" not in out:
            batch[0].problems.append(f"`lock enroll` summary line missing or wrong: {out.splitlines()[-1:]}")
        log(f"enroll batch of {len(batch)}: exit {rc}, +{grown} template(s)")
    return dict(stats)


# --------------------------------------------------------------------------- main

def table(results: list[Result]) -> list[tuple[str, int]]:
    counts = collections.Counter(r.outcome for r in results)
    return [(o, counts[o]) for o in ORDER if counts[o]] + [(o, n) for o, n in counts.items() if o not in ORDER]


def run(out: Path, seed: int, count: int, batch: int, quick: bool = False, verbose: bool = False,
        select: Callable[[Case], bool] = lambda case: True) -> dict:
    """Build the corpus in ``out``, run both passes over the selected cases; the figures (and ``_results``)."""
    from lock import config
    from lock.vision.pipeline import FacePipeline

    t0 = time.monotonic()
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if verbose else (lambda s: None)
    corpus = out / "corpus"
    cases = [c for c in build_corpus(corpus, seed, count, quick) if select(c)]
    t_built = time.monotonic()
    pipe = FacePipeline(config.Settings()).open()
    results = library_pass(cases, pipe, out / "library-gallery.db", log=say)
    t_lib = time.monotonic()
    cli_dir = out / "cli"
    cli_dir.mkdir(exist_ok=True)
    cfg = write_config(cli_dir)
    v = cli_verify(results, cfg, batch, log=say)
    e = cli_enroll(results, cli_dir, pipe.model_hash, batch, log=say)
    t_cli = time.monotonic()
    problems = [(r.case.name, p) for r in results for p in r.problems]
    return {
        "files": len(results), "seed": seed, "kinds": len({r.case.kind for r in results}),
        "outcomes": dict(table(results)),
        "crashes": sum(r.outcome == CRASH for r in results) + v.get("crashes", 0) + e.get("crashes", 0),
        "library_crashes": sum(r.outcome == CRASH for r in results),
        "cli_verify": v, "cli_enroll": e,
        "problems": len(problems), "problem_list": problems,
        "slowest_refusal_s": round(max((r.seconds for r in results if r.outcome in REFUSED), default=0.0), 3),
        "seconds": {"corpus": round(t_built - t0, 1), "library": round(t_lib - t_built, 1),
                    "cli": round(t_cli - t_lib, 1)},
        "_results": results,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count", type=int, default=520, help="files in the corpus (at least the fixed kinds)")
    ap.add_argument("--batch", type=int, default=100, help="files per CLI process")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--verbose", "-v", action="store_true", help="progress on stderr")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="lock-abuse-"))
    if args.out and out.exists() and any(out.iterdir()):
        print(f"error: {out} is not empty", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    try:
        res = run(out, args.seed, args.count, args.batch, verbose=args.verbose)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    results = res.pop("_results")
    print(f"{res['files']} files of {res['kinds']} kinds (seed {res['seed']}), each through the library "
          f"(enroll_files, real gallery) and the CLI (lock verify, lock enroll)")
    print(f"{'outcome':<20}{'files':>7}")
    for outcome, n in res["outcomes"].items():
        print(f"{outcome:<20}{n:>7}")
    print(f"{'total':<20}{res['files']:>7}")
    kinds = collections.defaultdict(collections.Counter)
    for r in results:
        kinds[r.case.kind.split(" (")[0] if r.case.name.startswith("r") and r.case.name[1:5].isdigit()
              else r.case.kind][r.outcome] += 1
    print("\nby kind (outcome: files):")
    for kind in sorted(kinds):
        print(f"  {kind:<36}" + ", ".join(f"{o} {n}" for o, n in kinds[kind].most_common()))
    v, e = res["cli_verify"], res["cli_enroll"]
    print(f"\nCLI: {v.get('processes', 0)} `lock verify` and {e.get('processes', 0)} `lock enroll` processes; "
          f"crashes (traceback or exit status not 0/1): {v.get('crashes', 0) + e.get('crashes', 0)}; "
          f"files not named: {v.get('unnamed', 0) + e.get('unnamed', 0)}")
    print(f"slowest refusal: {res['slowest_refusal_s']:.3f} s; time: corpus {res['seconds']['corpus']} s, "
          f"library {res['seconds']['library']} s, CLI {res['seconds']['cli']} s")
    print(f"problems: {res['problems']}")
    for name, p in res["problem_list"][:50]:
        print(f"  {name!r}: {p}")
    res["problem_list"] = [f"{n}: {p}" for n, p in res["problem_list"]][:50]
    print(json.dumps(res))
    return 0 if res["problems"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
