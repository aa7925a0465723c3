#!/usr/bin/env python3
"""P-Net's PReLU written three exact ways: invoke time and XNNPACK partitions of each.

    <build venv>/bin/python bench/pnet_forms.py [--threads 1]

Needs the model build environment, like bench/mtcnn_layers.py (whose
conversion and timing it reuses).  XNNPACK takes neither int8 PRELU nor int8
MAXIMUM, so the shipped form, max(x, a*x), runs its MAXIMUMs in LiteRT's own
kernel and splits P-Net into several XNNPACK partitions; the other two forms
stay in one partition.  This prints which is faster at pyramid level 0 of a
640x480 frame: 73x97 at min face 80 (the default), ``--shape 289 385`` at
min face 20.  P-Net's one alpha above 1 (1.012) is clipped to 1 in every
form, as in the shipped model (models/build.py, PRELU_CLIP_MAX).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
sys.path.insert(0, str(ROOT / "bench"))

SHAPE = (1, 73, 97, 3)
FORMS = {
    "max": "max(x, a*x) (shipped)",
    "linear_relu": "a*x + relu((1-a)*x)",
    "two_relus": "relu(x) - a*relu(-x) (the R/O-Net form)",
}


def pnet(sd, form: str):
    import keras
    from keras import layers as L
    from keras import ops

    class PReLU(L.Layer):
        def __init__(self, alpha, **kw):
            super().__init__(**kw)
            self.a = np.minimum(np.asarray(alpha, np.float32), 1.0)

        def call(self, x):
            a, c = self.a, x.shape[-1]
            if form == "max":
                return ops.maximum(x, x * a)
            if form == "linear_relu":
                return (ops.depthwise_conv(x, a.reshape(1, 1, c, 1), 1, "valid")
                        + ops.relu(ops.depthwise_conv(x, (1 - a).reshape(1, 1, c, 1), 1, "valid")))
            one = np.ones((1, 1, c, 1), np.float32)
            pos = ops.relu(ops.depthwise_conv(x, one, 1, "valid"))
            neg = ops.relu(ops.depthwise_conv(x, -one, 1, "valid"))
            return pos + neg * (-a)

    def conv(x, name, k, filters):
        layer = L.Conv2D(filters, k, padding="valid", name=name)
        y = layer(x)
        layer.set_weights([sd[name + ".weight"].transpose(2, 3, 1, 0), sd[name + ".bias"]])
        return y

    inp = keras.Input(shape=(None, None, 3), batch_size=1)
    x = PReLU(sd["prelu1.weight"])(conv(inp, "conv1", 3, 10))
    x = L.MaxPooling2D(2, 2, padding="same")(x)
    x = PReLU(sd["prelu2.weight"])(conv(x, "conv2", 3, 16))
    x = PReLU(sd["prelu3.weight"])(conv(x, "conv3", 3, 32))
    return keras.Model(inp, [L.Softmax(axis=-1)(conv(x, "conv4_1", 1, 2)), conv(x, "conv4_2", 1, 4)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"), default=SHAPE[1:3],
                    help="input size (default: level 0 at min face 80; 289 385 is level 0 at min face 20)")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "LOCK_MODELS_CACHE", Path.home() / ".cache" / "lock-models")))
    args = ap.parse_args()
    shape = (1, args.shape[0], args.shape[1], 3)
    import build
    from ai_edge_litert.interpreter import Interpreter
    from mtcnn_layers import invoke_ms, to_int8

    sd = build.load_mtcnn_state_dicts(args.cache)["pnet"]
    rng = np.random.default_rng(0)
    print(f"\n== P-Net {shape}, {args.threads} thread(s), int8, LiteRT + XNNPACK")
    for form, label in FORMS.items():
        blob = to_int8(pnet(sd, form), shape, rng)
        it = Interpreter(model_content=blob, num_threads=args.threads)
        it.resize_tensor_input(it.get_input_details()[0]["index"], list(shape))
        it.allocate_tensors()
        partitions = Counter(o["op_name"] for o in it._get_ops_details())["DELEGATE"]
        ms = invoke_ms(blob, shape, args.threads, rng)
        print(f"   {label:42s} {ms:.4f} ms per invoke, {partitions} XNNPACK partition(s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
