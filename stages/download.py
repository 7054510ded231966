"""DVC stage `download@<benchmark>`: generate the synthetic benchmark, or fetch/check a real one (writes a manifest)."""

from diffusionret.pipeline.download import run_download
from diffusionret.pipeline.stage import run_stage


def body(args, params, paths, root):
    print(f"download@{args.benchmark}: {run_download(args.benchmark, params, paths)}")


if __name__ == "__main__":
    run_stage(__doc__, ["benchmark"], body)
