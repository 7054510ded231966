"""`train_disc` stage (stage 1, "discrimination"): train the feature extractor with InfoNCE.

Writes models/<benchmark>/disc/ (weights of the better of raw/EMA on the validation split, metadata,
CLIP config, tokenizer, mlflow_run.json) and plots/<benchmark>/disc_loss.csv.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from diffusionret import tracking
from diffusionret.config import Params, batches_per_epoch, resolve_schedule
from diffusionret.data.batches import StepBatchSampler
from diffusionret.data.datasets import CaptionVideoDataset
from diffusionret.data.frames import FrameCache, load_frame_cache
from diffusionret.data.neighbours import caption_neighbours, warmed_up_batch_draw
from diffusionret.data.records import SplitAnnotations, load_annotations
from diffusionret.evaluation.metrics import recall_metrics
from diffusionret.evaluation.scoring import score_queries
from diffusionret.features.encode import encode_captions, encode_videos, split_rows
from diffusionret.method.objectives import ContrastiveObjective
from diffusionret.model.backbone import NAMED_CLIP_CONFIGS, resolve_backbone
from diffusionret.model.checkpoint import save_extractor
from diffusionret.model.estimator import load_estimator
from diffusionret.model.extractor import FeatureExtractor, build_feature_extractor
from diffusionret.model.tokenizer import load_tokenizer, tokenize, train_bpe_tokenizer
from diffusionret.pipeline.paths import Paths
from diffusionret.pipeline.runs import (NOT_AFFECTING_WEIGHTS, RunLogger, fingerprint, loop_settings, make_accelerator,
                                        make_optimizer, partition, seed_everything, stage_params)
from diffusionret.training.loop import run_training
from diffusionret.training.state import TrainingState


def prepare_tokenizer(backbone: str, vocab_size: int, train_captions, out_dir: Path, accelerator):
    """A from-scratch backbone gets a BPE trained on the training captions; a checkpoint brings its own."""
    if accelerator.is_main_process:
        if backbone in NAMED_CLIP_CONFIGS:
            train_bpe_tokenizer(train_captions, out_dir, vocab_size)
        else:
            load_tokenizer(resolve_backbone(backbone)).save_pretrained(str(out_dir))
    accelerator.wait_for_everyone()
    return load_tokenizer(out_dir)


def validation_r1(extractor: FeatureExtractor, annotations: SplitAnnotations, ids, mask, cache: FrameCache,
                  batch_size: int, chunk_size: int) -> float:
    """t2v R@1 of `extractor` on a validation split (the checkpoint-selection metric)."""
    text = encode_captions(extractor, ids, mask, batch_size)
    video = encode_videos(extractor, cache.frames, cache.mask, split_rows(annotations, cache), batch_size)
    scores = score_queries(extractor.similarity, text, video, direction="t2v", query_block=chunk_size)  # (C, V)
    ranks = scores.ranks(np.asarray(annotations.caption_video), chunk_size=chunk_size)
    return float(recall_metrics(ranks)["R1"])


def train_disc(name: str, params: Params, paths: Paths, repo_root: Path) -> dict:
    """Run stage 1 on benchmark `name`; resumable (state under data.partial_root)."""
    bench, settings = params.benchmark(name), params.train
    # HBI distils from the train_estimator stage's teacher: checked first (an error naming the file and the fix)
    estimator = load_estimator(paths.estimator(name), name) if params.model.head == "hbi" else None
    accelerator = make_accelerator(settings.precision)
    split = partition(accelerator, settings, "train")
    out_dir, plots_dir = paths.disc_model(name), paths.plots(name)
    train_ann = load_annotations(paths.annotations(name, "train"))
    settings = resolve_schedule(settings, train_ann.num_captions, "train")  # epochs -> steps
    per_epoch = batches_per_epoch(train_ann.num_captions, settings.global_batch, "train")
    selection = params.eval.selection  # "val" (held out); "test" reproduces the official protocol, tagged as such
    val_ann = load_annotations(paths.annotations(name, selection))
    cache = load_frame_cache(paths.frames(name))
    weights_fingerprint = fingerprint(params.model, settings, bench, {"image_size": params.preprocess.image_size},
                                      {"selection": params.eval.selection},
                                      *([{"estimator": estimator[1]}] if estimator else []),
                                      exclude=NOT_AFFECTING_WEIGHTS)
    state = TrainingState(paths.partial("train_disc", name), weights_fingerprint)

    tokenizer = prepare_tokenizer(params.model.backbone, params.model.tokenizer_vocab_size, train_ann.captions,
                                  out_dir / "tokenizer", accelerator)
    train_ids, train_mask = tokenize(tokenizer, train_ann.captions, bench.max_words)  # (C, L) each
    val_ids, val_mask = tokenize(tokenizer, val_ann.captions, bench.max_words)

    seed_everything(settings.seed)  # identical initial weights on every process
    # a from-scratch architecture takes the vocabulary of the BPE trained here; a checkpoint keeps its own
    vocabulary = (dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
                  if params.model.backbone in NAMED_CLIP_CONFIGS else {})
    extractor = build_feature_extractor(
        params.model.backbone, temporal=params.model.temporal, temporal_layers=params.model.temporal_layers,
        head=params.model.head, head_params=params.model.head_params(), frame_feature=params.model.frame_feature,
        frame_grid=params.model.frame_grid, **vocabulary,
    ).to(accelerator.device)
    if estimator is not None:  # a killed run resumes only with the same estimator (its record is fingerprinted)
        extractor.head.load_teacher(estimator[0])
    seed_everything(settings.seed * accelerator.num_processes + accelerator.process_index)
    optimizer, scheduler = make_optimizer(settings, extractor, extractor.backbone.clip)
    dataset = CaptionVideoDataset(train_ids, train_mask, np.asarray(train_ann.caption_video),
                                  split_rows(train_ann, cache), cache.frames, cache.mask,
                                  augment=settings.augment, augment_seed=settings.seed)

    draw = None
    if settings.batch_sampler == "neighbours":  # groups of TF-IDF caption neighbours, a pure function of the step
        neighbours = caption_neighbours(train_ann.captions, settings.neighbour_pool)  # (C, pool)
        draw = warmed_up_batch_draw(neighbours, np.asarray(train_ann.caption_video), settings.global_batch,
                                    settings.neighbour_group, settings.seed, settings.neighbour_share,
                                    settings.neighbour_from_step)

    def batches(start_step: int):
        sampler = StepBatchSampler(len(dataset), settings.global_batch, settings.seed, start_step, settings.steps,
                                   accelerator.process_index, accelerator.num_processes, draw=draw)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=settings.num_workers,
                            pin_memory=accelerator.device.type == "cuda")
        for batch in loader:
            yield {key: value.to(accelerator.device, non_blocking=True) for key, value in batch.items()}

    def validate(module: FeatureExtractor) -> float:
        return validation_r1(module, val_ann, val_ids, val_mask, cache, params.eval.batch_size,
                             params.eval.chunk_size)

    logger = RunLogger(accelerator, params, repo_root, experiment=name, run_name=f"{name}/disc",
                       tags={"stage": "disc", "benchmark": name, "seed": settings.seed, "head": params.model.head,
                             "augment": settings.augment,
                             "world_size": accelerator.num_processes, "global_batch": settings.global_batch,
                             "per_device_batch": settings.global_batch // accelerator.num_processes,
                             "micro_batches": split.micro_batches, "precision": settings.precision,
                             "selection": selection, "steps": settings.steps, "steps_per_epoch": per_epoch,
                             "train_videos": train_ann.num_videos, "train_pairs": train_ann.num_captions,
                             "git_commit": tracking.git_commit(repo_root)},
                       state=state, curve="loss/contrastive")
    with logger:
        logger.log_params(stage_params(params, (f"benchmarks.{name}", "preprocess", "model", "train",
                                                "eval.batch_size", "eval.chunk_size", "eval.selection")))
        result = run_training(
            accelerator=accelerator, objective=ContrastiveObjective(extractor, split), trainable=extractor,
            optimizer=optimizer, scheduler=scheduler, batches=batches, validate=validate,
            settings=loop_settings(settings, per_epoch), state=state, log_metrics=logger.log_metrics,
            after_step=extractor.clamp_logit_scale_, extra_state=logger.extra_state,
            validation_metric="t2v_R1",
        )
        if accelerator.is_main_process:
            metadata = {
                "stage": "disc", "benchmark": name,
                "model": {"backbone": params.model.backbone, "temporal": params.model.temporal,
                          "temporal_layers": params.model.temporal_layers, "head": params.model.head,
                          "head_params": params.model.head_params(),
                          "frame_feature": params.model.frame_feature, "frame_grid": params.model.frame_grid},
                "data": {"max_words": bench.max_words, "max_frames": bench.max_frames, "fps": bench.fps,
                         "image_size": params.preprocess.image_size},
                "selected": {"source": result.best_source, "step": result.best_step,
                             "val_t2v_R1": result.best_value, "split": selection},
                "steps": settings.steps, "epochs": settings.epochs,
                "train": {"videos": train_ann.num_videos, "pairs": train_ann.num_captions},
            }
            save_extractor(extractor, out_dir, metadata, state=result.best_state)
            logger.finish(out_dir / "mlflow_run.json", summary={
                "selected/val_t2v_R1": result.best_value, "selected/step": result.best_step},
                tags={"selected_source": result.best_source})
            plots_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(state.log_csv, plots_dir / "disc_loss.csv")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state.clear()  # outputs are written: a later run with the same params starts fresh
    return {"best_source": result.best_source, "best_value": result.best_value, "best_step": result.best_step}
