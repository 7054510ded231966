"""MLflow bookkeeping: the only module that imports mlflow.

Runs live in an explicit sqlite store at the repository root: MLflow's default is a folder relative to the
working directory, which DVC's stages (run from the repository root, or from a temporary copy for queued
experiments) would scatter. One experiment per trained benchmark; the stage-1 run is the parent, and the
stage-2 run and every evaluation cell are its children (linked with the `mlflow.parentRunId` tag, which
works across processes). Metric names follow the project's scheme: `loss/contrastive`, `t2v/R1`, ...
Params, tags and the run reference are written with credentials stripped from any URI in them (redact.py).

DVC experiments: during `dvc exp run`, DVC sets DVC_EXP_NAME (and DVC_EXP_BASELINE_REV); every run is tagged
`dvc_experiment` (and `dvc_baseline_rev`) and its name leads with the experiment's name. An experiment that
re-uses a stage-1 model trained elsewhere (another experiment, or the workspace) gets its own group run under
that model's stage-1 run (`evaluation_parent`) for its stage-2 and evaluation runs and its report, so they never
mix with the other experiment's.
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


# MLflow 3 records what an experiment is for; this one holds model training, not GenAI traces. (Its UI still
# opens on the GenAI view unless the address carries workflowType=machine_learning: see run_table_url.)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created with an artifact location under the repository (and marked as
    model training)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if "mlflow.experimentKind" not in existing.tags:
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(existing.experiment_id, key, value)
        return existing.experiment_id
    if not os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("sqlite:", "file:", "/")):
        # a tracking server (`mlflow server`) stores artifacts where it was told to: a folder on this machine
        # would be unreadable for the rest of the team
        return client.create_experiment(name, tags=EXPERIMENT_KIND)
    root = Path(os.environ.get("_DIFFUSIONRET_ARTIFACT_ROOT", "mlruns"))
    safe = re.sub(r"[^\w.-]+", "_", name)
    return client.create_experiment(name, artifact_location=(root / safe).resolve().as_uri(), tags=EXPERIMENT_KIND)


def run_table_url(base_url: str, experiment: str) -> str:
    """The address of `experiment`'s run table in MLflow's classic (model training) view; the home page with
    the same view when the experiment does not exist yet (nothing was trained)."""
    from mlflow.tracking import MlflowClient

    found = MlflowClient().get_experiment_by_name(experiment)
    base = base_url.rstrip("/")
    if found is None:
        return f"{base}/#/experiments?workflowType=machine_learning"
    return f"{base}/#/experiments/{found.experiment_id}/runs?workflowType=machine_learning"


def git_commit(repo_root: Path) -> str:
    """The current git commit (or 'unknown' outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


DVC_EXPERIMENT_TAG = "dvc_experiment"
GROUP_TAG = "dvc_experiment_group"  # "true" on the group run of a DVC experiment that re-uses a stage-1 model


def dvc_experiment() -> str | None:
    """The name of the DVC experiment being run (`dvc exp run` sets DVC_EXP_NAME), None under plain `dvc repro`."""
    return os.environ.get("DVC_EXP_NAME") or None


def dvc_tags() -> dict[str, str]:
    """`dvc_experiment` and `dvc_baseline_rev` of the running DVC experiment (empty outside one)."""
    name = dvc_experiment()
    if name is None:
        return {}
    tags = {DVC_EXPERIMENT_TAG: name}
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    return tags


def experiment_run_name(run_name: str) -> str:
    """`run_name`, led by the DVC experiment's name when one is running (`lurid-sash · synthetic/disc`)."""
    name = dvc_experiment()
    return f"{name} · {run_name}" if name else run_name


def start_run(*, experiment: str, run_name: str, tags: dict[str, Any], parent_run_id: str | None = None,
              resume_run_id: str | None = None, log_system_metrics: bool = False):
    """Start (or resume, with the same id) a run; returns mlflow's active run context manager.

    The run is tagged with the DVC experiment (if any) and named after it. `log_system_metrics` turns on
    MLflow's own sampler (CPU, memory, disk, network; GPU with nvidia-ml-py), every 10 s unless
    MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL says otherwise.
    """
    import mlflow

    if resume_run_id is not None:
        return mlflow.start_run(run_id=resume_run_id, log_system_metrics=log_system_metrics)
    all_tags = {key: redact_text(str(value)) for key, value in {**tags, **dvc_tags()}.items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    return mlflow.start_run(experiment_id=experiment_id(experiment), run_name=experiment_run_name(run_name),
                            tags=all_tags, log_system_metrics=log_system_metrics)


def evaluation_parent(reference: dict) -> str:
    """The run that stage-2, evaluation runs and the report of the model in `reference` nest under.

    `reference` is the stage-1 run reference (models/<A>/disc/mlflow_run.json). When the running DVC experiment
    trained that model, it is the stage-1 run itself. Otherwise (an experiment that changed only stage-2 or
    evaluation settings, re-using a model trained by another experiment or in the workspace) it is a group run
    of this experiment under the stage-1
    run, created once and found again by its tags, so that every cell of the experiment shares it and the
    stage-1 run's own children and artifacts stay untouched.
    """
    from mlflow.tracking import MlflowClient

    current = dvc_experiment() or ""
    if reference.get(DVC_EXPERIMENT_TAG, "") == current:
        return reference["run_id"]
    client = MlflowClient()
    stage1 = client.get_run(reference["run_id"])
    label = current or "workspace"
    query = (f"tags.`mlflow.parentRunId` = '{reference['run_id']}' and tags.{GROUP_TAG} = 'true' "
             f"and tags.{DVC_EXPERIMENT_TAG} = '{label}'")
    found = client.search_runs([stage1.info.experiment_id], filter_string=query, max_results=1)
    if found:
        return found[0].info.run_id
    trained_by = reference.get(DVC_EXPERIMENT_TAG) or "workspace"
    group = client.create_run(
        stage1.info.experiment_id, run_name=f"{label} · re-uses {stage1.info.run_name}",
        tags={"mlflow.parentRunId": reference["run_id"], GROUP_TAG: "true", DVC_EXPERIMENT_TAG: label,
              "stage": "experiment_group", "model_trained_by": trained_by,
              **({"dvc_baseline_rev": os.environ["DVC_EXP_BASELINE_REV"]}
                 if os.environ.get("DVC_EXP_BASELINE_REV") else {})})
    client.set_terminated(group.info.run_id)
    return group.info.run_id


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
    """The small DVC output that lets a later stage nest its run under this one (and know which DVC
    experiment made it).

    It is pushed with `dvc push`, so the tracking URI is written without its credentials (`redact_uri`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    reference = {"run_id": run_id, "experiment": experiment, "tracking_uri": redact_uri(tracking_uri), **dvc_tags()}
    path.write_text(json.dumps(reference, indent=2) + "\n")


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
