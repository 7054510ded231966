"""DVC stage `download@<benchmark>`: generate the synthetic benchmark, or fetch/check a real one."""

import os

from diffusionret.pipeline.download import download_benchmark
from diffusionret.pipeline.stage import run_stage


def body(args, params, paths, root):
    counts = download_benchmark(args.benchmark, params.benchmark(args.benchmark), paths.raw(args.benchmark),
                                workers=min(2, os.cpu_count() or 1))
    print(f"download@{args.benchmark}: {counts}")


if __name__ == "__main__":
    run_stage(__doc__, ["benchmark"], body)
