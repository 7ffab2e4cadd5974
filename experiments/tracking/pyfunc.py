"""The ensemble as an MLflow pyfunc model: its code (kept as a file body) and how it is logged."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from core.errors import ModelError, first_line
from experiments.tracking.base import META_ARTIFACT, MODEL_NAME
from experiments.tracking.mlflow_tracker import MlflowTracker, _experiment_env, _pip_requirements
from experiments.tracking.store import require_default_store

log = logging.getLogger(__name__)


ENSEMBLE_MODEL_CODE = '''\
"""Galaxy10 ensemble as an MLflow pyfunc model: raw uint8 images (N, H, W, 3) -> probabilities (N, C)."""
import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class Galaxy10Ensemble(PythonModel):
    def load_context(self, context):
        from ensembles.ensemble_model import load_ensemble

        self.ensemble = load_ensemble(context.artifacts["ensemble"])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return self.ensemble.predict_proba(np.asarray(model_input, dtype=np.uint8))


mlflow.models.set_model(Galaxy10Ensemble())
'''
#: Artifact key (and folder name) of the saved ensemble inside the pyfunc model.
ENSEMBLE_ARTIFACT = "ensemble"


def _pyfunc_requirements() -> list[str]:
    reqs = _pip_requirements()
    for name in ("scikit-learn", "xgboost", "xgboost-cpu", "joblib", "opencv-python-headless", "scipy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            reqs.append(f"{name}=={importlib.metadata.version(name)}")
    return reqs


def log_ensemble_model(
    tracker: MlflowTracker,
    ensemble_dir: str | Path,
    *,
    meta: Mapping[str, Any],
    input_example: np.ndarray,
    n_classes: int,
) -> str:
    """Log a saved ensemble folder (``ensembles.ensemble_model.save_ensemble``) as the run's pyfunc ``model``.

    The model takes uint8 images ``(N, H, W, 3)`` of any size (signature ``(-1, -1, -1, 3)``) and
    returns float32 probabilities ``(N, n_classes)``; ``meta`` (size, crop, class names, ...) is the
    model's MLmodel ``metadata`` and the run artifact ``model_meta.json``. Returns the model URI.
    """
    import mlflow.pyfunc

    run_id = tracker._need_run()
    example = np.asarray(input_example, dtype=np.uint8)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(n_classes)), "probabilities")]),
    )
    plain_meta = json.loads(json.dumps(dict(meta)))
    with tempfile.TemporaryDirectory(prefix="galaxy10-pyfunc-") as tmp:
        code = Path(tmp) / "galaxy10_ensemble_model.py"
        code.write_text(ENSEMBLE_MODEL_CODE)
        require_default_store(tracker.tracking_uri)  # Model.log writes to MLflow's default store only
        try:
            with _experiment_env(tracker.experiment_id), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The structure of `inputs`", category=UserWarning)
                info = Model.log(
                    artifact_path=None,
                    name=MODEL_NAME,
                    flavor=mlflow.pyfunc,
                    run_id=run_id,
                    python_model=str(code),
                    artifacts={ENSEMBLE_ARTIFACT: str(ensemble_dir)},
                    signature=signature,
                    input_example=example,
                    metadata=plain_meta,
                    pip_requirements=_pyfunc_requirements(),
                )
        except MlflowException as err:
            raise ModelError(f"cannot log the ensemble model to run {run_id} ({first_line(err)})") from None
    tracker.log_dict(plain_meta, META_ARTIFACT)
    log.info("logged ensemble model %s (run %s)", info.model_uri, run_id)
    return info.model_uri


#: The pyfunc model ``galaxy10 catalog --engine spark`` hands to ``mlflow.pyfunc.spark_udf``: the CNN's own
#: ``.keras`` file, loaded with the platform's layers registered (MLflow's keras flavour would not know the
#: D4 layers in an executor) and called without Keras' progress bar.
SPARK_CNN_CODE = '''\
"""A galaxy10 CNN as an MLflow pyfunc model: float32 crops (N, S, S, 3) -> probabilities (N, C)."""
import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class Galaxy10SparkCNN(PythonModel):
    def load_context(self, context):
        from models.layers import load_keras_file

        self.model = load_keras_file(context.artifacts["cnn"])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        x = np.asarray(model_input, dtype=np.float32)
        return np.asarray(self.model.predict(x, batch_size=256, verbose=0), dtype=np.float32)


mlflow.models.set_model(Galaxy10SparkCNN())
'''


def save_spark_cnn_model(cnn_file: str | Path, folder: str | Path, *, crop: int, n_classes: int) -> Path:
    """Save the CNN saved as ``cnn_file`` (``.keras``) as a local pyfunc model in ``folder`` (created; must not
    exist) for :func:`spark_model_udf`: a tensor signature of float32 ``(-1, crop, crop, 3)`` crops, so Spark's
    flat arrays are reshaped to images, and ``(-1, n_classes)`` probabilities. Returns the model folder."""
    import mlflow.pyfunc

    folder = Path(folder)
    work = folder.parent / f".{folder.name}.build"
    work.mkdir(parents=True, exist_ok=False)
    code = work / "galaxy10_spark_cnn.py"
    code.write_text(SPARK_CNN_CODE)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(crop), int(crop), 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(n_classes)), "probabilities")]),
    )
    try:
        with warnings.catch_warnings():  # a local model for one job: no input example, no type hints needed
            warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*Add type hints", category=UserWarning)
            mlflow.pyfunc.save_model(
                str(folder),
                python_model=str(code),
                artifacts={"cnn": str(cnn_file)},
                signature=signature,
                pip_requirements=[],
            )
    except MlflowException as err:
        raise ModelError(f"cannot save the CNN for Spark in {folder} ({first_line(err)})") from None
    return folder


def spark_model_udf(spark: Any, model_path: str | Path) -> Any:
    """``mlflow.pyfunc.spark_udf`` of the local pyfunc model ``model_path`` (:func:`save_spark_cnn_model`),
    returning each row's probabilities (``array<float>``).

    Spark ships the model folder to the executors; it runs in this Python environment there
    (``env_manager="local"``).
    """
    import mlflow.pyfunc

    pyfunc_log = logging.getLogger("mlflow.pyfunc")

    def not_local_env_advice(record: logging.LogRecord) -> bool:  # env_manager="local" is chosen on purpose
        return 'env_manager="local"' not in record.getMessage()

    pyfunc_log.addFilter(not_local_env_advice)
    try:
        return mlflow.pyfunc.spark_udf(spark, str(model_path), result_type="array<float>", env_manager="local")
    finally:
        pyfunc_log.removeFilter(not_local_env_advice)
