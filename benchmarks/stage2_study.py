"""Stage-2 study: does the generator rank a query's top-k better than stage 1, and does re-ranking gain?

For the trained benchmark's val and test splits (cached features, the stage-1 and stage-2 checkpoints under
models/<benchmark>/), both directions, one DDIM draw (eval.seed):
  - stage-1 R@1;
  - generator-only R@1 within the top-k: the candidate with the largest final x0_hat, ties broken at random
    (counted in expectation: a target tied with m others at the top counts 1 / (m + 1)); a query whose target is
    outside the top-k counts as a miss, so this is directly comparable with stage 1's R@1;
  - re-ranked R@1 and the re-ranked minus stage-1 R@1 with a paired bootstrap 95% CI over queries (numpy).

    .venv/bin/python benchmarks/stage2_study.py --benchmark synthetic [--train -S train_gen.key=value ...]

--train first runs the train_gen stage with the overrides (it writes models/<benchmark>/gen); the overrides also
apply to the measurement (eval.* keys). Prints one JSON line per split and direction, and appends it, tagged
with --tag, to --out (a JSON-lines file).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from diffusionret.config import params_from_dict, split_override
from diffusionret.evaluation.metrics import retrieval_ranks
from diffusionret.evaluation.scoring import score_queries
from diffusionret.evaluation.within_topk import direction_targets, generator_top1_hits
from diffusionret.features.cache import load_split_features
from diffusionret.method.diffusion import create_diffusion
from diffusionret.model.checkpoint import load_extractor, load_generator
from diffusionret.pipeline.paths import Paths


def paired_bootstrap(delta: np.ndarray, resamples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% percentile CI of mean(delta) over queries resampled with replacement."""
    rng = np.random.default_rng(seed)
    means = delta[rng.integers(0, len(delta), size=(resamples, len(delta)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def measure(params, paths: Paths, name: str, split: str, gen_dir: Path) -> list[dict]:
    from diffusionret.pipeline.evaluate import rerank_settings

    features = load_split_features(paths.features(name, name), split, params.data.features_loading)
    extractor, _ = load_extractor(paths.disc_model(name))
    generator, meta = load_generator(gen_dir)
    diffusion = create_diffusion(params.diffusion.steps, params.diffusion.schedule)
    settings = rerank_settings(params, meta)
    settings = type(settings)(**{**settings.__dict__, "seeds": (params.eval.seed,)})
    caption_video = np.asarray(features.annotations.caption_video)
    rows = []
    for direction in ("t2v", "v2t"):
        scores = score_queries(extractor.similarity, features.text, features.video, direction=direction,
                               query_block=params.eval.chunk_size, generator=generator, diffusion=diffusion,
                               rerank=settings)
        targets = direction_targets(caption_video, len(features.video), direction)
        stage1 = retrieval_ranks(scores.stage1.numpy(), targets) == 0
        draw = scores.draws[0]
        reranked = retrieval_ranks(draw.scores.numpy(), targets) == 0
        generator_hits = generator_top1_hits(draw.x0_hat, draw.topk_indices, targets)
        top = draw.x0_hat.numpy()
        clamp_ties = float(np.mean([(row == row.max()).sum() > 1 for row in top]))
        delta = reranked.astype(float) - stage1.astype(float)
        low, high = paired_bootstrap(delta * 100)
        rows.append({"split": split, "direction": direction, "queries": len(targets),
                     "stage1_R1": 100 * stage1.mean(), "generator_R1_topk": 100 * generator_hits.mean(),
                     "rerank_R1": 100 * reranked.mean(), "delta_R1": 100 * delta.mean(),
                     "delta_ci": [low, high], "top1_tied_rows": 100 * clamp_ties,
                     "p_max_mean": float(draw.probabilities.max(dim=1).values.mean()),
                     "temperature": settings.temperature, "alpha": settings.alpha})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", default="synthetic")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--train", action="store_true", help="run train_gen with the overrides first")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", default="data/stage2_study.jsonl")
    args = parser.parse_args()
    root = Path.cwd()
    data = yaml.safe_load((root / "params.yaml").read_text())
    for override in args.overrides:
        keys, value = split_override(override)
        node = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    params = params_from_dict(data)
    paths = Paths(root, params.data)
    seconds = None
    if args.train:
        from diffusionret.pipeline.train_gen import train_gen

        start = time.perf_counter()
        train_gen(args.benchmark, params, paths, root)
        seconds = time.perf_counter() - start
    meta = json.loads((paths.gen_model(args.benchmark) / "model.json").read_text())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for split in ("val", "test"):
        for row in measure(params, paths, args.benchmark, split, paths.gen_model(args.benchmark)):
            row.update({"tag": args.tag, "overrides": args.overrides, "train_seconds": seconds,
                        "selected": meta.get("selected")})
            print(json.dumps(row))
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
