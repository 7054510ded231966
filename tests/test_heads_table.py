"""The heads table (pipeline/heads.py) from collected run folders, against a recomputation from the saved ranks;
fast (no DVC): the end-to-end comparison with real `dvc exp run`s is tests/test_heads_comparison.py (slow)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diffusionret.config import Params
from diffusionret.pipeline.heads import (RERANK_ALPHAS, head_runs, median_steps_per_second, topk_score_range,
                                         write_heads_summary)

from test_seeds_table import BOOT, seed_folder, value

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "configs" / "presets"


def collected(root: Path, run, seed: int, failed: bool = False) -> dict:
    """A run folder as the study leaves it: cells, done.json (or failed.json), run.json."""
    made, ranks = seed_folder(root / "made", seed)
    folder = root / "heads" / run.key
    shutil.copytree(made, folder)
    record = {**run.record, "experiment": run.key, "overrides": list(run.overrides), "wall_seconds": 60.0 * seed}
    if failed:
        (folder / "failed.json").write_text(json.dumps({**record, "error": "exit 1"}))
        return ranks
    (folder / "done.json").write_text(json.dumps(record))
    stage = {"steps": 900, "steps_per_second": 5.0 + seed, "selected": {"rerank": {"temperature": 10.0,
                                                                                  "alpha": 0.3}}}
    (folder / "run.json").write_text(json.dumps({
        "parameters": {"extractor": 1000, "head": 10, "generator": 500, "head_vs_wti_at_vit_b32": -5},
        "stages": {"a": {"disc": stage, "gen": stage, "topk_score_range": 0.25}}}))
    return ranks


def test_one_seed_rows_carry_their_cis_and_a_failed_head_is_reported(tmp_path):
    runs = head_runs(["wti", "emcl", "dicosa"], None, Params(), presets=PRESETS)
    ranks = collected(tmp_path, runs[0], 1)
    collected(tmp_path, runs[1], 2, failed=True)  # dicosa: never run
    summary = write_heads_summary(tmp_path, runs, BOOT)
    assert {head: record["status"] for head, record in summary["heads"].items()} == \
        {"wti": "done", "emcl": "failed", "dicosa": "not run"}
    rows = summary["heads"]["wti"]["cells"]["a__a"]["rows"]
    assert rows["t2v_rerank/R1"]["value"] == pytest.approx(value(ranks["t2v_rerank"], "R1"))
    delta = rows["v2t_rerank/MnR_delta"]
    assert delta["value"] == pytest.approx(value(ranks["v2t_rerank"], "MnR") - value(ranks["v2t"], "MnR"))
    assert delta["ci_low"] <= delta["value"] <= delta["ci_high"]
    assert rows["t2v_qbnorm/R1"]["value"] == pytest.approx(value(ranks["t2v_qbnorm"], "R1"))
    text = (tmp_path / "heads.md").read_text()
    stat = rows["t2v/R1"]
    assert f"| wti | stage 1 | {stat['value']:.1f} [{stat['ci_low']:.1f}, {stat['ci_high']:.1f}] |" in text
    assert "| emcl | failed: seed 42: exit 1 |" in text and "| dicosa | not run |" in text
    assert "| wti | done | 1,000 | 10 | -5 | 500 | 900 at 6.0/s | 900 at 6.0/s | (10.0, 0.3) | 0.250 | 1.0 |" in text
    assert json.loads((tmp_path / "heads.json").read_text())["heads"]["emcl"]["failed"][0]["error"] == "exit 1"


def test_several_seeds_give_mean_std_and_the_pooled_paired_ci(tmp_path):
    runs = head_runs(["wti"], [1, 2], Params(), presets=PRESETS)
    ranks = [collected(tmp_path, run, seed) for run, seed in zip(runs, (1, 2))]
    summary = write_heads_summary(tmp_path, runs, BOOT)
    rows = summary["heads"]["wti"]["cells"]["a__a"]["rows"]
    r1 = [value(r["t2v"], "R1") for r in ranks]
    assert rows["t2v/R1"]["mean"] == pytest.approx(np.mean(r1))
    assert rows["t2v/R1"]["std"] == pytest.approx(np.std(r1, ddof=1))
    deltas = [value(r["t2v_rerank"], "R1") - value(r["t2v"], "R1") for r in ranks]
    assert rows["t2v_rerank/R1_delta"]["values"] == pytest.approx(deltas)
    assert "pooled_ci_low" in rows["t2v_rerank/R1_delta"]
    assert "Mean ± sample std over seeds" in (tmp_path / "heads.md").read_text()


def test_runs_share_the_comparison_settings_and_dicosa_gets_its_qbnorm_preset():
    runs = {run.record["head"]: run for run in head_runs(["wti", "dicosa"], None, Params(), ["train.steps=5"],
                                                         presets=PRESETS)}
    assert runs["wti"].key == "wti-seed-42" and runs["wti"].targets == ("evaluate",)
    assert runs["wti"].overrides[:3] == ("model.head=wti", "eval.benchmarks=[synthetic]",
                                         "train_gen.rerank_alphas=[" + ",".join(map(str, RERANK_ALPHAS)) + "]")
    assert runs["dicosa"].overrides[-1] == "train.steps=5"  # the user's overrides come last: they win
    # every run spells out the whole postprocess section: the params' own values, or the head's preset (DiCoSA's
    # QB-Norm: beta 70, theta 3 / 5, a bank of every training query)
    post = {key: dict(value.split("=") for value in run.overrides if value.startswith("postprocess."))
            for key, run in runs.items()}
    assert set(post["wti"]) == set(post["dicosa"]) == {f"postprocess.{name}" for name in (
        "qbnorm_bank_size", "qbnorm_bank_seed", "qbnorm_beta", "qbnorm_k", "qbnorm_min_count", "dsl_temperature",
        "qbnorm_beta_v2t", "qbnorm_min_count_v2t")}
    assert post["wti"]["postprocess.qbnorm_beta"] == str(Params().postprocess.qbnorm_beta)
    assert (post["dicosa"]["postprocess.qbnorm_beta"], post["dicosa"]["postprocess.qbnorm_min_count"],
            post["dicosa"]["postprocess.qbnorm_min_count_v2t"]) == ("70.0", "3", "5")
    mine = head_runs(["wti"], None, Params(), ["postprocess.qbnorm_beta=5.0"], presets=PRESETS)[0].overrides
    assert [value for value in mine if value.startswith("postprocess.qbnorm_beta=")] == ["postprocess.qbnorm_beta=5.0"]
    with pytest.raises(ValueError, match="registered"):
        head_runs(["wti", "nope"], None, Params(), presets=PRESETS)


def test_steps_per_second_and_topk_range(tmp_path):
    curve = tmp_path / "loss.csv"
    curve.write_text("step,loss,perf/steps_per_second\n20,1.0,4.0\n40,0.9,\n60,0.8,6.0\n80,0.7,1.0\n")
    assert median_steps_per_second(curve) == pytest.approx(4.0)
    assert np.isnan(median_steps_per_second(tmp_path / "missing.csv"))
    scores = np.array([[0.9, 0.1, 0.5, 0.3], [2.0, 4.0, 1.0, 0.0]])  # top-3 ranges: 0.9-0.3, 4.0-1.0
    assert topk_score_range(scores, 3) == pytest.approx(np.median([0.6, 3.0]))
