"""Where each stage reads and writes, in one place (dvc.yaml declares the same paths)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusionret.config import DataParams


@dataclass(frozen=True)
class Paths:
    root: Path  # repository root: every relative path below is anchored here, never at the CWD
    data: DataParams

    def _anchor(self, path: str) -> Path:
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.root / candidate

    def raw(self, benchmark: str) -> Path:
        return self._anchor(self.data.raw_root) / benchmark

    def frames(self, benchmark: str) -> Path:
        return self._anchor(self.data.frames_root) / benchmark

    def annotations(self, benchmark: str, split: str) -> Path:
        return self.frames(benchmark) / "annotations" / f"{split}.json"

    def partial(self, *parts: str) -> Path:
        return self._anchor(self.data.partial_root).joinpath(*parts)

    def features(self, trained: str, evaluated: str) -> Path:
        return self._anchor(self.data.features_root) / trained / evaluated

    def disc_model(self, benchmark: str) -> Path:
        return self.root / "models" / benchmark / "disc"

    def estimator(self, benchmark: str) -> Path:
        return self.root / "models" / benchmark / "estimator"

    def gen_model(self, benchmark: str) -> Path:
        return self.root / "models" / benchmark / "gen"

    def plots(self, benchmark: str) -> Path:
        return self.root / "plots" / benchmark

    def evaluation(self, trained: str, evaluated: str) -> Path:
        return self.root / "eval" / f"{trained}__{evaluated}"
