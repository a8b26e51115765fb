"""Evaluation harness for the collaboration strategies: every strategy and every single model on the same
problems with exact answers, scored against them.

    .venv/bin/python bench/collab_eval.py [--problems 20 --seed 0 | --jsonl FILE]
        [--target HOST:PORT --api-key KEY | --config aibattle.toml]
        [--models a,b,c] [--primary a] [--secondary b] [--strategies debate,vote]
        [--max-iterations 2] [--max-tokens 256] [--samples 5] [--concurrency 1]
        [--out report.json] [--plot chart.png]

Problems: `problems.generate` (seeded multi-step arithmetic and word problems) or a JSONL file of
{question, answer}. Each prompt asks for a closing "FINAL ANSWER: <integer>" line; the answer read from
an output is the last integer of its last FINAL ANSWER line (the reasoning parser's convention), else of
its last line. The server: `--target` (with `--api-key`, or $AIBATTLE_API_KEY) talks to a running one over
gRPC; otherwise `python -m server` is started on a free loopback port with `--config` (none: the embedded
model) and a throwaway database, and stopped at the end.

The strategies are those the schema allows (CreateReasoningRequest.collaboration_strategy's allowed
values), or `--strategies`. The models are `--models`, else every text and collaboration model
ListModels lists; the strategies' primary and secondary are `--primary`/`--secondary`, else the first two
single models, and the rest are the additional models of the strategies that take them (one that refuses
them runs without). A model with the capability "collaboration" is called like the others but reported
as a collaboration model, not a single one, with its session's stop read back.

Prints, per strategy and per model: accuracy with a 95% Wilson interval, model calls, tokens and cost per
problem, latency p50/p95, how the sessions stopped;
each strategy's gain over the best single model and over the voting baselines (vote, self_consistency);
the cascade's cost against always asking its secondary. `--out` writes all of it (and every answer) as
JSON; `--plot` draws cost against accuracy (needs matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from harness import Child, machine, percentile
from problems import Problem, generate, load_jsonl

from aibattle.v1 import (
    completions_pb2,
    completions_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    options_pb2,
    reasoning_pb2,
    reasoning_pb2_grpc,
)
from server.orchestration.reasoning import parsing

ROOT = Path(__file__).resolve().parent.parent
INSTRUCTION = (
    "Solve the problem step by step. End your reply with one line of the form 'FINAL ANSWER: <integer>'."
)
BASELINES = ("vote", "self_consistency")
"""The majority-vote strategies every other one is measured against (arXiv 2508.17536, 2502.08788)."""
Z95 = 1.959963984540054
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_SERVING = re.compile(r"serving gRPC on (\S+?)[,;]")


# --- scoring ---------------------------------------------------------------------------------------


def extract_answer(text: str) -> int | None:
    """The integer a reply ends on: the last number of its last FINAL ANSWER line, else of its last
    non-empty line (`parsing.final_answer`); None when there is none or it is not a whole number."""
    numbers = _NUMBER.findall(parsing.final_answer(text))
    if not numbers:
        return None
    whole, _, fraction = numbers[-1].replace(",", "").partition(".")
    return None if fraction.strip("0") else int(whole)  # exact: no float on the way


def wilson(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 1) for no trials."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    margin = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - margin), min(1.0, centre + margin)


# --- what runs -------------------------------------------------------------------------------------


def allowed_strategies() -> list[str]:
    """The strategies the schema allows, in its order: the source of truth the server validates against."""
    options = reasoning_pb2.CreateReasoningRequest.DESCRIPTOR.fields_by_name[
        "collaboration_strategy"
    ].GetOptions()
    return list(options.Extensions[options_pb2.allowed_values].values)


@dataclass(frozen=True)
class Entry:
    """One row of the report: a strategy, a single model, or a collaboration model."""

    kind: str  # "strategy", "model" or "collaboration_model"
    name: str  # the strategy or the model id


@dataclass
class Outcome:
    """One entry on one problem."""

    problem: int
    expected: int
    answer: int | None = None
    correct: bool = False
    tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    error: str = ""
    reasoning_id: str = ""
    stop_reason: str = ""
    secondary_only_cost_usd: float = 0.0
    escalated: bool = False
    steps: int = 0  # model calls recorded: 1 for a single model, the session's iterations otherwise
    output: str = ""


@dataclass
class Panel:
    primary: str
    secondary: str
    additional: list[str] = field(default_factory=list)


class Runner:
    """Calls the server: one completion per model and problem, one session (wait=True) per strategy."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        api_key: str,
        *,
        panel: Panel,
        max_iterations: int,
        max_tokens: int | None,
        samples: int | None,
        timeout: float,
    ) -> None:
        self._completions = completions_pb2_grpc.CompletionServiceStub(channel)
        self._reasoning = reasoning_pb2_grpc.ReasoningServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._panel = panel
        self._max_iterations = max_iterations
        self._max_tokens = max_tokens
        self._samples = samples
        self._timeout = timeout
        self._without_additional: set[str] = set()

    async def run(self, entry: Entry, index: int, problem: Problem) -> Outcome:
        outcome = Outcome(problem=index, expected=problem.answer)
        prompt = f"{problem.question}\n\n{INSTRUCTION}"
        started = time.perf_counter()
        try:
            if entry.kind == "strategy":
                await self._session(entry.name, prompt, outcome)
            else:
                await self._completion(entry.name, prompt, outcome)
        except grpc.aio.AioRpcError as exc:
            outcome.error = f"{exc.code().name}: {exc.details()}"
        outcome.latency_ms = (time.perf_counter() - started) * 1000
        if not outcome.error:
            outcome.answer = extract_answer(outcome.output)
            outcome.correct = outcome.answer == problem.answer
        return outcome

    async def _completion(self, model: str, prompt: str, outcome: Outcome) -> None:
        request = completions_pb2.CreateCompletionRequest(model=model, prompt=prompt)
        if self._max_tokens is not None:
            request.max_tokens = self._max_tokens
        response = await self._completions.CreateCompletion(
            request, metadata=self._metadata, timeout=self._timeout
        )
        outcome.output = response.content
        outcome.steps = 1
        outcome.tokens = response.usage.total_tokens
        outcome.cost_usd = response.usage.cost_usd
        if response.reasoning_id:  # a collaboration model: its session says how it stopped
            session = await self._reasoning.GetReasoning(
                reasoning_pb2.GetReasoningRequest(reasoning_id=response.reasoning_id),
                metadata=self._metadata,
                timeout=self._timeout,
            )
            self._read_session(session.reasoning, outcome)

    async def _session(self, strategy: str, prompt: str, outcome: Outcome) -> None:
        request = reasoning_pb2.CreateReasoningRequest(
            primary_model=self._panel.primary,
            secondary_model=self._panel.secondary,
            prompt=prompt,
            collaboration_strategy=strategy,
            max_iterations=self._max_iterations,
            wait=True,
        )
        if self._max_tokens is not None:
            request.max_tokens = self._max_tokens
        if self._samples is not None and strategy == "self_consistency":  # the others refuse it
            request.samples = self._samples
        if self._panel.additional and strategy not in self._without_additional:
            request.additional_models.extend(self._panel.additional)
        try:
            reasoning = await self._create(request)
        except grpc.aio.AioRpcError as exc:
            # Only some strategies take more than two models; the server says which field it refuses.
            refused = exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "additional_models" in (
                exc.details() or ""
            )
            if not (refused and request.additional_models):
                raise
            self._without_additional.add(strategy)
            del request.additional_models[:]
            reasoning = await self._create(request)
        self._read_session(reasoning, outcome)
        if reasoning.HasField("error") and reasoning.error.message:
            outcome.error = reasoning.error.message
        outcome.output = reasoning.final_result

    @staticmethod
    def _read_session(reasoning: reasoning_pb2.Reasoning, outcome: Outcome) -> None:
        outcome.reasoning_id = reasoning.reasoning_id
        outcome.stop_reason = reasoning.stop_reason
        outcome.tokens = reasoning.usage.total_tokens
        outcome.cost_usd = reasoning.usage.cost_usd
        outcome.secondary_only_cost_usd = reasoning.usage.secondary_only_cost_usd
        outcome.escalated = reasoning.usage.escalated
        outcome.steps = len(reasoning.iterations)

    async def _create(self, request: reasoning_pb2.CreateReasoningRequest) -> reasoning_pb2.Reasoning:
        response = await self._reasoning.CreateReasoning(
            request, metadata=self._metadata, timeout=self._timeout
        )
        return response.reasoning


async def list_models(channel: grpc.aio.Channel, api_key: str) -> list[models_pb2.Model]:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    models: list[models_pb2.Model] = []
    token = ""
    while True:
        page = await stub.ListModels(models_pb2.ListModelsRequest(page_token=token), metadata=metadata)
        models.extend(page.models)
        token = page.next_page_token
        if not token:
            return models


def choose(listed: Sequence[models_pb2.Model], args: argparse.Namespace) -> tuple[list[Entry], Panel]:
    """The entries to run and the strategies' panel; SystemExit names a model the server lacks."""
    known = {m.id: m for m in listed}
    for m in listed:
        for alias in m.aliases:
            known.setdefault(alias, m)
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
    else:
        names = [
            m.id
            for m in listed
            if ("text" in m.capabilities and "embedding" not in m.capabilities)
            or "collaboration" in m.capabilities
        ]
    for name in [*names, args.primary or "", args.secondary or ""]:
        if name and name not in known:
            raise SystemExit(f"collab_eval: the server has no model {name!r} (it lists {', '.join(known)})")
    collaborative = {n for n in names if "collaboration" in known[n].capabilities}
    singles = [n for n in names if n not in collaborative]
    if not singles and not (args.primary or args.secondary):
        raise SystemExit("collab_eval: no single model to run the strategies with (--models, --primary)")
    primary = args.primary or singles[0]
    secondary = args.secondary or (singles[1] if len(singles) > 1 else primary)
    panel = Panel(primary, secondary, [n for n in singles if n not in {primary, secondary}])
    strategies = allowed_strategies()
    if args.strategies is not None:
        wanted = [s.strip() for s in args.strategies.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in strategies]
        if unknown:
            raise SystemExit(f"collab_eval: unknown strategies {unknown} (the schema allows {strategies})")
        strategies = wanted
    entries = [Entry("model", n) for n in singles]
    entries += [Entry("collaboration_model", n) for n in names if n in collaborative]
    entries += [Entry("strategy", s) for s in strategies]
    return entries, panel


async def run_all(
    runner: Runner, entries: Sequence[Entry], problems: Sequence[Problem], concurrency: int
) -> dict[Entry, list[Outcome]]:
    """Every entry on every problem, at most `concurrency` calls at a time, entry after entry (so that
    a slow entry's calls do not share the server with another entry's, which would blur latencies)."""
    results: dict[Entry, list[Outcome]] = {}
    gate = asyncio.Semaphore(concurrency)

    async def one(entry: Entry, index: int, problem: Problem) -> Outcome:
        async with gate:
            return await runner.run(entry, index, problem)

    for entry in entries:
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(one(entry, i, p) for i, p in enumerate(problems)))
        results[entry] = list(outcomes)
        right = sum(o.correct for o in outcomes)
        failed = sum(bool(o.error) for o in outcomes)
        print(
            f"  {entry.kind:<19} {entry.name:<22} {right}/{len(problems)} right"
            + (f", {failed} failed" if failed else "")
            + f"  ({time.perf_counter() - started:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    return results


# --- the report ------------------------------------------------------------------------------------


def summarize(entry: Entry, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    n = len(outcomes)
    correct = sum(o.correct for o in outcomes)
    low, high = wilson(correct, n)
    latencies = [o.latency_ms for o in outcomes]
    tokens = sum(o.tokens for o in outcomes)
    cost = sum(o.cost_usd for o in outcomes)
    row: dict[str, Any] = {
        "kind": entry.kind,
        "name": entry.name,
        "problems": n,
        "correct": correct,
        "errors": sum(bool(o.error) for o in outcomes),
        "unanswered": sum(o.answer is None and not o.error for o in outcomes),
        "accuracy": correct / n if n else 0.0,
        "ci95": [low, high],
        "tokens": tokens,
        "tokens_per_problem": tokens / n if n else 0.0,
        "steps_per_problem": sum(o.steps for o in outcomes) / n if n else 0.0,
        "cost_usd": cost,
        "cost_per_problem_usd": cost / n if n else 0.0,
        "latency_ms": {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95)},
        "stop_reasons": _count(o.stop_reason for o in outcomes if o.stop_reason),
    }
    return row


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def report(
    results: dict[Entry, list[Outcome]], problems: Sequence[Problem], setup: dict[str, Any]
) -> dict[str, Any]:
    """The whole report: the rows, the gains, the cascade's saving, and every outcome."""
    rows = [summarize(entry, outcomes) for entry, outcomes in results.items()]
    singles = [r for r in rows if r["kind"] == "model"]
    best = max(singles, key=lambda r: r["accuracy"], default=None)
    # A baseline that failed on every problem measures nothing: no gain is reported over it.
    baselines = {
        r["name"]: r
        for r in rows
        if r["kind"] == "strategy" and r["name"] in BASELINES and r["errors"] < r["problems"]
    }
    for row in rows:
        if row["kind"] == "model":
            continue
        row["gain_over_best_single"] = row["accuracy"] - best["accuracy"] if best else None
        row["gain_over"] = {
            name: row["accuracy"] - base["accuracy"]
            for name, base in baselines.items()
            if name != row["name"]
        }
    cascade: dict[str, Any] | None = None
    cascade_outcomes = next((o for e, o in results.items() if e == Entry("strategy", "cascade")), None)
    if cascade_outcomes:
        ran = [o for o in cascade_outcomes if not o.error]
        cost = sum(o.cost_usd for o in ran)
        secondary_only = sum(o.secondary_only_cost_usd for o in ran)
        cascade = {
            "sessions": len(ran),
            "escalated": sum(o.escalated for o in ran),
            "cost_usd": cost,
            "secondary_only_cost_usd": secondary_only,
            "saving_usd": secondary_only - cost,
            "saving_fraction": (secondary_only - cost) / secondary_only if secondary_only else None,
        }
    return {
        "setup": setup,
        "best_single_model": best["name"] if best else None,
        "rows": rows,
        "cascade": cascade,
        "problems": [asdict(p) for p in problems],
        "outcomes": {f"{e.kind}:{e.name}": [asdict(o) for o in outcomes] for e, outcomes in results.items()},
    }


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value * 100:+.0f}"


def print_report(data: dict[str, Any]) -> None:
    setup = data["setup"]
    print(
        f"collab_eval: {setup['problems']} problems ({setup['source']}), panel {setup['panel']['primary']} / "
        f"{setup['panel']['secondary']}"
        + (f" + {', '.join(setup['panel']['additional'])}" if setup["panel"]["additional"] else "")
        + f", max_iterations {setup['max_iterations']}, server {setup['server']}"
    )
    print(f"  {setup['machine']}")
    baselines = [
        b for b in BASELINES if any(r["name"] == b and r["kind"] == "strategy" for r in data["rows"])
    ]
    header = (
        f"{'':<3}{'entry':<24}{'acc':>6} {'95% CI':>13} {'steps':>6} {'tokens/pb':>10} {'cost/pb $':>11} "
        f"{'p50 ms':>9} {'p95 ms':>9} {'vs best':>8}" + "".join(f" {'vs ' + b[:11]:>14}" for b in baselines)
    )
    print(header)
    for row in data["rows"]:
        tag = {"model": "M", "strategy": "S", "collaboration_model": "C"}[row["kind"]]
        low, high = row["ci95"]
        line = (
            f"{tag:<3}{row['name']:<24}{row['accuracy'] * 100:5.0f}% [{low * 100:4.0f}%,{high * 100:4.0f}%] "
            f"{row['steps_per_problem']:6.1f} {row['tokens_per_problem']:10.0f} "
            f"{row['cost_per_problem_usd']:11.6f} "
            f"{row['latency_ms']['p50']:9.0f} {row['latency_ms']['p95']:9.0f}"
        )
        if row["kind"] != "model":
            line += f" {_signed(row['gain_over_best_single']):>8}"
            line += "".join(f" {_signed(row['gain_over'].get(b)):>14}" for b in baselines)
        if row["errors"]:
            line += f"   ({row['errors']} failed)"
        if row["stop_reasons"]:
            line += "   stops: " + ", ".join(f"{why} {n}" for why, n in sorted(row["stop_reasons"].items()))
        print(line)
    print(
        "  M model, S strategy, C collaboration model; gains in accuracy points; best single model: "
        f"{data['best_single_model']}"
    )
    if (cascade := data["cascade"]) is not None:
        fraction = cascade["saving_fraction"]
        saving = cascade["saving_usd"]
        if not cascade["secondary_only_cost_usd"] and not cascade["cost_usd"]:
            print(
                f"cascade: escalated {cascade['escalated']} of {cascade['sessions']}; its models are free, "
                "so there is no cost to compare (configure pricing to see the saving)"
            )
            return
        print(
            f"cascade: ${cascade['cost_usd']:.6f} against ${cascade['secondary_only_cost_usd']:.6f}"
            f" for always asking the secondary: {'saved' if saving >= 0 else 'cost'} ${abs(saving):.6f}"
            + (
                f" ({abs(fraction) * 100:.0f}% {'less' if saving >= 0 else 'more'})"
                if fraction is not None
                else ""
            )
            + f"; escalated {cascade['escalated']} of {cascade['sessions']}"
        )


def _pyplot() -> Any:
    """matplotlib's pyplot, drawing to files; SystemExit saying how to get it when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "collab_eval: --plot needs matplotlib, which is not installed "
            "(`.venv/bin/pip install matplotlib`, or `make install`: it is in the dev extra)"
        ) from None
    return plt


def plot(data: dict[str, Any], path: Path) -> None:
    """Cost per problem against accuracy, one point per row with its interval (tokens instead of cost
    when every model is free, as the embedded one is); rows that failed on every problem are left out."""
    plt = _pyplot()
    rows = [r for r in data["rows"] if r["errors"] < r["problems"]]
    priced = any(r["cost_usd"] > 0 for r in rows)
    figure, axes = plt.subplots(figsize=(8, 5))
    markers = {"model": "o", "strategy": "s", "collaboration_model": "^"}
    for row in rows:
        x = row["cost_per_problem_usd"] if priced else row["tokens_per_problem"]
        y = row["accuracy"]
        low, high = row["ci95"]
        axes.errorbar(x, y, yerr=[[y - low], [high - y]], fmt=markers[row["kind"]], capsize=3)
        axes.annotate(row["name"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axes.set_xlabel("cost per problem (USD)" if priced else "tokens per problem (every model is free)")
    axes.set_ylabel("accuracy (95% Wilson interval)")
    axes.set_ylim(-0.05, 1.05)
    axes.set_title(f"{data['setup']['problems']} problems ({data['setup']['source']})")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --- the server ------------------------------------------------------------------------------------


def start_server(config: str | None, work: Path, within: float = 180.0) -> tuple[Child, str]:
    """`python -m server` on a free loopback port, without HTTP, on a database of its own in `work`;
    its gRPC target once it says it serves."""
    env = dict(os.environ)
    env.update(
        AIBATTLE_GRPC_ADDR="127.0.0.1:0",
        AIBATTLE_HTTP_ADDR="",
        AIBATTLE_DB=str(work / "aibattle.db"),
        AIBATTLE_LOG_LEVEL="warning",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "gen"), env.get("PYTHONPATH", "")]),
    )
    env.pop("AIBATTLE_WORKERS", None)
    argv = [sys.executable, "-m", "server", *(["--config", config] if config else [])]
    log = work / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT
        )
    child = Child("server", proc, log)
    until = time.monotonic() + within
    while time.monotonic() < until and proc.poll() is None:
        if match := _SERVING.search(log.read_text(errors="replace")):
            return child, match.group(1)
        time.sleep(0.05)
    child.stop()
    raise child.failed()


async def evaluate(args: argparse.Namespace, target: str, server: str) -> dict[str, Any]:
    if args.jsonl:
        problems, source = load_jsonl(Path(args.jsonl)), args.jsonl
    else:
        problems, source = generate(args.problems, args.seed), f"generated, seed {args.seed}"
    api_key = args.api_key if args.api_key is not None else os.environ.get("AIBATTLE_API_KEY", "")
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            listed = await list_models(channel, api_key)
        except grpc.aio.AioRpcError as exc:  # no server there, or the key is refused: said plainly
            raise SystemExit(
                f"collab_eval: ListModels on {target}: {exc.code().name}: {exc.details()}"
            ) from None
        entries, panel = choose(listed, args)
        runner = Runner(
            channel,
            api_key,
            panel=panel,
            max_iterations=args.max_iterations,
            max_tokens=args.max_tokens,
            samples=args.samples,
            timeout=args.timeout,
        )
        print(
            f"collab_eval: {len(entries)} entries × {len(problems)} problems on {server}",
            file=sys.stderr,
            flush=True,
        )
        results = await run_all(runner, entries, problems, args.concurrency)
    setup = {
        "problems": len(problems),
        "source": source,
        "server": server,
        "panel": asdict(panel),
        "max_iterations": args.max_iterations,
        "max_tokens": args.max_tokens,
        "samples": args.samples,
        "instruction": INSTRUCTION,
        "machine": machine(),
    }
    return report(results, problems, setup)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--problems", type=int, default=20, help="generated problems (default 20)")
    source.add_argument("--jsonl", help="a file of {question, answer} lines instead")
    parser.add_argument("--seed", type=int, default=0, help="the generator's seed (default 0)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--target", help="host:port of a running server's gRPC")
    where.add_argument(
        "--config", help="start a server on this TOML configuration (default: the embedded model)"
    )
    parser.add_argument("--api-key", help="the key to call with (default $AIBATTLE_API_KEY)")
    parser.add_argument("--models", help="comma-separated model ids (default: every text model listed)")
    parser.add_argument("--primary", help="the strategies' primary model (default: the first of --models)")
    parser.add_argument("--secondary", help="their secondary model (default: the second, else the primary)")
    parser.add_argument(
        "--strategies", help="comma-separated strategies (default: every one the schema allows)"
    )
    parser.add_argument("--max-iterations", type=int, default=2, help="each strategy's rounds (default 2)")
    parser.add_argument("--max-tokens", type=int, help="tokens per step or completion (default: the model's)")
    parser.add_argument("--samples", type=int, help="self_consistency's samples (default: the server's, 5)")
    parser.add_argument("--concurrency", type=int, default=1, help="calls at a time (default 1)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per call (default 600)")
    parser.add_argument("--out", help="write the report as JSON here")
    parser.add_argument("--plot", help="draw cost against accuracy into this PNG (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.problems < 1 or args.concurrency < 1 or args.max_iterations < 1:
        parser.error("--problems, --concurrency and --max-iterations must be at least 1")
    if args.plot:
        _pyplot()  # before the run, not after it

    # A SIGTERM unwinds like Ctrl-C does, through the `finally` that stops the server we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    child: Child | None = None
    with tempfile.TemporaryDirectory(prefix="collab-eval-") as work:
        if args.target:
            target = server = args.target
        else:
            child, target = start_server(args.config, Path(work))
            server = f"started ({args.config or 'embedded model'})"
        try:
            data = asyncio.run(evaluate(args, target, server))
        finally:
            if child is not None:
                child.stop()
    print_report(data)
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.out}")
    if args.plot:
        plot(data, Path(args.plot))
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
