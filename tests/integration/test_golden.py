"""The golden fixture: a tiny-model sweep and β study give the rows (and reports) they gave before the
redesign of issue 14 (``tests/golden/make_golden.py`` made them with the code of that time)."""

import gzip
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "golden"))

from make_golden import GOLDEN, run  # noqa: E402


def differences(expected, actual, where: str = "") -> list[str]:
    """Where two rows/report structures differ; floats equal to 1e-4 relative or 1e-7 absolute.

    The rows are float32 sums whose order the CPU's BLAS kernel sets: the fixture, made on an AMD
    EPYC, differs on an Intel Xeon by up to 3.2e-5 relative (6e-8 absolute, in differences of two
    values near 1e-3) and 8e-7 absolute in the residual norms; every discrete cell (selection, layer,
    beta, counts) is equal."""
    if isinstance(expected, float) and isinstance(actual, float):
        same = (math.isnan(expected) and math.isnan(actual)) or math.isclose(
            expected, actual, rel_tol=1e-4, abs_tol=1e-7
        )
        return [] if same else [f"{where}: {expected!r} != {actual!r}"]
    if isinstance(expected, dict) and isinstance(actual, dict):
        if set(expected) != set(actual):
            return [f"{where}: keys {sorted(set(expected) ^ set(actual))} differ"]
        return [d for key in expected for d in differences(expected[key], actual[key], f"{where}/{key}")]
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(expected)} != {len(actual)} rows"]
        return [
            d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{where}[{i}]")
        ]
    if isinstance(expected, str) and isinstance(actual, str) and expected != actual:
        lines = [(e, a) for e, a in zip(expected.splitlines(), actual.splitlines()) if e != a]
        return [f"{where}: first different line {lines[0] if lines else 'count'}"]
    return [] if expected == actual else [f"{where}: {expected!r} != {actual!r}"]


def test_the_tiny_sweep_and_study_give_the_golden_rows_and_reports(tmp_path):
    with gzip.open(GOLDEN, "rt") as file:
        golden = json.load(file)
    made = run(tmp_path)
    found = differences(golden, made)
    assert not found, f"{len(found)} differences, the first: {found[:5]}"
