"""The seeds table (pipeline/seeds.py) from per-seed folders, against a recomputation from the saved ranks; fast
(no DVC): the end-to-end study with real `dvc exp run` seeds is tests/test_seeds.py (slow)."""

import json

import numpy as np
import pytest

from diffusionret.config import EvalParams, Params
from diffusionret.evaluation.metrics import recall_metrics
from diffusionret.evaluation.rows import cell_rows
from diffusionret.evaluation.uncertainty import Bootstrap, resample_indices
from diffusionret.pipeline.evaluate import save_ranks
from diffusionret.pipeline.seeds import experiment_name, seed_overrides, write_summary

from test_evaluate_rows import POST, make_cell

BOOT = Bootstrap(resamples=100, seed=3, level=0.95)


def seed_folder(root, seed):
    cell = make_cell([0, 0, 1, 2, 3, 3, 4, 5], num_draws=2, seed=seed)
    metrics, _, ranks = cell_rows(cell, POST, chunk_size=4, faithful_msvd_grouping=False, bootstrap=BOOT)
    folder = root / f"seed-{seed}" / "a__a"
    folder.mkdir(parents=True)
    save_ranks(folder / "ranks.npz", ranks, cell)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "cell.json").write_text(json.dumps({"seeds": list(cell.seeds)}))
    return folder.parent, ranks


def value(ranks, name):
    return float(np.mean([recall_metrics(draw)[name] for draw in ranks]))


def test_summary_matches_the_saved_ranks(tmp_path):
    made = {seed: seed_folder(tmp_path / "seeds", seed) for seed in (1, 2, 4)}
    summary = write_summary({seed: folder for seed, (folder, _) in made.items()}, BOOT, tmp_path)
    cell = summary["cells"]["a__a"]
    ranks = [found for _, found in made.values()]
    r1 = [value(r["t2v_rerank"], "R1") for r in ranks]
    assert cell["headline"]["t2v_rerank/R1"]["mean"] == pytest.approx(np.mean(r1))
    assert cell["headline"]["t2v_rerank/R1"]["std"] == pytest.approx(np.std(r1, ddof=1))
    deltas = [value(r["v2t_dsl"], "MdR") - value(r["v2t"], "MdR") for r in ranks]
    stat = cell["differences"]["v2t_dsl/MdR_delta"]
    assert stat["values"] == pytest.approx(deltas)
    pooled = np.zeros(BOOT.resamples)
    for stratum, r in enumerate(ranks):
        for b, rows in enumerate(resample_indices(r["v2t"].shape[1], BOOT.resamples, BOOT.seed + stratum)):
            pooled[b] += (value(r["v2t_dsl"][:, rows], "MdR") - value(r["v2t"][:, rows], "MdR")) / len(ranks)
    assert (stat["pooled_ci_low"], stat["pooled_ci_high"]) == pytest.approx(tuple(np.percentile(pooled, [2.5, 97.5])))
    assert stat["pooled"] == pytest.approx(np.mean(deltas))  # equal query counts: pooled = mean over seeds
    text = (tmp_path / "seeds.md").read_text()
    assert "## a → a" in text and "| t2v_rerank − t2v |" in text
    assert json.loads((tmp_path / "seeds.json").read_text()) == json.loads(json.dumps(summary))


def test_seed_overrides_and_experiment_names():
    params = Params(eval=EvalParams(num_samples=3))
    assert seed_overrides(2, params) == ["seed=2", "train.seed=2", "eval.seed=6"]  # draws 6, 7, 8: disjoint
    assert experiment_name(1, set()) == "seed-1"
    assert experiment_name(1, {"seed-1", "seed-1-r2"}) == "seed-1-r3"  # an earlier study's experiment is kept
