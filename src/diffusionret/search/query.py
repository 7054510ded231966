"""Rank the videos of an index for text queries (`diffusionret search`, the server's /api/search).

Per query (as the official evaluation):
1. stage 1: the extractor's similarity head (WTI) between the query's token features and every video's frame
   features. Exact search runs the head over all videos, `VIDEO_BLOCK` at a time. With `approximate=True` a faiss
   pre-filter (ann.py) picks `candidates` videos first and the head scores only those.
2. re-ranking (optional, on by default): `evaluation.scoring.score_queries` (evaluation's scoring path) draws x_T
   from `seed`, runs DDIM with the generator's
   t2v denoiser over the query's top-k, and adds alpha * softmax(x0_hat * temperature) to their stage-1 scores.
   Each query is re-ranked on its own with the same seed, so its result does not depend on the other queries of
   a batch. Since the added term is >= 0, the top-k stay above every other video. k = min(rerank_k, videos
   scored), so an approximate search re-ranks at most its candidates.
Ties keep the lower row (videos are stored sorted by path), in both stages.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from diffusionret.data.frames import sample_times
from diffusionret.evaluation.scoring import RerankSettings, ScoreFn, score_queries
from diffusionret.features.encode import encode_captions
from diffusionret.model.extractor import TextFeatures, VideoFeatures
from diffusionret.model.tokenizer import tokenize
from diffusionret.search.model import CheckpointMismatchError, Fingerprint, fingerprint_model, load_search_model
from diffusionret.search.store import MANIFEST, SearchIndexError, generation_dir, load_index

VIDEO_BLOCK = 8192  # videos per call of the similarity head (bounds the head's (V, T, 2D) weight-MLP activations)
QUERY_BLOCK = 64  # queries per call
HEAD_MEMORY = 256 << 20  # bytes of one (queries, videos, L, T) interaction chunk inside the head
DEFAULT_TOP = 10
DEFAULT_RERANK_K = 32  # eval.rerank_k of params.yaml
DEFAULT_CANDIDATES = 1000



@dataclass
class Hit:
    """One ranked video. `stage1_rank` is its rank under stage 1 alone (among the candidates when approximate)."""

    rank: int
    path: str
    score: float
    stage1_rank: int
    stage1_score: float
    sha256: str
    duration_s: float | None
    frame_times_s: list[float] | None = None  # when each frame of the strip was sampled (None: duration unknown)


@dataclass
class QueryResult:
    """The ranking of one query; `timings_ms` splits batch-wide steps evenly over the batch's queries."""

    query: str
    hits: list[Hit]
    reranked: bool
    method: str  # "exact" | "faiss"
    scored: int  # videos scored by the similarity head for this query
    timings_ms: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def stage1_scores(score_fn: ScoreFn, text: TextFeatures, frames: torch.Tensor, mask: torch.Tensor,
                  video_block: int = VIDEO_BLOCK, query_block: int = QUERY_BLOCK) -> torch.Tensor:
    """Similarity (Q, V) of every query with every video, `query_block` x `video_block` at a time."""
    return score_queries(score_fn, text, VideoFeatures(frames=frames, mask=mask), direction="t2v",
                         query_block=query_block, video_block=video_block).stage1  # (Q, V)


def head_chunk_size(max_words: int, max_frames: int) -> int:
    """Videos per interaction chunk of the head: HEAD_MEMORY / (QUERY_BLOCK * L * T * 4 bytes), in [128, VIDEO_BLOCK].

    The head's default (128, sized for training batches) makes a one-query search over many videos pay Python
    overhead per 128 videos; a search holds at most QUERY_BLOCK queries, so larger video chunks fit.
    """
    return int(min(max(HEAD_MEMORY // (QUERY_BLOCK * max_words * max_frames * 4), 128), VIDEO_BLOCK))


def query_slice(text: TextFeatures, row: int) -> TextFeatures:
    """The features of query `row` as a batch of one."""
    return text[row:row + 1]


def descending(scores: torch.Tensor) -> torch.Tensor:
    """Indices by descending score, ties by lower index (stable), as method/rerank.py selects its top-k."""
    return scores.argsort(descending=True, stable=True)


def check_same_checkpoint(manifest: dict, fingerprint: Fingerprint, model_dir: Path, index_dir: Path) -> None:
    """Refuse to search an index with a checkpoint other than the one that built it, naming both."""
    built = Fingerprint.from_dict(manifest["model"])
    if built != fingerprint:
        raise CheckpointMismatchError(
            f"{index_dir} was built with checkpoint {built.short} (disc {built.disc_sha256[:12]}, gen "
            f"{built.gen_sha256[:12]}, from {manifest['model']['dir']}) but {model_dir} holds checkpoint "
            f"{fingerprint.short} (disc {fingerprint.disc_sha256[:12]}, gen {fingerprint.gen_sha256[:12]}). "
            f"Search with the model that built it, or update the index for this one: `diffusionret index --videos "
            f"{manifest['videos_root']} --model {model_dir} --out {index_dir}` (add --rebuild if the extractor "
            "changed)")


class Searcher:
    """An index and the model that built it, loaded once; `search` is safe to call from several threads."""

    def __init__(self, index_dir: Path, model_dir: Path | None = None):
        self.index_dir = Path(index_dir)
        self._open_index()
        manifest = self.index.manifest
        self.model_dir = Path(model_dir) if model_dir is not None else Path(manifest["model"]["dir"])
        if not self.model_dir.is_dir():
            raise SearchIndexError(f"{index_dir} was built with the model in {self.model_dir}, which no longer "
                                   "exists; pass --model with the directory that holds it now")
        fingerprint = fingerprint_model(self.model_dir)
        check_same_checkpoint(manifest, fingerprint, self.model_dir, self.index_dir)
        self.model = load_search_model(self.model_dir, fingerprint=fingerprint,
                                       decoder=manifest["frames"]["decoder"])
        head = self.model.extractor.head
        if hasattr(head, "chunk_size"):
            head.chunk_size = head_chunk_size(self.model.max_words, self.model.frames.max_frames)
        self._lock = threading.Lock()

    def _open_index(self) -> None:
        """(Re)load the index's current generation."""
        self._stamp = _manifest_stamp(self.index_dir)
        try:
            self.index = load_index(self.index_dir)
        except SearchIndexError:  # an update committed between reading the manifest and its arrays: read again
            self._stamp = _manifest_stamp(self.index_dir)
            self.index = load_index(self.index_dir)
        self.frames = torch.from_numpy(self.index.features)  # (V, T, D)
        self.mask = torch.from_numpy(self.index.mask)  # (V, T)
        self._prefilter = None

    def refresh(self) -> bool:
        """Pick up an update that `diffusionret index` committed since loading (a running server sees new videos)."""
        if _manifest_stamp(self.index_dir) == self._stamp:
            return False
        self._open_index()
        check_same_checkpoint(self.index.manifest, self.model.fingerprint, self.model_dir, self.index_dir)
        return True

    @property
    def num_videos(self) -> int:
        return len(self.index)

    def info(self) -> dict:
        """What the index holds and which checkpoint built it."""
        with self._lock:
            self.refresh()
        manifest = self.index.manifest
        return {"index": shown_path(self.index.directory), "videos": self.num_videos,
                "videos_root": shown_path(manifest["videos_root"]),
                "model": {**manifest["model"], "dir": shown_path(manifest["model"]["dir"])},
                "frames": manifest["frames"], "updated": manifest["updated"], "failures": len(manifest["failures"])}

    def _frame_times(self, entry: dict) -> list[float] | None:
        """The sampling times of an indexed video's frames (preprocess's rule at the model's fps / max_frames)."""
        if not entry.get("duration_s"):
            return None
        settings = self.model.frames
        times = sample_times(entry["duration_s"], settings.sample_fps, settings.max_frames)
        return [round(float(t), 2) for t in times] if len(times) == entry.get("frames") else None

    def encode_queries(self, queries: list[str]) -> TextFeatures:
        """Token features, mask and sentence feature of each query: (Q, L, D), (Q, L), (Q, D)."""
        ids, mask = tokenize(self.model.tokenizer, queries, self.model.max_words)  # (Q, L)
        return encode_captions(self.model.extractor, ids, mask, QUERY_BLOCK)

    def prefilter(self):
        """The faiss pre-filter of this index generation (built on first use, cached next to the features)."""
        if self._prefilter is None:
            from diffusionret.search.ann import FaissPrefilter  # lazy: faiss is optional (--approximate only)

            folder = generation_dir(self.index.directory, self.index.manifest["generation"])
            self._prefilter = FaissPrefilter(self.index.features, self.index.mask,
                                             cache=folder / "prefilter-hnsw.faiss")
        return self._prefilter

    def search(self, queries: list[str], *, top: int = DEFAULT_TOP, rerank: bool = True,
               rerank_k: int = DEFAULT_RERANK_K, seed: int = 0, temperature: float = 1.0, alpha: float = 1.0,
               approximate: bool = False, candidates: int = DEFAULT_CANDIDATES) -> list[QueryResult]:
        """Rank the indexed videos for each query; see the module docstring."""
        queries = [query.strip() for query in queries]
        if not queries or any(not query for query in queries):
            raise ValueError("every query must be a non-empty text")
        if top < 1 or rerank_k < 1 or candidates < 1:
            raise ValueError(f"top, rerank_k and candidates must be >= 1; got {top}, {rerank_k}, {candidates}")
        with self._lock, torch.no_grad():
            self.refresh()
            if self.num_videos == 0:
                raise SearchIndexError(f"{self.index.directory} holds no videos; index a folder with videos first")
            return self._search(queries, top, rerank, rerank_k, seed, temperature, alpha, approximate, candidates)

    def _search(self, queries, top, rerank, rerank_k, seed, temperature, alpha, approximate, candidates):
        clock = time.perf_counter()
        text = self.encode_queries(queries)
        encode_ms = (time.perf_counter() - clock) * 1e3 / len(queries)
        score_fn = self.model.extractor.similarity
        keep = min(self.num_videos, max(top, rerank_k if rerank else top))  # stage-1 list handed to step 2
        clock = time.perf_counter()
        if approximate and candidates < self.num_videos:
            if candidates < top:
                raise ValueError(f"candidates={candidates} must be >= top={top}: the pre-filter keeps only that many")
            keep = min(keep, candidates)  # re-rank at most the candidates
            method = "faiss"
            rows = self.prefilter().candidates(text.sentence.float().numpy(), candidates)
            pools = []
            for q, pool in enumerate(rows):
                pool = torch.from_numpy(pool).long()
                scores = stage1_scores(score_fn, query_slice(text, q), self.frames[pool], self.mask[pool])[0]
                pools.append((pool, scores))
        else:
            method = "exact"
            scores = stage1_scores(score_fn, text, self.frames, self.mask)  # (Q, V)
            pools = [(torch.arange(self.num_videos), scores[q]) for q in range(len(queries))]
        stage1_ms = (time.perf_counter() - clock) * 1e3 / len(queries)

        results = []
        for q, (pool, pool_scores) in enumerate(pools):
            order = descending(pool_scores)[:keep]
            videos, stage1 = pool[order], pool_scores[order]  # (m,) rows and scores in stage-1 order
            clock = time.perf_counter()
            final = stage1
            if rerank:
                short_list = VideoFeatures(frames=self.frames, mask=self.mask)[videos]  # (m, T, D)
                final = score_queries(score_fn, query_slice(text, q), short_list, direction="t2v",
                                      query_block=QUERY_BLOCK, generator=self.model.generator,
                                      diffusion=self.model.diffusion, stage1=stage1[None, :],
                                      rerank=RerankSettings(k=rerank_k, temperature=temperature, alpha=alpha,
                                                            seeds=(seed,))).reranked[0][0]
            rerank_ms = (time.perf_counter() - clock) * 1e3
            hits = []
            for rank, position in enumerate(descending(final)[:top].tolist(), start=1):
                entry = self.index.entries[int(videos[position])]
                hits.append(Hit(rank=rank, path=entry["path"], score=float(final[position]),
                                stage1_rank=position + 1, stage1_score=float(stage1[position]),
                                sha256=entry["sha256"], duration_s=entry["duration_s"],
                                frame_times_s=self._frame_times(entry)))
            results.append(QueryResult(query=queries[q], hits=hits, reranked=rerank, method=method,
                                       scored=len(pool), timings_ms={"encode": round(encode_ms, 2),
                                                                     "stage1": round(stage1_ms, 2),
                                                                     "rerank": round(rerank_ms, 2)}))
        return results


def shown_path(path) -> str:
    """`path` relative to the working directory, as the user would type it (what the server and --json show).

    An absolute path would tell every reader of the API the user's home folder and account name.
    """
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path.cwd().resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(path).name


def _manifest_stamp(index_dir: Path) -> tuple[int, int] | None:
    """(modification time, size) of the manifest: it changes whenever an update is committed."""
    try:
        stat = (Path(index_dir) / MANIFEST).stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def format_results(results: list[QueryResult]) -> str:
    """Plain-text table of each query's ranking (rank, score, stage-1 rank, path)."""
    lines = []
    for result in results:
        how = "re-ranked" if result.reranked else "stage 1 only"
        lines.append(f'query: "{result.query}"  ({result.method}, {how}, {result.scored} videos scored)')
        lines.append(f"  {'rank':>4}  {'score':>8}  {'stage-1':>7}  path")
        for hit in result.hits:
            lines.append(f"  {hit.rank:>4}  {hit.score:>8.4f}  {hit.stage1_rank:>7}  {hit.path}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def results_json(searcher: Searcher, results: list[QueryResult], settings: dict) -> dict:
    """The JSON document of a search (the same for the CLI's --json and the server's /api/search)."""
    return {"index": shown_path(searcher.index.directory), "model": searcher.index.manifest["model"]["fingerprint"],
            "videos": searcher.num_videos, "settings": settings, "queries": [r.as_dict() for r in results]}
