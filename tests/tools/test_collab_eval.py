"""bench/collab_eval.py: the problems it generates, how it reads and scores answers, and a whole run on
scripted models whose right and wrong answers are known, so the accuracy it must report is known."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import collab_eval  # noqa: E402
import problems  # noqa: E402

# Problems 1-3 have the answer 7, problem 4 has 9: a model that always says 7 is right 3 times in 4.
JSONL = [
    {"question": "What is 3 + 4?", "answer": 7},
    {"question": "What is 10 - 3?", "answer": "7"},
    {"question": "What is 14 / 2?", "answer": 7},
    {"question": "What is 4 + 5?", "answer": 9},
]
CONFIG = """
[[models]]
id = "right"
provider = "scripted"
capabilities = ["text"]
script = ["Three and four make seven.\\nFINAL ANSWER: 7"]
pricing = { input = 0.001, output = 0.002 }

[[models]]
id = "right-too"
provider = "scripted"
capabilities = ["text"]
script = ["I get 7 as well.\\nVERDICT: ACCEPT\\nFINAL ANSWER: 7"]
pricing = { input = 0.002, output = 0.004 }

[[models]]
id = "wrong"
provider = "scripted"
capabilities = ["text"]
script = ["It is 5, I think.\\nFINAL ANSWER: 5"]
pricing = { input = 0.001, output = 0.001 }

[[collaborations]]
id = "panel"
strategy = "vote"
primary = "right"
secondary = "right-too"
additional_models = ["wrong"]
"""


# --- problems --------------------------------------------------------------------------------------


def test_generated_problems_are_seeded_and_mixed() -> None:
    first = problems.generate(12, seed=3)
    assert first == problems.generate(12, seed=3)
    assert first != problems.generate(12, seed=4)
    assert {p.kind for p in first} == {"arithmetic", "word"}
    assert all(isinstance(p.answer, int) for p in first)
    assert len({p.question for p in first}) == 12


def test_generated_arithmetic_answers_are_the_expressions_values() -> None:
    arithmetic = [p for p in problems.generate(60, seed=11) if p.kind == "arithmetic"]
    assert len(arithmetic) == 20
    for p in arithmetic:
        expression = re.match(r"Compute (.+?)(?:, where .*)?\.$", p.question)
        assert expression is not None, p.question
        assert eval(expression.group(1), {"__builtins__": {}}) == p.answer, p.question


def test_generated_word_problems_state_the_numbers_their_answers_come_from() -> None:
    shop = next(p for p in problems.generate(6, seed=5) if p.question.startswith("A shop"))
    stock, per_day, days, delivery = map(int, re.findall(r"\d+", shop.question))
    assert shop.answer == stock - per_day * days + delivery
    boxes = next(p for p in problems.generate(6, seed=5) if p.question.startswith("There are"))
    count, per_box, broken, friends = map(int, re.findall(r"\d+", boxes.question))
    assert (count * per_box - broken) % friends == 0
    assert boxes.answer == (count * per_box - broken) // friends


def test_jsonl_problems_and_errors_naming_the_line(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps(item) for item in JSONL) + "\n\n")
    assert [p.answer for p in problems.load_jsonl(good)] == [7, 7, 7, 9]
    for line, why in [
        ('{"question": "q"}', "expected an object"),
        ('{"question": "q", "answer": "seven"}', "the answer must be an integer"),
        ('{"question": "q", "answer": 1.5}', "the answer must be an integer"),
        ("not json", "not JSON"),
    ]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps(JSONL[0]) + "\n" + line + "\n")
        with pytest.raises(ValueError, match=f"bad.jsonl:2: {why}"):
            problems.load_jsonl(bad)


# --- scoring ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("So 3 + 4 = 7.\nFINAL ANSWER: 7", 7),
        ("**Final answer:** 1,234 apples", 1234),
        ("FINAL ANSWER: 12\nSome afterthought with 99 in it", 12),  # the FINAL line wins over the last line
        ("First 3, then 5, so the total is -8.", -8),  # no FINAL line: the last line's last number
        ("12 + 30 = 42\nThat's it: 42.", 42),
        ("FINAL ANSWER: 42.0", 42),
        ("FINAL ANSWER: 12.5", None),
        ("FINAL ANSWER: 123456789012345678901", 123456789012345678901),
        ("I cannot tell.", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, answer: int | None) -> None:
    assert collab_eval.extract_answer(text) == answer


def test_wilson_interval() -> None:
    low, high = collab_eval.wilson(3, 4)
    assert low == pytest.approx(0.3006, abs=1e-4) and high == pytest.approx(0.9544, abs=1e-4)
    assert collab_eval.wilson(0, 10)[0] == pytest.approx(0.0)
    assert collab_eval.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert collab_eval.wilson(0, 0) == (0.0, 1.0)


def test_strategies_come_from_the_schema() -> None:
    strategies = collab_eval.allowed_strategies()
    assert {"iterative_refinement", "debate", "mixture", "critique", "cascade"} <= set(strategies)
    assert {"self_consistency", "vote"} <= set(strategies)


# --- a whole run -----------------------------------------------------------------------------------


def run_harness(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    config = tmp_path / "scripted.toml"
    config.write_text(CONFIG)
    jsonl = tmp_path / "problems.jsonl"
    jsonl.write_text("\n".join(json.dumps(item) for item in JSONL) + "\n")
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIBATTLE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "gen"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "collab_eval.py"),
            "--config",
            str(config),
            "--jsonl",
            str(jsonl),
            "--out",
            str(out),
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads(out.read_text())


def test_a_run_on_scripted_models_reports_the_accuracy_it_must(tmp_path: Path) -> None:
    done, report = run_harness(tmp_path, "--models", "right,right-too,wrong,panel", "--max-iterations", "1")
    rows = {(r["kind"], r["name"]): r for r in report["rows"]}
    strategies = collab_eval.allowed_strategies()
    assert set(rows) == {
        ("model", "right"),
        ("model", "right-too"),
        ("model", "wrong"),
        ("collaboration_model", "panel"),
    } | {("strategy", s) for s in strategies}
    assert report["setup"]["panel"] == {"primary": "right", "secondary": "right-too", "additional": ["wrong"]}
    assert report["setup"]["problems"] == 4

    # Single models: exactly what their scripts say against the answers.
    assert rows["model", "right"]["correct"] == 3 and rows["model", "right"]["accuracy"] == 0.75
    assert rows["model", "right-too"]["accuracy"] == 0.75
    assert rows["model", "wrong"]["correct"] == 0 and rows["model", "wrong"]["accuracy"] == 0.0
    assert rows["model", "right"]["ci95"] == pytest.approx(list(collab_eval.wilson(3, 4)))
    assert report["best_single_model"] == "right"
    assert rows["model", "right"]["steps_per_problem"] == 1
    assert rows["strategy", "vote"]["steps_per_problem"] == 3  # one answer per model, no judge needed
    for outcome in report["outcomes"]["model:wrong"]:
        assert outcome["answer"] == 5 and not outcome["correct"] and outcome["tokens"] > 0

    # Every strategy's panel is led by models that say 7 (vote: 2 of 3, the wrong one outvoted), so each
    # ends on 7: right on the three 7s, wrong on the 9; all of it ran and was paid for.
    for strategy in strategies:
        row = rows["strategy", strategy]
        assert row["errors"] == 0, (strategy, report["outcomes"][f"strategy:{strategy}"][0]["error"])
        assert row["correct"] == 3 and row["accuracy"] == 0.75, strategy
        assert row["tokens"] > 0 and row["cost_usd"] > 0, strategy
        assert row["latency_ms"]["p50"] > 0 and row["latency_ms"]["p95"] >= row["latency_ms"]["p50"]
        assert row["gain_over_best_single"] == 0.0
        assert all(gain == 0.0 for gain in row["gain_over"].values())
        assert set(row["gain_over"]) == {"vote", "self_consistency"} - {strategy}
        assert sum(row["stop_reasons"].values()) == 4, (strategy, row["stop_reasons"])
        for outcome in report["outcomes"][f"strategy:{strategy}"]:
            assert outcome["reasoning_id"] and outcome["answer"] == 7
    # The secondary's script approves and accepts, so those strategies stop on it; and the votes are won.
    assert rows["strategy", "vote"]["stop_reasons"] == {"majority": 4}
    assert rows["strategy", "self_consistency"]["stop_reasons"] == {"majority": 4}
    assert rows["strategy", "iterative_refinement"]["stop_reasons"] == {"approved": 4}
    assert rows["strategy", "critique"]["stop_reasons"] == {"accepted": 4}
    assert rows["strategy", "cascade"]["stop_reasons"] == {"not_escalated": 4}

    # The collaboration model runs vote over the same panel: the same answers, the same usage.
    panel, vote = rows["collaboration_model", "panel"], rows["strategy", "vote"]
    assert panel["accuracy"] == 0.75 and panel["stop_reasons"] == {"majority": 4}
    assert panel["tokens"] == vote["tokens"] and panel["cost_usd"] == pytest.approx(vote["cost_usd"])
    assert panel["gain_over"] == {"vote": 0.0, "self_consistency": 0.0}
    assert all(o["reasoning_id"].startswith("reas-") for o in report["outcomes"]["collaboration_model:panel"])

    cascade = report["cascade"]
    outcomes = report["outcomes"]["strategy:cascade"]
    assert cascade["sessions"] == 4
    assert cascade["cost_usd"] == pytest.approx(sum(o["cost_usd"] for o in outcomes))
    assert cascade["secondary_only_cost_usd"] == pytest.approx(
        sum(o["secondary_only_cost_usd"] for o in outcomes)
    )
    assert cascade["secondary_only_cost_usd"] > 0
    assert cascade["saving_usd"] == pytest.approx(cascade["secondary_only_cost_usd"] - cascade["cost_usd"])
    assert cascade["escalated"] == 0 and not any(o["escalated"] for o in outcomes)

    # The printed table has a line per row, and the cascade's comparison.
    for strategy in strategies:
        assert re.search(rf"^S\s+{strategy}\s+75% \[\s*30%,\s*95%\]\s+\d+\.\d ", done.stdout, re.MULTILINE), (
            done.stdout
        )
    assert re.search(r"^M\s+wrong\s+0% \[\s*0%,\s*49%\]", done.stdout, re.MULTILINE)
    assert "cascade: $" in done.stdout


def test_a_model_the_server_lacks_is_named(tmp_path: Path) -> None:
    config = tmp_path / "scripted.toml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIBATTLE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "gen"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "collab_eval.py"), "--config", str(config)),
            *("--problems", "2", "--models", "right,nope"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode != 0
    assert "the server has no model 'nope'" in done.stderr


def test_plot_draws_a_png_or_says_what_is_missing_before_running(tmp_path: Path) -> None:
    chart = tmp_path / "chart.png"
    if importlib.util.find_spec("matplotlib") is None:
        config = tmp_path / "scripted.toml"
        config.write_text(CONFIG)
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "collab_eval.py"),
                "--config",
                str(config),
                "--plot",
                str(chart),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")])},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0 and "--plot needs matplotlib" in done.stderr
        assert "entries" not in done.stderr  # refused before any server started or call was made
    else:
        _, report = run_harness(tmp_path, "--strategies", "cascade", "--plot", str(chart))
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert report["rows"]


def test_report_gains_skip_a_baseline_that_never_ran_and_free_cascades_say_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    Entry, Outcome = collab_eval.Entry, collab_eval.Outcome
    answers = [7, 7, 7, 9]

    def outcomes(right: int, *, error: str = "", **fields: Any) -> list[Any]:
        return [
            Outcome(
                problem=i, expected=a, correct=i < right, error=error, latency_ms=10.0 * (i + 1), **fields
            )
            for i, a in enumerate(answers)
        ]

    results = {
        Entry("model", "a"): outcomes(1),
        Entry("model", "b"): outcomes(2),
        Entry("strategy", "debate"): outcomes(4),
        Entry("strategy", "vote"): outcomes(3),
        Entry("strategy", "self_consistency"): outcomes(0, error="INVALID_ARGUMENT: not here"),
        Entry("strategy", "cascade"): outcomes(2, escalated=True),
    }
    problem_set = [problems.Problem(f"q{i}", a) for i, a in enumerate(answers)]
    setup = {"problems": 4, "source": "test", "server": "none", "max_iterations": 1, "machine": "m"}
    setup["panel"] = {"primary": "a", "secondary": "b", "additional": []}
    data = collab_eval.report(results, problem_set, setup)
    rows = {r["name"]: r for r in data["rows"]}
    assert data["best_single_model"] == "b"
    assert rows["debate"]["gain_over_best_single"] == 0.5
    assert rows["debate"]["gain_over"] == {"vote": 0.25}  # self_consistency failed everywhere: no baseline
    assert rows["vote"]["gain_over"] == {}
    assert rows["self_consistency"]["errors"] == 4
    assert rows["vote"]["latency_ms"] == {"p50": 30.0, "p95": 40.0}
    assert data["cascade"]["escalated"] == 4 and data["cascade"]["saving_fraction"] is None
    collab_eval.print_report(data)
    assert "its models are free, so there is no cost to compare" in capsys.readouterr().out


def test_a_running_server_with_keys_is_called_with_the_key_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "scripted.toml"
    config.write_text(CONFIG)
    admin = "collab-eval-admin-key-0123456789"
    monkeypatch.setenv("AIBATTLE_ADMIN_KEY", admin)
    server, target = collab_eval.start_server(str(config), tmp_path)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIBATTLE_")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "gen"), env.get("PYTHONPATH", "")])
        argv = [sys.executable, str(ROOT / "bench" / "collab_eval.py"), "--target", target, "--problems", "2"]
        argv += ["--models", "right", "--strategies", "vote"]

        refused = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        assert f"ListModels on {target}: UNAUTHENTICATED" in refused.stderr
        assert "Traceback" not in refused.stderr

        out = tmp_path / "report.json"
        argv += ["--api-key", admin, "--out", str(out)]
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(out.read_text())
        assert report["setup"]["server"] == target
        assert [(r["kind"], r["name"], r["problems"], r["errors"]) for r in report["rows"]] == [
            ("model", "right", 2, 0),
            ("strategy", "vote", 2, 0),
        ]
        assert admin not in done.stdout + done.stderr + out.read_text()
    finally:
        server.stop()
