"""The figures the benches print against their targets, collected so that ``bench_targets.py``
can print them all in one table after one run (each bench still prints its own detail)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One measured figure: ``value`` in ``unit``, against ``limit`` (None: shown for context)."""

    name: str
    value: float
    limit: float | None
    unit: str = "x"
    spread: str = ""

    @property
    def met(self) -> bool | None:
        return None if self.limit is None else self.value <= self.limit


FIGURES: list[Figure] = []


def record(name: str, value: float, limit: float | None, *, unit: str = "x", spread: str = "") -> None:
    """Keep a figure for the summary (a bench run alone ignores them)."""
    FIGURES.append(Figure(name, value, limit, unit, spread))


def table(figures: list[Figure]) -> str:
    """The summary: figure, value, spread, target, met."""
    rows = [f"{'figure':<58}{'value':>10}  {'spread':<15}{'target':>10}  met"]
    for f in figures:
        fmt = ".3f" if f.unit == "x" else ".1f"
        value = f"{f.value:{fmt}}{f.unit}"
        target = "" if f.limit is None else f"<= {f.limit:g}{f.unit}"
        met = "" if f.met is None else "yes" if f.met else "NO"
        rows.append(f"{f.name:<58}{value:>10}  {f.spread:<15}{target:>10}  {met}")
    return "\n".join(rows)
