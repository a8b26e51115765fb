"""Problems with checkable answers for `collab_eval.py`: a seeded generator of multi-step arithmetic and
word problems with exact integer answers (nothing downloaded), and JSONL files of {question, answer}.

The same seed gives the same problems on every machine and Python (only `random.Random(seed)` draws).
Every answer is computed from the numbers drawn, by the same steps the question describes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    question: str
    answer: int
    kind: str = "jsonl"


def _arithmetic(r: random.Random) -> Problem:
    a, b, c, d = r.randint(2, 30), r.randint(2, 30), r.randint(2, 9), r.randint(1, 50)
    return Problem(f"Compute ({a} + {b}) * {c} - {d}.", (a + b) * c - d, "arithmetic")


def _nested(r: random.Random) -> Problem:
    a, b, c = r.randint(10, 60), r.randint(2, 9), r.randint(2, 9)
    d = r.randint(1, 9)
    value = (a - b) * c + a // d
    return Problem(
        f"Compute ({a} - {b}) * {c} + {a} // {d}, where // is integer division (rounding down).",
        value,
        "arithmetic",
    )


def _shop(r: random.Random) -> Problem:
    stock, per_day, days = r.randint(60, 200), r.randint(2, 9), r.randint(2, 6)
    delivery = r.randint(5, 40)
    question = (
        f"A shop has {stock} apples. It sells {per_day} apples each day for {days} days, then a delivery "
        f"brings {delivery} more apples. How many apples does the shop have now?"
    )
    return Problem(question, stock - per_day * days + delivery, "word")


def _savings(r: random.Random) -> Problem:
    start, weekly, weeks = r.randint(10, 100), r.randint(5, 25), r.randint(2, 8)
    spent = r.randint(1, start)
    question = (
        f"Mia has {start} dollars. She saves {weekly} dollars every week for {weeks} weeks, then spends "
        f"{spent} dollars on a book. How many dollars does she have left?"
    )
    return Problem(question, start + weekly * weeks - spent, "word")


def _boxes(r: random.Random) -> Problem:
    boxes, per_box, broken, friends = r.randint(3, 9), r.randint(6, 12), r.randint(1, 5), r.randint(2, 4)
    total = boxes * per_box - broken
    total -= total % friends  # shared evenly: an exact answer
    broken = boxes * per_box - total
    question = (
        f"There are {boxes} boxes with {per_box} pencils in each. {broken} pencils are broken and thrown "
        f"away. The rest are shared equally among {friends} friends. How many pencils does each friend get?"
    )
    return Problem(question, total // friends, "word")


def _train(r: random.Random) -> Problem:
    speed, hours = r.randint(40, 90), r.randint(2, 5)
    back_speed, back_hours = r.randint(20, speed - 10), r.randint(1, hours - 1)  # it ends ahead of its start
    question = (
        f"A train travels {speed} km per hour for {hours} hours, then turns around and travels back "
        f"{back_speed} km per hour for {back_hours} hours. How many km is it from where it started?"
    )
    return Problem(question, speed * hours - back_speed * back_hours, "word")


TEMPLATES: tuple[Callable[[random.Random], Problem], ...] = (
    _arithmetic,
    _shop,
    _nested,
    _savings,
    _boxes,
    _train,
)


def generate(count: int, seed: int) -> list[Problem]:
    """`count` problems, the templates taken in turn (so a small count still mixes arithmetic and
    word problems), their numbers drawn from `seed`."""
    r = random.Random(seed)
    return [TEMPLATES[i % len(TEMPLATES)](r) for i in range(count)]


def load_jsonl(path: Path) -> list[Problem]:
    """{question, answer} per line (blank lines skipped); the answer an integer, or a string of one.
    ValueError names the line of anything else."""
    problems: list[Problem] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or "answer" not in item:
            raise ValueError(f"{path}:{number}: expected an object with a question string and an answer")
        answer = item["answer"]
        if isinstance(answer, bool) or not isinstance(answer, (int, str)):
            raise ValueError(f"{path}:{number}: the answer must be an integer, got {answer!r}")
        try:
            value = int(str(answer).strip().replace(",", ""))
        except ValueError:
            raise ValueError(f"{path}:{number}: the answer must be an integer, got {answer!r}") from None
        problems.append(Problem(item["question"], value))
    if not problems:
        raise ValueError(f"{path}: no problems")
    return problems
