"""The results report: tables, the paper's numbers, figures, and the whole reports/ folder from fake cells."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from diffusionret.report.figures import rank_bins, rank_histogram, read_loss_csv
from diffusionret.report.paper import PAPER, PAPER_QBNORM
from diffusionret.report.tables import CellResult, cell_table, format_value, ood_grid, results_markdown

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_metrics(offset=0.0, draws=3):
    """Every row of a cell with distinct values: row r, direction d, column c -> 10 r + d + c / 10 + offset."""
    metrics = {}
    suffixes = ["", "_rerank", "_rerank_qbnorm", "_rerank_dsl", "_qbnorm", "_dsl"]
    for r, suffix in enumerate(suffixes):
        for d, direction in enumerate(("t2v", "v2t")):
            for c, name in enumerate(("R1", "R5", "R10", "R50", "MdR", "MnR")):
                metrics[f"{direction}{suffix}/{name}"] = 10 * r + d + c / 10 + offset
                if "rerank" in suffix and draws > 1:
                    metrics[f"{direction}{suffix}/{name}_std"] = 0.25
    metrics.update({"chance/R1": 0.5, "chance/R5": 2.5, "chance/R10": 5.0, "chance/R50": 25.0, "chance/MdR": 100.5,
                    "chance/MnR": 100.5})
    return metrics


def table_rows(markdown):
    """label -> list of cell strings of a markdown table."""
    rows = {}
    for line in markdown.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_format_value():
    assert format_value({"t2v/R1": 22.04}, "t2v/R1") == "22.0"
    assert format_value({"t2v/R1": 22.15, "t2v/R1_std": 0.349}, "t2v/R1") == "22.1 ± 0.3"
    assert format_value({"t2v/R1": None}, "t2v/R1") == "n/a"
    assert format_value({}, "t2v/R1") == "n/a"


def test_cell_table_column_order_rows_and_chance():
    table = cell_table(CellResult("synthetic", "synthetic", fake_metrics(), {"source": "synthetic"}))
    header = table.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")][1:] == [
        f"{d} {c}" for d in ("t2v", "v2t") for c in ("R@1", "R@5", "R@10", "MdR", "MnR")]
    rows = table_rows(table)
    labels = list(rows)
    assert labels[:4] == ["Stage 1 (contrastive)", "+ diffusion re-ranking (DiffusionRet)", "+ re-ranking + QB-Norm",
                          "+ re-ranking + DSL †"]
    assert labels[4:6] == ["Stage 1 + QB-Norm", "Stage 1 + DSL †"] and labels[6] == "Chance (random ranking)"
    assert len(labels) == 7  # synthetic: no paper rows
    # row 1 (+ re-ranking): t2v R@1 = 10.0 ± 0.25; v2t MnR (d=1, c=5) = 11.5; R@50 is not a paper column
    assert rows["+ diffusion re-ranking (DiffusionRet)"][0] == "10.0 ± 0.2"
    assert rows["+ diffusion re-ranking (DiffusionRet)"][9] == "11.5 ± 0.2"
    assert rows["Stage 1 (contrastive)"][3:5] == ["0.4", "0.5"]  # MdR, MnR (R@50 skipped)
    assert rows["Stage 1 + DSL †"][0] == "50.0"
    assert rows["Chance (random ranking)"] == ["0.5", "2.5", "5.0", "100.5", "100.5"] * 2


def test_cell_table_paper_rows_only_in_domain_for_real_benchmarks():
    rows = table_rows(cell_table(CellResult("msrvtt", "msrvtt", fake_metrics(), {"source": "msrvtt"})))
    assert rows["DiffusionRet, paper"] == ["49.0", "75.2", "82.7", "2.0", "12.1", "47.7", "73.8", "84.5", "2.0", "8.8"]
    assert rows["DiffusionRet + QB-Norm, paper"] == ["n/a"] * 10
    rows = table_rows(cell_table(CellResult("lsmdc", "lsmdc", fake_metrics(), {"source": "lsmdc"})))
    assert rows["DiffusionRet, paper"][5:] == ["n/a"] * 5
    rows = table_rows(cell_table(CellResult("activitynet", "activitynet", fake_metrics(), {"source": "activitynet"})))
    assert rows["DiffusionRet + QB-Norm, paper"] == ["48.1", "n/a", "85.7", "2.0", "6.8", "47.4", "76.3", "86.7", "2.0",
                                                     "n/a"]
    rows = table_rows(cell_table(CellResult("msrvtt", "msvd", fake_metrics(), {"source": "msvd"})))
    assert not any("paper" in label for label in rows)  # the paper's rows are in-domain numbers


def test_cell_table_adds_released_grouping_rows():
    metrics = fake_metrics()
    metrics.update({"t2v_faithful/R1": 1.5, "t2v_rerank_faithful/R1": 2.5, "t2v_rerank_faithful/R1_std": 0.5})
    rows = table_rows(cell_table(CellResult("msvd", "msvd", metrics, {"source": "msvd"})))
    assert rows["Stage 1 (contrastive) [released MSVD grouping]"][0] == "1.5"
    assert rows["+ diffusion re-ranking (DiffusionRet) [released MSVD grouping]"][:2] == ["2.5 ± 0.5", "n/a"]
    assert "Stage 1 + QB-Norm [released MSVD grouping]" not in rows


def test_ood_grid_layout():
    results = [CellResult("a", "a", fake_metrics(0.0)), CellResult("a", "b", fake_metrics(3.0)),
               CellResult("c", "b", fake_metrics(6.0))]
    rows = table_rows(ood_grid(results, ["a", "c"], ["a", "b"], "_rerank"))
    assert rows["a"] == ["10.0 ± 0.2 (ID)", "13.0 ± 0.2"]
    assert rows["c"] == ["n/a", "16.0 ± 0.2"]
    assert rows["chance"] == ["0.5", "0.5"]


@pytest.mark.shared
def test_paper_numbers_are_those_of_the_reference(shared_root):
    """Parse the paper tables of the shared design notes: every number we print is there, every n/a absent."""
    text = (shared_root / "design" / "diffusionret-reference.md").read_text()
    names = {"MSRVTT-1kA": "msrvtt", "LSMDC": "lsmdc", "MSVD": "msvd", "ActivityNet Captions": "activitynet",
             "DiDeMo": "didemo"}

    def parse(section):
        body = text.split(section, 1)[1].split("\n### ", 1)[0]
        out = {}
        for line in body.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells and cells[0] in names:
                values = [float(c) if re.fullmatch(r"\d+(\.\d+)?", c) else None for c in cells[1:11]]
                values += [None] * (10 - len(values))
                out[names[cells[0]]] = dict(zip([f"{d}/{c}" for d in ("t2v", "v2t")
                                                 for c in ("R1", "R5", "R10", "MdR", "MnR")], values))
        return out

    assert parse("### 12.1 ") == PAPER
    assert parse("### 12.2 ") == PAPER_QBNORM


def test_rank_histogram_matches_counting_ranks():
    rng = np.random.default_rng(0)
    num_candidates = 37
    ranks = rng.integers(0, num_candidates, size=500)  # 0-based
    curve = [100.0 * np.mean(ranks < k) for k in range(1, num_candidates + 1)]
    edges = rank_bins(num_candidates)
    assert edges[0] == 1 and edges[-1] == num_candidates + 1 and list(edges[:7]) == [1, 2, 3, 6, 11, 21, 38]
    counted, _ = np.histogram(ranks + 1, bins=edges)
    np.testing.assert_allclose(rank_histogram(curve, edges), 100.0 * counted / len(ranks), atol=1e-9)


def test_read_loss_csv(tmp_path):
    path = tmp_path / "gen_loss.csv"
    path.write_text("step,loss/generative,lr\n20,1.5,0.1\n40,1.25,\n")
    columns = read_loss_csv(path)
    np.testing.assert_allclose(columns["step"], [20, 40])
    np.testing.assert_allclose(columns["loss/generative"], [1.5, 1.25])
    assert np.isnan(columns["lr"][1])
    with pytest.raises(FileNotFoundError, match="dvc repro"):
        read_loss_csv(tmp_path / "missing.csv")


def write_fake_repository(root, selection="val"):
    """params.yaml with a 1 x 2 grid, the cells' files and the loss CSVs the report reads."""
    repo_params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    repo_params["train"]["benchmarks"] = ["synthetic"]
    repo_params["eval"]["benchmarks"] = ["synthetic", "synthetic-shift"]
    (root / "params.yaml").write_text(yaml.safe_dump(repo_params))
    for target, offset in (("synthetic", 0.0), ("synthetic-shift", 3.0)):
        cell = root / "eval" / f"synthetic__{target}"
        cell.mkdir(parents=True)
        (cell / "metrics.json").write_text(json.dumps(fake_metrics(offset)))
        info = {"source": "synthetic", "selection": selection, "num_samples": 3, "seeds": [0, 1, 2],
                "num_queries": 8, "num_videos": 8, "bank": {"captions": 5, "videos": 4},
                "parent_run": {"run_id": "x", "experiment": "e"}}
        (cell / "cell.json").write_text(json.dumps(info))
        curve = np.tile(np.linspace(10, 100, 8), (3, 1))  # (draws, V)
        np.savez(cell / "curves.npz", **{f"{d}{s}": curve for d in ("t2v", "v2t")
                                          for s in ("", "_rerank", "_qbnorm", "_rerank_qbnorm", "_dsl", "_rerank_dsl")})
    plots = root / "plots" / "synthetic"
    plots.mkdir(parents=True)
    (plots / "disc_loss.csv").write_text("step,loss/contrastive\n20,4.0\n40,3.0\n")
    (plots / "gen_loss.csv").write_text("step,loss/generative,loss/generative_t2v,loss/generative_v2t\n"
                                        "20,9.0,4.0,5.0\n40,7.0,3.0,4.0\n")


def test_write_report_builds_tables_and_figures(tmp_path):
    from diffusionret.config import load_params
    from diffusionret.pipeline.paths import Paths
    from diffusionret.pipeline.report import write_report

    write_fake_repository(tmp_path)
    params = load_params(tmp_path / "params.yaml")
    # a stale figure of an old grid cell must disappear
    (tmp_path / "reports" / "figures").mkdir(parents=True)
    (tmp_path / "reports" / "figures" / "old__cell_recall.png").write_bytes(PNG_SIGNATURE)
    markdown, results, figures = write_report(params, Paths(tmp_path, params.data), tmp_path / "reports")
    text = markdown.read_text()
    assert [r.evaluated for r in results] == ["synthetic", "synthetic-shift"]
    assert "## In-distribution" in text and "### synthetic\n" in text and "## Out-of-distribution" in text
    assert "### synthetic → synthetic-shift" in text and "transductive" in text
    in_distribution = text.split("### synthetic\n", 1)[1].split("\n\n")[0].strip()
    assert table_rows(in_distribution)["+ diffusion re-ranking (DiffusionRet)"][0] == "10.0 ± 0.2"
    grid = text.split("t2v R@1, stage 1:\n\n", 1)[1].split("\n\n")[0]
    assert table_rows(grid)["synthetic"] == ["0.0 (ID)", "3.0"]
    assert "selected on the TEST split" not in text and "selected on the validation split" in text
    names = sorted(p.name for p in (tmp_path / "reports" / "figures").iterdir())
    assert names == ["synthetic__synthetic-shift_ranks.png", "synthetic__synthetic-shift_recall.png",
                     "synthetic__synthetic_ranks.png", "synthetic__synthetic_recall.png", "synthetic_losses.png"]
    for name in names:
        assert (tmp_path / "reports" / "figures" / name).read_bytes()[:8] == PNG_SIGNATURE
        assert f"](figures/{name})" in text


def test_selection_on_test_is_flagged_everywhere():
    info = {"selection": "test", "source": "synthetic", "num_samples": 1}
    results = [CellResult("a", "a", fake_metrics(draws=1), info), CellResult("a", "b", fake_metrics(draws=1), info)]
    text = results_markdown(results, ["a"], ["a", "b"], {})
    assert "**Checkpoints selected on the TEST split (official protocol)" in text
    assert text.count("checkpoints selected on the TEST split (official protocol)") == 2  # under each table
    assert not any("±" in line for line in text.splitlines() if line.startswith("|"))  # one draw: no spread


def test_missing_cell_names_the_stage(tmp_path):
    from diffusionret.config import load_params
    from diffusionret.pipeline.paths import Paths
    from diffusionret.pipeline.report import write_report

    write_fake_repository(tmp_path)
    (tmp_path / "eval" / "synthetic__synthetic-shift" / "curves.npz").unlink()
    params = load_params(tmp_path / "params.yaml")
    with pytest.raises(FileNotFoundError, match=r"dvc repro evaluate@synthetic-synthetic-shift"):
        write_report(params, Paths(tmp_path, params.data), tmp_path / "reports")


def test_confidence_intervals_and_paired_differences_are_printed():
    from diffusionret.report.tables import difference_table, format_difference
    metrics = {"t2v/R1": 10.0, "t2v/R1_ci_low": 7.94, "t2v/R1_ci_high": 12.06,
               "t2v_rerank/R1": 12.5, "t2v_rerank/R1_std": 0.5, "t2v_rerank/R1_ci_low": 10.0,
               "t2v_rerank/R1_ci_high": 15.0, "t2v_rerank/R1_delta": 2.5, "t2v_rerank/R1_delta_ci_low": 0.5,
               "t2v_rerank/R1_delta_ci_high": 4.5, "t2v_rerank/MnR_delta": -0.25,
               "t2v_rerank/MnR_delta_ci_low": -1.0, "t2v_rerank/MnR_delta_ci_high": 0.5}
    assert format_value(metrics, "t2v/R1") == "10.0 [7.9, 12.1]"
    assert format_value(metrics, "t2v_rerank/R1") == "12.5 ± 0.5 [10.0, 15.0]"
    assert format_difference(metrics, "t2v_rerank/R1") == "**+2.5 [+0.5, +4.5]**"  # the CI excludes 0
    assert format_difference(metrics, "t2v_rerank/MnR") == "-0.2 [-1.0, +0.5]"
    table = difference_table(CellResult("a", "a", metrics, {"bootstrap": {"level": 0.95, "resamples": 10}}))
    lines = table.splitlines()
    assert len(lines) == 3 and lines[2].startswith("| + diffusion re-ranking (DiffusionRet) | **+2.5")


def test_each_cell_prints_its_cut_captions_and_exact_ties():
    from diffusionret.report.tables import cell_text_note

    metrics = {"captions/test/captions": 1000, "captions/test/truncated": 969, "captions/test/max_words": 16,
               "captions/test/max_excess": 17, "captions/test/mean_excess": 7.14, "captions/test/longest": 33,
               "ties/score_rows/tied_captions": 109, "ties/score_rows/largest_group": 8,
               "ties/sentence/tied_captions": 0, "ties/sentence/largest_group": 1}
    note = cell_text_note(CellResult("synthetic", "synthetic-textshift", metrics))
    assert "969 of 1000 test captions cut at max_words 16 (up to 17, mean 7.1 tokens lost)" in note
    assert "109 captions share their stage-1 score row with a different caption (largest group 8)" in note
    assert "0 captions share their sentence vector" in note
    markdown = results_markdown([CellResult("synthetic", "synthetic-textshift", metrics)], ["synthetic"],
                                ["synthetic-textshift"], {})
    assert note in markdown
    assert cell_text_note(CellResult("a", "b", {})) == ""  # an old metrics.json without the counts


def test_the_rerank_verdict_follows_the_paired_interval():
    from diffusionret.report.tables import rerank_verdict

    metrics = {"t2v/R1": 30.0, "t2v_rerank/R1": 32.5, "t2v_rerank/R1_delta": 2.5, "t2v_rerank/R1_delta_ci_low": 0.5,
               "t2v_rerank/R1_delta_ci_high": 4.5, "v2t/R1": 20.0, "v2t_rerank/R1": 19.5,
               "v2t_rerank/R1_delta": -0.5, "v2t_rerank/R1_delta_ci_low": -2.0, "v2t_rerank/R1_delta_ci_high": 1.0}
    line = rerank_verdict(CellResult("a", "a", metrics))
    assert "t2v R@1 30.0 → 32.5, re-ranked minus stage 1 +2.5 [+0.5, +4.5], a gain" in line
    assert "v2t R@1 20.0 → 19.5, re-ranked minus stage 1 -0.5 [-2.0, +1.0], no measurable difference" in line
    metrics.update({"t2v_rerank/R1_delta_ci_low": -4.0, "t2v_rerank/R1_delta_ci_high": -1.0})
    assert "a loss: the interval is below 0" in rerank_verdict(CellResult("a", "a", metrics))
    assert rerank_verdict(CellResult("a", "a", {})) == ""
    markdown = results_markdown([CellResult("a", "a", metrics)], ["a"], ["a"], {})
    assert "## Does diffusion re-ranking help?" in markdown
