"""MLflow's models-from-code file of unitune's pyfunc (``unitune.pyfunc``): MLflow copies it
into the logged model and runs it on load; it only names the model class."""

from mlflow.models import set_model

from unitune.pyfunc import RetrievalModel

set_model(RetrievalModel())
