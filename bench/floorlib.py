"""The arithmetic floor's parts, shared by bench/floor.py and bench/mtcnn_layers.py.

Needs only numpy and ai-edge-litert (the reference model is built by a
python with TensorFlow, in a subprocess), so the model build venv can use it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent



def count_ops(model_path: Path, input_shape=None) -> dict:
    """MACs and element-wise outputs of one invoke, from the graph (no delegate: the original ops)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(model_path),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    if input_shape is not None:
        it.resize_tensor_input(it.get_input_details()[0]["index"], list(input_shape))
    it.allocate_tensors()
    shapes = {t["index"]: tuple(int(d) for d in t["shape"]) for t in it.get_tensor_details()}
    macs = 0
    elementwise: Counter = Counter()
    for op in it._get_ops_details():
        name = op["op_name"]
        ins = [i for i in op["inputs"] if i >= 0]
        outs = [shapes[i] for i in op["outputs"]]
        out_elems = int(np.prod(outs[0])) if outs else 0
        if name == "CONV_2D":
            w = shapes[ins[1]]                      # (out_c, kh, kw, in_c)
            macs += out_elems * w[1] * w[2] * w[3]
        elif name == "DEPTHWISE_CONV_2D":
            w = shapes[ins[1]]                      # (1, kh, kw, out_c)
            macs += out_elems * w[1] * w[2]
        elif name == "FULLY_CONNECTED":
            w = shapes[ins[1]]                      # (out, in)
            macs += out_elems * w[1]
        elif name != "DELEGATE":
            elementwise[name] += out_elems
    return {"macs": macs, "elementwise": dict(elementwise)}


REFERENCE_SCRIPT = r'''
import sys, numpy as np, tensorflow as tf
inp = tf.keras.Input((56, 56, 64), batch_size=1)
x = inp
for _ in range(8):
    x = tf.keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
m = tf.keras.Model(inp, x)
def rep():
    r = np.random.default_rng(0)
    for _ in range(8):
        yield [r.normal(size=(1, 56, 56, 64)).astype(np.float32)]
c = tf.lite.TFLiteConverter.from_keras_model(m)
c.optimizations = [tf.lite.Optimize.DEFAULT]
c.representative_dataset = rep
c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
c.inference_input_type = tf.int8
c.inference_output_type = tf.int8
open(sys.argv[1], "wb").write(c.convert())
'''


def reference_model(tf_python: str | None, out: Path) -> tuple[Path | None, str]:
    """A large int8 model of plain 3x3 convolutions (8 x 64->64 on 56x56), made by TensorFlow.

    Returns (the model, the python that built it) or (None, why there is none)."""
    cands = [tf_python] if tf_python else [str(ROOT.parent / "buildenv" / "bin" / "python"),
                                           str(ROOT.parent / "venvs" / "tf" / "bin" / "python")]
    why = []
    for py in cands:
        if not py or not Path(py).exists():
            why.append(f"{py}: not found")
            continue
        r = subprocess.run([py, "-c", REFERENCE_SCRIPT, str(out)], capture_output=True, text=True,
                           env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
        if r.returncode == 0 and out.is_file():
            return out, py
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        why.append(f"{py}: failed ({last[:200]})")
        print(f"   (reference model with {py} failed: {last})", file=sys.stderr)
    return None, "no python with TensorFlow built it (" + "; ".join(why) + "; give --tf-python PATH)"


def time_invoke(model_path: Path, shape, threads: int, seconds: float = 1.5, **interpreter_kw) -> float:
    """Median wall ms of one invoke (XNNPACK unless ``interpreter_kw`` says otherwise), random int8 input."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model_path), num_threads=threads, **interpreter_kw)
    if shape is not None:
        it.resize_tensor_input(it.get_input_details()[0]["index"], list(shape))
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.random.default_rng(0).integers(-128, 128, d["shape"], dtype=np.int8))
    for _ in range(3):
        it.invoke()
    ts = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(ts) < 10:
        t = time.perf_counter()
        it.invoke()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3
