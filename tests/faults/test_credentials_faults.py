"""Fault injection: a tracking URI with credentials never reaches an output (pushed by `dvc push`) or a log."""

from __future__ import annotations

import contextlib
import hashlib
import json
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.faults

SECRET_URI = "https://alice:s3cr3t-t0ken@mlflow.example.org:5000/api?workspace=lab&access_token=abc123XYZ"


class MainProcess:
    is_main_process = True


def test_tracking_credentials_stay_out_of_mlflow_run_json_and_logged_params(tmp_path, monkeypatch,
                                                                            record_property):
    import mlflow

    from diffusionret import tracking
    from diffusionret.pipeline.runs import RunLogger
    from diffusionret.training.state import TrainingState

    monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET_URI)  # how a user points training at a shared server
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    logged: dict = {}
    monkeypatch.setattr(tracking, "start_run", lambda **kwargs: contextlib.nullcontext())  # no server to reach
    monkeypatch.setattr(tracking, "active_run_id", lambda: "0123abcd")
    monkeypatch.setattr(tracking, "log_metrics", lambda metrics, step=None: None)
    monkeypatch.setattr(mlflow, "log_params", lambda params: logged.update(params))
    monkeypatch.setattr(mlflow, "set_tags", lambda tags: logged.update(tags))
    params = SimpleNamespace(tracking=SimpleNamespace(tracking_uri=SECRET_URI, artifact_root="mlruns",
                                                      experiment_prefix="diffusionret"))
    user_file = tmp_path / "models" / "synthetic" / "disc" / "model.safetensors"
    user_file.parent.mkdir(parents=True)
    user_file.write_bytes(b"weights")
    before = hashlib.sha256(user_file.read_bytes()).hexdigest()

    logger = RunLogger(MainProcess(), params, tmp_path, experiment="synthetic", run_name="synthetic/disc", tags={},
                       state=TrainingState(tmp_path / "partial"), curve="loss/contrastive")
    with logger:
        logger.log_params({"tracking.tracking_uri": SECRET_URI, "train.lr": 0.001})
        logger.finish(user_file.parent / "mlflow_run.json", summary={}, tags={"source": SECRET_URI})
    written = (user_file.parent / "mlflow_run.json").read_text()
    leaked = [secret for secret in ("s3cr3t", "abc123XYZ", "alice") if secret in written + json.dumps(logged)]
    record_property("case", "MLFLOW_TRACKING_URI with user:token@ and access_token=")
    record_property("expected", "credentials replaced by *** in mlflow_run.json and MLflow params")
    record_property("observed", f"leaked {leaked}" if leaked else "no credential written")
    record_property("files_lost", int(hashlib.sha256(user_file.read_bytes()).hexdigest() != before))
    assert not leaked, written
    reference = json.loads(written)
    assert reference["run_id"] == "0123abcd"
    assert reference["tracking_uri"] == ("https://***@mlflow.example.org:5000/api?workspace=lab&access_token=***")
    assert logged["tracking.tracking_uri"] == reference["tracking_uri"] and logged["train.lr"] == "0.001"
    import os

    assert os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT") == "true"  # no "View run at: <URL>" line
