#!/usr/bin/env python3
"""Which of LiteRT's CPU kernels run the shipped networks fastest.

    python bench/kernels.py [--threads 1] [--rounds 3]

Each network, at the shapes a door frame gives it (P-Net at 640x480's first
pyramid level for min face 80 and for min face 20, R-Net on 16 crops, O-Net
on 4, FaceNet on one face), is timed with three settings of the same
ai-edge-litert interpreter, in turns (``--rounds`` times, the median kept):

- ``xnnpack``: the default, as the lock runs (XNNPACK delegate);
- ``latest``: ``experimental_default_delegate_latest_features=True``, which
  lets XNNPACK take operators it otherwise leaves to LiteRT;
- ``builtin``: ``BUILTIN_WITHOUT_DEFAULT_DELEGATES``, LiteRT's own kernels.

Prints ms per invoke and each setting's time over the default's, and
whether the int8 outputs are identical.  The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from floorlib import ROOT, time_invoke  # noqa: E402

CASES = [("pnet.tflite", (1, 73, 97, 3), "P-Net 73x97 (min face 80)"),
         ("pnet.tflite", (1, 289, 385, 3), "P-Net 289x385 (min face 20)"),
         ("rnet.tflite", (16, 24, 24, 3), "R-Net, 16 crops"),
         ("onet.tflite", (4, 48, 48, 3), "O-Net, 4 crops"),
         ("facenet.tflite", (1, 160, 160, 3), "FaceNet, 1 face")]


def settings() -> dict[str, dict]:
    from ai_edge_litert.interpreter import OpResolverType
    return {"xnnpack": {}, "latest": {"experimental_default_delegate_latest_features": True},
            "builtin": {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}}


def outputs(path: Path, shape, threads: int, kw: dict) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path), num_threads=threads, **kw)
    it.resize_tensor_input(it.get_input_details()[0]["index"], list(shape))
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.random.default_rng(1).integers(-128, 128, d["shape"], dtype=np.int8))
    it.invoke()
    return [it.get_tensor(o["index"]).copy() for o in it.get_output_details()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default=str(ROOT / "models"))
    args = ap.parse_args()
    kinds = settings()
    result = {}
    print(f"ms per invoke, {args.threads} thread(s), median of {args.rounds} rounds taken in turns")
    print(f"{'network':30s} " + " ".join(f"{k:>9s}" for k in kinds) + "   latest/x  builtin/x  outputs")
    for name, shape, label in CASES:
        path = Path(args.models) / name
        times = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for k, kw in kinds.items():
                times[k].append(time_invoke(path, shape, args.threads, seconds=1.0, **kw))
        ms = {k: statistics.median(v) for k, v in times.items()}
        ref = outputs(path, shape, args.threads, {})
        same = {k: all(np.array_equal(a, b) for a, b in zip(ref, outputs(path, shape, args.threads, kw)))
                for k, kw in kinds.items()}
        diff = {k: max(int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())
                       for a, b in zip(ref, outputs(path, shape, args.threads, kw))) for k, kw in kinds.items()}
        note = ", ".join(f"{k} {'identical' if same[k] else f'differ by up to {diff[k]} codes'}"
                         for k in kinds if k != "xnnpack")
        print(f"{label:30s} " + " ".join(f"{ms[k]:9.3f}" for k in kinds)
              + f"   {ms['latest'] / ms['xnnpack']:8.2f} {ms['builtin'] / ms['xnnpack']:9.2f}  {note}")
        result[label] = {"ms": {k: round(v, 4) for k, v in ms.items()}, "identical": same, "max_code_diff": diff}
    print(json.dumps({"threads": args.threads, "rounds": args.rounds, "networks": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
