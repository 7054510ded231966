"""Diagnostics of the synthetic benchmarks, each against a computation by hand on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusionret.diagnostics.attributes import top1_attribute_accuracy, topk_composition
from diffusionret.diagnostics.generator_rank import generator_vs_stage1, mean_over_draws
from diffusionret.diagnostics.meanings import caption_labels, load_meanings, video_labels
from diffusionret.diagnostics.noise_levels import derangement, noise_level_accuracy, noise_steps
from diffusionret.diagnostics.probes import concatenated, masked_mean, probe_accuracy
from diffusionret.diagnostics.ranking import best_positive_rank, descending_order, positive_matrix
from diffusionret.method.diffusion import create_diffusion


def labels(colours, shapes, motions):
    return {"colour": np.array(colours), "shape": np.array(shapes), "motion": np.array(motions)}


# 4 candidate videos: v0 red circle left, v1 red circle up, v2 red square left, v3 blue circle left
VIDEOS = labels(["red", "red", "red", "blue"], ["circle", "circle", "square", "circle"],
                ["left", "up", "left", "left"])


def test_top1_attribute_accuracy_and_chance_by_hand():
    queries = labels(["red", "blue"], ["circle", "circle"], ["left", "left"])  # the meanings of v0 and v3
    scores = np.array([[0.1, 0.9, 0.2, 0.0],   # top-1 v1: red circle up -> colour, shape right, motion wrong
                       [0.0, 0.1, 0.8, 0.3]])  # top-1 v2: red square left -> colour, shape wrong, motion right
    found = top1_attribute_accuracy(scores, queries, VIDEOS, np.random.default_rng(0))
    assert found["top1_colour"] == 50.0 and found["top1_shape"] == 50.0 and found["top1_motion"] == 50.0
    assert found["top1_colour_shape"] == 50.0 and found["top1_meaning"] == 0.0
    # chance: query 0 (red) shares its colour with 3 of 4 videos, query 1 (blue) with 1 of 4
    assert found["top1_colour_chance"] == pytest.approx(100 * (3 / 4 + 1 / 4) / 2)
    assert found["top1_motion_chance"] == pytest.approx(100 * (3 / 4 + 3 / 4) / 2)
    assert found["top1_meaning_chance"] == pytest.approx(100 * (1 / 4 + 1 / 4) / 2)


def test_descending_order_breaks_ties_at_random_not_by_position():
    rng = np.random.default_rng(0)
    firsts = [descending_order(np.array([[1.0, 3.0, 3.0, 3.0, 0.0]]), rng)[0, 0] for _ in range(3000)]
    counts = np.bincount(firsts, minlength=5)
    assert counts[0] == counts[4] == 0
    assert all(abs(counts[i] / 3000 - 1 / 3) < 0.04 for i in (1, 2, 3))  # each tied column leads a third of the time
    order = descending_order(np.array([[0.2, 0.9, 0.5]]), rng)
    assert order.tolist() == [[1, 2, 0]]


def test_best_positive_rank_and_positive_matrix():
    caption_video = np.array([0, 0, 1, 2])  # two captions of video 0
    t2v = positive_matrix(caption_video, 3, "t2v")
    assert t2v.tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    v2t = positive_matrix(caption_video, 3, "v2t")
    assert v2t.tolist() == [[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    order = np.array([[3, 1, 0, 2], [0, 1, 2, 3], [0, 1, 2, 3]])
    assert best_positive_rank(order, v2t).tolist() == [2, 3, 4]  # video 0: its captions at positions 2 and 3
    assert best_positive_rank(np.array([[1, 2]]), np.array([[True, False, False]])).tolist() == [0]  # none listed


def test_topk_composition_by_hand():
    queries = labels(["red"], ["circle"], ["left"])  # true video v0
    positives = np.array([[True, False, False, False]])
    scores = np.array([[0.5, 0.9, 0.7, 0.8]])  # order v1, v3, v2, v0
    found = topk_composition(scores, queries, VIDEOS, positives, 3, np.random.default_rng(0))
    # top-3 = v1 (red circle), v3 (blue circle), v2 (red square): 2 red, 1 red circle; v0 missed
    assert found["topk_same_colour"] == 2 and found["topk_same_colour_shape"] == 1
    assert found["topk_colour_shape_coverage"] == pytest.approx(100 * 1 / 2)  # the gallery has 2 red circles
    assert found["true_in_topk"] == 0.0 and math.isnan(found["group_rank"])
    assert found["random_motion_R1"] == pytest.approx(100 * 1 / 2)
    found = topk_composition(scores, queries, VIDEOS, positives, 4, np.random.default_rng(0))
    # top-4: red circles v1 then v0: v0 is 2nd of its group of 2; random order: (2 + 1) / 2 = 1.5
    assert found["true_in_topk"] == 100.0 and found["group_rank"] == 2.0 and found["group_rank_random"] == 1.5
    assert found["oracle_colour_shape_R1"] == 0.0
    found = topk_composition(np.array([[0.95, 0.9, 0.7, 0.8]]), queries, VIDEOS, positives, 4, np.random.default_rng(0))
    assert found["group_rank"] == 1.0 and found["oracle_colour_shape_R1"] == 100.0


def test_generator_vs_stage1_by_hand():
    positives = np.array([[False, True, False], [True, False, False], [False, False, False]])
    stage1 = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7], [0.9, 0.8, 0.7]])
    p = np.array([[0.2, 0.5, 0.3], [0.1, 0.6, 0.3], [0.4, 0.3, 0.3]])
    found = generator_vs_stage1(p, stage1, positives, np.random.default_rng(0))
    # generator ranks: 1 and 3 (third list has no true candidate: a miss); stage 1: 2 and 1
    assert found["generator_R1"] == pytest.approx(100 / 3) and found["stage1_R1"] == pytest.approx(100 / 3)
    assert found["generator_mean_rank"] == 2.0 and found["stage1_mean_rank"] == 1.5
    assert found["true_in_topk"] == pytest.approx(200 / 3)
    assert found["p_max"] == pytest.approx((0.5 + 0.6 + 0.4) / 3)
    entropy = [-(row * np.log(row)).sum() for row in p]
    assert found["p_entropy"] == pytest.approx(np.mean(entropy)) and found["p_entropy_uniform"] == math.log(3)
    assert found["p_top_tied"] == 0.0


def test_generator_vs_stage1_counts_tied_tops_in_expectation():
    positives = np.array([[True, False, False, False], [False, True, True, False], [False, False, False, True]])
    stage1 = np.array([[0.9, 0.9, 0.1, 0.0], [0.5, 0.5, 0.5, 0.5], [0.9, 0.8, 0.7, 0.6]])
    p = np.array([[0.4, 0.4, 0.1, 0.1], [0.3, 0.3, 0.3, 0.1], [0.3, 0.2, 0.2, 0.3]])
    found = generator_vs_stage1(p, stage1, positives, np.random.default_rng(0))
    # by hand, a uniform pick among each row's tied maxima: generator 1/2, 2/3, 1/2; stage 1 1/2, 2/4, 0
    assert found["generator_R1"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert found["stage1_R1"] == pytest.approx(100 * (1 / 2 + 2 / 4 + 0) / 3)
    assert found["p_top_tied"] == 100.0


def test_generator_rank_with_a_uniform_p_is_random_not_stage1_order():
    k, queries = 8, 4000
    positives = np.zeros((queries, k), bool)
    positives[:, 0] = True  # stage 1 puts the true candidate first every time
    stage1 = np.tile(np.linspace(1, 0, k), (queries, 1))
    found = generator_vs_stage1(np.full((queries, k), 1 / k), stage1, positives, np.random.default_rng(1))
    assert found["stage1_R1"] == 100.0 and found["p_top_tied"] == 100.0
    assert abs(found["generator_R1"] - 100 / k) < 2.0  # random ties: 1/k, never stage 1's 100%
    assert abs(found["generator_mean_rank"] - (k + 1) / 2) < 0.15
    assert mean_over_draws([{"a": 1.0}, {"a": 3.0}]) == {"a": 2.0, "a_min": 1.0, "a_max": 3.0}


def copy_xt_denoiser(rows, candidates):
    """A fake denoiser that returns x_t: it never reads the query or the candidates."""
    return lambda x_t, t: x_t.clone()


def test_noise_levels_with_a_denoiser_that_copies_x_t():
    diffusion = create_diffusion(50, "cosine")
    k, queries = 16, 400
    truth = np.zeros((queries, k), bool)
    truth[np.arange(queries), np.random.default_rng(0).integers(0, k, queries)] = True
    candidates = torch.arange(k).repeat(queries, 1)
    steps = noise_steps((0.0, 0.5, 1.0), 50)
    assert steps == [0, 25, 49]
    found = noise_level_accuracy(copy_xt_denoiser, diffusion, candidates, truth, steps=steps, negative_value=0.0,
                                 draws=4, seed=0)
    assert found["chance"] == pytest.approx(100 / k) and found["lists"] == queries
    assert found["t0"] > 99.0 and found["t0_shuffled"] > 99.0  # copying x_t needs no query
    assert found["t0"] == found["t0_copy_xt"]
    assert abs(found["t49"] - 100 / k) < 3.0  # nothing of x0 is left at T-1: chance
    # a query with no true candidate in its list is not scored
    truth[:10] = False
    assert noise_level_accuracy(copy_xt_denoiser, diffusion, candidates, truth, steps=[0], negative_value=0.0,
                                draws=1, seed=0)["lists"] == queries - 10


def test_noise_levels_tell_a_query_reading_denoiser_from_a_shuffled_query():
    """A denoiser that knows each query's true candidate scores 100% at every t, and chance with the query shuffled."""
    diffusion = create_diffusion(50, "cosine")
    k, queries = 8, 400
    answer = torch.as_tensor(np.random.default_rng(1).integers(0, k, queries))
    truth = np.zeros((queries, k), bool)
    truth[np.arange(queries), answer.numpy()] = True

    def oracle(rows, candidates):
        guess = torch.nn.functional.one_hot(answer[rows], k).float()  # reads the query's own answer
        return lambda x_t, t: guess

    found = noise_level_accuracy(oracle, diffusion, torch.arange(k).repeat(queries, 1), truth, steps=[0, 49],
                                 negative_value=0.0, draws=2, seed=0)
    assert found["t0"] == found["t49"] == 100.0
    assert found["t49_shuffled"] < 100 / k + 6  # another list's answer: right only by coincidence
    perm = derangement(50, np.random.default_rng(3))
    assert sorted(perm.tolist()) == list(range(50)) and not (perm == np.arange(50)).any()


def test_probe_on_separable_features_and_its_chance():
    rng = np.random.default_rng(0)
    y = np.array(["a", "b", "c", "d"] * 30)
    centres = {"a": [5, 0], "b": [-5, 0], "c": [0, 5], "d": [0, -5]}
    x = np.array([centres[label] for label in y]) + rng.normal(0, 0.5, (len(y), 2))
    noise = rng.normal(0, 1, (len(y), 2))
    found = probe_accuracy(x[:80], y[:80], {"val": (x[80:], y[80:]), "noise": (noise[80:], y[80:])}, c=1.0,
                           max_iter=200)
    assert found["val"] == 100.0 and found["chance"] == 25.0 and found["converged"] == 1.0
    assert found["val_majority"] == pytest.approx(100 * np.mean(y[80:] == "a"))  # ties: the first label
    assert found["noise"] < 60.0


def test_feature_flattening_by_hand():
    features = np.arange(12, dtype=np.float32).reshape(1, 3, 4)  # (N, P, D)
    mask = np.array([[1, 1, 0]])
    flat = concatenated(features, mask)
    assert flat.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0]]
    assert concatenated(features, mask, 2).shape == (1, 8) and concatenated(features, mask, 5).shape == (1, 20)
    assert masked_mean(features, mask).tolist() == [[2, 3, 4, 5]]


def test_meanings_labels_and_a_real_benchmark(tmp_path):
    assert load_meanings(tmp_path / "meanings.json") is None  # no file: a real benchmark, skipped
    path = tmp_path / "meanings.json"
    path.write_text('{"v0": {"colour": "red", "shape": "circle", "motion": "up"}, '
                    '"v1": {"colour": "blue", "shape": "box", "motion": "left"}}')
    meanings = load_meanings(path)
    videos = video_labels(meanings, ("v1", "v0"), str(path))
    assert videos["colour"].tolist() == ["blue", "red"]
    captions = caption_labels(videos, (1, 1, 0))  # two captions of v0, one of v1 (multi-caption)
    assert captions["motion"].tolist() == ["up", "up", "left"]
    with pytest.raises(ValueError, match="v9"):
        video_labels(meanings, ("v9",), str(path))
    path.write_text('{"v0": {"colour": "red"}}')
    with pytest.raises(ValueError, match="lacks one of"):
        load_meanings(path)


def test_a_real_benchmark_is_skipped_and_says_so(tmp_path):
    """No meanings.json: diagnostics.json says why, nothing is loaded, and the report prints the reason."""
    from pathlib import Path

    import yaml

    from diffusionret.config import params_from_dict
    from diffusionret.pipeline.diagnose import run_diagnose
    from diffusionret.pipeline.paths import Paths
    from diffusionret.report.diagnostics import diagnostics_section

    raw = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    params = params_from_dict(raw)
    result = run_diagnose("synthetic", "msvd", params, Paths(tmp_path, params.data), tmp_path, log=False)
    assert "meanings.json does not exist" in result["skipped"] and result["metrics"] == {}
    written = (tmp_path / "eval" / "synthetic__msvd" / "diagnostics.json").read_text()
    assert "not a synthetic benchmark" in written
    section = diagnostics_section({"synthetic → msvd": result, "synthetic → synthetic": None})
    assert "synthetic → msvd: skipped" in section and "synthetic → synthetic: no diagnostics.json" in section


def test_report_section_prints_values_with_their_chance_levels():
    from diffusionret.report.diagnostics import diagnostics_section

    metrics = {"t2v/top1_motion": 11.0, "t2v/top1_motion_chance": 6.25, "t2v_rerank/top1_motion": 12.5,
               "t2v_generator/generator_R1": 3.5, "t2v_generator/generator_R1_min": 3.0,
               "t2v_generator/generator_R1_max": 4.0, "t2v_generator/p_entropy_uniform": math.log(32),
               "t2v_generator/p_max": 0.0329, "t2v_noise/t0": 67.5, "t2v_noise/t0_shuffled": 32.6,
               "t2v_noise/t0_copy_xt": 100.0, "t2v_noise/chance": 3.125,
               "probe/frames/motion/val": 13.0, "probe/frames/motion/test": 12.0, "probe/frames/motion/chance": 6.25}
    section = diagnostics_section({"A → B": {"skipped": None, "metrics": metrics, "k": 32, "noise_steps": [0]}})
    assert "11.0 (6.2)" in section and "12.5 (6.2)" in section  # stage 1 and re-ranked, chance in parentheses
    assert "3.5 (3.0–4.0)" in section and "0.0329 (0.0312)" in section
    assert "67.5 / 32.6 / 100.0" in section and "13.0 / 12.0 (6.2)" in section


def test_report_section_names_the_ci_level_the_cells_were_bootstrapped_with():
    from diffusionret.report.diagnostics import diagnostics_section

    metrics = {"t2v_generator/R1_delta": -1.5, "t2v_generator/R1_delta_ci_low": -4.0,
               "t2v_generator/R1_delta_ci_high": 1.0}

    def header(found):
        section = diagnostics_section(found)
        return next(line for line in section.splitlines() if "generator − stage 1 [" in line)

    cell = {"skipped": None, "metrics": metrics, "k": 32, "noise_steps": [0]}
    assert "[90% CI, paired]" in header({"A → B": {**cell, "bootstrap": {"level": 0.9}}})
    assert "95%" not in header({"A → B": {**cell, "bootstrap": {"level": 0.9}}})
    assert "[99.5% CI, paired]" in header({"A → B": {**cell, "bootstrap": {"level": 0.995}}})
    both = header({"A → B": {**cell, "bootstrap": {"level": 0.95}}, "A → C": {**cell, "bootstrap": {"level": 0.8}}})
    assert "[80% / 95% CI, paired]" in both
    assert "[CI, paired]" in header({"A → B": cell})  # a diagnostics.json that does not say: no level invented


def test_cli_diagnose_skips_a_real_benchmark(tmp_path, capsys):
    import shutil
    from pathlib import Path

    from diffusionret.cli import main

    shutil.copyfile(Path(__file__).parents[1] / "params.yaml", tmp_path / "params.yaml")
    assert main(["diagnose", "--trained", "synthetic", "--evaluated", "msvd", "--params",
                 str(tmp_path / "params.yaml"), "--no-mlflow"]) == 0
    assert "skipped" in capsys.readouterr().out
    assert (tmp_path / "eval" / "synthetic__msvd" / "diagnostics.json").is_file()
    assert main(["diagnose", "--trained", "synthetic", "--evaluated", "nope", "--params",
                 str(tmp_path / "params.yaml")]) == 2  # an unknown benchmark: a clear error, no traceback


def test_generator_minus_stage1_is_a_paired_difference_of_top1_hits_by_hand():
    from diffusionret.diagnostics.generator_rank import generator_minus_stage1
    from diffusionret.evaluation.uncertainty import Bootstrap, resample_indices

    generator = np.array([1, 2, 1, 0, 1, 3])  # 1-based ranks in the top-k, 0 = not in the list
    stage1 = np.array([2, 1, 1, 0, 3, 1])
    boot = Bootstrap(resamples=500, seed=4, level=0.9)
    found = generator_minus_stage1([(generator, stage1)], boot, clusters=None)
    hits_g, hits_s = (generator == 1).astype(float), (stage1 == 1).astype(float)
    assert found["R1_delta"] == pytest.approx(100 * (hits_g.mean() - hits_s.mean()))
    diffs = [100 * (hits_g[rows].mean() - hits_s[rows].mean()) for rows in resample_indices(6, 500, 4)]
    assert (found["R1_delta_ci_low"], found["R1_delta_ci_high"]) == pytest.approx(
        tuple(np.quantile(diffs, [0.05, 0.95])))
