"""The MLflow pyfunc flavour of a Driftline model folder, so that
`mlflow.pyfunc.load_model("models:/driftline@champion").predict(frame)` works on raw
columns. Serving does not use it: it loads the ONNX export. Where compress served a
distilled student (`compress.distill`), the pyfunc loads that student, not the tuned
model it was distilled from, so that both predict the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd


class DriftlinePyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from pipeline.distill import student_folder
        from pipeline.models import load_model

        # A distilled student, when compress served one, rather than its teacher: the
        # pyfunc predicts what serving serves.
        onnx = context.artifacts.get("onnx")
        folder = student_folder(Path(context.artifacts["model"]), Path(onnx) if onnx else None)
        self.model = load_model(folder)

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return self.model.predict(model_input)
