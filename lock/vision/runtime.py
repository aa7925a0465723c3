"""The one place that makes TFLite interpreters.

Runtime choice: ``tflite_runtime`` when that is what is installed (older Pi
images), else ``ai_edge_litert`` (LiteRT, its maintained successor).  Every
model is checked against ``manifest.json`` (sha256 and size) when it loads,
so a missing, truncated or altered file is an error naming it, never a
mysterious crash or a silently wrong embedding.

Coral: with ``coral`` on and a ``<name>_edgetpu.tflite`` beside the CPU model,
the Edge TPU delegate (``libedgetpu.so.1``) is used; when the delegate or the
device is missing the CPU model is used and one line says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lock.errors import ModelError

log = logging.getLogger(__name__)

EDGETPU_LIB = "libedgetpu.so.1"


def _import_runtime() -> tuple[str, Any, Any]:
    try:
        from tflite_runtime.interpreter import Interpreter, load_delegate  # type: ignore
        return "tflite_runtime", Interpreter, load_delegate
    except ImportError:
        pass
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate  # type: ignore
        return "ai_edge_litert", Interpreter, load_delegate
    except ImportError:
        raise ModelError("no TFLite runtime is installed: pip install ai-edge-litert "
                         "(or tflite-runtime on older Raspberry Pi OS)") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Quant:
    """Affine int8 quantisation of one tensor: real = scale * (q - zero_point).

    ``scale == 0`` marks a float32 tensor (the float reference models used by
    the evaluation): values pass through unchanged.
    """

    scale: float
    zero_point: int

    @property
    def dtype(self) -> type:
        return np.int8 if self.scale else np.float32

    def quantize(self, x: np.ndarray) -> np.ndarray:
        if not self.scale:
            return np.asarray(x, np.float32)
        q = np.rint(x / np.float32(self.scale) + np.float32(self.zero_point))
        return np.clip(q, -128, 127).astype(np.int8)

    def pixel_lut(self, offset: float, factor: float) -> np.ndarray:
        """int8 code for each uint8 pixel value v, of the real value (v - offset) * factor."""
        return self.quantize((np.arange(256, dtype=np.float32) - offset) * factor)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        if not self.scale:
            return np.asarray(q, np.float32)
        return (q.astype(np.float32) - self.zero_point) * np.float32(self.scale)

    def code_at_least(self, threshold: float) -> int | None:
        """The smallest int8 code whose dequantised value is >= ``threshold`` (same float32
        arithmetic as :meth:`dequantize`, so ``q >= code`` selects exactly what
        ``dequantize(q) >= threshold`` would); 128 when no code reaches it; None for float tensors."""
        if not self.scale:
            return None
        ok = np.nonzero(self.dequantize(np.arange(-128, 128, dtype=np.int8)) >= threshold)[0]
        return int(ok[0]) - 128 if ok.size else 128


def tensor_quant(detail: dict) -> Quant:
    scale, zero = detail["quantization"]
    if detail["dtype"] == np.float32:
        return Quant(0.0, 0)
    if not scale:
        raise ModelError(f"tensor {detail['name']!r} is integer but has no quantisation parameters")
    return Quant(float(scale), int(zero))


class Runtime:
    """Loads models from a folder with a manifest; makes interpreters.

    Nothing is read until :meth:`open`.  ``threads`` is passed to every CPU
    interpreter.
    """

    def __init__(self, models_dir: Path, *, threads: int = 2, coral: bool = False,
                 manifest_name: str = "manifest.json") -> None:
        self.models_dir = Path(models_dir)
        self.threads = threads
        self.coral = coral
        self.manifest_name = manifest_name
        self.name = ""
        self.delegate_in_use: dict[str, str] = {}
        self._manifest: dict[str, Any] = {}
        self._files: dict[str, dict[str, Any]] = {}
        self._verified: set[Path] = set()
        self._Interpreter: Any = None
        self._load_delegate: Any = None
        self._edgetpu: Any = None
        self._edgetpu_failed = False

    def open(self) -> "Runtime":
        self.name, self._Interpreter, self._load_delegate = _import_runtime()
        mpath = self.models_dir / self.manifest_name
        try:
            self._manifest = json.loads(mpath.read_text())
        except FileNotFoundError:
            raise ModelError(f"{mpath}: model manifest missing; the models folder is incomplete "
                             "(reinstall the project, or rebuild with models/build.py)") from None
        except (OSError, ValueError) as exc:
            raise ModelError(f"{mpath}: cannot read the model manifest: {exc}") from None
        if not isinstance(self._manifest.get("models"), dict):
            raise ModelError(f"{mpath}: no 'models' table in the manifest")
        # entries are keyed by network name, each naming its file
        self._files = {e["file"]: e for e in self._manifest["models"].values()
                       if isinstance(e, dict) and "file" in e}
        return self

    @property
    def manifest(self) -> dict[str, Any]:
        return self._manifest

    def model_path(self, filename: str) -> Path:
        """The verified path of a model file (sha256 and size as in the manifest)."""
        path = self.models_dir / filename
        if path in self._verified:
            return path
        entry = self._files.get(filename)
        if entry is None:
            raise ModelError(f"{path}: not listed in {self.models_dir / self.manifest_name}")
        if not path.is_file():
            raise ModelError(f"{path}: model file missing (reinstall the project or rebuild the models)")
        size = path.stat().st_size
        if "size" in entry and size != entry["size"]:
            raise ModelError(f"{path}: {size} bytes, the manifest says {entry['size']}: "
                             "the file is truncated or replaced; restore it from the project")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise ModelError(f"{path}: sha256 {digest[:16]}... does not match the manifest "
                             f"({entry['sha256'][:16]}...): the file was altered; restore it from the project")
        self._verified.add(path)
        return path

    def model_hash(self, filename: str) -> str:
        return self._files[filename]["sha256"]

    def _edgetpu_delegate(self, filename: str) -> Any:
        if self._edgetpu is not None or self._edgetpu_failed:
            return self._edgetpu
        try:
            self._edgetpu = self._load_delegate(EDGETPU_LIB)
        except (OSError, ValueError, RuntimeError) as exc:
            self._edgetpu_failed = True
            log.warning("Coral Edge TPU not usable (%s: %s); running %s and the rest on the CPU",
                        EDGETPU_LIB, exc, filename)
        return self._edgetpu

    def interpreter(self, filename: str, input_shape: Sequence[int] | None = None, *,
                    threads: int | None = None) -> Any:
        """A ready interpreter for a model, its input resized once to ``input_shape``.

        ``threads`` overrides the runtime's thread count for this interpreter
        (tiny inputs run faster on one thread than split over two).
        With Coral on and ``<stem>_edgetpu.tflite`` present and listed in the
        manifest, the Edge TPU runs it; only for a model opened at its own fixed
        shape (no ``input_shape``): FaceNet. P/R/O-Net stay on the CPU.
        """
        if self._Interpreter is None:
            raise ModelError("Runtime.open() was not called")
        path = self.model_path(filename)
        if self.coral and input_shape is None:
            tpu_name = path.stem + "_edgetpu.tflite"
            if (self.models_dir / tpu_name).is_file() and tpu_name not in self._files:
                log.warning("Coral: %s is not listed in %s, so it is not used (a file put there by hand "
                            "cannot be checked); %s runs on the CPU (models/README.md, Coral Edge TPU)",
                            self.models_dir / tpu_name, self.models_dir / self.manifest_name, filename)
            elif (self.models_dir / tpu_name).is_file():
                delegate = self._edgetpu_delegate(tpu_name)
                if delegate is not None:
                    try:
                        interp = self._Interpreter(model_path=str(self.model_path(tpu_name)),
                                                   experimental_delegates=[delegate])
                        interp.allocate_tensors()
                        self.delegate_in_use[filename] = "edgetpu"
                        return interp
                    except (ValueError, RuntimeError) as exc:
                        log.warning("Coral: %s failed to load (%s); using the CPU model", tpu_name, exc)
        try:
            interp = self._Interpreter(model_path=str(path),
                                       num_threads=self.threads if threads is None else threads)
            if input_shape is not None:
                interp.resize_tensor_input(interp.get_input_details()[0]["index"], list(input_shape))
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: cannot be loaded by {self.name}: {exc}") from None
        self.delegate_in_use.setdefault(filename, "cpu")
        return interp

    def info(self) -> dict[str, Any]:
        return {"runtime": self.name, "threads": self.threads, "coral": self.coral,
                "delegates": dict(self.delegate_in_use), "models_dir": str(self.models_dir)}


class Net:
    """One int8 interpreter with its input/output quantisation, outputs keyed by last dim.

    MTCNN and FaceNet outputs are told apart by their last dimension (2 =
    face probability, 4 = box regression, 10 = landmarks, 128 = embedding),
    which the model build guarantees to be unambiguous.
    """

    def __init__(self, interp: Any) -> None:
        self.interp = interp
        inp = interp.get_input_details()[0]
        self.input_index = inp["index"]
        self.input_shape = tuple(int(d) for d in inp["shape"])
        self.input_quant = tensor_quant(inp)
        self.outputs: dict[int, tuple[int, Quant]] = {}
        for d in interp.get_output_details():
            self.outputs[int(d["shape"][-1])] = (d["index"], tensor_quant(d))

    def run(self, q_input: np.ndarray) -> dict[int, np.ndarray]:
        """Invoke on an input of ``input_shape`` (int8, or float32 for a float model); float outputs by last dim."""
        self.interp.set_tensor(self.input_index, q_input)
        self.interp.invoke()
        return {k: quant.dequantize(self.interp.get_tensor(idx)) for k, (idx, quant) in self.outputs.items()}

    def invoke(self, q_input: np.ndarray) -> None:
        """Invoke without reading the outputs (read the ones needed with :meth:`raw`)."""
        self.interp.set_tensor(self.input_index, q_input)
        self.interp.invoke()

    def raw(self, last_dim: int) -> np.ndarray:
        """A copy of one output as the network wrote it (int8 codes, or float32)."""
        return self.interp.get_tensor(self.outputs[last_dim][0])

    def quant(self, last_dim: int) -> Quant:
        return self.outputs[last_dim][1]
