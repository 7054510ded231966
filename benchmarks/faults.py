"""Fault-injection table: runs the `faults` tests and prints what each bad input did, with totals.

Every test in tests/faults/ injects one fault (a login page served as an archive, a truncated tar, a full disk,
a non-UTF-8 csv, a killed parent, ...) and records `case`, `expected`, `observed` and `files_lost` (files that
existed before the fault and were deleted or changed) with pytest's `record_property`. This script runs them,
reads the properties back from the junit XML and prints one row per case; a case survives when its test passed.

    .venv/bin/python benchmarks/faults.py            # or: make faults
    .venv/bin/python benchmarks/faults.py --xml out.xml -- -k download    # extra pytest arguments after --

Exit status 0 only when every fault was survived and no file was lost.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_suite(xml: Path, extra: list[str]) -> int:
    """`pytest tests/faults -m faults --junitxml=xml`; returns pytest's exit status."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "tests" / "faults"),
               "-m", "faults", f"--junitxml={xml}", "-o", "junit_family=xunit1", *extra]
    return subprocess.run(command, cwd=REPO).returncode


def read_rows(xml: Path) -> list[dict]:
    """One row per test case: its recorded properties plus `passed` (no failure, error or skip)."""
    rows = []
    for case in ElementTree.parse(xml).getroot().iter("testcase"):
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        passed = not any(case.find(tag) is not None for tag in ("failure", "error", "skipped"))
        rows.append({
            "test": f"{case.get('classname', '')}::{case.get('name', '')}",
            "case": properties.get("case") or case.get("name", ""),
            "expected": properties.get("expected", "(not recorded: the test failed before recording)"),
            "observed": properties.get("observed", "(not recorded)"),
            "files_lost": int(properties.get("files_lost", 0)),
            "recorded": "case" in properties,
            "passed": passed,
        })
    return rows


def print_table(rows: list[dict], width: int = 46, lines: int = 4) -> None:
    """case | expected | observed | ok, wrapped to fixed-width columns (observed: its first `lines` lines)."""
    header = ("case", "expected", "observed", "ok")
    print(f"{header[0]:<{width}} | {header[1]:<{width}} | {header[2]:<{width}} | {header[3]}")
    print("-" * (3 * width + 12))
    for row in rows:
        columns = [textwrap.wrap(row[key], width) or [""] for key in ("case", "expected", "observed")]
        if len(columns[2]) > lines:
            columns[2] = columns[2][:lines - 1] + [columns[2][lines - 1][:width - 3] + "..."]
        mark = "yes" if row["passed"] and row["files_lost"] == 0 else "NO"
        for i in range(max(len(c) for c in columns)):
            cells = [c[i] if i < len(c) else "" for c in columns]
            print(f"{cells[0]:<{width}} | {cells[1]:<{width}} | {cells[2]:<{width}} | {mark if i == 0 else ''}")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xml", type=Path, help="where to keep the junit XML (default: a temporary file)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        xml = args.xml or Path(scratch) / "faults.xml"
        status = run_suite(xml, args.pytest_args)
        if not xml.is_file():
            print(f"pytest wrote no report (exit {status})", file=sys.stderr)
            return 2
        rows = read_rows(xml)
    print_table(rows)
    survived = sum(row["passed"] and row["files_lost"] == 0 for row in rows)
    lost = sum(row["files_lost"] for row in rows)
    unrecorded = [row["test"] for row in rows if not row["recorded"]]
    print(f"bad inputs tried: {len(rows)}")
    print(f"faults survived:  {survived} of {len(rows)}")
    print(f"files lost:       {lost} (must be 0)")
    if unrecorded:
        print(f"cases without a recorded row (failed early): {', '.join(unrecorded)}")
    return 0 if rows and survived == len(rows) and lost == 0 and status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
