"""Quality gates for CI: one row format and one exit-3 error for every command (prune, eval, bench)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from ssmprune_cli.errors import QualityGateError


def gate_row(name: str, value: Optional[float], limit: float, unit: str, upper: bool) -> Dict[str, Any]:
    """One gate: `upper` means the measured value may not exceed the limit (else it may not fall below it)."""
    ok = value is not None and (value <= limit if upper else value >= limit)
    return {"gate": name, "value": value, "limit": limit, "unit": unit, "passed": bool(ok)}


def raise_for_gates(rows: Sequence[Dict[str, Any]]) -> None:
    """QualityGateError (exit 3) naming every missed gate with its measured value and limit."""
    failed: List[Dict[str, Any]] = [r for r in rows if not r["passed"]]
    if failed:
        raise QualityGateError("quality gate failed: " + "; ".join(
            f"{r['gate']} {r['limit']:g} ({r['unit']}): measured "
            + ("nothing" if r["value"] is None else f"{r['value']:.4g}") for r in failed))
