"""Broken exports: no record fails a stage, and every record and line is accounted for."""

from __future__ import annotations

import pytest

from tests.faults.cases import InputCase, check_case, input_cases, run_case

CASES = input_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_broken_export_is_read_with_exact_accounting(case: InputCase, tmp_path) -> None:
    got = run_case(case, tmp_path)
    assert check_case(case, got) == []
