"""Cost of mined negatives in stage 2: the one-off stage-1 top-k over the training gallery, and a training step with
mined lists vs the official in-batch lists, timed side by side (alternating) on the cached features.

    .venv/bin/python benchmarks/stage2_mined_vs_batch.py [--benchmark synthetic] [--steps 30]

Needs the default's data/features/<benchmark>/<benchmark>/ and models/<benchmark>/disc (after `dvc repro`).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from diffusionret.config import load_params
from diffusionret.data.batches import global_batch_indices
from diffusionret.features.cache import load_split_features, video_keys
from diffusionret.method.diffusion import create_diffusion
from diffusionret.method.objectives import GenerationObjective
from diffusionret.model.checkpoint import load_extractor
from diffusionret.model.denoiser import Generator
from diffusionret.pipeline.paths import Paths
from diffusionret.pipeline.train_gen import feature_batch, mined_batch, mined_lists


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="synthetic")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--num-negatives", type=int, default=31)
    parser.add_argument("--top-k", type=int, default=48)
    args = parser.parse_args()
    root = Path.cwd()
    params = load_params(root / "params.yaml")
    paths = Paths(root, params.data)
    features = load_split_features(paths.features(args.benchmark, args.benchmark), "train",
                                   params.data.features_loading)
    extractor, _ = load_extractor(paths.disc_model(args.benchmark))
    extractor.requires_grad_(False)
    keys = video_keys(features.annotations)
    mined = dataclasses.replace(params.train_gen, negatives="mined", num_negatives=args.num_negatives,
                                mined_top_k=args.top_k)
    batch_settings = dataclasses.replace(params.train_gen, negatives="batch", num_negatives=63)
    start = time.perf_counter()
    top_k = mined_lists(extractor, features, keys, mined, params.eval.chunk_size)
    mining = time.perf_counter() - start
    width = int(features.text.sentence.shape[-1])
    diffusion = create_diffusion(params.diffusion.steps, params.diffusion.schedule)
    seconds = {"batch": 0.0, "mined": 0.0}
    for step in range(args.steps):
        for name, settings in (("batch", batch_settings), ("mined", mined)):
            generator = Generator(width, seed=0)
            objective = GenerationObjective(generator, diffusion, extractor, settings, torch.Generator().manual_seed(0))
            begin = time.perf_counter()
            indices = global_batch_indices(len(keys), settings.global_batch, 0, step)
            batch = feature_batch(features, keys, indices)
            if name == "mined":
                batch.update(mined_batch(features, keys, indices, indices, top_k, settings.num_negatives, 0, step))
            objective.backward_step(batch)
            seconds[name] += time.perf_counter() - begin
    print(f"stage-1 top-{args.top_k} of {len(keys)} captions x {len(features.video)} videos: {mining:.1f} s")
    for name, total in seconds.items():
        print(f"{name}: {args.steps / total:.1f} steps/s")
    print(f"mined / batch step time: {seconds['mined'] / seconds['batch']:.2f}")


if __name__ == "__main__":
    main()
