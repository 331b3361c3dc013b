"""The MLflow pyfunc wrapper every registered version is logged as.

The served artifact is the ONNX file, so the pyfunc runs it with onnxruntime: ``mlflow models
serve`` / ``mlflow.pyfunc.load_model`` answer exactly like our own service. Input: pixels
``[N,28,28]`` on the 0-255 scale (uint8 or numbers); output: logits ``[N,10]`` float32. The
PyTorch weights, ``metrics.json`` and ``config.json`` ride along as artifacts.

Imported only when registering or loading a pyfunc (MLflow imports slowly).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import Schema, TensorSpec

from mnistops.training.data import MEAN, STD

ARTIFACTS = ("model.onnx", "model.pt", "metrics.json", "config.json")


class OnnxDigitClassifier(PythonModel):
    """pyfunc: pixels [N,28,28] (0-255) → logits [N,10], via the version's ``model.onnx``."""

    def load_context(self, context: Any) -> None:
        """Open an onnxruntime session on the packaged ONNX file."""
        import onnxruntime as ort

        self._sess = ort.InferenceSession(context.artifacts["model.onnx"], providers=["CPUExecutionProvider"])

    # no type hints here on purpose: MLflow would try to derive a (wrong) schema from them
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Logits [N,10] float32 of pixels [N,28,28] or [N,1,28,28] on the 0-255 scale."""
        if isinstance(model_input, dict):  # a named-tensor request: {"pixels": [...]}
            model_input = next(iter(model_input.values()))
        x = np.asarray(model_input, dtype=np.float32)
        if x.ndim == 3:
            x = x[:, None]
        x = (x / 255.0 - MEAN) / STD  # the training normalisation (mnistops.training.data.normalize)
        out: np.ndarray = self._sess.run(["logits"], {"image": x.astype(np.float32)})[0]
        return out


def signature() -> ModelSignature:
    """Tensor signature: pixels uint8 [-1,28,28] → logits float32 [-1,10] (unnamed tensors)."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 28, 28))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]),
    )


def pip_requirements() -> list[str]:
    """Pinned runtime requirements (explicit: MLflow's inference would import-trace for seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "numpy", "onnxruntime"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs
