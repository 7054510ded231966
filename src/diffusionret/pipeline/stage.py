"""What every DVC stage entry point shares: find the repository, read params once, report errors plainly."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from diffusionret.config import ConfigError, Params, load_params
from diffusionret.pipeline.paths import Paths
from diffusionret.storage import explain, is_permanent

for _name, _value in {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                      "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}.items():
    os.environ.setdefault(_name, _value)


def repo_root() -> Path:
    """The directory holding params.yaml: DVC runs stages from the repository root."""
    root = Path.cwd()
    if not (root / "params.yaml").is_file():
        raise ConfigError(f"no params.yaml in {root}; run stages from the repository root (`dvc repro`)")
    return root


def run_stage(description: str, arguments: list[str], body: Callable[[argparse.Namespace, Params, Paths, Path], object]) -> None:
    """Parse `--name` arguments, load and validate params.yaml, run `body`; expected errors exit 2 without a traceback."""
    parser = argparse.ArgumentParser(description=description)
    for argument in arguments:
        parser.add_argument(f"--{argument}", required=True)
    args = parser.parse_args()
    try:
        root = repo_root()
        params = load_params(root / "params.yaml")
        for argument in arguments:
            params.benchmark(getattr(args, argument))
        body(args, params, Paths(root, params.data), root)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError, OSError) as error:
        if os.environ.get("DIFFUSIONRET_TRACEBACK"):
            raise
        if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
            if not is_permanent(error):
                raise  # an unexpected I/O error: the traceback is the useful report
            error = explain(error, error.filename or "a file", "accessing")  # disk full, quota, permissions
        print(f"\nerror: {error}\n(set DIFFUSIONRET_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.exit(2)
