"""The real `dvc repro` end to end, in a temporary copy of the repository with a shrunk params file."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from diffusionret.evaluation.names import file_metric_key, headline_keys

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
QUERIES = 32 * 5  # 32 test videos, 5 captions each (params.yaml captions_per_eval_video)


def shrink(params: dict) -> dict:
    """A few dozen short videos and a few hundred steps: the whole DAG in about a minute on 2 cores."""
    for name, bench in params["benchmarks"].items():
        synthetic = bench["synthetic"]
        if synthetic is None:  # a real benchmark: not in the default grid
            continue
        synthetic.update(num_train=96 if synthetic["shift"] == "none" else 0, num_val=24, num_test=32)
    params["train"].update(steps=240, global_batch=32, warmup_steps=20, val_every=120, log_every=20, lr=2e-3)
    params["train_gen"].update(steps=60, global_batch=32, num_negatives=31, warmup_steps=5, val_every=30,
                               log_every=10)
    params["eval"].update(rerank_k=8, num_samples=2)
    params["postprocess"].update(qbnorm_bank_size=48)
    params["diffusion"].update(steps=10)
    params["preprocess"].update(workers=1)
    return params


LOCAL_RESULTS = ("reports", "eval", "plots")  # a checkout's own (untracked) results are not a test's


def copy_repository(destination: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    for name in tracked:
        if name.split("/", 1)[0] in LOCAL_RESULTS:
            continue
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)


def run(command: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


def tiny_repository(work: Path, shrink_params, **env_updates: str | None) -> tuple[dict, list[str]]:
    """A copy of the repository in `work` with params.yaml rewritten by `shrink_params`, committed to a fresh git
    repository. Returns the environment for its commands (this interpreter's tools, offline; `env_updates` on top,
    None removes a variable) and the git command with a test identity."""
    copy_repository(work)
    params_path = work / "params.yaml"
    params_path.write_text(yaml.safe_dump(shrink_params(yaml.safe_load(params_path.read_text())), sort_keys=False))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true")
    for name, value in env_updates.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    run(["git", "init", "-q"], work, env)
    run(["git", "add", "-A"], work, env)
    run(git + ["commit", "-qm", "snapshot"], work, env)
    return env, git


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("repo")
    env, _ = tiny_repository(work, shrink, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlruns.db'}")
    run(["dvc", "repro"], work, env)
    return work, env


ROW_SUFFIXES = ("", "_rerank", "_qbnorm", "_rerank_qbnorm", "_dsl", "_rerank_dsl")
CELLS = ("synthetic__synthetic", "synthetic__synthetic-shift", "synthetic__synthetic-textshift")
OOD_CELLS = CELLS[1:]
OOD_SCORE_NAMES = ("s1_max", "s1_msp", "s1_energy", "s1_margin", "gen_neg_entropy", "gen_max_prob",
                   "gen_rank_agreement", "gen_neg_spread")  # two draws: the spread is defined


def test_metrics_written_for_every_cell_of_the_ood_grid(pipeline):
    work, env = pipeline
    for cell in CELLS:
        metrics = json.loads((work / "eval" / cell / "metrics.json").read_text())
        for prefix in (direction + suffix for direction in ("t2v", "v2t") for suffix in ROW_SUFFIXES):
            for name in ("R1", "R5", "R10", "R50", "MdR", "MnR"):
                assert np.isfinite(metrics[f"{prefix}/{name}"]), (cell, prefix, name)
                # two DDIM draws: re-ranked rows carry their spread, stage-1 rows are deterministic
                assert (f"{prefix}/{name}_std" in metrics) == ("rerank" in prefix), (cell, prefix, name)
        assert metrics["chance/R1"] == pytest.approx(100 / 32)
        assert metrics["captions/test/captions"] == QUERIES and metrics["captions/test/truncated"] == 0
        assert metrics["ties/distinct_texts"] == QUERIES and "ties/score_rows/tied_captions" in metrics
        with np.load(work / "eval" / cell / "scores.npz") as scores:
            assert scores["stage1"].shape == (QUERIES, 32)  # multi-caption: every caption a t2v query
            assert scores["t2v_rerank"].shape == (2, QUERIES, 32) and scores["v2t_rerank"].shape == (2, 32, QUERIES)
            assert scores["bank_t2v"].shape == (48, 32) and scores["bank_v2t_rerank"].shape == (2, 48, QUERIES)
            assert list(scores["seeds"]) == [0, 1]
        with np.load(work / "eval" / cell / "curves.npz") as curves:
            assert curves["t2v_rerank_qbnorm"].shape == (2, 32) and curves["v2t"].shape == (1, 32)
            assert curves["t2v"][0, -1] == 100.0  # R@V: every caption finds its video among all 32
        info = json.loads((work / "eval" / cell / "cell.json").read_text())
        assert info["ood"] == (cell != "synthetic__synthetic") and info["bank"]["source"] == "synthetic/train"
        with np.load(work / "eval" / cell / "ranks.npz") as ranks:  # per-query ranks of every row and draw
            assert ranks["t2v"].shape == (1, QUERIES) and ranks["v2t_rerank_qbnorm"].shape == (2, 32)
            assert ("id__t2v_rerank" in ranks.files) == (cell != "synthetic__synthetic")
        for prefix in (direction + suffix for direction in ("t2v", "v2t") for suffix in ROW_SUFFIXES):
            assert metrics[f"{prefix}/R1_ci_low"] <= metrics[f"{prefix}/R1"] <= metrics[f"{prefix}/R1_ci_high"]
            assert (f"{prefix}/R1_delta_ci_low" in metrics) == (prefix not in ("t2v", "v2t"))
            assert (f"{prefix}/MnR_shift_ci_high" in metrics) == (cell != "synthetic__synthetic"
                                                                  and prefix in ("t2v", "t2v_rerank", "v2t",
                                                                                 "v2t_rerank"))
    for cell in CELLS:  # OOD query detection only where trained != evaluated
        metrics = json.loads((work / "eval" / cell / "metrics.json").read_text())
        has_ood = any(key.startswith("ood_detect") for key in metrics)
        assert has_ood == (cell in OOD_CELLS), cell
        if cell not in OOD_CELLS:
            continue
        for name in OOD_SCORE_NAMES:
            for metric in ("auroc", "aupr", "fpr95", "aurc"):
                assert 0.0 <= metrics[f"ood_detect/{name}/{metric}"] <= 1.0, (cell, name, metric)
            for metric in ("auroc", "aupr", "fpr95"):
                assert 0.0 <= metrics[f"ood_detect_v2t/{name}/{metric}"] <= 1.0, (cell, name, metric)
        with np.load(work / "eval" / cell / "scores.npz") as scores:
            assert scores["ood__t2v__id__s1_max"].shape == (QUERIES,)
            assert scores["ood__v2t__ood__gen_neg_spread"].shape == (32,)  # the 32 test videos as queries
        info = json.loads((work / "eval" / cell / "cell.json").read_text())
        assert info["ood_detect"]["seconds"] > 0 and info["ood_detect"]["gallery"] == "synthetic/test"
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], work, env).stdout)
    rows = ("t2v", "t2v_rerank", "v2t", "v2t_rerank")
    for cell in CELLS:  # the DVC metric is the headline: stage 1 and re-ranked, both directions, a file per row
        full = json.loads((work / "eval" / cell / "metrics.json").read_text())
        for row in rows:
            headline = json.loads((work / "eval" / cell / "headline" / f"{row}.json").read_text())
            assert headline == {name: full[f"{row}/{name}"] for name in ("R1", "R5", "R10", "MdR", "MnR")}
    metric_files = {name for entry in shown.values() for name in entry["data"]}
    assert metric_files == {f"eval/{cell}/headline/{row}.json" for cell in CELLS for row in rows}
    table = run(["dvc", "metrics", "show"], work, env).stdout.splitlines()
    assert table[0].split() == ["Path", "MdR", "MnR", "R1", "R10", "R5"] and len(table) == 1 + len(metric_files)
    assert max(len(line) for line in table) <= 120, "dvc metrics show must fit a terminal"


def test_fixed_seed_repeats_the_whole_evaluation(pipeline):
    """A fresh process re-scoring a cell (all draws, banks, post-processing) reproduces metrics.json exactly."""
    work, env = pipeline
    script = """
import json
from pathlib import Path
from diffusionret.config import load_params
from diffusionret.evaluation.rows import cell_rows, id_ranks, ood_metrics, shift_metrics
from diffusionret.evaluation.ties import cell_ties
from diffusionret.pipeline.evaluate import bootstrap_settings, load_and_score, truncation_of_test_split
from diffusionret.pipeline.paths import Paths
params = load_params('params.yaml')
paths = Paths(Path.cwd(), params.data)
cell = load_and_score('synthetic', 'synthetic-shift', params, paths)
boot = bootstrap_settings(params)
metrics, _, ranks = cell_rows(cell, params.postprocess, chunk_size=params.eval.chunk_size,
                              faithful_msvd_grouping=params.eval.faithful_msvd_grouping, bootstrap=boot)
metrics.update(ood_metrics(cell.ood)[0])
metrics.update(shift_metrics(ranks, id_ranks(cell.ood, params.eval.chunk_size), cell.ood.same_queries, boot,
                             cell.caption_video, cell.ood.id_caption_video))
metrics.update(cell_ties(cell.stage1, cell.sentence, cell.captions))
metrics.update(truncation_of_test_split(paths.features('synthetic', 'synthetic-shift')))
print(json.dumps(metrics))
"""
    again = json.loads(run([sys.executable, "-c", script], work, env).stdout.strip().splitlines()[-1])
    stored = json.loads((work / "eval" / "synthetic__synthetic-shift" / "metrics.json").read_text())
    stored.pop("protocol/selected_on_test")
    assert again == stored


def test_report_has_every_table_filled_from_the_runs(pipeline):
    work, env = pipeline
    text = (work / "reports" / "results.md").read_text()
    assert "### synthetic\n" in text and "### synthetic → synthetic-shift" in text
    metrics = json.loads((work / "eval" / "synthetic__synthetic-shift" / "metrics.json").read_text())
    tables = [block for block in text.split("\n\n") if block.startswith("| |") and "| Chance" in block]
    assert len(tables) == 3  # in-distribution synthetic, OOD synthetic -> synthetic-shift / -textshift
    for table in tables:
        rows = table.splitlines()[2:]
        assert len(rows) == 7 and not any("n/a" in row for row in rows)  # 6 rows + chance, all measured
    ood_table = tables[1].splitlines()
    rerank_row = next(line for line in ood_table if line.startswith("| + diffusion re-ranking"))
    want = (f"{metrics['t2v_rerank/R1']:.1f} ± {metrics['t2v_rerank/R1_std']:.1f} "
            f"[{metrics['t2v_rerank/R1_ci_low']:.1f}, {metrics['t2v_rerank/R1_ci_high']:.1f}]")
    assert rerank_row.split("|")[2].strip() == want
    grid = text.split("t2v R@1, stage 1:\n\n", 1)[1].split("\n\n")[0]
    trained_row = next(line for line in grid.splitlines() if line.startswith("| synthetic |"))
    assert [cell.strip() for cell in trained_row.strip("|").split("|")][2] == (
        f"{metrics['t2v/R1']:.1f} [{metrics['t2v/R1_ci_low']:.1f}, {metrics['t2v/R1_ci_high']:.1f}]")
    differences = text.split("### synthetic → synthetic-shift", 1)[1].split("Differences to stage 1:\n\n", 1)[1]
    delta_row = next(line for line in differences.split("\n\n")[0].splitlines() if line.startswith("| + diffusion"))
    assert delta_row.split("|")[2].strip().strip("*").startswith(f"{metrics['t2v_rerank/R1_delta']:+.1f} [")
    assert "Shift: this cell minus in-distribution" in text and "unpaired" in text
    level = yaml.safe_load((work / "params.yaml").read_text())["eval"]["ci_level"]
    for cell in CELLS:  # the diagnose stage records the level of its paired CI; the report's header names it
        assert json.loads((work / "eval" / cell / "diagnostics.json").read_text())["bootstrap"]["level"] == level
    assert f"generator − stage 1 [{100 * level:g}% CI, paired]" in text.split("## Diagnostics", 1)[1]
    detection = text.split("## Out-of-distribution query detection", 1)[1].split("\nt2v:\n\n", 1)[1]
    detection = detection.split("\n\n")[0].splitlines()
    assert len(detection) == 2 + len(OOD_SCORE_NAMES) + 1  # header, rule, one row per score, random abstention
    msp = next(line for line in detection if line.startswith("| s1_msp |"))
    values = [cell.strip().strip("*") for cell in msp.strip("|").split("|")][2:]
    assert len(values) == 4 * len(OOD_CELLS)  # AUROC / AUPR / FPR95 / AURC per OOD cell
    assert values[0] == f"{metrics['ood_detect/s1_msp/auroc']:.3f}"
    assert values[3] == f"{metrics['ood_detect/s1_msp/aurc']:.3f}"
    figures = sorted(path.name for path in (work / "reports" / "figures").glob("*.png"))
    assert figures == sorted([f"{cell}_{kind}.png" for cell in CELLS for kind in ("recall", "ranks")]
                             + [f"{cell}_ood_{d}.png" for cell in OOD_CELLS for d in ("t2v", "v2t")]
                             + ["synthetic_losses.png"])
    plots = json.loads(run(["dvc", "plots", "show", "--json", "-o", str(work / "dvc_plots")], work, env).stdout)
    images = {name for name, entries in plots["data"].items() if entries[0]["type"] == "image"}
    assert images == {f"reports/figures/{name}" for name in figures}
    assert "plots/synthetic/disc_loss.csv" in plots["data"]


def test_mlflow_holds_runs_with_loss_curves_and_eval_children(pipeline):
    work, env = pipeline
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("diffusionret/synthetic")
    runs = client.search_runs([experiment.experiment_id])
    by_stage = {}
    for found in runs:
        by_stage.setdefault(found.data.tags.get("stage"), []).append(found)
    disc = by_stage["disc"][0]
    curve = client.get_metric_history(disc.info.run_id, "loss/contrastive")
    assert [point.step for point in curve] == list(range(20, 241, 20))
    gen = by_stage["gen"][0]
    assert gen.data.tags["mlflow.parentRunId"] == disc.info.run_id
    assert len(client.get_metric_history(gen.info.run_id, "loss/generative")) == 6
    cells = {}
    for found in by_stage["evaluate"]:  # one child run per (cell, postprocess)
        key = (found.data.tags["eval_benchmark"], found.data.tags["postprocess"])
        assert key not in cells, f"two evaluation runs for {key}"
        cells[key] = found
    assert set(cells) == {(bench, post) for bench in ("synthetic", "synthetic-shift", "synthetic-textshift")
                          for post in ("none", "qbnorm", "dsl")}
    for (bench, post), found in cells.items():
        tags = found.data.tags
        assert tags["ood"] == str(bench != "synthetic").lower() and tags["train_benchmark"] == "synthetic"
        assert tags["transductive"] == str(post == "dsl").lower() and tags["selection"] == "val"
        assert tags["mlflow.parentRunId"] == disc.info.run_id
        metrics = json.loads((work / "eval" / f"synthetic__{bench}" / "metrics.json").read_text())
        assert found.info.run_name == f"→ {bench} · {post}"
        for name, value in found.data.metrics.items():  # metrics.json's values, the post-processing suffix dropped
            if name.startswith("diagnostics/"):  # the diagnose stage's, logged to the cell's postprocess=none run
                assert post == "none"
                continue
            assert metrics[file_metric_key(name, post)] == pytest.approx(value), name
    assert "t2v/R1" in cells[("synthetic", "none")].data.metrics
    assert "diagnostics/t2v/top1_colour" in cells[("synthetic", "none")].data.metrics  # the diagnose stage's
    assert "v2t_rerank/R1_std" in cells[("synthetic-shift", "qbnorm")].data.metrics
    assert "t2v/MnR" in cells[("synthetic", "dsl")].data.metrics
    names = {post: set(cells[("synthetic", post)].data.metrics) for post in ("none", "qbnorm", "dsl")}
    assert names["qbnorm"] == names["dsl"]  # same columns in every post-processing run
    # and the columns of the none run, plus the post-processed stage-1 rows' paired differences to raw stage 1
    # (`t2v/R1_delta` in the qbnorm run is QB-Norm minus raw stage 1; the none run's stage-1 rows have none)
    assert {name for name in names["qbnorm"] if not name.startswith(("t2v/", "v2t/")) or "_delta" not in name} \
        < names["none"]
    assert "t2v/R1_delta_ci_low" in names["qbnorm"] and "t2v/R1_delta" not in names["none"]
    in_distribution = json.loads((work / "eval" / "synthetic__synthetic" / "metrics.json").read_text())
    assert {key.removeprefix("test/"): value for key, value in disc.data.metrics.items()
            if key.startswith("test/")} == pytest.approx({key: in_distribution[key] for key in headline_keys()})
    for bench in ("synthetic-shift", "synthetic-textshift"):  # OOD detection: the none run, with histograms
        assert "ood_detect/s1_msp/auroc" in cells[(bench, "none")].data.metrics
        assert "ood_detect_v2t/gen_neg_spread/fpr95" in cells[(bench, "none")].data.metrics
        assert not any(key.startswith("ood_detect") for key in cells[(bench, "qbnorm")].data.metrics)
        histograms = {item.path for item in client.list_artifacts(cells[(bench, "none")].info.run_id, "ood_detect")}
        assert histograms == {f"ood_detect/synthetic__{bench}_ood_{d}.png" for d in ("t2v", "v2t")}
    logged = {item.path for item in client.list_artifacts(disc.info.run_id, "report")}
    assert "report/results.md" in logged and "report/figures" in logged


def test_trained_model_beats_the_untrained_one(pipeline):
    """Same architecture, same test set: the trained extractor ranks the right video far better."""
    work, env = pipeline
    max_words = yaml.safe_load((work / "params.yaml").read_text())["benchmarks"]["synthetic"]["max_words"]
    script = f"""
import json, numpy as np, torch
from pathlib import Path
from diffusionret.data.frames import load_frame_cache
from diffusionret.data.records import load_annotations
from diffusionret.evaluation.metrics import retrieval_metrics
from diffusionret.features.encode import encode_captions, encode_videos
from diffusionret.model.checkpoint import load_extractor
from diffusionret.model.extractor import FeatureExtractor
from diffusionret.model.tokenizer import load_tokenizer, tokenize
work = Path({str(work)!r})
trained, meta = load_extractor(work / 'models/synthetic/disc')
torch.manual_seed(0)
untrained = FeatureExtractor(type(trained.backbone.clip)(trained.backbone.clip.config), temporal=meta['model']['temporal'],
                             temporal_layers=meta['model']['temporal_layers'], head=meta['model']['head'])
annotations = load_annotations(work / 'data/frames/synthetic/annotations/test.json')
cache = load_frame_cache(work / 'data/frames/synthetic')
ids, mask = tokenize(load_tokenizer(work / 'models/synthetic/disc/tokenizer'), annotations.captions, {max_words})
rows = np.array([cache.row_of[v] for v in annotations.video_ids])
out = {{}}
for name, model in (('trained', trained), ('untrained', untrained)):
    scores = model.similarity(encode_captions(model, ids, mask, 64), encode_videos(model, cache.frames, cache.mask, rows, 64))
    out[name] = retrieval_metrics(scores.detach().numpy(), np.asarray(annotations.caption_video), chunk_size=16)['t2v']
print(json.dumps(out))
"""
    result = run([sys.executable, "-c", script], work, env)
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    # 32 test videos: a random ranking has MnR 16.5. The trained model must be clearly better.
    assert metrics["trained"]["MnR"] < metrics["untrained"]["MnR"] - 3, metrics
    assert metrics["trained"]["R5"] > metrics["untrained"]["R5"], metrics
    reported = json.loads((work / "eval/synthetic__synthetic/metrics.json").read_text())
    assert reported["t2v/MnR"] == pytest.approx(metrics["trained"]["MnR"], abs=0.1)


def test_changing_a_training_param_reruns_training_and_evaluation_only(pipeline):
    work, env = pipeline
    params_path = work / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["train"]["lr"] = 1e-3
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = json.loads(run(["dvc", "status", "--json"], work, env).stdout)
    finally:
        params_path.write_text(original)
    changed = set(status)
    assert "train_disc@synthetic" in changed
    assert not any(name.startswith("preprocess") for name in changed), changed
    # download re-checks the raw files on every repro; that is its only reason to appear here
    assert all(status[name] == ["always changed"] for name in changed if name.startswith("download")), status


def test_changing_a_postprocess_param_reruns_only_evaluation(pipeline):
    work, env = pipeline
    params_path = work / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["postprocess"]["qbnorm_beta"] = 10.0
    params["eval"]["num_samples"] = 3
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = json.loads(run(["dvc", "status", "--json"], work, env).stdout)
    finally:
        params_path.write_text(original)
    cells = ("synthetic-synthetic", "synthetic-synthetic-shift", "synthetic-synthetic-textshift")
    # evaluation and the diagnostics that re-run its re-ranking; nothing trained again
    assert {name for name in status if not name.startswith("download")} == {
        f"{stage}@{cell}" for stage in ("evaluate", "diagnose") for cell in cells}, status


def test_second_repro_reruns_only_the_download_check(pipeline):
    """download is always_changed (it re-checks the raw files); its manifest comes out byte-identical, so every
    later stage stays cached."""
    import re

    work, env = pipeline
    manifests = {p: p.read_bytes() for p in (work / "data" / "manifests").glob("*.json")}
    out = run(["dvc", "repro"], work, env).stdout
    ran = re.findall(r"Running stage '([^']+)'", out)
    assert ran and all(name.startswith("download@") for name in ran), out
    assert {p: p.read_bytes() for p in manifests} == manifests
