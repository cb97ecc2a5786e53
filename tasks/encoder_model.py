"""MLflow pyfunc model (models-from-code): uint8 images (N, H, W, C) -> float32 embeddings (N, D).

Logged with ``code_paths=[sslcore]``, so loading it needs torch, timm and safetensors but not this
project's pipeline code. Artifacts: ``spec`` (encoder.json) and ``weights`` (backbone.safetensors).
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel, PythonModelContext


class EncoderModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        from sslcore.inference import Encoder

        self.encoder = Encoder.load(context.artifacts["spec"], context.artifacts["weights"])

    # No type hints on predict: MLflow would read them as an input schema; the signature is logged.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        images = np.asarray(model_input)
        if images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (N, H, W, C), got dtype {images.dtype}")
        return self.encoder.embed(images)


mlflow.models.set_model(EncoderModel())
