"""OOD detection wired into evaluation and the report: metric names, routing, table, histograms."""

import numpy as np
import pytest
import torch

from diffusionret.evaluation.cell import OodEvidence, top1_correct
from diffusionret.evaluation.ood import OOD_SCORES, QueryEvidence
from diffusionret.evaluation.rows import metrics_of_postprocess, ood_metrics
from diffusionret.report.tables import CellResult, ood_detection_table, results_markdown

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_evidence(rng, num_queries, offset, num_draws=2, k=3, candidates=5):
    similarity = rng.normal(offset, 1.0, (num_queries, candidates))
    top = -np.sort(-similarity, axis=1)[:, :k]
    probabilities = rng.dirichlet(np.ones(k), (num_draws, num_queries))
    return QueryEvidence(similarity=similarity, logit_scale=0.0, stage1_topk=top,
                         reranked_topk=top[None] + probabilities, probabilities=probabilities)


def make_ood(rng):
    evidence = {(direction, side): make_evidence(rng, 6 if side == "id" else 4, 3.0 if side == "id" else 0.0)
                for direction in ("t2v", "v2t") for side in ("id", "ood")}
    return OodEvidence(evidence=evidence, id_correct=np.array([1.0, 1.0, 0.5, 0.0, 1.0, 0.0]), seconds=1.0)


def test_top1_correct_counts_draws_and_ties_pessimistically():
    draws = [torch.tensor([[0.9, 0.1], [0.5, 0.5]]), torch.tensor([[0.1, 0.9], [0.2, 0.7]])]
    # query 0 (video 0): right in draw 0 only; query 1 (video 1): tie in draw 0 (miss), right in draw 1
    assert top1_correct(draws, np.array([0, 1])) == pytest.approx([0.5, 0.5])


def test_ood_metrics_names_values_and_stored_scores():
    ood = make_ood(np.random.default_rng(0))
    metrics, stored = ood_metrics(ood)
    for name in OOD_SCORES:
        for metric in ("auroc", "aupr", "fpr95", "aurc"):
            assert 0.0 <= metrics[f"ood_detect/{name}/{metric}"] <= 1.0
        assert f"ood_detect_v2t/{name}/auroc" in metrics and f"ood_detect_v2t/{name}/aurc" not in metrics
        assert stored[f"ood__t2v__id__{name}"].shape == (6,) and stored[f"ood__v2t__ood__{name}"].shape == (4,)
    # ID similarities sit 3 standard deviations above OOD ones: the max similarity separates them (pairs by hand)
    id_max, ood_max = stored["ood__t2v__id__s1_max"], stored["ood__t2v__ood__s1_max"]
    pairs = np.mean([(a > b) + 0.5 * (a == b) for a in id_max for b in ood_max])
    assert metrics["ood_detect/s1_max/auroc"] == pytest.approx(pairs)
    # pooled risk: ID correct 3.5 of 6, the 4 OOD queries never -> 1 - 3.5 / 10
    assert metrics["ood_detect/aurc_random"] == pytest.approx(0.65)
    assert stored["ood__t2v__id_correct"] == pytest.approx(ood.id_correct)


def test_ood_metrics_go_to_the_none_run_only():
    metrics, _ = ood_metrics(make_ood(np.random.default_rng(1)))
    metrics["t2v/R1"] = 1.0
    none = metrics_of_postprocess(metrics, "none")
    assert set(none) == set(metrics)
    assert not metrics_of_postprocess(metrics, "qbnorm") and not metrics_of_postprocess(metrics, "dsl")


def ood_cell_metrics(auroc_of_msp):
    metrics = {"t2v/R1": 1.0, "ood_detect/aurc_random": 0.7}
    for name in ("s1_msp", "gen_neg_entropy"):
        for prefix in ("ood_detect", "ood_detect_v2t"):
            metrics.update({f"{prefix}/{name}/auroc": auroc_of_msp if name == "s1_msp" else 0.6,
                            f"{prefix}/{name}/aupr": 0.55, f"{prefix}/{name}/fpr95": 0.9})
        metrics[f"ood_detect/{name}/aurc"] = 0.4
    return metrics


def test_ood_detection_table_layout_and_best_in_bold():
    results = [CellResult("a", "a", {"t2v/R1": 1.0}), CellResult("a", "b", ood_cell_metrics(0.8)),
               CellResult("a", "c", ood_cell_metrics(0.3))]
    lines = ood_detection_table(results, "t2v").splitlines()
    assert lines[0] == ("| score | source | a → b AUROC | a → b AUPR | a → b FPR95 | a → b AURC | "
                        "a → c AUROC | a → c AUPR | a → c FPR95 | a → c AURC |")
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.strip("|").split("|")[1:]] for line in lines[2:]}
    assert list(rows) == ["s1_msp", "gen_neg_entropy", "abstain at random"]  # registry order, then the reference
    assert rows["s1_msp"] == ["stage1", "**0.800**", "0.550", "0.900", "0.400", "0.300", "0.550", "0.900", "0.400"]
    assert rows["gen_neg_entropy"][5] == "**0.600**"  # the best AUROC of cell a -> c
    assert rows["abstain at random"][4] == "0.700" and rows["abstain at random"][8] == "0.700"
    assert len(ood_detection_table(results, "v2t").splitlines()[0].split("|")) == 1 + 2 + 3 * 2 + 1  # empty edges, score, source, 3 metrics x 2 cells
    text = results_markdown(results, ["a"], ["a", "b", "c"], {"a__b_ood": ["figures/a__b_ood_t2v.png"]})
    assert "## Out-of-distribution query detection" in text and "](figures/a__b_ood_t2v.png)" in text
    assert "query detection" not in results_markdown(results[:1], ["a"], ["a"], {})


def test_histogram_figure_is_a_png(tmp_path):
    from diffusionret.report.figures import ood_histogram_figure

    rng = np.random.default_rng(0)
    scores = {name: {"id": rng.normal(1, 1, 20), "ood": rng.normal(0, 1, 15)} for name in ("s1_max", "gen_max_prob")}
    scores["flat"] = {"id": np.ones(3), "ood": np.ones(2)}  # all equal: one bin, no error
    path = ood_histogram_figure(scores, "a → b", tmp_path / "h.png", {"s1_max": 0.8})
    assert path.read_bytes()[:8] == PNG_SIGNATURE
