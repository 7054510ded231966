"""`evaluate` stage: a model trained on A scored on B's test set (one cell of the OOD grid); files and MLflow.

Scoring is `evaluation.cell` (torch), rows and metrics `evaluation.rows` (numpy), key names `evaluation.names`.

Outputs in eval/<A>__<B>/: headline/{t2v,t2v_rerank,v2t,v2t_rerank}.json (the DVC metric: R@1/5/10, MdR, MnR of
stage 1 and re-ranked, both directions; one small file per row keeps `dvc metrics show` to five columns), metrics.json (every row, flat `<prefix>/<name>` keys), scores.npz (stage-1, re-ranked and bank
matrices: every post-processed row can be recomputed from them; OOD per-query scores
`ood__<direction>__<id|ood>__<score>`, `ood__t2v__id_correct`), ranks.npz (per-query ranks of every row and
draw, from which every CI and difference can be recomputed), curves.npz (R@K for every K, per row and draw,
for the report's plots), cell.json (what was evaluated, how, and the MLflow run ids). metrics.json also holds
`captions/test/{truncated,max_excess,mean_excess,longest,...}` (test captions max_words cut under the model's
tokenizer, counted by extract) and `ties/...` (exact ties between different captions' score rows and sentence
vectors, evaluation/ties.py).

MLflow: one child run per (cell, postprocess) under A's stage-1 run, named `→ <B> · <postprocess>` (led by the DVC
experiment's name during `dvc exp run`) and tagged eval_benchmark, ood, postprocess (none | qbnorm | dsl),
transductive, selection, dvc_experiment. A DVC experiment that re-uses a stage-1 model it did not train nests its
child runs under its own group run below that stage-1 run instead (`tracking.evaluation_parent`). Every child run
logs the SAME metric names (`t2v/R1`, `t2v_rerank/R1`, ...; the post-processing is the tag), so runs compare column
by column; OOD-detection and chance metrics go to the postprocess=none run. The in-distribution cell (A = B) also
logs its headline metrics to the parent (the stage-1 run, or the group run) as `test/<key>`, so that run's
collapsed row shows results.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffusionret import tracking
from diffusionret.config import Params, flatten
from diffusionret.data.truncation import flat_truncation
from diffusionret.evaluation.cell import CellScores, check_selection, draw_seeds, score_cell
from diffusionret.evaluation.metrics import DEFAULT_TIES
from diffusionret.evaluation.names import POSTPROCESSES, run_metric_name
from diffusionret.evaluation.rows import (cell_rows, faithful_v2t_defined, headline_files, headline_metrics, id_ranks,
                                         metrics_of_postprocess, ood_metrics, shift_metrics)
from diffusionret.evaluation.uncertainty import Bootstrap
from diffusionret.evaluation.scoring import RerankSettings
from diffusionret.evaluation.ties import cell_ties
from diffusionret.features.cache import load_split_features
from diffusionret.method.diffusion import create_diffusion
from diffusionret.model.checkpoint import load_extractor, load_generator, read_metadata
from diffusionret.pipeline.paths import Paths

ID_RANKS = "id__"  # ranks.npz keys of the in-distribution cell's rows, recomputed in an OOD cell
# the eval.* keys this stage reads (dvc.yaml declares the same list; not benchmarks / batch_size)
EVAL_KEYS = ("rerank_k", "rerank_temperature", "rerank_alpha", "rerank_query_batch", "seed", "chunk_size",
             "num_samples", "faithful_msvd_grouping", "selection", "rerank_from", "rerank_clamp_final",
             "bootstrap_resamples", "bootstrap_seed", "ci_level")


def rerank_temperature_alpha(params: Params, gen_meta: dict | None) -> tuple[float, float]:
    """(temperature, alpha) of the re-ranking softmax per eval.rerank_from: params (eval.rerank_temperature and
    eval.rerank_alpha), training (the generator's training 1/tau_g, eval.rerank_alpha) or val (the pair the
    train_gen stage chose on val, stored in the generator's model.json)."""
    settings = params.eval
    if settings.rerank_from == "params":
        return settings.rerank_temperature, settings.rerank_alpha
    if gen_meta is None:
        raise ValueError(f"eval.rerank_from={settings.rerank_from} reads the generator's model.json; none given")
    if settings.rerank_from == "training":
        return float(gen_meta["loss_temperature_inv"]), settings.rerank_alpha
    chosen = gen_meta.get("selected", {}).get("rerank")
    if not chosen:
        raise ValueError("eval.rerank_from=val but the generator's model.json holds no re-ranking chosen on val; "
                         "set train_gen.rerank_temperatures and train_gen.rerank_alphas and re-run train_gen")
    return float(chosen["temperature"]), float(chosen["alpha"])


def rerank_settings(params: Params, gen_meta: dict | None = None) -> RerankSettings:
    """eval.rerank_*, the draws' seeds (eval.seed + i, eval.num_samples of them), and from the generator's
    metadata the temperature/alpha (`rerank_temperature_alpha`) and the last DDIM step (its min_timestep)."""
    settings = params.eval
    temperature, alpha = rerank_temperature_alpha(params, gen_meta)
    return RerankSettings(k=settings.rerank_k, temperature=temperature, alpha=alpha,
                          seeds=draw_seeds(settings.seed, settings.num_samples),
                          query_batch=settings.rerank_query_batch, clamp_final=settings.rerank_clamp_final,
                          stop_step=int((gen_meta or {}).get("min_timestep", 0)))


def load_and_score(trained: str, evaluated: str, params: Params, paths: Paths) -> CellScores:
    """Read the cell's features and checkpoints, check how they were made, and score the cell."""
    loading = params.data.features_loading
    test = load_split_features(paths.features(trained, evaluated), "test", loading)
    # the querybank's source: only its qbnorm_bank_size rows are read, so the training split stays on disk
    train = load_split_features(paths.features(trained, trained), "train", "disk")
    extractor, disc_meta = load_extractor(paths.disc_model(trained))
    generator, gen_meta = load_generator(paths.gen_model(trained))
    settings, post = params.eval, params.postprocess
    check_selection(settings.selection, trained, {"disc": disc_meta, "gen": gen_meta})
    trained_with = gen_meta["diffusion"]
    if (trained_with["steps"], trained_with["schedule"]) != (params.diffusion.steps, params.diffusion.schedule):
        raise ValueError(f"the generator of `{trained}` was trained with diffusion {trained_with} but params ask "
                         f"for steps={params.diffusion.steps}, schedule={params.diffusion.schedule}; evaluate "
                         f"with the training values or re-run train_gen")
    diffusion = create_diffusion(params.diffusion.steps, params.diffusion.schedule)
    in_dist = load_split_features(paths.features(trained, trained), "test", loading) if trained != evaluated else None
    return score_cell(extractor, generator, diffusion, test, train, rerank=rerank_settings(params, gen_meta),
                      chunk_size=settings.chunk_size, bank_size=post.qbnorm_bank_size,
                      bank_seed=post.qbnorm_bank_seed, in_dist=in_dist)


def bootstrap_settings(params: Params) -> Bootstrap:
    """eval.bootstrap_resamples, eval.bootstrap_seed and eval.ci_level."""
    settings = params.eval
    return Bootstrap(resamples=settings.bootstrap_resamples, seed=settings.bootstrap_seed, level=settings.ci_level)


def save_ranks(path: Path, ranks: dict[str, np.ndarray], cell: CellScores) -> None:
    """ranks.npz: per-query 0-based ranks of every row (layout in the README, "Per-query ranks")."""
    np.savez_compressed(path, **ranks, caption_video=cell.caption_video, seeds=np.asarray(cell.seeds),
                        **({} if cell.ood is None else {f"{ID_RANKS}caption_video": cell.ood.id_caption_video}))


def write_json(path: Path, values: dict) -> None:
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def describe_cell(trained: str, evaluated: str, cell: CellScores, metrics: dict[str, float], params: Params,
                  parent: dict, rerank: RerankSettings | None = None) -> dict:
    """cell.json: what was evaluated, how (draws, ties, bank, post-processing, re-ranking), and where it went."""
    settings, post = params.eval, params.postprocess
    rerank = rerank or rerank_settings(params)
    return {
        "trained": trained, "evaluated": evaluated, "ood": trained != evaluated,
        "source": params.benchmark(evaluated).source,
        "selection": settings.selection, "num_samples": settings.num_samples, "seeds": list(cell.seeds),
        "bootstrap": {"resamples": settings.bootstrap_resamples, "seed": settings.bootstrap_seed,
                      "level": settings.ci_level, "unit": "query (t2v: caption, v2t: video)"},
        "ties": DEFAULT_TIES, "faithful_msvd_grouping": settings.faithful_msvd_grouping,
        "faithful_v2t": settings.faithful_msvd_grouping and faithful_v2t_defined(cell.caption_video, cell.num_videos),
        "num_queries": int(cell.stage1.shape[0]), "num_videos": cell.num_videos,
        "bank": {"captions": int(len(cell.bank_captions)), "videos": int(len(cell.bank_videos)),
                 "source": f"{trained}/train"},
        "postprocess": flatten(post), "rerank": {"k": settings.rerank_k, "temperature": rerank.temperature,
                                                 "alpha": rerank.alpha, "from": settings.rerank_from,
                                                 "clamp_final": rerank.clamp_final, "stop_step": rerank.stop_step},
        "diffusion": flatten(params.diffusion), "parent_run": parent, "mlflow_runs": {},
        "ood_detect": None if cell.ood is None else {
            "seconds": round(cell.ood.seconds, 2), "gallery": f"{trained}/test",
            "id_queries": f"{trained}/test", "ood_queries": f"{evaluated}/test",
            "draws": len(cell.seeds), "scores": sorted({key.split("/")[1] for key in metrics
                                                        if key.startswith("ood_detect/") and key.count("/") == 2})},
    }


def log_runs(trained: str, evaluated: str, cell: CellScores, metrics: dict[str, float], params: Params,
             parent: dict, out_dir: Path, repo_root: Path, head: str = "") -> dict:
    """One MLflow child run per post-processing (same metric names in each), under `tracking.evaluation_parent`;
    returns {"mlflow_parent": that run's id, "mlflow_runs": postprocess -> run id}."""
    settings, post = params.eval, params.postprocess
    ood = trained != evaluated
    tracking.configure(params.tracking.tracking_uri, params.tracking.artifact_root, repo_root)
    # the stage-1 run, or this DVC experiment's group run under it when the experiment re-uses a model it did not
    # train (so another experiment's runs are never mixed with, nor overwritten by, this one's)
    nest_under = tracking.evaluation_parent(parent)
    run_ids = {}
    for postprocess in POSTPROCESSES:
        tags = {"stage": "evaluate", "train_benchmark": trained, "eval_benchmark": evaluated,
                "ood": str(ood).lower(), "postprocess": postprocess,
                "transductive": str(postprocess == "dsl").lower(), "selection": settings.selection,
                "protocol": "official: checkpoints selected on test" if settings.selection == "test"
                else "checkpoints selected on val", "num_samples": settings.num_samples,
                "faithful_msvd_grouping": str(settings.faithful_msvd_grouping).lower(), "split": "test",
                "seed": params.train.seed, "head": head,
                "dvc_stage": f"evaluate@{trained}-{evaluated}", "git_commit": tracking.git_commit(repo_root)}
        with tracking.start_run(experiment=parent["experiment"], tags=tags, parent_run_id=nest_under,
                                run_name=f"→ {evaluated} · {postprocess}"):
            tracking.log_params({**{f"eval.{key}": getattr(settings, key) for key in EVAL_KEYS},
                                 **{f"postprocess.{key}": value for key, value in flatten(post).items()},
                                 "bank.captions": len(cell.bank_captions), "bank.videos": len(cell.bank_videos)})
            tracking.log_metrics({run_metric_name(key): value
                                  for key, value in metrics_of_postprocess(metrics, postprocess).items()})
            run_ids[postprocess] = tracking.active_run_id()
            if postprocess == "none":
                tracking.log_artifacts([out_dir / "metrics.json"])
    if not ood:  # the parent's collapsed row shows its in-distribution test results
        with tracking.start_run(experiment=parent["experiment"], run_name="", tags={}, resume_run_id=nest_under):
            tracking.log_metrics({f"test/{key}": value for key, value in headline_metrics(metrics).items()})
    return {"mlflow_parent": nest_under, "mlflow_runs": run_ids}


def truncation_of_test_split(features_dir: Path) -> dict[str, float]:
    """`captions/test/...`: the test captions max_words cut under the model's tokenizer (extract's info.json);
    empty for a feature cache written before extract counted them."""
    info_path = features_dir / "info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return flat_truncation({"test": info["truncation"]["test"]} if "test" in info.get("truncation", {}) else {},
                           "captions")


def evaluate_cell(trained: str, evaluated: str, params: Params, paths: Paths, repo_root: Path) -> dict:
    """Score, write headline/*.json, metrics.json, scores.npz, curves.npz, cell.json, and log to MLflow."""
    settings = params.eval
    cell = load_and_score(trained, evaluated, params, paths)
    boot = bootstrap_settings(params)
    metrics, curves, ranks = cell_rows(cell, params.postprocess, chunk_size=settings.chunk_size,
                                       faithful_msvd_grouping=settings.faithful_msvd_grouping, bootstrap=boot)
    metrics["protocol/selected_on_test"] = float(settings.selection == "test")
    metrics.update(cell_ties(cell.stage1, cell.sentence, cell.captions))
    metrics.update(truncation_of_test_split(paths.features(trained, evaluated)))
    ood_stored: dict[str, np.ndarray] = {}
    if cell.ood is not None:
        found, ood_stored = ood_metrics(cell.ood)
        metrics.update(found)
        in_dist = id_ranks(cell.ood, settings.chunk_size)
        metrics.update(shift_metrics(ranks, in_dist, cell.ood.same_queries, boot, cell.caption_video,
                                     cell.ood.id_caption_video))
        ranks.update({f"{ID_RANKS}{prefix}": value for prefix, value in in_dist.items()})
    out_dir = paths.evaluation(trained, evaluated)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_ranks(out_dir / "ranks.npz", ranks, cell)
    np.savez_compressed(out_dir / "scores.npz", stage1=cell.stage1, t2v_rerank=cell.t2v_rerank,
                        v2t_rerank=cell.v2t_rerank, bank_t2v=cell.bank_t2v, bank_t2v_rerank=cell.bank_t2v_rerank,
                        bank_v2t=cell.bank_v2t, bank_v2t_rerank=cell.bank_v2t_rerank,
                        bank_captions=cell.bank_captions, bank_videos=cell.bank_videos,
                        caption_video=cell.caption_video, seeds=np.asarray(cell.seeds), **ood_stored)
    np.savez_compressed(out_dir / "curves.npz", **curves)
    write_json(out_dir / "metrics.json", metrics)
    (out_dir / "headline").mkdir(exist_ok=True)
    for row, values in headline_files(metrics).items():
        write_json(out_dir / "headline" / f"{row}.json", values)
    parent = tracking.read_run_reference(paths.disc_model(trained) / "mlflow_run.json")
    used = rerank_settings(params, read_metadata(paths.gen_model(trained)))  # the temperature/alpha scored with
    description = describe_cell(trained, evaluated, cell, metrics, params, parent, used)
    head = read_metadata(paths.disc_model(trained))["model"]["head"]  # the stage-1 head: runs group by it
    description.update(log_runs(trained, evaluated, cell, metrics, params, parent, out_dir, repo_root, head))
    write_json(out_dir / "cell.json", description)
    return metrics
