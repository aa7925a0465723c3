#!/usr/bin/env python3
"""Accuracy of the full pipeline (MTCNN → align → FaceNet) on LFW, int8 and float.

    python bench/lfw.py [--data ../shared/data/lfw-dev] [--float-models models/float] [--template-zoom Z]
                        [--limit N]

Prints, for the int8 models and (in the same run) the float reference:
- pairs accuracy on pairs.txt, 5-fold: threshold chosen on the other folds
  (``--limit N``: about N pairs, equally many same and different from each
  fold);
- TAR at FAR 1e-3 / 1e-4 / 1e-5 over ALL genuine and ALL impostor pairs of
  the images, and the cosine threshold at each, with the identity-balanced TAR
  (one person owns a large share of the genuine pairs);
- detection failures (faces not found; those images fall back to a fixed
  centre alignment so that every pair is scored);
- over all those pairs, at each candidate similarity: how many of one
  person's photo pairs fall below it and how many of two people's reach it
  (how lock/decide.py's SAME_FACE was chosen).
The last line is one JSON object with those figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lock.config import Settings, parse  # noqa: E402
from lock.imageio import load_image  # noqa: E402
from lock.vision.align import BOX_TEMPLATE, align, zoomed  # noqa: E402
from lock.vision.pipeline import FacePipeline, main_face  # noqa: E402
from lock.vision.runtime import Runtime  # noqa: E402

FARS = (1e-3, 1e-4, 1e-5)
SAME_FACE_CANDIDATES = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
# Landmarks of an average deep-funneled LFW face (250x250), for images where
# no face is found: the faces there are centred by construction.
LFW_FALLBACK = np.array([[106.5, 115.0], [143.5, 114.0], [125.0, 137.0], [109.0, 157.0], [141.0, 156.0]],
                        np.float32)


def read_pairs(path: Path):
    lines = path.read_text().strip().splitlines()
    folds, per = (int(x) for x in lines[0].split())
    pairs = []
    for k, line in enumerate(lines[1:]):
        p = line.split()
        if len(p) == 3:
            pairs.append(((p[0], int(p[1])), (p[0], int(p[2])), True, k // (2 * per)))
        else:
            pairs.append(((p[0], int(p[1])), (p[2], int(p[3])), False, k // (2 * per)))
    return pairs, folds


def limit_pairs(pairs, folds: int, n: int):
    """About n pairs: equally many same and different pairs from each fold (the first of each, in file
    order), as bench/compare.py's read_pairs, so that every fold can choose a threshold."""
    take = max(1, n // (2 * folds))
    out = []
    for f in range(folds):
        for same in (True, False):
            out += [p for p in pairs if p[3] == f and p[2] == same][:take]
    return out


def image_path(data: Path, name: str, i: int) -> Path:
    return data / "images" / name / f"{name}_{i:04d}.jpg"


def embed_all(pipe: FacePipeline, paths: list[Path], label: str,
              template: np.ndarray | None = None) -> tuple[np.ndarray, int, float]:
    out = np.zeros((len(paths), 128), np.float32)
    fails = 0
    t0 = time.perf_counter()
    for k, p in enumerate(paths):
        frame = load_image(p)
        faces = pipe.detect(frame)
        i = main_face(faces, frame.shape)
        if i is None:
            fails += 1
            lm = LFW_FALLBACK * [frame.shape[1] / 250, frame.shape[0] / 250]
        else:
            lm = faces.landmarks[i]
        out[k] = pipe.embedder.embed(align(frame, lm, template))
        if (k + 1) % 1000 == 0:
            print(f"  {label}: {k + 1}/{len(paths)} images", file=sys.stderr, flush=True)
    return out, fails, time.perf_counter() - t0


def pairs_accuracy(sims: np.ndarray, same: np.ndarray, fold: np.ndarray) -> tuple[float, float, list[float]]:
    accs, ths = [], []
    cands = np.linspace(-1, 1, 2001)
    for f in np.unique(fold):
        tr, te = fold != f, fold == f
        acc_tr = [((sims[tr] >= t) == same[tr]).mean() for t in cands]
        t = float(cands[int(np.argmax(acc_tr))])
        ths.append(t)
        accs.append(float(((sims[te] >= t) == same[te]).mean()))
    return float(np.mean(accs)), float(np.std(accs)), ths


def tar_at_far(emb: np.ndarray, ids: np.ndarray) -> dict:
    sim = emb @ emb.T
    iu = np.triu_indices(len(ids), 1)
    s = sim[iu]
    same = ids[iu[0]] == ids[iu[1]]
    gen, imp = s[same], s[~same]
    # identity-balanced: each person's genuine pairs weigh the same in total
    gid = ids[iu[0]][same]
    counts = np.bincount(gid)
    w = 1.0 / counts[gid]
    out = {"genuine_pairs": int(gen.size), "impostor_pairs": int(imp.size)}
    imp_sorted = np.sort(imp)[::-1]
    for far in FARS:
        k = max(int(far * imp.size), 1)
        thr = float(imp_sorted[k - 1])  # at most `far` of impostors score above it
        acc = gen > thr
        out[f"{far:g}"] = {"threshold": round(thr, 4), "tar": round(float(acc.mean()), 5),
                           "tar_balanced": round(float((acc * w).sum() / w.sum()), 5)}
    # lock/decide.py's SAME_FACE: below it, a track's new embedding is another face (someone stepped into
    # the spot).  Two photos of one person (other years, cameras) are a hard case of "the same face"; two
    # frames a tenth of a second apart differ far less.
    out["same_face"] = {f"{t:g}": {"genuine_below": round(float((gen < t).mean()), 5),
                                   "impostor_at_or_above": round(float((imp >= t).mean()), 6)}
                        for t in SAME_FACE_CANDIDATES}
    return out


def evaluate(label: str, pipe: FacePipeline, data: Path, paths: list[Path], ids: np.ndarray,
             index: dict, pairs, template: np.ndarray | None = None) -> dict:
    emb, fails, secs = embed_all(pipe, paths, label, template)
    a = np.array([index[p[0]] for p in pairs])
    b = np.array([index[p[1]] for p in pairs])
    sims = (emb[a] * emb[b]).sum(1)
    same = np.array([p[2] for p in pairs])
    fold = np.array([p[3] for p in pairs])
    acc, std, ths = pairs_accuracy(sims, same, fold)
    far = tar_at_far(emb, ids)
    return {"images": len(paths), "detection_failures": fails, "seconds": round(secs, 1),
            "pairs_accuracy": round(acc, 5), "pairs_accuracy_std": round(std, 5),
            "pairs_thresholds": [round(t, 3) for t in ths], **far}


def show(label: str, r: dict) -> None:
    print(f"\n== {label}")
    print(f"images {r['images']}, faces not found {r['detection_failures']} "
          f"({100 * (1 - r['detection_failures'] / r['images']):.2f} % found), {r['seconds']} s")
    print(f"pairs accuracy (5-fold) {100 * r['pairs_accuracy']:.2f} % ± {100 * r['pairs_accuracy_std']:.2f}")
    print(f"all pairs: {r['genuine_pairs']} genuine, {r['impostor_pairs']} impostor")
    for far in FARS:
        f = r[f"{far:g}"]
        print(f"  FAR {far:g}: TAR {100 * f['tar']:.2f} % (identity-balanced {100 * f['tar_balanced']:.2f} %), "
              f"threshold {f['threshold']:.4f}, FRR {100 * (1 - f['tar']):.2f} %")
    print("a track's face changed below this similarity (lock/decide.py SAME_FACE): one person's two photos "
          "taken as two faces / two people's photos taken as one face")
    for t, f in r["same_face"].items():
        print(f"  {t}: {100 * f['genuine_below']:.2f} % / {100 * f['impostor_at_or_above']:.3f} %")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "lfw-dev")
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--float-models", type=Path, default=ROOT / "models" / "float",
                    help="float reference (built by: python models/build.py --float models/float)")
    ap.add_argument("--no-float", action="store_true")
    ap.add_argument("--min-face", type=int, default=40, help="LFW faces are about 100 px in 250x250")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0,
                    help="about N pairs, equally many same and different from each fold (quick check)")
    ap.add_argument("--template-zoom", type=float, default=None,
                    help="align onto the box template zoomed this much instead of the runtime's "
                         "(how lock/vision/align.py's ZOOM was chosen)")
    args = ap.parse_args()

    pairs, folds = read_pairs(args.data / "pairs.txt")
    if args.limit:
        pairs = limit_pairs(pairs, folds, args.limit)
        n_same = sum(p[2] for p in pairs)
        print(f"--limit {args.limit}: {len(pairs)} pairs ({n_same} same, {len(pairs) - n_same} different, "
              f"{len({p[3] for p in pairs})} folds)")
    people = sorted(p.name for p in (args.data / "images").iterdir() if p.is_dir())
    if args.limit:
        wanted = {q[0] for p in pairs for q in p[:2]}
        people = [n for n in people if n in wanted]
    paths, ids, index = [], [], {}
    for pid, name in enumerate(people):
        for img in sorted((args.data / "images" / name).glob("*.jpg")):
            i = int(img.stem.rsplit("_", 1)[1])
            index[(name, i)] = len(paths)
            paths.append(img)
            ids.append(pid)
    ids = np.array(ids)
    settings: Settings = parse({"vision": {"min_face": args.min_face, "threads": args.threads}})

    results = {}
    runs = [("int8", args.models, "manifest.json")]
    if not args.no_float:
        if (args.float_models / "manifest-float.json").is_file():
            runs.append(("float", args.float_models, "manifest-float.json"))
        else:
            print(f"float reference missing at {args.float_models}: build it with "
                  f"`python models/build.py --float {args.float_models}` (needs the build extra)", file=sys.stderr)
    for label, mdir, manifest in runs:
        rt = Runtime(mdir, threads=args.threads, manifest_name=manifest)
        pipe = FacePipeline(settings, runtime=rt).open()
        template = None if args.template_zoom is None else zoomed(BOX_TEMPLATE, args.template_zoom)
        results[label] = evaluate(label, pipe, args.data, paths, ids, index, pairs, template)
        show(label, results[label])
    if "float" in results:
        d = {k: round(100 * (results["int8"][k] - results["float"][k]), 3) for k in ("pairs_accuracy",)}
        for far in FARS:
            d[f"tar@{far:g}"] = round(100 * (results["int8"][f"{far:g}"]["tar"] - results["float"][f"{far:g}"]["tar"]), 3)
        results["int8_minus_float_points"] = d
        print(f"\nint8 - float (points): {d}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
