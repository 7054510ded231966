"""MLflow bookkeeping: the only module that imports mlflow.

Runs live in an explicit sqlite store at the repository root (never a CWD-relative default, see
environment-notes P10/P11). One experiment per trained benchmark; the stage-1 run is the parent, and the
stage-2 run and every evaluation cell are its children (linked with the `mlflow.parentRunId` tag, which
works across processes). Metric names follow the project's scheme: `loss/contrastive`, `t2v/R1`, ...
Params, tags and the run reference are written with credentials stripped from any URI in them (redact.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Iterable

from diffusionret.redact import redact_text, redact_uri

_METRIC_NAME = re.compile(r"^[/\w.\- :]*$")


def resolve_tracking_uri(tracking_uri: str, repo_root: Path) -> str:
    """An absolute tracking URI: the environment's MLFLOW_TRACKING_URI, else params anchored at repo_root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str((repo_root / uri[len(prefix):]).resolve())
    return uri


def configure(tracking_uri: str, artifact_root: str, repo_root: Path) -> str:
    """Point mlflow at the project's store; returns the absolute URI in use."""
    import mlflow

    uri = resolve_tracking_uri(tracking_uri, repo_root)
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    if redact_uri(uri) != uri:  # mlflow prints "View run at: <server URL>" with the credentials in it
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    os.environ["_DIFFUSIONRET_ARTIFACT_ROOT"] = str((repo_root / artifact_root).resolve())
    return uri


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created with an artifact location under the repository."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    root = Path(os.environ.get("_DIFFUSIONRET_ARTIFACT_ROOT", "mlruns"))
    safe = re.sub(r"[^\w.-]+", "_", name)
    return client.create_experiment(name, artifact_location=(root / safe).resolve().as_uri())


def git_commit(repo_root: Path) -> str:
    """The current git commit (or 'unknown' outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def start_run(*, experiment: str, run_name: str, tags: dict[str, Any], parent_run_id: str | None = None,
              resume_run_id: str | None = None):
    """Start (or resume, with the same id) a run; returns mlflow's active run context manager."""
    import mlflow

    if resume_run_id is not None:
        return mlflow.start_run(run_id=resume_run_id)
    all_tags = {key: redact_text(str(value)) for key, value in tags.items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    return mlflow.start_run(experiment_id=experiment_id(experiment), run_name=run_name, tags=all_tags)


def log_params(flat_params: dict[str, Any]) -> None:
    """Log flattened params (values rendered as strings, within MLflow's length limit)."""
    import mlflow

    rendered = {key: redact_text(json.dumps(value) if isinstance(value, (list, dict)) else str(value))[:6000]
                for key, value in flat_params.items()}
    items = list(rendered.items())
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start:start + 100]))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log metrics, refusing names MLflow would reject (e.g. `R@1`)."""
    import mlflow

    bad = [name for name in metrics if not _METRIC_NAME.match(name)]
    if bad:
        raise ValueError(f"metric names {bad} contain characters MLflow rejects; use e.g. `t2v/R1`")
    mlflow.log_metrics({name: float(value) for name, value in metrics.items()}, step=step)


def set_tags(tags: dict[str, Any]) -> None:
    import mlflow

    mlflow.set_tags({key: redact_text(str(value)) for key, value in tags.items()})


def log_artifacts(paths: Iterable[Path], artifact_path: str | None = None) -> None:
    import mlflow

    for path in paths:
        if Path(path).is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        elif Path(path).is_file():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)


def last_logged_step(run_id: str, metric: str) -> int:
    """The largest step of `metric` already in a run (-1 if none): a resumed run logs only after it."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient().get_metric_history(run_id, metric)
    return max((point.step for point in history), default=-1)


def active_run_id() -> str:
    import mlflow

    return mlflow.active_run().info.run_id


def write_run_reference(path: Path, run_id: str, experiment: str, tracking_uri: str) -> None:
    """The small DVC output that lets a later stage nest its run under this one.

    It is pushed with `dvc push`, so the tracking URI is written without its credentials (`redact_uri`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": run_id, "experiment": experiment, "tracking_uri": redact_uri(tracking_uri)},
                               indent=2) + "\n")


def read_run_reference(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the training stage that writes it has not run "
                                f"(run `dvc repro`)")
    return json.loads(path.read_text())


def log_artifacts_to_run(run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
    """Attach files (or directories) to an existing, possibly finished run, without resuming it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for path in paths:
        if Path(path).is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=artifact_path)
        elif Path(path).is_file():
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)
        else:
            raise FileNotFoundError(f"cannot log {path} to MLflow run {run_id}: it does not exist")
