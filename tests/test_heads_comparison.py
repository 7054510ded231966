"""`diffusionret heads` end to end: the comparison of two similarity heads (wti, emcl), each a real `dvc exp run`
of the whole DAG up to `evaluate`, in a temporary copy of the repository with a tiny params file (a few dozen
videos, a few dozen steps, only the in-distribution cell). The table is checked against numbers recomputed from the
saved per-query ranks; a second invocation trains nothing. Each run also checks what the DAG can break for a
sibling head: EMCL's bases (a persistent buffer) are trained and saved, the loss curve has the head's columns."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from test_pipeline_e2e import run, tiny_repository

pytestmark = pytest.mark.slow
HEADS = ("wti", "emcl")  # emcl last: the workspace holds its outputs after the study
CELL = "synthetic__synthetic"


def tiny(params: dict) -> dict:
    for bench in params["benchmarks"].values():
        if bench["synthetic"] is not None:
            bench["synthetic"].update(num_train=48 if bench["synthetic"]["shift"] == "none" else 0, num_val=16,
                                      num_test=40)
    params["train"].update(steps=12, global_batch=16, warmup_steps=2, val_every=6, log_every=4,
                           checkpoint_every=6)
    params["train_gen"].update(steps=6, global_batch=16, num_negatives=15, warmup_steps=1, val_every=3, log_every=3,
                               checkpoint_every=3)
    params["eval"].update(benchmarks=["synthetic"], rerank_k=4, num_samples=1, bootstrap_resamples=200)
    params["postprocess"].update(qbnorm_bank_size=16)
    params["diffusion"].update(steps=4)
    params["preprocess"].update(workers=1)
    return params


def heads_command(work: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(["diffusionret", "heads", "--heads", *HEADS], cwd=work, env=env, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, f"diffusionret heads failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    work = tmp_path_factory.mktemp("heads")
    # the command points MLflow at the repository's mlruns.db itself
    env, git = tiny_repository(work, tiny, MLFLOW_TRACKING_URI=None, OMP_NUM_THREADS="1")
    first = heads_command(work, env)
    return work, env, git, first


def folder(work: Path, head: str) -> Path:
    return work / "reports" / "heads" / f"{head}-seed-42"


def ranks_of(work: Path, head: str) -> dict:
    with np.load(folder(work, head) / CELL / "ranks.npz") as stored:
        return {key: stored[key] for key in stored.files}


def r1(ranks: np.ndarray) -> float:
    """R@1 in points, averaged over DDIM draws (a row is (draws, queries) of 0-based ranks)."""
    return float(np.mean([100.0 * np.mean(draw == 0) for draw in np.atleast_2d(ranks)]))


def median_rank(ranks: np.ndarray) -> float:
    return float(np.mean([np.median(draw) + 1 for draw in np.atleast_2d(ranks)]))


def test_every_head_is_trained_evaluated_and_tabled_from_its_saved_ranks(study):
    work, _, _, first = study
    summary = json.loads((work / "reports" / "heads.json").read_text())
    assert summary["order"] == list(HEADS) and sorted(summary["heads"]) == sorted(HEADS)
    text = (work / "reports" / "heads.md").read_text()
    for head in HEADS:
        record = summary["heads"][head]
        assert record["status"] == "done" and record["seeds"] == [42], record
        done = json.loads((folder(work, head) / "done.json").read_text())
        assert done["experiment"] == f"{head}-seed-42" and f"model.head={head}" in done["overrides"]
        assert done["targets"] == ["evaluate"] and done["wall_seconds"] > 0
        ranks = ranks_of(work, head)
        rows = record["cells"][CELL]["rows"]
        for direction in ("t2v", "v2t"):
            stage1, reranked = ranks[direction], ranks[f"{direction}_rerank"]
            assert rows[f"{direction}/R1"]["value"] == pytest.approx(r1(stage1))
            assert rows[f"{direction}_rerank/R1"]["value"] == pytest.approx(r1(reranked))
            assert rows[f"{direction}/MdR"]["value"] == pytest.approx(median_rank(stage1))
            delta = rows[f"{direction}_rerank/R1_delta"]
            assert delta["value"] == pytest.approx(r1(reranked) - r1(stage1), abs=1e-9)
            assert delta["ci_low"] <= delta["value"] <= delta["ci_high"]
            row = rows[f"{direction}/R1"]
            assert row["ci_low"] <= row["value"] <= row["ci_high"]
        assert ranks["t2v"].shape[1] == 40 * 5 and record["cells"][CELL]["queries"] == {"t2v": 200, "v2t": 40}
        line = next(line for line in text.splitlines() if line.startswith(f"| {head} | stage 1 |"))
        assert line.split("|")[3].strip() == (f"{rows['t2v/R1']['value']:.1f} [{rows['t2v/R1']['ci_low']:.1f}, "
                                              f"{rows['t2v/R1']['ci_high']:.1f}]")
        details = json.loads((folder(work, head) / "run.json").read_text())
        stages = details["stages"]["synthetic"]
        assert stages["disc"]["steps"] == 12 and stages["gen"]["steps"] == 6
        assert stages["disc"]["steps_per_second"] > 0 and stages["gen"]["steps_per_second"] > 0
        assert stages["gen"]["selected"]["rerank"]["alpha"] in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
        curve = (folder(work, head) / "synthetic__disc_loss.csv").read_text().splitlines()[0].split(",")
        assert "loss/contrastive" in curve and "perf/steps_per_second" in curve
        assert "loss/decorrelation" not in curve  # DiCoSA's only
    # parameter counts at ViT-B/32 widths, by hand: EMCL drops WTI's two weight MLPs, 2 x (512*1024+1024 + 1024+1)
    emcl = json.loads((folder(work, "emcl") / "run.json").read_text())["parameters"]
    assert emcl["head"] == 0 and emcl["head_vs_wti_at_vit_b32"] == -1_052_674
    assert first.stdout.count("dvc exp run --name") == len(HEADS)


def test_emcl_run_trained_and_saved_its_bases(study):
    work, _, _, _ = study
    metadata = json.loads((work / "models/synthetic/disc/model.json").read_text())
    assert metadata["model"]["head"] == "emcl" and metadata["model"]["head_params"]
    weights = load_file(str(work / "models/synthetic/disc/model.safetensors"))
    assert {key for key in weights if key.startswith("head.")} == {"head.basis"}
    assert weights["head.basis"].abs().max() < 0.9  # updated in training: the +-1 start has decayed


def test_mlflow_runs_carry_the_head_tag(study):
    work, _, _, _ = study
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("diffusionret/synthetic")
    runs = client.search_runs([experiment.experiment_id])
    for stage in ("disc", "gen", "evaluate"):
        assert {found.data.tags.get("head") for found in runs if found.data.tags.get("stage") == stage} == set(HEADS)


def test_a_second_invocation_trains_nothing_new(study):
    work, env, _, _ = study
    done = {head: (folder(work, head) / "done.json").stat().st_mtime_ns for head in HEADS}
    experiments = run(["git", "for-each-ref", "refs/exps"], work, env).stdout
    again = heads_command(work, env)
    assert "dvc exp run" not in again.stdout
    assert {head: (folder(work, head) / "done.json").stat().st_mtime_ns for head in HEADS} == done
    assert run(["git", "for-each-ref", "refs/exps"], work, env).stdout == experiments
    assert json.loads((work / "reports" / "heads.json").read_text())["heads"]["emcl"]["status"] == "done"
