"""Paper presets: the official recipe of one benchmark and backbone, as `dvc exp run -S` overrides.

Files under configs/presets/: `paper.yaml` holds the hyper-parameters every benchmark shares and the backbone
`variants`; `<benchmark>.yaml` names it as its `base` and adds the benchmark's own settings. A preset name is
`<benchmark>-<variant>` (msrvtt-9k-vitb32, didemo-vitb16, ...). Its overrides are the merged `params` mappings
(base first, then the benchmark, then the variant, then what the benchmark file's own `variants` block sets for
that variant there, e.g. DiCoSA's ActivityNet schedule), flattened to dotted keys. `preset run` hands them to
`dvc exp run` as `-S key=value` (DVC writes them into params.yaml, keeping its comments, and runs the
pipeline); `preset apply` writes them into params.yaml the same way, for a later `dvc repro`.

Values are written in Hydra's override syntax, which is what `dvc exp run -S` parses: strings quoted,
lists in brackets, `null` for None.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from diffusionret.config import ConfigError, split_override

PRESETS_DIR = Path("configs/presets")
BASE_KEY, PARAMS_KEY, VARIANTS_KEY = "base", "params", "variants"
HYDRA_KEYWORDS = ("null", "true", "false", "nan", "inf")  # strings Hydra would read as another type


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"preset file {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset file holds a mapping (base, params, variants)")
    unknown = sorted(set(data) - {BASE_KEY, PARAMS_KEY, VARIANTS_KEY})
    if unknown:
        raise ConfigError(f"{path}: unknown key `{unknown[0]}`; allowed: {BASE_KEY}, {PARAMS_KEY}, {VARIANTS_KEY}")
    return data


def merge(base: dict, update: dict) -> dict:
    """Nested mappings merged key by key (`update` wins); lists and scalars are replaced whole."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _benchmark_files(directory: Path) -> dict[str, Path]:
    """Benchmark preset files (those with a base) by stem."""
    return {path.stem: path for path in sorted(Path(directory).glob("*.yaml")) if BASE_KEY in _read(path)}


def preset_names(directory: Path = PRESETS_DIR) -> list[str]:
    """Every `<benchmark>-<variant>` name the preset folder defines."""
    names = []
    for stem, path in _benchmark_files(directory).items():
        base = _read(path.parent / _read(path)[BASE_KEY])
        names += [f"{stem}-{variant}" for variant in base.get(VARIANTS_KEY, {})]
    return names


def load_preset(name: str, directory: Path = PRESETS_DIR) -> dict:
    """The nested params overrides of preset `name`."""
    directory = Path(directory)
    files = _benchmark_files(directory)
    for stem, path in files.items():
        if not name.startswith(f"{stem}-"):
            continue
        own = _read(path)
        base = _read(directory / own[BASE_KEY])
        variants = base.get(VARIANTS_KEY, {})
        stray = sorted(set(own.get(VARIANTS_KEY) or {}) - set(variants))
        if stray:
            raise ConfigError(f"{path}: variant `{stray[0]}` is not one of {directory / own[BASE_KEY]}'s variants "
                              f"({', '.join(variants)}); add it there or fix the name")
        variant = name[len(stem) + 1:]
        if variant in variants:  # a benchmark's own `variants` block adds what one variant changes there only
            merged = merge(merge(base.get(PARAMS_KEY, {}), own.get(PARAMS_KEY, {})), variants[variant])
            return merge(merged, (own.get(VARIANTS_KEY) or {}).get(variant, {}))
    raise ConfigError(f"unknown preset `{name}`; the presets of {directory} are: "
                      f"{', '.join(preset_names(directory))}")


def variant_params(variant: str, directory: Path = PRESETS_DIR, base: str = "paper.yaml") -> dict:
    """What variant `variant` of the base file changes, on every benchmark ({} when the base has no such variant);
    e.g. variant_params("dicosa")["postprocess"] is DiCoSA's QB-Norm."""
    return copy.deepcopy(_read(Path(directory) / base).get(VARIANTS_KEY, {}).get(variant) or {})


def flatten_overrides(nested: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) for every leaf; lists are leaves (they replace the whole list)."""
    flat: list[tuple[str, Any]] = []
    for key, value in nested.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat += flatten_overrides(value, dotted)
        else:
            flat.append((dotted, value))
    return flat


def hydra_value(value: Any) -> str:
    """A value in Hydra's override grammar (what `dvc exp run -S` parses)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./:-]*", value) and value.lower() not in HYDRA_KEYWORDS:
            return value  # unambiguous without quotes
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{hydra_value(item)}" for key, item in value.items()) + "}"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) as a params override")


def override_strings(nested: dict) -> list[str]:
    """`key=value` strings, one per leaf, for `dvc exp run -S` / dvc's apply_overrides."""
    return [f"{key}={hydra_value(value)}" for key, value in flatten_overrides(nested)]


def parse_user_overrides(overrides: list[str]) -> dict:
    """`-S key=value` strings given on the command line (values read as YAML) -> nested overrides."""
    nested: dict = {}
    for override in overrides:
        parts, value = split_override(override)
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def apply_to_params_file(path: Path, overrides: list[str]) -> None:
    """Write `key=value` overrides into a params file exactly as `dvc exp run -S` does (comments are kept)."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    try:
        apply_overrides(str(path), overrides)
    except InvalidArgumentError as error:
        cause = error.__cause__
        raise ConfigError(f"{path}: an override does not fit the file ({cause or error}); every key of a preset "
                          "must exist in params.yaml") from error
