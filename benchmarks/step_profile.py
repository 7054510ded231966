"""Where a stage-1 training step's time goes: the parts of one step of the default model, timed in one run.

Builds the extractor and optimiser of params.yaml (model, train) on the preprocessed synthetic frame cache and
times, per step: drawing and loading the batch (random and neighbour samplers), forward, backward, gradient
clipping, optimiser + scheduler, EMA update. Prints milliseconds per part and each part's share of the step.

    .venv/bin/python benchmarks/step_profile.py [--steps 20 --threads 1 --frames data/frames/synthetic]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from diffusionret.config import load_params
from diffusionret.data.batches import StepBatchSampler, global_batch_indices
from diffusionret.data.datasets import CaptionVideoDataset
from diffusionret.data.frames import load_frame_cache
from diffusionret.data.neighbours import caption_neighbours, neighbour_batch_indices
from diffusionret.data.records import load_annotations
from diffusionret.features.encode import split_rows
from diffusionret.method.objectives import ContrastiveObjective
from diffusionret.model.extractor import build_feature_extractor
from diffusionret.model.tokenizer import tokenize, train_bpe_tokenizer
from diffusionret.pipeline.runs import make_optimizer
from diffusionret.training.optim import ModelEMA

PARTS = ("data", "forward", "backward", "clip", "optimiser", "ema")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--frames", type=Path, default=Path("data/frames/synthetic"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(Path("params.yaml"))
    settings, model = params.train, params.model
    annotations = load_annotations(args.frames / "annotations" / "train.json")
    cache = load_frame_cache(args.frames)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = train_bpe_tokenizer(annotations.captions, Path(folder), model.tokenizer_vocab_size)
    ids, mask = tokenize(tokenizer, annotations.captions, params.benchmark("synthetic").max_words)  # (C, L)
    torch.manual_seed(0)
    extractor = build_feature_extractor(
        model.backbone, temporal=model.temporal, temporal_layers=model.temporal_layers, head=model.head,
        frame_feature=model.frame_feature, frame_grid=model.frame_grid, vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    optimizer, scheduler = make_optimizer(settings, extractor, extractor.backbone.clip)
    caption_video = np.asarray(annotations.caption_video)
    dataset = CaptionVideoDataset(ids, mask, caption_video, split_rows(annotations, cache), cache.frames, cache.mask)
    objective, ema = ContrastiveObjective(extractor), ModelEMA(extractor, settings.ema_decay)
    parameters = [p for p in extractor.parameters() if p.requires_grad]
    batches = iter(DataLoader(dataset, batch_sampler=StepBatchSampler(len(dataset), settings.global_batch,
                                                                       settings.seed, 0, args.steps + 3)))
    totals = dict.fromkeys(PARTS, 0.0)
    for step in range(args.steps + 3):  # 3 warm-up steps
        marks = [time.perf_counter()]
        batch = next(batches)
        marks.append(time.perf_counter())
        loss = objective.loss(*objective.encode(batch))
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
        marks.append(time.perf_counter())
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        extractor.clamp_logit_scale_()
        marks.append(time.perf_counter())
        ema.update(extractor)
        marks.append(time.perf_counter())
        if step >= 3:
            for part, start, end in zip(PARTS, marks, marks[1:]):
                totals[part] += end - start
    step_time = sum(totals.values())
    for part in PARTS:
        print(f"{part:10s} {1000 * totals[part] / args.steps:8.1f} ms  {100 * totals[part] / step_time:5.1f}%")
    print(f"{'step':10s} {1000 * step_time / args.steps:8.1f} ms  ({args.steps / step_time:.2f} steps/s)")

    table = caption_neighbours(annotations.captions, settings.neighbour_pool)  # (C, pool), once per run
    draws = {"random": lambda s: global_batch_indices(len(dataset), settings.global_batch, settings.seed, s),
             "neighbours": lambda s: neighbour_batch_indices(table, caption_video, settings.global_batch,
                                                             settings.neighbour_group, settings.seed, s)}
    for name, draw in draws.items():
        start = time.perf_counter()
        for s in range(200):
            draw(s)
        print(f"batch draw ({name}): {1000 * (time.perf_counter() - start) / 200:.2f} ms")


if __name__ == "__main__":
    main()
