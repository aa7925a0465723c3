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

``--bound`` asks instead how close to the floor these nets could get in this
runtime if their PReLUs cost nothing (no exact form of PReLU can cost less),
and with one other conv1 layout too. Per net it times, on the same shapes:
the shipped graph; the same layers with every PReLU replaced by a ReLU fused
into the convolution before it (free, but not the network: no exact form of
PReLU can cost less); and that again with conv1 run on a space-to-depth input
(2x2 pixel blocks as 12 channels, a 2x2 convolution with 4x the outputs,
depth-to-space after it), the input rearranged *outside* the timed invoke.
The floor is bench/floor.py's: the shipped graph's MACs (counted from the
.tflite) over the int8 rate of the large reference convolution stack, timed
in the same run. The bound graphs have random weights (int8 XNNPACK time
does not depend on the values).
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


def bound_graph(net: str, s2d: bool):
    """The net's layers with PReLU as a fused ReLU; conv1 on a space-to-depth input when ``s2d``."""
    import keras
    import tensorflow as tf
    from keras import layers as L

    def conv(x, k, f):
        return L.Conv2D(f, k, activation="relu")(x)

    class D2S(L.Layer):
        def call(self, x):
            return tf.nn.depth_to_space(x, 2)

    class StaticFlatten(L.Layer):
        def call(self, x):
            return tf.reshape(x, (-1, int(np.prod(x.shape[1:]))))

    def first(inp, c, crop):
        if not s2d:
            return conv(inp, 3, c)
        x = D2S()(conv(inp, 2, 4 * c))       # 2x2 conv on 2x2 blocks = the 3x3 conv on pixels
        return L.Cropping2D(((0, 1), (0, 1)))(x) if crop else x

    shape = SHAPES[net]
    in_shape = ((shape[1] + 1) // 2, (shape[2] + 1) // 2, 12) if s2d else shape[1:]
    inp = keras.Input(shape=in_shape, batch_size=1 if net == "pnet" else None)
    if net == "pnet":   # 73x97 padded to 74x98: one conv1 row and column too many, cropped
        x = L.MaxPooling2D(2, 2, padding="same")(first(inp, 10, crop=True))
        x = conv(conv(x, 3, 16), 3, 32)
        outs = [L.Softmax()(L.Conv2D(2, 1)(x)), L.Conv2D(4, 1)(x)]
    elif net == "rnet":
        x = L.MaxPooling2D(3, 2, padding="same")(first(inp, 28, crop=False))
        x = conv(L.MaxPooling2D(3, 2)(conv(x, 3, 48)), 2, 64)
        x = L.Dense(128, activation="relu")(StaticFlatten()(x))
        outs = [L.Softmax()(L.Dense(2)(x)), L.Dense(4)(x)]
    else:
        x = L.MaxPooling2D(3, 2, padding="same")(first(inp, 32, crop=False))
        x = L.MaxPooling2D(3, 2)(conv(x, 3, 64))
        x = conv(L.MaxPooling2D(2, 2)(conv(x, 3, 64)), 2, 128)
        x = L.Dense(256, activation="relu")(StaticFlatten()(x))
        outs = [L.Softmax()(L.Dense(2)(x)), L.Dense(4)(x), L.Dense(10)(x)]
    return keras.Model(inp, outs), (shape[0], *in_shape)


def bound(nets, threads: int, sds, rng) -> None:
    import tempfile

    import build
    import floorlib as floor

    tmp = Path(tempfile.mkdtemp(prefix="lock-bound-"))
    ref, how = floor.reference_model(sys.executable, tmp / "reference.tflite")
    if ref is None:
        raise SystemExit(f"the reference model was not built: {how}")
    rate = floor.count_ops(ref)["macs"] / floor.time_invoke(ref, None, threads) / 1e6   # GMAC/s
    print(f"\n== how close the nets could get with PReLU free: {threads} thread(s); reference "
          f"{rate:.1f} GMAC/s (int8, 3x3 convolutions, LiteRT + XNNPACK)")
    print(f"   {'net':5s} {'shape':17s} {'MMAC':>6s} {'floor ms':>9s}   {'shipped':>15s}   "
          f"{'PReLU free':>15s}   {'+ conv1 s2d':>15s}")
    for net in nets:
        shape = SHAPES[net]
        shipped = to_int8(build.build_mtcnn_keras(net, sds[net], input_offset=0.5 / 128, fast=True),
                          shape, rng)
        (tmp / "shipped.tflite").write_bytes(shipped)
        macs = floor.count_ops(tmp / "shipped.tflite", shape)["macs"]
        floor_ms = macs / rate / 1e6
        cells = []
        for blob, run_shape in [(shipped, shape)] + [
                (to_int8(m, s, rng), s) for m, s in (bound_graph(net, False), bound_graph(net, True))]:
            ms = invoke_ms(blob, run_shape, threads, rng)
            cells.append(f"{ms:7.4f} {ms / floor_ms:5.2f}x")
        print(f"   {net:5s} {str(shape):17s} {macs / 1e6:6.2f} {floor_ms:9.4f}   " + "   ".join(cells),
              flush=True)
    print("   (ms per invoke and x floor; 'PReLU free' and 's2d' are bounds, not the networks)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("nets", nargs="*", metavar="NET", help="pnet, rnet, onet (default: all three)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bound", action="store_true",
                    help="time the PReLU-free and space-to-depth bounds against the floor instead")
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
    if args.bound:
        bound(args.nets, args.threads, sds, rng)
        return 0
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
