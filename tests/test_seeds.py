"""`diffusionret seeds` end to end: two real `dvc exp run` seeds of a tiny default, in a temporary copy of the
repository; the table is checked against a recomputation from the saved per-query ranks with plain loops."""

import json
import subprocess

import numpy as np
import pytest

from diffusionret.evaluation.metrics import recall_metrics
from diffusionret.evaluation.uncertainty import resample_indices

from test_pipeline_e2e import tiny_repository
from test_uncertainty import cluster_resamples

pytestmark = pytest.mark.slow
SEEDS = (3, 5)


def tiny(params: dict) -> dict:
    """One benchmark, a few dozen videos, a few dozen steps."""
    params["benchmarks"]["synthetic"]["synthetic"].update(num_train=48, num_val=16, num_test=16)
    params["train"].update(steps=40, global_batch=16, warmup_steps=5, val_every=20, log_every=10)
    params["train_gen"].update(steps=10, global_batch=16, num_negatives=7, warmup_steps=2, val_every=5,
                               log_every=5)
    params["eval"].update(benchmarks=["synthetic"], rerank_k=8, num_samples=2, bootstrap_resamples=200)
    params["postprocess"].update(qbnorm_bank_size=16)
    params["diffusion"].update(steps=5)
    params["preprocess"].update(workers=1)
    return params


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    work = tmp_path_factory.mktemp("seeds")
    # the command points MLflow at the repository's mlruns.db itself
    env, _ = tiny_repository(work, tiny, MLFLOW_TRACKING_URI=None)
    result = subprocess.run(["diffusionret", "seeds", "--seeds", *map(str, SEEDS)], cwd=work, env=env,
                            capture_output=True, text=True, timeout=3600)  # two whole pipelines: minutes each
    assert result.returncode == 0, f"diffusionret seeds failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return work, env


def loop_value(ranks, name):
    return float(np.mean([recall_metrics(draw)[name] for draw in np.atleast_2d(ranks)]))


def test_table_matches_a_recomputation_from_the_saved_ranks(study):
    work, _ = study
    summary = json.loads((work / "reports" / "seeds.json").read_text())
    assert summary["seeds"] == list(SEEDS)
    cell = summary["cells"]["synthetic__synthetic"]
    ranks = []
    for seed in SEEDS:
        with np.load(work / "reports" / "seeds" / f"seed-{seed}" / "synthetic__synthetic" / "ranks.npz") as stored:
            ranks.append({key: stored[key] for key in stored.files})
        done = json.loads((work / "reports" / "seeds" / f"seed-{seed}" / "done.json").read_text())
        assert f"train.seed={seed}" in done["overrides"] and done["experiment"] == f"seed-{seed}"
    for row in ("t2v", "t2v_rerank", "v2t_rerank"):
        values = [loop_value(r[row], "R1") for r in ranks]
        assert cell["headline"][f"{row}/R1"]["mean"] == pytest.approx(np.mean(values))
        assert cell["headline"][f"{row}/R1"]["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-9)
    boot = summary["bootstrap"]
    for prefix, base, name in (("t2v_rerank", "t2v", "R1"), ("v2t_qbnorm", "v2t", "MnR")):
        deltas = [loop_value(r[prefix], name) - loop_value(r[base], name) for r in ranks]
        stat = cell["differences"][f"{prefix}/{name}_delta"]
        assert stat["mean"] == pytest.approx(np.mean(deltas)) and stat["values"] == pytest.approx(deltas)
        pooled = np.zeros(boot["resamples"])
        for stratum, r in enumerate(ranks):
            indices = (cluster_resamples(r["caption_video"], boot["resamples"], boot["seed"] + stratum)
                       if base == "t2v" else resample_indices(r[base].shape[1], boot["resamples"],
                                                              boot["seed"] + stratum))
            pooled += np.array([loop_value(r[prefix][:, i], name) - loop_value(r[base][:, i], name)
                                for i in indices]) / len(ranks)
        low, high = np.quantile(pooled, [(1 - boot["level"]) / 2, (1 + boot["level"]) / 2])
        assert (stat["pooled_ci_low"], stat["pooled_ci_high"]) == pytest.approx((low, high), abs=1e-9)
    text = (work / "reports" / "seeds.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| t2v_rerank − t2v |"))
    stat = cell["differences"]["t2v_rerank/R1_delta"]
    assert row.split("|")[2].strip().startswith(f"{stat['mean']:+.1f} ± {stat['std']:.1f}")


def test_seeds_really_differ_and_mlflow_runs_group_by_seed(study):
    work, _ = study
    first = json.loads((work / "reports" / "seeds" / f"seed-{SEEDS[0]}" / "synthetic__synthetic" / "cell.json")
                       .read_text())
    second = json.loads((work / "reports" / "seeds" / f"seed-{SEEDS[1]}" / "synthetic__synthetic" / "cell.json")
                        .read_text())
    assert first["seeds"] != second["seeds"]  # DDIM draws of the seeds are disjoint
    folders = [work / "reports" / "seeds" / f"seed-{seed}" / "synthetic__synthetic" for seed in SEEDS]
    with np.load(folders[0] / "ranks.npz") as a, np.load(folders[1] / "ranks.npz") as b:
        assert not np.array_equal(a["t2v_rerank"], b["t2v_rerank"])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("diffusionret/synthetic")
    runs = client.search_runs([experiment.experiment_id])
    for stage in ("disc", "gen", "evaluate"):
        tags = {found.data.tags.get("seed") for found in runs if found.data.tags.get("stage") == stage}
        assert tags == {str(seed) for seed in SEEDS}, stage
    evaluated = [found for found in runs if found.data.tags.get("stage") == "evaluate"
                 and found.data.tags.get("postprocess") == "none"]
    assert all("t2v_rerank/R1_delta_ci_low" in found.data.metrics for found in evaluated)
