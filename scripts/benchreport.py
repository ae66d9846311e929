"""The result table the benchmark scripts print: one row per figure, checks that failed."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def bench_parser(doc: str | None, json_out: Path) -> argparse.ArgumentParser:
    """A benchmark script's parser: described by its docstring's first line, with the
    ``--json-out`` every script has (``json_out`` relative to the repo root)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument(
        "--json-out",
        type=Path,
        default=json_out,
        help=f"where to write the results (relative to the repo root; default {json_out})",
    )
    return parser


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

    def finish(
        self,
        out: Path,
        *,
        started: float,
        load_before: tuple[float, float, float],
        strict: bool,
        baseline: str = "Baseline",
        fields: Mapping[str, Any] | None = None,
        machine: Mapping[str, Any] | None = None,
        summary: str = "",
    ) -> int:
        """Write everything measured to ``out`` (JSON), print the table and the machine's
        load; the exit status: 1 if a check failed, or (``strict``) a target was missed."""
        table = self.markdown(baseline)
        missed = [r.benchmark for r in self.rows if r.met is False]
        load_after = os.getloadavg()
        result = {
            "started_at": started,
            "duration_s": time.time() - started,
            **(fields or {}),
            "machine": {
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "loadavg_before": load_before,
                "loadavg_after": load_after,
                **(machine or {}),
            },
            "results": self.sections,
            "rows": [asdict(r) for r in self.rows],
            "targets_missed": missed,
            "check_failures": self.failures,
            "markdown": table,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(table)
        print(f"\nload average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}{summary}")
        note(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
        if self.failures:
            print(f"\ncheck failures: {self.failures}", file=sys.stderr)
            return 1
        return 1 if strict and missed else 0
