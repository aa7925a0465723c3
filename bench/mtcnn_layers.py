#!/usr/bin/env python3
"""Where the MTCNN invoke time goes, layer by layer (the profile behind bench/floor.py's ratios).

    <build venv>/bin/python bench/mtcnn_layers.py [pnet rnet onet] [--threads 1]

Needs the model build environment (TensorFlow; models/README.md, "Rebuild")
with the lock's own runtime in it too (``pip install -e .[build]`` gives both;
the timing uses ai-edge-litert, as the lock does):
it rebuilds the shipped XNNPACK-friendly Keras graph of each net
(models/build.py, ``build_mtcnn_keras(fast=True)``), cuts it after each
layer, converts each cut to int8 (calibrated on random inputs: the times do
not depend on the scales) and times ``invoke()`` in LiteRT with XNNPACK.
The difference between a cut and the cut at its input is roughly that
layer's cost: each cut is converted on its own, so later differences are
approximate (a few show as negative); the first layers' are the firm ones.  Shapes: P-Net
at pyramid level 0 of a 640x480 frame at min face 80 (73x97), R-Net a batch
of 16, O-Net a batch of 4 (about what a door frame has).  For conv and
dense layers it also prints the MACs and the rate they run at, to set
against the floor's large-convolution rate in bench/floor.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))

SHAPES = {"pnet": (1, 73, 97, 3), "rnet": (16, 24, 24, 3), "onet": (4, 48, 48, 3)}


def to_int8(model, shape, rng) -> bytes:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = [1, None, None, 3] if shape[0] == 1 and shape[1] == 73 else [None, *shape[1:]]

    @tf.function(input_signature=[tf.TensorSpec(spec, tf.float32)])
    def serve(x):
        return model(x, training=False)

    conv = tf.lite.TFLiteConverter.from_concrete_functions(
        [convert_variables_to_constants_v2(serve.get_concrete_function())])
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([rng.uniform(-1, 1, (1, *shape[1:])).astype(np.float32)]
                                           for _ in range(20))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def invoke_ms(blob: bytes, shape, threads: int, rng, reps: int = 200) -> float:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=blob, num_threads=threads)
    d = it.get_input_details()[0]
    it.resize_tensor_input(d["index"], list(shape))
    it.allocate_tensors()
    if d["dtype"] == np.int8:
        it.set_tensor(d["index"], rng.integers(-128, 127, shape).astype(np.int8))
    else:  # a float model (bench/first_layer.py)
        it.set_tensor(d["index"], rng.uniform(-1, 1, shape).astype(np.float32))
    it.invoke()
    best = float("inf")
    for _ in range(15):
        t = time.perf_counter()
        for _ in range(reps):
            it.invoke()
        best = min(best, (time.perf_counter() - t) / reps * 1e3)
    return best


def layer_macs(layer, out_shape) -> int:
    """Multiply-accumulates of a Conv2D or Dense layer whose output has ``out_shape`` (batch included)."""
    import keras
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        return int(np.prod(out_shape)) * kh * kw * int(layer.input.shape[-1])
    if isinstance(layer, keras.layers.Dense):
        return int(np.prod(out_shape)) * int(layer.input.shape[-1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("nets", nargs="*", metavar="NET", help="pnet, rnet, onet (default: all three)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "LOCK_MODELS_CACHE", Path.home() / ".cache" / "lock-models")))
    args = ap.parse_args()
    bad = [n for n in args.nets if n not in SHAPES]
    if bad:
        ap.error(f"unknown network {bad[0]!r}: choose from {', '.join(SHAPES)}")
    args.nets = args.nets or list(SHAPES)
    import build
    import keras

    sds = build.load_mtcnn_state_dicts(args.cache)
    rng = np.random.default_rng(0)
    for net in args.nets:
        shape = SHAPES[net]
        model = build.build_mtcnn_keras(net, sds[net], input_offset=0.5 / 128, fast=True)
        print(f"\n== {net} {shape}, {args.threads} thread(s): cut after each layer, int8, invoke time")
        print(f"   {'layer':10s} {'cum ms':>8s} {'layer ms':>9s} {'MMAC':>7s} {'GMAC/s':>7s}")
        cum = {}  # layer name -> invoke time of the graph cut after it
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer) or isinstance(layer.output, (list, tuple)):
                cum[layer.name] = 0.0
                continue
            # a layer's cost: its cut minus the cut at its input (heads branch off the same trunk)
            before = cum.get(layer.input._keras_history[0].name, 0.0)
            cut = keras.Model(model.input, layer.output)
            ms = cum[layer.name] = invoke_ms(to_int8(cut, shape, rng), shape, args.threads, rng)
            macs = layer_macs(layer, tuple(cut(np.zeros(shape, np.float32)).shape))
            rate = f"{macs / ((ms - before) * 1e6):7.1f}" if macs and ms > before else ""
            print(f"   {layer.name:10s} {ms:8.4f} {ms - before:+9.4f} {macs / 1e6:7.2f} {rate}", flush=True)
        whole = invoke_ms(to_int8(model, shape, rng), shape, args.threads, rng)
        first = cum["prelu1"]
        print(f"   whole net {whole:.4f} ms; conv1 + prelu1 (the cut after prelu1) {first:.4f} ms = "
              f"{100 * first / whole:.0f} % of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
