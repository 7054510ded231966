"""`train_gen` stage (stage 2, "generation"): train the two denoisers on cached frozen features.

The extractor is frozen (reference §6.1, issue #7 of the official repository), so the stage reads
data/features/<benchmark>/<benchmark>/ instead of running CLIP. Writes models/<benchmark>/gen/ and
plots/<benchmark>/gen_loss.csv; its MLflow run is a child of the stage-1 run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from diffusionret import tracking
from diffusionret.config import Params, batches_per_epoch, resolve_schedule
from diffusionret.data.batches import global_batch_indices, local_slice
from diffusionret.evaluation.metrics import recall_metrics
from diffusionret.evaluation.scoring import RerankSettings, score_queries
from diffusionret.features.cache import SplitFeatures, load_split_features, video_keys
from diffusionret.method.diffusion import GaussianDiffusion, create_diffusion
from diffusionret.method.objectives import GenerationObjective
from diffusionret.model.checkpoint import load_extractor, save_module
from diffusionret.model.denoiser import Generator
from diffusionret.model.extractor import FeatureExtractor
from diffusionret.pipeline.paths import Paths
from diffusionret.pipeline.runs import (NOT_AFFECTING_WEIGHTS, RunLogger, fingerprint, loop_settings, make_accelerator,
                                        make_optimizer, partition, seed_everything, stage_params)
from diffusionret.training.loop import run_training
from diffusionret.training.state import Progress, TrainingState


def feature_batch(features: SplitFeatures, keys: torch.Tensor, indices: np.ndarray) -> dict[str, torch.Tensor]:
    """Cached features (float32) of the captions at `indices` and of their videos; with
    `data.features_loading: disk` only these captions' token rows are read from disk (`TokenRows`)."""
    index = torch.as_tensor(indices, dtype=torch.long)
    videos = keys[index]
    text, video = features.text[index], features.video[videos]
    return {"text_tokens": text.tokens, "text_mask": text.mask, "sentence": text.sentence,
            "video_frames": video.frames, "video_mask": video.mask, "video_key": videos}


def rerank_val_r1(generator: Generator, diffusion: GaussianDiffusion, extractor: FeatureExtractor,
                  features: SplitFeatures, rerank: RerankSettings, chunk_size: int) -> float:
    """t2v R@1 on the validation split after diffusion re-ranking with one seed (the stage-2 selection metric)."""
    scores = score_queries(extractor.similarity, features.text, features.video, direction="t2v",
                           query_block=chunk_size, generator=generator, diffusion=diffusion, rerank=rerank)
    ranks = scores.ranks(np.asarray(features.annotations.caption_video), draw=0, chunk_size=chunk_size)
    return float(recall_metrics(ranks)["R1"])


def train_gen(name: str, params: Params, paths: Paths, repo_root: Path) -> dict:
    """Run stage 2 on benchmark `name`; resumable (state under data.partial_root)."""
    settings = params.train_gen
    accelerator = make_accelerator(params.train.precision)
    split = partition(accelerator, settings, "train_gen")
    features_dir = paths.features(name, name)
    train_features = load_split_features(features_dir, "train", params.data.features_loading)
    val_features = load_split_features(features_dir, params.eval.selection,  # "test" only for the official protocol
                                       params.data.features_loading)
    extractor, _ = load_extractor(paths.disc_model(name))
    extractor.requires_grad_(False)
    extractor.to(accelerator.device)
    keys = video_keys(train_features.annotations)
    num_items = train_features.annotations.num_captions
    settings = resolve_schedule(settings, num_items, "train_gen")  # epochs -> steps
    per_epoch = batches_per_epoch(num_items, settings.global_batch, "train_gen")
    width = int(train_features.text.sentence.shape[-1])

    seed_everything(params.train.seed)
    generator = Generator(width, frame_temperature=settings.frame_temperature, seed=params.train.seed)
    generator.to(accelerator.device)
    diffusion = create_diffusion(params.diffusion.steps, params.diffusion.schedule)
    noise = torch.Generator().manual_seed(params.train.seed)  # the same draws on every process
    objective = GenerationObjective(generator, diffusion, extractor, settings, noise, split)
    optimizer, scheduler = make_optimizer(settings, generator, None)

    def batches(start_step: int):
        for step in range(start_step, settings.steps):
            indices = global_batch_indices(num_items, settings.global_batch, params.train.seed, step)
            local = local_slice(indices, accelerator.process_index, accelerator.num_processes)
            yield {key: value.to(accelerator.device) for key, value in feature_batch(train_features, keys, local).items()}

    rerank = RerankSettings(k=params.eval.rerank_k, temperature=params.eval.rerank_temperature,
                            alpha=params.eval.rerank_alpha, seeds=(params.eval.seed,),
                            query_batch=params.eval.rerank_query_batch)

    def validate(module: Generator) -> float:
        return rerank_val_r1(module, diffusion, extractor, val_features, rerank, params.eval.chunk_size)

    def restore_noise(progress: Progress) -> None:
        if "noise_rng" in progress.extra:
            noise.set_state(torch.tensor(progress.extra["noise_rng"], dtype=torch.uint8))

    rerank_settings = {key: getattr(params.eval, key)
                       for key in ("rerank_k", "rerank_temperature", "rerank_alpha", "seed", "selection")}
    state = TrainingState(paths.partial("train_gen", name),
                          fingerprint(settings, params.diffusion, rerank_settings, {"seed": params.train.seed},
                                      exclude=NOT_AFFECTING_WEIGHTS))
    parent = tracking.read_run_reference(paths.disc_model(name) / "mlflow_run.json")
    logger = RunLogger(accelerator, params, repo_root, experiment=name, run_name=f"{name}/gen",
                       tags={"stage": "gen", "benchmark": name, "seed": params.train.seed,
                             "world_size": accelerator.num_processes, "global_batch": settings.global_batch,
                             "per_device_batch": settings.global_batch // accelerator.num_processes,
                             "micro_batches": split.micro_batches, "diffusion_steps": params.diffusion.steps,
                             "selection": params.eval.selection, "steps": settings.steps,
                             "steps_per_epoch": per_epoch, "git_commit": tracking.git_commit(repo_root)},
                       state=state, curve="loss/generative", parent_reference=parent)
    with logger:
        logger.log_params(stage_params(params, ("train.seed", "train.precision", "train_gen", "diffusion",
                                                "eval.rerank_k", "eval.rerank_temperature", "eval.rerank_alpha",
                                                "eval.seed", "eval.chunk_size", "eval.selection")))
        result = run_training(
            accelerator=accelerator, objective=objective, trainable=generator, optimizer=optimizer,
            scheduler=scheduler, batches=batches, validate=validate, settings=loop_settings(settings, per_epoch),
            state=state, log_metrics=logger.log_metrics, on_resume=restore_noise,
            extra_state=lambda: {**logger.extra_state(), "noise_rng": noise.get_state().tolist()},
            validation_metric="t2v_rerank_R1",
        )
        if accelerator.is_main_process:
            out_dir = paths.gen_model(name)
            save_module(result.best_state, out_dir, {
                "stage": "gen", "benchmark": name, "width": width,
                "frame_temperature": settings.frame_temperature,
                "diffusion": {"steps": params.diffusion.steps, "schedule": params.diffusion.schedule},
                "selected": {"source": result.best_source, "step": result.best_step,
                             "val_t2v_rerank_R1": result.best_value, "split": params.eval.selection},
                "steps_per_second": result.steps_per_second,
            })
            logger.finish(out_dir / "mlflow_run.json", summary={
                "selected/val_t2v_rerank_R1": result.best_value, "selected/step": result.best_step,
                "perf/final_steps_per_second": result.steps_per_second},
                tags={"selected_source": result.best_source})
            paths.plots(name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(state.log_csv, paths.plots(name) / "gen_loss.csv")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state.clear()
    return {"best_source": result.best_source, "best_value": result.best_value}
