#!/usr/bin/env python3
"""The first layer of each MTCNN net (conv1, PReLU, pool1) written every exact way: invoke time.

    <build venv>/bin/python bench/first_layer.py [--threads 1]

Needs the model build environment, like bench/mtcnn_layers.py (whose
conversion and timing it reuses).  bench/mtcnn_layers.py shows conv1 and the
PReLU after it taking half or more of each net's invoke; this shows what the
alternatives to the shipped form would cost, on the shapes of a door frame
(P-Net pyramid level 0 at min face 80, R-Net a batch of 16, O-Net of 4):

- ``shipped``: the form in models/*.tflite (models/build.py): max(x, a*x)
  for P-Net, relu(x) + (-a) * relu(-x) with 1x1 depthwise convolutions for
  R-Net and O-Net;
- ``max``: max(x, a*x) for all three; exact only for alphas <= 1, and R-Net
  has two above 1 (the max is taken with a clipped to 1 here, to time it);
- ``mul``: a*x + (1-a)*relu(x) with element-wise multiplications by the
  per-channel alphas (exact for every alpha);
- ``float32``: the same layers in float, with TFLite's own PRELU, which
  XNNPACK takes in float (not in int8); input and output float.

Every form but ``float32`` is converted to int8 (calibrated on random inputs:
the times do not depend on the scales).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
sys.path.insert(0, str(ROOT / "bench"))

SHAPES = {"pnet": (1, 73, 97, 3), "rnet": (16, 24, 24, 3), "onet": (4, 48, 48, 3)}
FILTERS = {"pnet": 10, "rnet": 28, "onet": 32}
POOLS = {"pnet": 2, "rnet": 3, "onet": 3}  # window; stride 2, 'same' padding in all three
FORMS = ("shipped", "max", "mul", "float32")


def first_layer(net: str, sd, form: str):
    import keras
    from keras import layers as L
    from keras import ops

    a = np.asarray(sd["prelu1.weight"], np.float32)
    c = a.size

    class PReLUForm(L.Layer):
        def call(self, x):
            if form == "max" or (form == "shipped" and net == "pnet"):
                return ops.maximum(x, x * np.minimum(a, 1.0))
            if form == "shipped":
                one = np.ones((1, 1, c, 1), np.float32)
                return (ops.relu(ops.depthwise_conv(x, one, 1, "valid"))
                        + ops.relu(ops.depthwise_conv(x, -one, 1, "valid")) * (-a))
            return x * a + ops.relu(x) * (1 - a)

    shape = SHAPES[net]
    inp = keras.Input(shape=shape[1:], batch_size=1 if net == "pnet" else None)
    conv = L.Conv2D(FILTERS[net], 3, padding="valid")
    y = conv(inp)
    conv.set_weights([sd["conv1.weight"].transpose(2, 3, 1, 0), sd["conv1.bias"]])
    if form == "float32":
        prelu = L.PReLU(shared_axes=[1, 2])
        y = prelu(y)
        prelu.set_weights([a.reshape(1, 1, c)])
    else:
        y = PReLUForm()(y)
    y = L.MaxPooling2D(POOLS[net], 2, padding="same")(y)
    return keras.Model(inp, y)


def to_float(model, shape) -> bytes:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    @tf.function(input_signature=[tf.TensorSpec([shape[0], *shape[1:]], tf.float32)])
    def serve(x):
        return model(x, training=False)

    return tf.lite.TFLiteConverter.from_concrete_functions(
        [convert_variables_to_constants_v2(serve.get_concrete_function())]).convert()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "LOCK_MODELS_CACHE", Path.home() / ".cache" / "lock-models")))
    args = ap.parse_args()
    import build
    from mtcnn_layers import invoke_ms, to_int8

    sds = build.load_mtcnn_state_dicts(args.cache)
    rng = np.random.default_rng(0)
    print(f"\n== conv1 + PReLU + pool1, {args.threads} thread(s), LiteRT + XNNPACK, ms per invoke")
    print(f"   {'net':5s} {'shape':16s} " + " ".join(f"{f:>8s}" for f in FORMS))
    for net, shape in SHAPES.items():
        row = []
        for form in FORMS:
            model = first_layer(net, sds[net], form)
            blob = to_float(model, shape) if form == "float32" else to_int8(model, shape, rng)
            row.append(invoke_ms(blob, shape, args.threads, rng))
        print(f"   {net:5s} {str(shape):16s} " + " ".join(f"{ms:8.4f}" for ms in row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
