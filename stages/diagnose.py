"""DVC stage `diagnose@<trained>-<evaluated>`: diagnostics of one synthetic cell (a real benchmark is skipped)."""

from diffusionret.pipeline.diagnose import print_summary, run_diagnose
from diffusionret.pipeline.stage import run_stage


def body(args, params, paths, root):
    print_summary(run_diagnose(args.trained, args.evaluated, params, paths, root))


if __name__ == "__main__":
    run_stage(__doc__, ["trained", "evaluated"], body)
