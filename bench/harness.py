"""``python -m bench``: Runstream beside its peers, every scenario on loopback, in one run.

    python -m bench                  # the whole suite; writes docs/benchmarks/
    python -m bench --smoke          # small and short (about a minute): that it runs, for CI
    python -m bench --only ping,sequential --repeat 5 --out /tmp/figures

Each scenario runs against every system it compares, in turn and in alternating order over
``--repeat`` rounds, and each figure is the median of its rounds: on a small machine shared with
other work, a peer measured in the same minutes is the only fair comparison. The run prints one
table (each Runstream figure, each peer's, and their ratio) and writes ``results.json``,
``results.md`` (the table and the machine) and ``chart.png`` to the output folder.

The benchmark asserts no timing: it fails only when a scenario cannot run or loses messages.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peers import NODE_FOLDER, Server, node_ready, reference_server, runstream_server
from results import Measure, Results, machine

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "docs" / "benchmarks"
# Far above any scenario's own run time: only a hung scenario meets it.
SCENARIO_TIMEOUT = 300


# -- scenarios of the official TypeScript client -------------------------------------------------


@dataclass(frozen=True)
class ClientScenario:
    """A scenario of bench/node/client_bench.mjs, run against each Durable Streams server, and
    the figures taken from its JSON line."""

    name: str
    title: str
    options: dict[str, str]  # the full run's
    smoke_options: dict[str, str]
    figures: list[tuple[Measure, Callable[[dict[str, Any]], float]]]


def _latency(title: str) -> list[tuple[Measure, Callable[[dict[str, Any]], float]]]:
    return [
        (Measure(title, "p50", "ms", False), lambda out: out["latency_ms"]["p50"]),
        (Measure(title, "p99", "ms", False), lambda out: out["latency_ms"]["p99"]),
    ]


SEQUENTIAL = "sequential appends, 100-byte JSON, each awaited (TS client)"
PRODUCER = "idempotent producer, 100-byte JSON (TS client)"
PING = "a plain request's round trip (TS client)"
SSE = "SSE: append → delivery, 100 chunks/s, 1 reader (TS client)"
LONG_POLL = "long-poll: append → delivery, 100 chunks/s, 1 reader (TS client)"

CLIENT_SCENARIOS = [
    ClientScenario(
        "sequential",
        SEQUENTIAL,
        {"count": "2000"},
        {"count": "200"},
        [
            (Measure(SEQUENTIAL, "rate", "appends/s", True), lambda out: out["appends_per_s"]),
            (Measure(SEQUENTIAL, "p50", "ms", False), lambda out: out["latency_ms"]["p50"]),
        ],
    ),
    ClientScenario(
        "producer",
        PRODUCER,
        {"count": "50000"},
        {"count": "5000"},
        [(Measure(PRODUCER, "rate", "messages/s", True), lambda out: out["messages_per_s"])],
    ),
    ClientScenario(
        "ping",
        PING,
        {"count": "2000"},
        {"count": "200"},
        [
            (Measure(PING, "HEAD p50", "ms", False), lambda out: out["client_head"]["p50_ms"]),
            (Measure(PING, "GET p50", "ms", False), lambda out: out["fetch_get"]["p50_ms"]),
        ],
    ),
    ClientScenario("sse_latency", SSE, {"seconds": "10"}, {"seconds": "1"}, _latency(SSE)),
    ClientScenario(
        "longpoll_latency", LONG_POLL, {"seconds": "10"}, {"seconds": "1"}, _latency(LONG_POLL)
    ),
]


class ScenarioFailed(Exception):
    """A scenario could not run, or lost or repeated messages."""


def run_client(server: Server, scenario: ClientScenario, smoke: bool) -> dict[str, Any]:
    options = scenario.smoke_options if smoke else scenario.options
    command = ["node", "client_bench.mjs", "--url", server.url, "--scenario", scenario.name]
    for key, value in options.items():
        command += [f"--{key}", value]
    done = subprocess.run(
        command, cwd=NODE_FOLDER, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT
    )
    lines = done.stdout.strip().splitlines()
    output: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    if done.returncode != 0 or not output.get("ok"):
        raise ScenarioFailed(
            f"{scenario.name} against {server.name} failed ({done.returncode}): "
            f"{output.get('error') or done.stderr[-1500:]}"
        )
    if output.get("missing") or output.get("duplicates") or output.get("verified") is False:
        raise ScenarioFailed(f"{scenario.name} against {server.name} lost messages: {output}")
    return output


def client_scenario(run: Run, scenario: ClientScenario) -> None:
    if (why_not := node_ready()) is not None:
        run.results.skip(scenario.title, why_not)
        return
    samples: dict[tuple[Measure, str], list[float]] = {}
    for round_number in range(run.rounds):
        for server in run.alternating(run.servers, round_number):
            output = run_client(server, scenario, run.smoke)
            for measure, take in scenario.figures:
                samples.setdefault((measure, server.name), []).append(float(take(output)))
    for (measure, system), values in samples.items():
        note = f"median of {len(values)}" if len(values) > 1 else ""
        run.results.add(measure, system, statistics.median(values), note)


# -- the run -------------------------------------------------------------------------------------


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small and short: that it runs")
    parser.add_argument("--repeat", type=int, default=None, help="rounds per scenario (3; smoke 1)")
    parser.add_argument(
        "--only", default="", help="scenarios, comma-separated: " + ", ".join(scenario_names())
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"where the results go ({PUBLISHED.relative_to(ROOT)}; smoke: a temporary folder)",
    )
    return parser.parse_args(argv)


@dataclass
class Run:
    """What every scenario of a run is given: the Durable Streams servers compared (Runstream
    on SQLite first, then the reference server if Node is ready), the settings, where figures
    and server logs go, and the run's exit stack, for servers a scenario starts for itself."""

    servers: list[Server]
    rounds: int
    smoke: bool
    results: Results
    logs: Path
    stack: ExitStack

    def alternating(self, systems: list[Any], round_number: int) -> list[Any]:
        """Who goes first alternates by round: a machine that warms up or slows down favours
        no one."""
        return systems if round_number % 2 == 0 else systems[::-1]


@dataclass(frozen=True)
class Scenario:
    """A scenario that ``--only`` can name, and the function that measures it in a run."""

    name: str
    measure: Callable[[Run], None]


def _client_scenario(scenario: ClientScenario) -> Scenario:
    return Scenario(scenario.name, lambda run: client_scenario(run, scenario))


# Imported here, not at the top: scenario modules build theirs from Run and Scenario above.
from capacity import CAPACITY_SCENARIOS  # noqa: E402
from delivery import DELIVERY_SCENARIOS  # noqa: E402
from layers import LAYER_SCENARIOS  # noqa: E402

SCENARIOS: list[Scenario] = [
    *LAYER_SCENARIOS,
    *(_client_scenario(scenario) for scenario in CLIENT_SCENARIOS),
    *CAPACITY_SCENARIOS,
    *DELIVERY_SCENARIOS,
]


def scenario_names() -> list[str]:
    return [scenario.name for scenario in SCENARIOS]


def servers_of_run(stack: ExitStack, logs: Path, results: Results) -> Iterator[Server]:
    yield stack.enter_context(runstream_server(logs))
    why_not = node_ready()
    if why_not is None:
        yield stack.enter_context(reference_server(logs))
    else:
        results.skip("the Node reference server", why_not)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    wanted = {name.strip() for name in arguments.only.split(",") if name.strip()} or None
    unknown = (wanted or set()) - set(scenario_names())
    if unknown:
        print(f"unknown scenarios: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    rounds = arguments.repeat or (1 if arguments.smoke else 3)
    results = Results()
    with ExitStack() as stack:
        out = arguments.out or (
            Path(stack.enter_context(tempfile.TemporaryDirectory()))
            if arguments.smoke
            else PUBLISHED
        )
        out.mkdir(parents=True, exist_ok=True)
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-logs-")))
        try:
            servers = list(servers_of_run(stack, logs, results))
            run = Run(servers, rounds, arguments.smoke, results, logs, stack)
            for scenario in SCENARIOS:
                if wanted is None or scenario.name in wanted:
                    started = time.monotonic()
                    print(f"{scenario.name} ...", flush=True)
                    scenario.measure(run)
                    print(f"  done in {time.monotonic() - started:.1f} s", flush=True)
        except ScenarioFailed as failure:
            print(f"FAILED: {failure}", file=sys.stderr)
            return 1
        write(results, out, {"smoke": arguments.smoke, "rounds": rounds})
    return 0


def write(results: Results, out: Path, settings: dict[str, Any]) -> None:
    described = machine()
    table = results.table()
    print()
    print(table)
    for skipped in results.skipped:
        print(f"skipped: {skipped}")
    (out / "results.json").write_text(results.to_json(described, settings) + "\n")
    why_no_chart = results.chart(
        out / "chart.png",
        f"Runstream and its peers, {described['cores']} cores, {described['date']}",
    )
    lines = [
        "# Benchmark results",
        "",
        "Written by `python -m bench`; every figure is the median of "
        f"{settings['rounds']} round(s), each system measured in the same run.",
        "",
        "Machine: " + ", ".join(f"{key} {value}" for key, value in described.items()),
        "",
        table,
        "",
        *[f"- skipped: {skipped}" for skipped in results.skipped],
        "",
        "![chart](chart.png)" if why_no_chart is None else f"(no chart: {why_no_chart})",
        "",
    ]
    (out / "results.md").write_text("\n".join(lines))
    print(f"\nwritten to {out}" + ("" if why_no_chart is None else f" (no chart: {why_no_chart})"))
