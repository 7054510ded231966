"""DVC stage `preprocess@<benchmark>`: annotations in the common form + the uint8 frame cache."""

from diffusionret.pipeline.preprocess import preprocess_benchmark
from diffusionret.pipeline.stage import run_stage


def body(args, params, paths, root):
    summary = preprocess_benchmark(args.benchmark, params.benchmark(args.benchmark), params.preprocess, paths)
    print(f"preprocess@{args.benchmark}: {summary}")


if __name__ == "__main__":
    run_stage(__doc__, ["benchmark"], body)
