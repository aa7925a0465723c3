"""lock.imageio: every kind of file a person may hand to `lock enroll`."""

from __future__ import annotations

import gc
import os
import pickle
import shutil
import stat
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lock.errors import ImageError
from lock.imageio import encode_jpeg, iter_images, load_image


def noise(h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(arr_or_img, path: Path, **kw) -> Path:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    img.save(path, **kw)
    return path


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims a huge size (what a decompression bomb looks like)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


def test_rgb_jpeg_and_png(tmp_path):
    a = noise()
    out = load_image(save(a, tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == (64, 80, 3)
    assert np.array_equal(out, a)
    out = load_image(save(a, tmp_path / "a.jpg", quality=95))
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8


def test_grayscale_palette_and_1bit_become_rgb(tmp_path):
    gray = np.full((40, 50), 77, np.uint8)
    out = load_image(save(gray, tmp_path / "g.png"))
    assert out.shape == (40, 50, 3) and (out == 77).all()
    pal = Image.fromarray(noise(40, 50)).convert("P")
    assert load_image(save(pal, tmp_path / "p.png")).shape == (40, 50, 3)
    one = Image.new("1", (40, 40), 1)
    assert (load_image(save(one, tmp_path / "b.png")) == 255).all()


def test_cmyk_jpeg(tmp_path):
    img = Image.new("CMYK", (48, 48), (0, 255, 255, 0))  # pure red in ink
    out = load_image(save(img, tmp_path / "cmyk.jpg", quality=95))
    assert out.shape == (48, 48, 3)
    r, g, b = out[24, 24].astype(int)
    assert r > 200 and g < 50 and b < 50


def test_16bit_png_is_scaled(tmp_path):
    a = np.zeros((40, 40), np.uint16)
    a[:, :20] = 65535
    a[:, 20:] = 32896
    path = save(Image.fromarray(a), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (40, 40, 3)
    assert (out[:, :20] == 255).all() and (out[:, 20:] == 128).all()


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((40, 40, 4), np.uint8)
    a[:, :20] = (255, 0, 0, 255)   # opaque red
    a[:, 20:] = (0, 0, 0, 0)       # transparent
    out = load_image(save(a, tmp_path / "alpha.png"))
    assert out.shape == (40, 40, 3)
    assert (out[:, :20] == (255, 0, 0)).all()
    assert (out[:, 20:] == 255).all()


def test_animated_gif_first_frame(tmp_path):
    red = Image.new("RGB", (40, 40), (255, 0, 0))
    blue = Image.new("RGB", (40, 40), (0, 0, 255))
    path = tmp_path / "anim.gif"
    red.save(path, save_all=True, append_images=[blue], duration=100, loop=0)
    assert getattr(Image.open(path), "n_frames", 1) == 2
    out = load_image(path)
    assert out.shape == (40, 40, 3)
    assert tuple(out[20, 20]) == (255, 0, 0)


def test_exif_orientation_6_comes_out_upright(tmp_path):
    a = np.zeros((40, 60, 3), np.uint8)   # stored landscape: 40 high, 60 wide
    a[:10, :10] = (255, 0, 0)             # red marker at the stored top-left
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6                      # "rotate 90 degrees clockwise to display"
    path = save(img, tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(path)
    assert out.shape == (60, 40, 3)       # upright: portrait
    assert out[4, 35, 0] > 200 and out[4, 35, 2] < 60    # top-right after a clockwise turn
    assert out[4, 4, 0] < 60 and out[55, 4, 0] < 60


@pytest.mark.parametrize("fmt,suffix", [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_files_are_refused(tmp_path, fmt, suffix):
    whole = save(noise(200, 200), tmp_path / f"whole.{suffix}", format=fmt)
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ImageError, match=rf"cut\.{suffix}: truncated or corrupt {fmt}"):
        load_image(cut)


def test_empty_text_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg: empty file"):
        load_image(empty)
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo\n")
    with pytest.raises(ImageError, match=r"notes\.jpg: not an image"):
        load_image(text)
    with pytest.raises(ImageError, match=r"nowhere\.jpg: no such file"):
        load_image(tmp_path / "nowhere.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


def test_decompression_bomb_refused_fast(tmp_path):
    path = png_claiming(tmp_path / "bomb.png", 30000, 30000)
    assert path.stat().st_size < 200
    t0 = time.monotonic()
    with pytest.raises(ImageError, match=r"bomb\.png: 900 megapixels is larger than the 40 MP limit"):
        load_image(path)
    assert time.monotonic() - t0 < 1.0


def test_just_over_the_limit_names_the_size(tmp_path):
    path = png_claiming(tmp_path / "big.png", 8000, 6000)   # 48 MP: between our limit and Pillow's 2x
    with pytest.raises(ImageError, match="larger than the 40 MP limit"):
        load_image(path)


def test_too_small(tmp_path):
    with pytest.raises(ImageError, match=r"tiny\.png: 1x1 pixels is too small \(at least 32x32\)"):
        load_image(save(noise(1, 1), tmp_path / "tiny.png"))


def test_iter_images_walks_directories_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    for rel in ("b/2.JPG", "b/1.png", "a.webp", "notes.txt", ".hidden/x.jpg"):
        (tmp_path / rel).write_bytes(b"x")
    single = tmp_path / "notes.txt"
    assert iter_images([tmp_path, single]) == [
        tmp_path / "a.webp", tmp_path / "b" / "1.png", tmp_path / "b" / "2.JPG", single]
    with pytest.raises(ImageError, match="no such file or directory"):
        iter_images([tmp_path / "missing"])


def as_nobody(fn, *args):
    """``fn(*args)`` with a plain user's permissions: root reads any file whatever its mode.

    As root, a forked child drops to the user ``nobody`` for good and sends back the result (or
    the exception); not a new process, as the venv's Python may lie where nobody cannot run it.
    What ``fn`` imports must be imported already, for the same reason.
    """
    if os.geteuid() != 0:
        return fn(*args)
    import pwd
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("run as root and there is no user 'nobody' to drop to: root is never denied a file")
    # The child must not run the cyclic garbage collector: a LiteRT interpreter left in a cycle by an
    # earlier test, collected there, tears down XNNPACK's thread pool, whose threads the child does not
    # have (a segfault: the child died with nothing sent, once in about ten runs after test_faults.py).
    gc.collect()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        gc.disable()
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                out = (True, fn(*args))
            except BaseException as exc:
                out = (False, exc)
            with os.fdopen(w, "wb") as f:
                pickle.dump(out, f)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise AssertionError(f"the child running as nobody sent nothing back: "
                             f"{'signal ' + str(os.WTERMSIG(status)) if os.WIFSIGNALED(status) else status}")
    ok, value = pickle.loads(data)
    if not ok:
        raise value
    return value


@pytest.fixture
def shut():
    """A folder anyone may enter (not under pytest's 0700 tmp folder): closed/ (mode 0) holding a.jpg,
    open/ holding good.png, locked.png (mode 0), link.jpg (to closed/a.jpg) and sub/ (mode 0)."""
    base = Path(tempfile.mkdtemp(prefix="lock-perm-"))
    base.chmod(0o755)
    (base / "closed").mkdir()
    (base / "closed" / "a.jpg").write_bytes(b"x")
    (base / "open" / "sub").mkdir(parents=True)
    save(noise(), base / "open" / "good.png")
    save(noise(), base / "open" / "locked.png").chmod(0)
    (base / "open" / "link.jpg").symlink_to(base / "closed" / "a.jpg")
    for d in (base / "closed", base / "open" / "sub"):
        d.chmod(0)
    yield base
    for d in (base / "closed", base / "open" / "sub"):
        d.chmod(stat.S_IRWXU)
    shutil.rmtree(base)


def user() -> str:
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_name


def test_what_cannot_be_read_is_permission_denied_naming_the_user(shut):
    """Before, Path.rglob swallowed the PermissionError and os.path.lexists said False: `sudo -u lock lock
    enroll` on a folder only root may list said "no image files", and a photo in it "no such file"."""
    closed, sub, locked = shut / "closed", shut / "open" / "sub", shut / "open" / "locked.png"

    def look():
        errors = []
        for f in (lambda: iter_images([closed]), lambda: iter_images([closed / "a.jpg"]),
                  lambda: load_image(closed / "a.jpg"), lambda: load_image(locked),
                  lambda: load_image(shut / "open" / "link.jpg"), lambda: iter_images([shut / "open"])):
            try:
                errors.append(f"returned {f()}")
            except ImageError as exc:
                errors.append(str(exc))
        skipped: list = []
        found = iter_images([closed, shut / "open"], skipped=skipped)
        return user(), errors, found, skipped

    who, errors, found, skipped = as_nobody(look)
    assert who != "root"
    denied = f"permission denied: user {who} cannot"
    reach = f"{denied} reach it (a folder on its path is closed to them)"
    assert errors == [f"{closed}: {denied} list this folder", f"{closed / 'a.jpg'}: {reach}",
                      f"{closed / 'a.jpg'}: {reach}", f"{locked}: {denied} read this file",
                      f"{shut / 'open' / 'link.jpg'}: {reach}", f"{sub}: {denied} list this folder"]
    # given a list for them, what cannot be read is named there and the rest still walked
    assert found == [shut / "open" / "good.png", shut / "open" / "link.jpg", locked]  # load_image says why
    assert skipped == [(str(closed), f"{denied} list this folder"), (str(sub), f"{denied} list this folder")]


def test_encode_jpeg_round_trip(tmp_path):
    a = np.zeros((48, 64, 3), np.uint8)
    a[:, :, 1] = 200
    data = encode_jpeg(a, quality=90)
    assert data[:2] == b"\xff\xd8"
    path = tmp_path / "e.jpg"
    path.write_bytes(data)
    out = load_image(path)
    assert out.shape == (48, 64, 3) and abs(int(out[24, 32, 1]) - 200) < 5
    with pytest.raises(ValueError):
        encode_jpeg(np.zeros((4, 4), np.uint8))
