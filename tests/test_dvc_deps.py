"""dvc.yaml follows the code: every module a stage imports and every Params key it reads is declared (dvc_deps.py)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dvc_deps import check, import_closure

ROOT = Path(__file__).resolve().parents[1]


def reports_of(dvc: dict, tmp_path: Path) -> dict:
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump(dvc, sort_keys=False))
    return {report.stage: report for report in check(ROOT, path)}


def stage_body(dvc: dict, stage: str) -> dict:
    return dvc["stages"][stage].get("do", dvc["stages"][stage])


def test_every_stage_depends_on_the_modules_it_imports():
    reports = check(ROOT, ROOT / "dvc.yaml")
    assert {report.stage for report in reports} == {"download", "preprocess", "train_estimator", "train_disc",
                                                    "extract", "train_gen", "evaluate", "diagnose", "report"}
    for report in reports:
        assert report.modules, report.stage  # the closure was found at all
        assert report.uncovered == [], f"{report.stage}: add these (or their package folder) to its deps"


def test_every_stage_declares_the_params_it_reads():
    for report in check(ROOT, ROOT / "dvc.yaml"):
        assert report.params_read, report.stage
        assert report.params_missing == [], f"{report.stage}: add these to its `params:`"


def test_a_removed_dep_is_caught(tmp_path):
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stage_body(dvc, "train_gen")["deps"].remove("src/diffusionret/method")
    report = reports_of(dvc, tmp_path)["train_gen"]
    assert "src/diffusionret/method/losses.py" in report.uncovered  # the generation loss
    assert all(path.startswith("src/diffusionret/method/") for path in report.uncovered)
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stage_body(dvc, "evaluate")["deps"].remove("src/diffusionret/config.py")
    assert reports_of(dvc, tmp_path)["evaluate"].uncovered == ["src/diffusionret/config.py"]


def test_a_removed_param_is_caught(tmp_path):
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stage_body(dvc, "train_gen")["params"].remove("eval.rerank_query_batch")
    stage_body(dvc, "train_disc")["params"].remove("preprocess.image_size")
    reports = reports_of(dvc, tmp_path)
    assert reports["train_gen"].params_missing == ["eval.rerank_query_batch"]
    assert reports["train_disc"].params_missing == ["preprocess.image_size"]
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    dvc["stages"]["evaluate"]["params"].remove("eval.num_samples")
    assert reports_of(dvc, tmp_path)["evaluate"].params_missing == ["eval.num_samples"]


@pytest.mark.parametrize("stage", ["train_gen", "evaluate"])
def test_static_closure_holds_every_module_an_import_loads(stage):
    """Independent check: the package's modules that importing the stage loads are all in the static closure."""
    script = (f"import json, sys; import diffusionret.pipeline.{stage}; "
              "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() "
              "if n.startswith('diffusionret') and getattr(m, '__file__', None))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                       cwd=ROOT).stdout.strip().splitlines()[-1])
    static = {path.resolve() for path in import_closure(ROOT, ROOT / "stages" / f"{stage}.py")}
    loaded = {Path(path).resolve() for path in loaded}
    empty_markers = {path for path in loaded if path.name == "__init__.py"  # package markers that run no import
                     and not any(isinstance(node, (ast.Import, ast.ImportFrom)) for node in ast.walk(ast.parse(
                         path.read_text())))}
    assert loaded - empty_markers - static == set()
