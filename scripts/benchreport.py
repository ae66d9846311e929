"""The result table the benchmark scripts print: one row per figure, checks that failed."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any


def note(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass
class Row:
    benchmark: str
    aiobatch: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def row(self, row: Row) -> None:
        self.rows.append(row)

    def check(self, ok: bool, message: str) -> bool:
        if not ok:
            self.failures.append(message)
            note(f"CHECK FAILED: {message}")
        return ok

    def markdown(self, baseline: str = "Baseline") -> str:
        lines = [
            f"| Benchmark | aiobatch | {baseline} | Ratio | Target | Met |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            met = "" if r.met is None else ("yes" if r.met else "**no**")
            lines.append(
                f"| {r.benchmark} | {r.aiobatch} | {r.baseline} | {r.ratio} | {r.target} | {met} |"
            )
        return "\n".join(lines)
