"""params.yaml -> typed Params: every bad input names the key, the value and what is allowed."""

import copy
from pathlib import Path

import pytest
import yaml

from diffusionret.config import ConfigError, flatten, load_params, params_from_dict

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repository_params_load(raw):
    params = params_from_dict(raw)
    assert params.train.lr == pytest.approx(float(raw["train"]["lr"]))
    assert params.benchmarks["synthetic"].max_frames == raw["benchmarks"]["synthetic"]["max_frames"]
    assert params.train.benchmarks == tuple(raw["train"]["benchmarks"])


@pytest.mark.parametrize(
    "mutate, key, value_text, allowed_text",
    [
        (lambda p: p["train"].__setitem__("lr", -0.1), "train.lr", "-0.1", "> 0"),
        (lambda p: p["benchmarks"]["synthetic"].__setitem__("max_frames", 0), "benchmarks.synthetic.max_frames",
         "0", ">= 1"),
        (lambda p: p["train"].__setitem__("benchmarks", ["msrvtt-typo"]), "train.benchmarks", "msrvtt-typo",
         "benchmark defined under `benchmarks`"),
        (lambda p: p["model"].__setitem__("head", "cosine"), "model.head", "cosine", "wti, meanP"),
        (lambda p: p["train"].__setitem__("steps", "many"), "train.steps", "many", "an integer"),
        (lambda p: p["benchmarks"]["synthetic"].__setitem__("source", "youtube"), "benchmarks.synthetic.source",
         "youtube", "synthetic, msrvtt"),
        (lambda p: p["train_gen"].update(negatives="batch", num_negatives=64), "train_gen.num_negatives", "64",
         "global_batch - 1"),
        (lambda p: p["diffusion"].__setitem__("schedule", "sigmoid"), "diffusion.schedule", "sigmoid", "cosine"),
    ],
)
def test_bad_values_name_key_value_and_allowed(raw, mutate, key, value_text, allowed_text):
    mutate(raw)
    with pytest.raises(ConfigError) as error:
        params_from_dict(raw)
    message = str(error.value)
    assert f"`{key}`" in message and value_text in message and allowed_text in message, message


def test_unknown_key_is_named_with_the_allowed_ones(raw):
    raw["train"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"unknown key `train.learning_rate`.*allowed keys.*\blr\b"):
        params_from_dict(raw)


def test_unknown_section(raw):
    raw["optimiser"] = {"lr": 1}
    with pytest.raises(ConfigError, match="unknown key `optimiser`"):
        params_from_dict(raw)


def test_trained_benchmark_must_be_evaluated(raw):
    raw["eval"]["benchmarks"] = ["synthetic-shift"]
    with pytest.raises(ConfigError, match="eval.benchmarks"):
        params_from_dict(raw)


def test_scientific_notation_strings_are_numbers(raw):
    raw["train"]["lr"] = "1e-4"  # YAML 1.1 reads 1e-4 as a string
    assert params_from_dict(raw).train.lr == pytest.approx(1e-4)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_flatten_gives_dotted_keys(raw):
    flat = flatten(params_from_dict(raw))
    assert flat["train.lr"] == pytest.approx(float(raw["train"]["lr"]))
    assert flat["benchmarks.synthetic.synthetic.num_test"] == raw["benchmarks"]["synthetic"]["synthetic"]["num_test"]


def _resolve(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"`{dotted}` is not a key of params.yaml"
        node = node[part]
    return node


def test_dvc_stage_params_exist_in_params_yaml(raw):
    """Every key a stage declares must exist, so `dvc exp run -S key=...` re-runs the right stages."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    benchmark_names = list(raw["benchmarks"])
    checked = 0
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for key in body.get("params", []):
            key = key if isinstance(key, str) else next(iter(key))
            for bench in benchmark_names:
                concrete = (key.replace("${key}", bench).replace("${item}", bench)
                            .replace("${item.evaluated}", bench))
                _resolve(raw, concrete)
                checked += 1
    assert checked > 20


def test_params_yaml_spells_out_every_key(raw):
    """DVC can only track a key that is written in params.yaml, so no field may rely on its default."""
    import dataclasses

    def walk(cls, tree, path):
        for field in dataclasses.fields(cls):
            assert field.name in tree, f"`{path}{field.name}` is missing from params.yaml"
            if dataclasses.is_dataclass(field.type) or isinstance(field.type, str) and field.type in classes:
                walk(classes[field.type], tree[field.name], f"{path}{field.name}.")

    from diffusionret import config

    classes = {name: obj for name, obj in vars(config).items() if dataclasses.is_dataclass(obj)}
    walk(config.Params, {k: v for k, v in raw.items() if k != "benchmarks"} | {"benchmarks": {}}, "")
    for name, bench in raw["benchmarks"].items():
        walk(config.BenchmarkParams, bench, f"benchmarks.{name}.")
