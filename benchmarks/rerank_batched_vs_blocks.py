"""Our diffusion re-ranking vs the official loop: 32-query blocks, the whole denoiser at every DDIM step.

Three variants, the same seeded start noise, the same top-k, outputs asserted equal:
  official  DDIM separately for each block of 32 queries, the full denoiser (frame pooling, projections,
            decoder) run at each of the T steps (official evaluation loop);
  batched   `--query-batch` queries per DDIM run (default 64 on a CPU, 1024 on a GPU), still the full
            denoiser at every step;
  ours      `rerank_t2v` with the same blocks, the step-independent part of the denoiser
            (`denoiser.condition`) computed once per block; each step runs only `denoiser.denoise`.
The ratios of wall times, measured in one run, are printed (official / ours is the headline).

    .venv/bin/python benchmarks/rerank_batched_vs_blocks.py                      # ViT-B/32 width, 256 queries
    .venv/bin/python benchmarks/rerank_batched_vs_blocks.py --queries 1000 --device cuda
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from diffusionret.method.diffusion import create_diffusion
from diffusionret.method.rerank import rerank_scores, rerank_t2v
from diffusionret.model.denoiser import Generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--videos", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--query-batch", type=int, default=None,
                        help="queries per DDIM run (default: 64 on a CPU, where cache-sized blocks win; 1024 on a GPU)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.query_batch is None:
        args.query_batch = 64 if device.type == "cpu" else 1024
    generator = torch.Generator().manual_seed(0)
    Q, V, T, D = args.queries, args.videos, args.frames, args.width
    scores = torch.randn(Q, V, generator=generator).to(device)  # (Q, V)
    sentence = torch.randn(Q, D, generator=generator).to(device)  # (Q, D)
    frames = torch.randn(V, T, D, generator=generator).to(device)  # (V, T, D)
    mask = torch.ones(V, T, dtype=torch.bool, device=device)
    denoiser = Generator(D, seed=0).t2v.to(device).eval()
    diffusion = create_diffusion(args.steps)

    def full_denoiser_every_step(rows: torch.Tensor, candidates: torch.Tensor):
        # what the official loop does: gather and pool the candidates' frames again at each DDIM step
        return lambda x_t, t: denoiser(x_t, t, sentence[rows], frames[candidates], mask[candidates])

    def timed(run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        output = run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return output, time.perf_counter() - start

    def official(query_batch: int) -> torch.Tensor:
        return rerank_scores(scores, full_denoiser_every_step, diffusion, k=args.k, seed=0,
                             query_batch=query_batch).scores

    def ours() -> torch.Tensor:
        return rerank_t2v(scores, sentence, frames, mask, denoiser, diffusion, k=args.k, seed=0,
                          query_batch=args.query_batch).scores

    with torch.no_grad():
        official(min(32, Q))  # warm-up
        ours()
        blocks, blocks_s = timed(lambda: official(32))
        batched, batched_s = timed(lambda: official(args.query_batch))
        fast, fast_s = timed(ours)
    torch.testing.assert_close(batched, blocks, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, blocks, rtol=1e-5, atol=1e-5)
    print(f"{Q} queries x top-{args.k} of {V} videos, width {D}, {T} frames, {args.steps} DDIM steps, "
          f"{args.device}, {torch.get_num_threads()} threads")
    print(f"  official: 32-query blocks, full denoiser every step: {blocks_s:8.2f} s")
    print(f"  batched ({min(args.query_batch, Q)} per run), full denoiser every step: {batched_s:8.2f} s")
    print(f"  ours: batched, condition once per run:              {fast_s:8.2f} s")
    print(f"  ratio official / ours: {blocks_s / fast_s:.1f}x   (batching alone: {blocks_s / batched_s:.1f}x, "
          f"condition once: {batched_s / fast_s:.1f}x)   outputs equal: yes")


if __name__ == "__main__":
    main()
