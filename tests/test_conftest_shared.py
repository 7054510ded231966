"""The fresh-clone rule of tests/conftest.py: tests needing ../shared are deselected with a notice when the folder
is missing, and run when it exists. Each case runs a small pytest session with the project's conftest."""

from pathlib import Path

import pytest

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()
TESTS = '''
def test_reads_shared(shared_root):
    assert (shared_root / "marker.txt").read_text() == "here"

def test_plain():
    assert 1 + 1 == 2
'''


@pytest.fixture
def session(pytester, monkeypatch):
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\naddopts = --strict-markers\nmarkers =\n    shared: reads ../shared\n")
    pytester.makepyfile(test_two=TESTS)
    return pytester


def test_missing_shared_folder_deselects_with_notice(session, monkeypatch, tmp_path):
    missing = tmp_path / "no-such-shared"
    monkeypatch.setenv("DIFFUSIONRET_SHARED_ROOT", str(missing))
    result = session.runpytest_subprocess("-q")
    result.assert_outcomes(passed=1, deselected=1)
    result.stdout.fnmatch_lines([f"1 tests marked `shared` deselected*{missing}, which is missing*"])


def test_missing_shared_folder_gives_the_notice_under_xdist_too(session, monkeypatch, tmp_path):
    """`make test` runs two xdist workers; they collect, so the controller prints the notice in the summary."""
    missing = tmp_path / "no-such-shared"
    monkeypatch.setenv("DIFFUSIONRET_SHARED_ROOT", str(missing))
    result = session.runpytest_subprocess("-q", "-p", "xdist", "-n", "2")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"1 tests marked `shared` deselected*{missing}, which is missing*"])


def test_existing_shared_folder_runs_them(session, monkeypatch, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "marker.txt").write_text("here")
    monkeypatch.setenv("DIFFUSIONRET_SHARED_ROOT", str(shared))
    result = session.runpytest_subprocess("-q")
    result.assert_outcomes(passed=2)
    assert "deselected" not in result.stdout.str()


def test_not_shared_still_deselects_them_when_present(session, monkeypatch, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("DIFFUSIONRET_SHARED_ROOT", str(shared))
    result = session.runpytest_subprocess("-q", "-m", "not shared")
    result.assert_outcomes(passed=1, deselected=1)
