"""DVC stage `extract@<trained>-<evaluated>`: cache frozen stage-1 features of a benchmark."""

from diffusionret.pipeline.extract import extract_features
from diffusionret.pipeline.stage import run_stage


def body(args, params, paths, root):
    counts = extract_features(args.trained, args.evaluated, params, paths)
    print(f"extract@{args.trained}-{args.evaluated}: {counts}")


if __name__ == "__main__":
    run_stage(__doc__, ["trained", "evaluated"], body)
