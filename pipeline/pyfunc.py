"""The MLflow pyfunc flavour of a Driftline model folder, so that
`mlflow.pyfunc.load_model("models:/driftline@champion").predict(frame)` works on raw
columns. Serving does not use it: it loads the ONNX export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd


class DriftlinePyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from pipeline.models import load_model

        self.model = load_model(Path(context.artifacts["model"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return self.model.predict(model_input)
