"""DVC experiments in MLflow: runs carry the experiment's name (tag and run name); an evaluation-only experiment
nests its runs under its own group run instead of beside the training experiment's."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from diffusionret import tracking
from diffusionret.config import load_params
from diffusionret.pipeline.evaluate import log_runs


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


def test_evaluation_runs_of_an_experiment_reusing_a_model_go_under_its_group(store, tmp_path, monkeypatch):
    """The evaluate stage's child runs (named `→ <B> · <postprocess>`, one metric name per row whatever the
    post-processing) land under the experiment's group run, which also gets the test headline; the stage-1 run
    trained elsewhere is left alone."""
    reference = start_and_reference(tmp_path, "synthetic/disc")  # trained by plain `dvc repro`
    monkeypatch.setenv("DVC_EXP_NAME", "eval-k16")
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    metrics = {}
    for number, prefix in enumerate(["t2v", "t2v_rerank", "t2v_qbnorm", "t2v_rerank_qbnorm", "t2v_dsl",
                                     "t2v_rerank_dsl", "v2t", "v2t_rerank", "v2t_qbnorm", "v2t_rerank_qbnorm",
                                     "v2t_dsl", "v2t_rerank_dsl"]):
        for offset, name in enumerate(["R1", "R5", "R10", "R50", "MdR", "MnR"]):
            metrics[f"{prefix}/{name}"] = 10.0 * number + offset
    metrics["chance/t2v/R1"] = 0.5
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    cell = SimpleNamespace(bank_captions=np.arange(3), bank_videos=np.arange(2))
    found = log_runs("synthetic", "synthetic", cell, metrics, params, reference, tmp_path, tmp_path)

    group = found["mlflow_parent"]
    assert group != reference["run_id"] and group == tracking.evaluation_parent(reference)
    for postprocess, run_id in found["mlflow_runs"].items():
        run = store.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == group and run.data.tags["postprocess"] == postprocess
        assert run.info.run_name == f"eval-k16 · → synthetic · {postprocess}"
        suffix = "" if postprocess == "none" else f"_{postprocess}"
        assert run.data.metrics["t2v/R1"] == metrics[f"t2v{suffix}/R1"]
        assert run.data.metrics["v2t_rerank/MnR"] == metrics[f"v2t_rerank{suffix}/MnR"]
    assert store.get_run(group).data.metrics["test/t2v_rerank/R1"] == metrics["t2v_rerank/R1"]
    assert not any(key.startswith("test/") for key in store.get_run(reference["run_id"]).data.metrics)
