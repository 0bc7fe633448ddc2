"""MLflow's "models from code" entry point for a Driftline model.

MLflow copies this file next to the logged model and runs it when the model is
loaded (`mlflow.pyfunc.load_model`); no Python object is pickled. Driftline never
imports it.
"""

from mlflow.models import set_model

from pipeline.pyfunc import DriftlinePyfunc

set_model(DriftlinePyfunc())
