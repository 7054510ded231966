"""Search latency for 1k / 10k / 100k indexed videos: exact WTI vs. faiss pre-filter + WTI, with recall@10.

    .venv/bin/python benchmarks/search_latency.py                      # tiny default shapes (D=64, T=4, L=16)
    .venv/bin/python benchmarks/search_latency.py --width 512 --frames 12 --words 32 --sizes 1000 10000
    .venv/bin/python benchmarks/search_latency.py --index INDEX_DIR --queries-file queries.txt   # a real index

Random features (the default): video frame features ~ N(0, 1), each video 1..T valid frames; a random WTI head.
Each query is planted near one video (its tokens are that video's frames plus noise), so that retrieval has a
right answer and the exact top-10 is not noise. Latency is per query (one query per call, as the page and the
CLI issue them), median over the queries, after one warm-up call; stage 1 only (re-ranking costs the same for
both and is timed once on its own). recall@10 = |approximate top-10 & exact top-10| / 10, averaged over queries.
faiss-cpu is optional: without it only the exact column is measured.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from diffusionret.model.extractor import TextFeatures, VideoFeatures
from diffusionret.model.heads import WTIHead
from diffusionret.search.query import descending, head_chunk_size, query_slice, stage1_scores


def random_videos(count: int, frames: int, width: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame features (V, T, D) and masks (V, T) with 1..T valid frames."""
    features = torch.from_numpy(rng.standard_normal((count, frames, width), dtype=np.float32))
    valid = rng.integers(1, frames + 1, count)
    mask = torch.from_numpy(np.arange(frames)[None, :] < valid[:, None])
    return features * mask[..., None], mask


def planted_queries(videos: torch.Tensor, mask: torch.Tensor, count: int, words: int, noise: float,
                    rng: np.random.Generator) -> TextFeatures:
    """Queries whose tokens are frames of a random target video plus Gaussian noise."""
    tokens = torch.zeros(count, words, videos.shape[-1])  # (Q, L, D)
    text_mask = torch.zeros(count, words, dtype=torch.long)  # (Q, L)
    for q in range(count):
        target = int(rng.integers(len(videos)))
        valid = np.flatnonzero(mask[target].numpy())
        length = int(rng.integers(max(2, words // 3), words + 1))
        picks = rng.choice(valid, length)
        tokens[q, :length] = videos[target, picks] + noise * torch.from_numpy(
            rng.standard_normal((length, videos.shape[-1]), dtype=np.float32))
        text_mask[q, :length] = 1
    sentence = (tokens * text_mask[..., None]).sum(1) / text_mask.sum(1, keepdim=True)  # (Q, D)
    return TextFeatures(tokens=tokens, mask=text_mask, sentence=sentence)


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    value = function()
    return (time.perf_counter() - start) * 1e3, value


def measure(score_fn, text: TextFeatures, videos: torch.Tensor, mask: torch.Tensor, candidates: list[int],
            top: int = 10) -> dict:
    """Median per-query latency of exact and pre-filtered search, faiss build time and recall@10."""
    queries = text.tokens.shape[0]
    stage1_scores(score_fn, query_slice(text, 0), videos, mask)  # warm-up
    exact_ms, exact_top = [], []
    for q in range(queries):
        ms, scores = timed(lambda: stage1_scores(score_fn, query_slice(text, q), videos, mask)[0])
        exact_ms.append(ms)
        exact_top.append(set(descending(scores)[:top].tolist()))
    row = {"exact_ms": statistics.median(exact_ms)}
    try:
        from diffusionret.search.ann import FaissPrefilter

        row["build_s"], prefilter = timed(lambda: FaissPrefilter(videos.numpy(), mask.numpy()))
        row["build_s"] /= 1e3
    except RuntimeError:  # faiss is not installed
        return row
    for count in candidates:
        approx_ms, recall = [], []
        for q in range(queries):
            def search():
                pool = torch.from_numpy(prefilter.candidates(text.sentence[q:q + 1].numpy(), count)[0]).long()
                scores = stage1_scores(score_fn, query_slice(text, q), videos[pool], mask[pool])[0]
                return pool[descending(scores)[:top]]
            ms, found = timed(search)
            approx_ms.append(ms)
            recall.append(len(set(found.tolist()) & exact_top[q]) / top)
        row[f"faiss{count}_ms"] = statistics.median(approx_ms)
        row[f"faiss{count}_recall"] = float(np.mean(recall))
    return row


def rerank_ms(width: int, frames: int, k: int = 32, steps: int = 50, repeats: int = 5) -> float:
    """Median time of re-ranking one query's top-k (k, steps: the defaults) with a random generator."""
    from diffusionret.method.diffusion import create_diffusion
    from diffusionret.model.denoiser import Generator
    from diffusionret.method.rerank import rerank_t2v

    generator, diffusion = Generator(width, seed=0).eval(), create_diffusion(steps, "cosine")
    rng = np.random.default_rng(0)
    videos, mask = random_videos(k, frames, width, rng)
    sentence, scores = torch.randn(1, width), torch.randn(1, k)
    times = [timed(lambda: rerank_t2v(scores, sentence, videos, mask, generator.t2v, diffusion, k=k, seed=0))[0]
             for _ in range(repeats + 1)]
    return statistics.median(times[1:])


def real_index(index_dir: Path, queries_file: Path, candidates: list[int]) -> None:
    """recall@10 and latency of the pre-filter on a real index with real queries (text encoded by its model)."""
    from diffusionret.search.query import Searcher

    searcher = Searcher(index_dir)
    queries = [line.strip() for line in queries_file.read_text().splitlines() if line.strip()]
    text = searcher.encode_queries(queries)
    row = measure(searcher.model.extractor.similarity, text, searcher.frames, searcher.mask, candidates)
    print(f"real index {index_dir}: {searcher.num_videos} videos, {len(queries)} queries")
    print_table([(searcher.num_videos, row)], candidates)


def print_table(rows: list[tuple[int, dict]], candidates: list[int]) -> None:
    header = "| videos | exact WTI (ms/query) | faiss HNSW build (s) |"
    rule = "|---:|---:|---:|"
    for count in candidates:
        header += f" faiss top-{count} + WTI (ms/query) | recall@10 (top-{count}) |"
        rule += "---:|---:|"
    print(header)
    print(rule)
    for videos, row in rows:
        line = f"| {videos:,} | {row['exact_ms']:.1f} | " + (f"{row['build_s']:.1f} |" if "build_s" in row else "- |")
        for count in candidates:
            if f"faiss{count}_ms" in row:
                line += f" {row[f'faiss{count}_ms']:.1f} | {row[f'faiss{count}_recall']:.3f} |"
            else:
                line += " - | - |"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--words", type=int, default=16)
    parser.add_argument("--noise", type=float, default=1.0, help="token noise around the planted video's frames")
    parser.add_argument("--candidates", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index", type=Path, help="measure a real index instead (needs --queries-file)")
    parser.add_argument("--queries-file", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.index is not None:
        real_index(args.index, args.queries_file, args.candidates)
        return
    torch.manual_seed(args.seed)
    head = WTIHead(args.width, chunk_size=head_chunk_size(args.words, args.frames)).eval()  # as Searcher sets it

    def score_fn(text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
        return head(text.tokens, text.mask, text.sentence, video.frames, video.mask)

    rows = []
    with torch.no_grad():
        for size in args.sizes:
            rng = np.random.default_rng([args.seed, size])
            videos, mask = random_videos(size, args.frames, args.width, rng)
            text = planted_queries(videos, mask, args.queries, args.words, args.noise, rng)
            rows.append((size, measure(score_fn, text, videos, mask, [c for c in args.candidates])))
            print(f"  {size:,} videos done", flush=True)
        rerank = rerank_ms(args.width, args.frames)
    print(f"\nD={args.width}, T={args.frames}, L={args.words}, {args.queries} queries, torch threads "
          f"{torch.get_num_threads()}; re-ranking one query's top-32 (50 DDIM steps) adds {rerank:.0f} ms")
    print_table(rows, args.candidates)


if __name__ == "__main__":
    main()
