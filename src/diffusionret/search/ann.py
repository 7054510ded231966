"""Optional approximate pre-filter for large indexes, through faiss (`pip install faiss-cpu`).

The WTI head (weighted max-sims) is not an inner product of two fixed vectors, so it cannot be put in a vector
index. The pre-filter ranks videos by a proxy that is one: the cosine of the query's sentence feature and the
video's mask-weighted mean frame feature (the `meanP` head's score), searched with an HNSW graph. WTI then
re-scores only the `candidates` it returns. The proxy can miss videos that WTI would rank high: its recall@10
against exact search is measured in benchmarks/search_latency.py; raise `candidates` to trade speed for recall.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HNSW_NEIGHBOURS = 32  # M: graph degree
HNSW_EF_CONSTRUCTION = 80


class FaissMissingError(RuntimeError):
    """faiss is not installed, but approximate search was asked for."""


def require_faiss():
    """Import faiss or raise with the command that installs it."""
    try:
        import faiss
    except ImportError as error:
        raise FaissMissingError(
            "approximate search needs faiss, an optional dependency that is not installed: run "
            "`pip install faiss-cpu` (or search without --approximate: exact search needs nothing else)") from error
    return faiss


def mean_frame_vectors(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Unit-length mask-weighted mean of the frame features: (V, T, D), (V, T) -> (V, D) float32."""
    weights = np.asarray(mask, dtype=np.float32)[..., None]  # (V, T, 1)
    pooled = (np.asarray(frames, dtype=np.float32) * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
    return unit_rows(pooled)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32 and C-contiguous as faiss wants."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12))


class FaissPrefilter:
    """HNSW inner-product index over the mean-frame vectors of an index generation."""

    def __init__(self, frames: np.ndarray, mask: np.ndarray, *, cache: Path | None = None,
                 neighbours: int = HNSW_NEIGHBOURS):
        faiss = require_faiss()
        self.faiss = faiss
        self.num_videos = int(frames.shape[0])
        if cache is not None and cache.is_file():
            self.index = faiss.read_index(str(cache))
            if self.index.ntotal == self.num_videos:
                return
        vectors = mean_frame_vectors(frames, mask)  # (V, D)
        self.index = faiss.IndexHNSWFlat(vectors.shape[1], neighbours, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        self.index.add(vectors)
        if cache is not None:
            try:
                faiss.write_index(self.index, str(cache))
            except (OSError, RuntimeError):  # a read-only index folder: rebuild next time
                pass

    def candidates(self, sentences: np.ndarray, count: int) -> list[np.ndarray]:
        """Per query, up to `count` video rows by the proxy score, sorted ascending by row: (Q, D) -> Q x (n,)."""
        count = min(count, self.num_videos)
        self.index.hnsw.efSearch = max(count, 64)
        _, rows = self.index.search(unit_rows(sentences), count)  # (Q, n), -1 where fewer were found
        return [np.sort(row[row >= 0]) for row in rows]
