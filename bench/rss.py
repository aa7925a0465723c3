#!/usr/bin/env python3
"""Peak RSS of a process that loads the four models and embeds one face.

    python bench/rss.py [--photo PATH]

The face is a real photograph pasted into a camera-sized (640x480) frame,
made in a child process so that decoding the photograph (which the daemon
never does) is not counted: the measured process sees only camera frames.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photo", type=Path, default=None)
    args = ap.parse_args()
    import subprocess
    import tempfile

    import numpy as np

    tmp = Path(tempfile.mkdtemp()) / "frame.npy"
    make = ("import sys, numpy as np\n"
            "from lock.imageio import load_image\n"
            "from lock.scenes import background, paste, default_photos\n"
            "p = sys.argv[2] if len(sys.argv) > 2 else default_photos() / 'face_recognition' / 'obama.jpg'\n"
            "np.save(sys.argv[1], paste(background((480, 640)), load_image(p), 420, (320, 240)))\n")
    subprocess.run([sys.executable, "-c", make, str(tmp)] + ([str(args.photo)] if args.photo else []),
                   check=True, cwd=ROOT)

    from lock.config import Settings
    from lock.vision.pipeline import FacePipeline, main_face

    frame = np.load(tmp)
    base = peak_mb()
    pipe = FacePipeline(Settings()).open((480, 640))
    loaded = peak_mb()
    faces = pipe.detect(frame)
    i = main_face(faces, frame.shape)
    if i is None:
        print("no face found in the frame", file=sys.stderr)
        return 1
    emb = pipe.embed(frame, faces.landmarks[i])
    assert emb.shape == (128,) and abs(float(np.linalg.norm(emb)) - 1) < 1e-3
    print(f"peak RSS: {base:.1f} MB after imports, {loaded:.1f} MB with the 4 models loaded, "
          f"{peak_mb():.1f} MB after detecting and embedding one face in a 640x480 frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
