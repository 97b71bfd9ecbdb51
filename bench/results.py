"""The figures of a benchmark run, and what is made of them: one table with Runstream's figure
beside each peer's and their ratio, a JSON file, a PNG chart, and a Markdown page.

A ratio is Runstream's figure divided by the peer's; for a measure that names a baseline system
(one Runstream configuration against another), it is each other system's figure divided by the
baseline's. Whether more is better depends on the measure (appends per second: more; latency:
less), so every row says which, and the table says, for each ratio, whether the row's system
leads.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import textwrap
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RUNSTREAM = "Runstream"


@dataclass(frozen=True)
class Measure:
    """What one figure measures: a scenario, the figure's name, its unit, and which way is
    better; and, where the systems compared are not Runstream and its peers but configurations
    of Runstream, the one that the others' figures are divided by."""

    scenario: str
    name: str
    unit: str
    higher_is_better: bool
    baseline: str | None = None


@dataclass(frozen=True)
class Figure:
    measure: Measure
    system: str  # "Runstream (SQLite)", "reference (Node, in memory)", "Redis", ...
    value: float
    note: str = ""


@dataclass
class Results:
    figures: list[Figure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # scenarios or peers left out, and why

    def add(self, measure: Measure, system: str, value: float, note: str = "") -> None:
        self.figures.append(Figure(measure, system, value, note))

    def skip(self, what: str, why: str) -> None:
        self.skipped.append(f"{what}: {why}")

    def measures(self) -> list[Measure]:
        return list(dict.fromkeys(figure.measure for figure in self.figures))

    def systems(self, measure: Measure) -> dict[str, float]:
        return {f.system: f.value for f in self.figures if f.measure == measure}

    # -- the table -----------------------------------------------------------------------------

    def compared(self, measure: Measure) -> tuple[dict[str, float], dict[str, float]]:
        """The figures of a measure's rows, and those each row is compared with: Runstream's
        and its peers', or, for a measure with a baseline, every other system's and the
        baseline's (the baseline's alone, without a ratio, when no other system has one)."""
        systems = self.systems(measure)
        if measure.baseline is None:
            ours = {name: value for name, value in systems.items() if name.startswith(RUNSTREAM)}
        else:  # the baseline's figure, with no other system's, is a row of its own
            ours = {n: v for n, v in systems.items() if n != measure.baseline} or systems
        return ours, {name: value for name, value in systems.items() if name not in ours}

    def rows(self) -> list[dict[str, Any]]:
        """A row per measure and Runstream system (or system besides the baseline), with each
        peer's (or the baseline's) figure and the ratio."""
        rows = []
        for measure in self.measures():
            ours, peers = self.compared(measure)
            for name, value in ours.items():
                rows.append(
                    {
                        "measure": measure,
                        "system": name,
                        "value": value,
                        "peers": {
                            peer: (peer_value, ratio(value, peer_value))
                            for peer, peer_value in peers.items()
                        },
                    }
                )
        return rows

    def table(self) -> str:
        lines = [
            "| scenario | measure | Runstream | figure | peer | peer's figure | ratio |",
            "|---|---|---|---:|---|---:|---:|",
        ]
        for row in self.rows():
            measure: Measure = row["measure"]
            better = "more is better" if measure.higher_is_better else "less is better"
            ours = f"{number(row['value'])} {measure.unit}"
            first = f"| {measure.scenario} | {measure.name} ({better}) | {row['system']} | {ours} "
            peers = row["peers"] or {"—": (None, None)}
            for index, (peer, (value, factor)) in enumerate(peers.items()):
                start = first if index == 0 else "| | | | "
                shown = "—" if value is None else f"{number(value)} {measure.unit}"
                lines.append(f"{start}| {peer} | {shown} | {verdict(factor, measure)} |")
        return "\n".join(lines)

    # -- files ---------------------------------------------------------------------------------

    def to_json(self, machine: dict[str, Any], settings: dict[str, Any]) -> str:
        return json.dumps(
            {
                "machine": machine,
                "settings": settings,
                "figures": [
                    {k: v for k, v in asdict(figure.measure).items() if v is not None}
                    | {"system": figure.system, "value": figure.value}
                    | ({"note": figure.note} if figure.note else {})
                    for figure in self.figures
                ],
                "skipped": self.skipped,
            },
            indent=2,
        )

    def chart(self, path: Path, title: str) -> str | None:
        """A PNG of how Runstream's speed compares with each peer's: for every throughput and
        median-latency figure, a bar per peer of Runstream's figure over the peer's (for
        latency, the peer's over Runstream's), on a log scale where right of 1 means Runstream
        leads. None once drawn, else why not (matplotlib missing, no figure to compare)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return "matplotlib is not installed (pip install -e '.[bench]')"
        rows = [row for row in self.rows() if _headline(row["measure"]) and row["peers"]]
        if not rows:
            return "no figures compared with a peer"
        peers = list(dict.fromkeys(peer for row in rows for peer in row["peers"]))
        colours = dict(zip(peers, plt.get_cmap("tab10").colors, strict=False))
        bars = sum(len(row["peers"]) for row in rows)
        figure, axis = plt.subplots(figsize=(13, 1.5 + 0.2 * bars + 0.15 * len(rows)))
        place, ticks = 0.0, []
        for row in rows:
            start = place
            for peer, (_, factor) in row["peers"].items():
                if factor:
                    speed = factor if row["measure"].higher_is_better else 1 / factor
                    bar = axis.barh(place, speed, height=0.9, color=colours[peer], label=peer)
                    axis.bar_label(bar, labels=[f"{speed:.2g}x"], fontsize=7, padding=2)
                place += 1
            ticks.append((start + place - 1) / 2)
            place += 0.6  # a gap between rows
        axis.set_yticks(ticks, [_label(row) for row in rows], fontsize=8)
        axis.invert_yaxis()
        handles, labels = axis.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        axis.legend(
            unique.values(), unique.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1)
        )
        axis.set_xscale("log")
        axis.axvline(1, color="black", linewidth=0.8)
        axis.set_xlabel(
            "Runstream's speed over the peer's (log scale; right of 1: Runstream leads)"
        )
        axis.set_title(title, fontsize=11)
        figure.tight_layout()
        figure.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(figure)
        return None


def _headline(measure: Measure) -> bool:
    """A throughput or a median latency: what the chart shows."""
    return measure.unit.endswith("/s") or "p50" in measure.name


def _label(row: dict[str, Any]) -> str:
    measure: Measure = row["measure"]
    system = f" ({row['system']})" if measure.baseline is not None else ""
    return f"{textwrap.shorten(measure.scenario, 80, placeholder='…')}: {measure.name}{system}"


def ratio(ours: float, theirs: float) -> float | None:
    return None if theirs == 0 else ours / theirs


def verdict(factor: float | None, measure: Measure) -> str:
    """``0.42x (behind)`` or ``2.1x (leads)``: the row's figure over the peer's (or the
    baseline's)."""
    if factor is None:
        return "—"
    leads = factor >= 1 if measure.higher_is_better else factor <= 1
    return f"{factor:.2f}x ({'leads' if leads else 'behind'})"


def number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""

    def first_line(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "not found"
        return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else ""

    model = ""
    with_cpuinfo = Path("/proc/cpuinfo")
    if with_cpuinfo.exists():
        for line in with_cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        memory_kib = int(meminfo.read_text().split()[1])
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": first_line(["node", "--version"]),
        "sqlite": __import__("sqlite3").sqlite_version,
    }
