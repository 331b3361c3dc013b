"""The registry's names: aliases, artifact paths, the files a model folder must hold.

In their own module so the registry's parts (register, promote) share them without importing the
:class:`~mnistops.registry.core.Registry` facade that delegates to them (no import cycle).
"""

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous-champion", "challenger"
MODEL_PATH, PROFILE_PATH, GATE_PATH = "mlflow_model", "reference_profile", "gate"
REQUIRED_FILES = ("model.pt", "model.onnx", "metrics.json", "config.json")

__all__ = ["CHALLENGER", "CHAMPION", "GATE_PATH", "MODEL_PATH", "PREVIOUS", "PROFILE_PATH", "REQUIRED_FILES"]
