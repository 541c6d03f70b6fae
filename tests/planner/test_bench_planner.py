"""The planner benchmark runs and reports every variant (tiny geometry only; 0.6B runs under `make bench`)."""

from __future__ import annotations

from encore.bench_planner import VARIANTS, bench_planner, format_rows


def test_bench_planner_tiny() -> None:
    rows = bench_planner(geometries=("tiny",), tokens={"tiny": 4})
    assert [r.variant for r in rows] == list(VARIANTS)
    assert all(r.geometry == "tiny" and r.tokens == 4 and r.tokens_per_s > 0 for r in rows)
    assert rows[0].speedup_vs_unconstrained == 1.0
    assert "head_slicing" in format_rows(rows)
