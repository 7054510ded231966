"""DVC stage `report`: reports/results.md (paper-style tables, OOD grid) and reports/figures/*.png."""

from diffusionret.pipeline.report import build_report
from diffusionret.pipeline.stage import run_stage


def body(args, params, paths, root):
    markdown = build_report(params, paths, root)
    print(f"report: wrote {markdown.relative_to(root)} and {markdown.parent.relative_to(root)}/figures/")


if __name__ == "__main__":
    run_stage(__doc__, [], body)
