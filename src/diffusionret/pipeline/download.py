"""`download` stage: make a benchmark's raw files available under data.raw_root/<benchmark>/."""

from __future__ import annotations

from pathlib import Path

from diffusionret.config import BenchmarkParams


class BenchmarkNotAvailable(RuntimeError):
    """A real benchmark whose download is not implemented yet."""


def download_benchmark(name: str, settings: BenchmarkParams, out_dir: Path, *, workers: int = 1) -> dict:
    """Generate the synthetic benchmark, or stop with instructions for a real one."""
    if settings.source == "synthetic":
        from diffusionret.data.synthetic import generate_synthetic

        synthetic = settings.synthetic
        return generate_synthetic(
            out_dir, seed=synthetic.seed, num_train=synthetic.num_train, num_val=synthetic.num_val,
            num_test=synthetic.num_test, captions_per_train_video=synthetic.captions_per_train_video,
            shift=synthetic.shift, image_size=synthetic.image_size, fps=synthetic.fps, workers=workers,
        )
    raise BenchmarkNotAvailable(
        f"benchmark `{name}` (source `{settings.source}`) is not available yet: downloading and reading "
        f"the real benchmarks is not implemented in this version. Use the embedded `synthetic` benchmark "
        f"(train.benchmarks: [synthetic]) or remove `{name}` from `benchmarks` in params.yaml."
    )
