"""DVC experiments in MLflow: runs carry the experiment's name (tag and run name); an evaluation-only experiment
nests its runs under its own group run instead of beside the training experiment's."""

import json

import pytest

from diffusionret import tracking


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    """One sqlite store for the module (creating one takes seconds); each test uses its own runs."""
    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking.configure("sqlite:///mlruns.db", "mlruns", root)
        yield root


@pytest.fixture
def store(store_root, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store_root / 'mlruns.db'}")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    tracking.configure("sqlite:///mlruns.db", "mlruns", store_root)
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def start_and_reference(tmp_path, run_name: str) -> dict:
    with tracking.start_run(experiment="diffusionret/test", run_name=run_name, tags={"stage": "disc"}):
        run_id = tracking.active_run_id()
        tracking.write_run_reference(tmp_path / "mlflow_run.json", run_id, "diffusionret/test", "uri")
    return json.loads((tmp_path / "mlflow_run.json").read_text())


def test_a_dvc_experiment_names_and_tags_its_runs(store, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lurid-sash")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0123abcd")
    reference = start_and_reference(tmp_path, "synthetic/disc")
    run = store.get_run(reference["run_id"])
    assert run.data.tags["dvc_experiment"] == "lurid-sash"
    assert run.data.tags["dvc_baseline_rev"] == "0123abcd"
    assert run.info.run_name == "lurid-sash · synthetic/disc"
    assert reference["dvc_experiment"] == "lurid-sash"  # later stages know which experiment trained the model


def test_plain_dvc_repro_runs_carry_no_experiment(store, tmp_path):
    reference = start_and_reference(tmp_path, "synthetic/disc")
    run = store.get_run(reference["run_id"])
    assert "dvc_experiment" not in run.data.tags and run.info.run_name == "synthetic/disc"
    assert "dvc_experiment" not in reference


def test_evaluation_in_the_training_experiment_nests_under_stage_1(store, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-a")
    reference = start_and_reference(tmp_path, "synthetic/disc")
    assert tracking.evaluation_parent(reference) == reference["run_id"]


def test_an_experiment_reusing_a_stage_1_model_gets_one_named_group(store, tmp_path, monkeypatch):
    reference = start_and_reference(tmp_path, "synthetic/disc")  # trained by plain `dvc repro`
    monkeypatch.setenv("DVC_EXP_NAME", "eval-k16")
    group = tracking.evaluation_parent(reference)
    assert group != reference["run_id"]
    assert tracking.evaluation_parent(reference) == group  # every cell of the experiment shares it
    found = store.get_run(group)
    assert found.data.tags["mlflow.parentRunId"] == reference["run_id"]
    assert found.data.tags["dvc_experiment"] == "eval-k16" and found.data.tags["model_trained_by"] == "workspace"
    assert found.info.run_name == "eval-k16 · re-uses synthetic/disc"
    monkeypatch.setenv("DVC_EXP_NAME", "eval-k8")
    other = tracking.evaluation_parent(reference)
    assert other not in (group, reference["run_id"])  # another experiment, another group
    tracking.log_artifacts_to_run(other, [tmp_path / "mlflow_run.json"], artifact_path="report")
    assert [item.path for item in store.list_artifacts(group, "report")] == []  # nothing lands on the first group
    assert [item.path for item in store.list_artifacts(reference["run_id"], "report")] == []


def test_experiments_open_on_the_run_table(store, tmp_path):
    start_and_reference(tmp_path, "synthetic/disc")
    experiment = store.get_experiment_by_name("diffusionret/test")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not the GenAI traces tab
    url = tracking.run_table_url("http://127.0.0.1:5000/", "diffusionret/test")
    assert url == f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    assert tracking.run_table_url("http://h:1", "diffusionret/never") == "http://h:1/#/experiments?workflowType=machine_learning"
