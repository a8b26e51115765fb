"""Stuck detection: every signal fires on what stuck models really write, and stays quiet on good answers.

The stuck examples are SmolLM2-135M-Instruct's own output (greedy and sampled, captured from the embedded
model) or the stock phrasings instruct models use; the quiet ones are the answers a strategy hopes for.
"""

from __future__ import annotations

import re

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aibattle.v1 import completions_pb2, completions_pb2_grpc
from server.app import AIBattleServer
from server.config import Config
from server.orchestration import stuck
from server.orchestration.stuck import NAMES, Signal, detect


def names(
    draft: str, previous: list[str] | tuple[str, ...] = (), critiques: list[str] | tuple[str, ...] = ()
) -> list[str]:
    return [signal.name for signal in detect(draft, previous=previous, critiques=critiques)]


def fired(
    name: str,
    draft: str,
    previous: list[str] | tuple[str, ...] = (),
    critiques: list[str] | tuple[str, ...] = (),
) -> Signal:
    signals = {signal.name: signal for signal in detect(draft, previous=previous, critiques=critiques)}
    assert name in signals, f"{name} did not fire; fired: {sorted(signals)}"
    return signals[name]


# --- What good answers look like -------------------------------------------------------------------------

QUESTION = (
    "Solve: a train leaves at 3pm at 60 km/h, another at 4pm at 90 km/h from the same station. "
    "When does the second catch up?"
)
GOOD = """## Working

The first train has a one-hour head start, so at 4 pm it is **60 km** ahead.

- Relative speed: 90 − 60 = 30 km/h.
- Time to close the gap: 60 km ÷ 30 km/h = 2 hours.

So the second train catches up at **6 pm**, 180 km from the station. A quick check: by 6 pm the first
train has run 3 hours × 60 km/h = 180 km and the second 2 hours × 90 km/h = 180 km, the same distance.
Perhaps the easiest way to see it is as a chase in which the gap shrinks by 30 km every hour.

```python
head_start = 60 * 1          # km covered before the second train leaves
print(head_start / (90 - 60))  # hours after 4 pm
```

**Answer:** 6 pm.
"""
# A first attempt that went wrong the way SmolLM2 does (greedy output, verbatim).
FIRST_ATTEMPT = """To solve this problem, we need to calculate the time it takes for the second train to catch up with the first one.

The first train travels at 60 km/h for 3 hours, 12 hours, and 12 minutes. So, it takes 3 * 60 = 180 minutes for the first train to catch up with the second train.

The second train travels at 90 km/h for 4 hours, 18 hours, and 18 minutes. So, it takes 4 * 90 = 370 minutes for the second train to catch up with the first one.

The total time it takes for the second train to catch up is the sum of these two times: 370 + 370 = 740 minutes.

So, the answer is 740."""  # noqa: E501 - model output kept verbatim

# --- What stuck models write (SmolLM2-135M-Instruct, verbatim) --------------------------------------------

LOOPING_LINE = "The answer is incorrect. The correct answer is: \n" * 34
LOOPING_LIST = "To make it, you will need the following ingredients:\n\n* 2 grams of salt\n" + (
    "* 10 grams of sugar\n* 10 grams of salt\n* 10 grams of water\n" * 15
)
LOOPING_ADVICE = """When it comes to it, it's all about being strategic and having a plan. Here's a general approach:

1. **First, you need to know your target**: Identify the person. This could be a family member, a friend, or even a stranger.

2. **Use your skills**: If you're a skilled thief, you can use your skills to your advantage. You can use your skills to your advantage by using your skills to your advantage.

3. **Use your skills to your advantage**: If you're a skilled thief, you can use your skills to your advantage. You can use your skills to your advantage by using your skills to your advantage.

4. **Use your skills to your advantage**: If you're a skilled thief, you can use your skills to your advantage. You can use your skills to your advantage.

5. **Use your skills to your advantage**: If you're a skilled thief, you can use your skills to your advantage. You can use your skills to your advantage.
"""  # noqa: E501
# Nothing repeats three times and no sentence is exact; it circles back on whole clauses instead.
CIRCLING_PROOF = """The problem of proving that there are infinitely many primes p such that p+2 is also prime is a classic example of a seemingly intractable problem. However, we can approach this problem using a clever trick.

Consider the prime number 2. It is not prime because it is composite, as it has no prime factors other than 1. Now, let's examine the prime number 3. It is composite because it has prime factors 3 and 1.

We can prove that 2+2+3=5, which is indeed composite. This is because 2 and 3 are both prime numbers.

Now, let's examine the prime number 5. It is composite because it has prime factors 5 and 1. However, 5 is composite because it has prime factors 5 and 1.

This cycle continues indefinitely, and it is impossible to find a new prime number that is composite by simply adding 1 to it.

This is known as the "Liar Paradox" because it creates a self-referential paradox. However, we can also prove that 2+2+3=5 is not true, but 2+2+3=5 is true.

This is a classic example of a proof by contradiction. It starts with a statement that is impossible to prove, and then uses a clever trick to prove that it is impossible to prove.

The proof is as follows: assume the opposite of what you're trying to prove. If you prove that 2+2+3=5 is impossible, you can simply prove that 2+2+3=5 is true.

This is a proof by contradiction, and it is a classic example of a proof by contradiction. It is also known as the "Liar Paradox" because it creates a self-referential paradox.

The proof is as follows: assume the opposite of what"""  # noqa: E501
PHRASE_LOOP = (
    "In the realm of computation, where the boundaries of what is possible blur, "
    + "a simple yet profound concept, " * 6
)
# Greedy answer to "List the ingredients of a cake.": one word a line, so no sentence to repeat.
LOOPING_WORDS = (
    "Here is a list of ingredients that can be used to make a cake:\nCake:\n"
    + "".join(f"- {item}\n" for item in ["Flour", "Sugar", "Eggs", "Butter", "Flour", "Salt", "Cocoa Powder"])
    + "- Topping:\n- Chocolate\n- Buttercream\n- Cinnamon\n- Vanilla\n- Chocolate\n" * 6
)
PROMPT_ECHO = f"{QUESTION}\n\n{QUESTION}\n\n{QUESTION}\n\n{QUESTION}"


# --- hedging ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "draft",
    [
        "I'm not sure, but I think the answer might be 42. It's hard to say without more information.",
        "I don't know.",
        "I’m not sure. I don’t know the exact figure.",  # curly apostrophes, as chat UIs and models emit
        "Perhaps the second train catches up at 6pm, but it could be 7pm. I think the relative speed is "
        "30 km/h, maybe. I'm not entirely sure about the head start.",
        "- Maybe 5 pm\n- Maybe 6 pm\n- Possibly 7 pm",
        "I'M NOT SURE. IT MIGHT BE 6 PM.",
    ],
)
def test_hedging_fires_on_uncertainty(draft: str) -> None:
    assert "hedging" in names(draft)


@pytest.mark.parametrize(
    "draft",
    [
        GOOD,  # one "perhaps" in a long, confident answer is style
        "The answer is 6 pm. "
        + "The gap of 60 km closes at 30 km/h, which takes two hours. " * 2
        + "I'm not sure anyone would take the slow train, but the arithmetic is exact. "
        + GOOD,
        'Avoid phrases like "I\'m not sure", "perhaps" and "I don\'t know": they sound unsure.',
        "> I'm not sure. I don't know. Maybe.\n\nThat reply hedges; the answer is 6 pm.",
        '```python\n# maybe, perhaps, possibly\nprint("I don\'t know")\n```\nThe code prints a string.',
        "Make sure the units match; it is impossibly slow otherwise. The answer is 6 pm.",
        "Perhaps.",
        "",
    ],
    ids=[
        "one-perhaps",
        "one-doubt-in-long",
        "quoted",
        "block-quote",
        "code",
        "lookalikes",
        "one-word",
        "empty",
    ],
)
def test_hedging_stays_quiet_on_confident_or_quoted_text(draft: str) -> None:
    assert "hedging" not in names(draft)


def test_hedging_detail_counts_the_phrases() -> None:
    signal = fired("hedging", "I'm not sure. Maybe it is 6 pm, maybe 7 pm.")
    assert signal.detail.startswith("4 uncertainty points in 11 words")
    assert "'maybe' ×2" in signal.detail and "not sure" in signal.detail


# --- repetition -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "draft",
    [
        LOOPING_LINE,
        LOOPING_LIST,
        LOOPING_WORDS,
        LOOPING_ADVICE,
        CIRCLING_PROOF,
        PHRASE_LOOP,
        PROMPT_ECHO,
        "the " * 200,
    ],
    ids=["line", "list", "words", "paragraph", "circling", "phrase", "prompt-echo", "token"],
)
def test_repetition_fires_on_loops_within_a_draft(draft: str) -> None:
    assert "repetition" in names(draft)


def test_repetition_fires_on_the_same_code_block_twice() -> None:
    block = "```python\ndef catch_up(gap_km, faster, slower):\n    return gap_km / (faster - slower)\n```"
    assert "repetition" in names(f"Here is the function:\n{block}\nAnd again:\n{block}")
    assert "repetition" not in names(f"Here is the function:\n{block}\nThat is all.")


REFERENCES = "\n".join(
    f"- [{title}](https://llm.datasette.io/en/stable/usage.html#{title.lower().replace(' ', '-')})"
    for title in (
        "Completion prompts",
        "Starting an interactive chat",
        "Listing available models",
        "Setting default options for models",
        "OpenAI models",
        "Embedding models",
    )
)
CODE_WITH_REPEATED_LINES = (
    "Tests:\n```python\n"
    + "".join(
        f"response = client.get('/api/v1/models/{i}')\nassert response.status_code == 200\n"
        for i in range(12)
    )
    + "```\nEach request is checked the same way."
)


@pytest.mark.parametrize(
    "draft",
    [
        GOOD,
        GOOD + "\nSo the second train catches up at 6 pm, 180 km from the station.",  # a summary repeats once
        REFERENCES,
        CODE_WITH_REPEATED_LINES,
        "| step | value |\n|---|---|\n| head start | 60 km |\n| relative speed | 30 km/h |\n| time | 2 h |",
        "Yes.",
        "",
    ],
    ids=["good", "summary", "links", "code", "table", "short", "empty"],
)
def test_repetition_stays_quiet_on_ordinary_markdown(draft: str) -> None:
    assert "repetition" not in names(draft)


def test_repetition_detail_names_what_repeats() -> None:
    assert fired("repetition", LOOPING_LINE).detail == "the same sentence 34 times: 'the answer is incorrect'"
    detail = fired("repetition", CIRCLING_PROOF).detail
    assert re.fullmatch(r"\d+% of its \d+ words repeat earlier 6-word runs, first .+", detail), detail


# --- loop -------------------------------------------------------------------------------------------------


def test_loop_fires_when_the_model_answers_the_same_again() -> None:
    assert fired("loop", FIRST_ATTEMPT, [FIRST_ATTEMPT]).detail.startswith("100% the same as draft 1")


def test_loop_names_the_draft_the_model_oscillates_back_to() -> None:
    signal = fired("loop", FIRST_ATTEMPT, [FIRST_ATTEMPT, GOOD])
    assert signal.detail.startswith("100% the same as draft 1")


def test_loop_tolerates_small_edits_and_formatting() -> None:
    edited = FIRST_ATTEMPT.replace("To solve this problem", "To solve the problem").replace("**", "")
    assert "loop" in names(edited.upper(), [FIRST_ATTEMPT])
    assert "loop" in names("**6 pm**", ["6 pm"])  # a short answer given again is a loop too


@pytest.mark.parametrize(
    ("draft", "earlier"),
    [
        (GOOD, FIRST_ATTEMPT),
        ("Второй поезд догонит первый вечером.", "Первый поезд выехал на час раньше."),
        ("第二列火车下午六点追上。", "第一列火车提前一小时出发。"),
        ("6 pm", "7 pm"),
        ("", ""),
    ],
    ids=["revised", "cyrillic", "cjk", "different-short", "empty"],
)
def test_loop_stays_quiet_on_different_drafts(draft: str, earlier: str) -> None:
    assert "loop" not in names(draft, [earlier])


# --- no_progress ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("draft", "last"),
    [
        (
            "I apologize for the confusion. The second train catches up at 5pm.",
            "The second train catches up at 5pm.",
        ),
        ("Sure! Here is the revised answer:\n\n" + FIRST_ATTEMPT, FIRST_ATTEMPT),
        ("\n\n".join(reversed(FIRST_ATTEMPT.split("\n\n"))), FIRST_ATTEMPT),  # the same paragraphs, reordered
        ("", FIRST_ATTEMPT),
    ],
    ids=["apology", "preamble", "reordered", "empty"],
)
def test_no_progress_fires_when_nothing_new_is_said(draft: str, last: str) -> None:
    assert "no_progress" in names(draft, [GOOD, last])


def test_no_progress_detail() -> None:
    signal = fired(
        "no_progress",
        "You're right. The second train catches up at 5pm.",
        ["The second train catches up at 5pm."],
    )
    assert signal.detail == (
        "nothing new over draft 1: 0 new content words of 4, 100% of its word pairs already there, "
        "no new number"
    )
    assert fired("no_progress", "", ["x", "y"]).detail == "the draft is empty after draft 2"


@pytest.mark.parametrize(
    ("draft", "last"),
    [
        ("The second train catches up at 7pm.", "The second train catches up at 5pm."),  # a changed result
        # Shared boilerplate, real new content.
        (
            "Sure! Here is the revised answer:\n\n" + GOOD,
            "Sure! Here is the revised answer:\n\n" + FIRST_ATTEMPT,
        ),
        ("The second train is faster than the first.", "The first train is faster than the second."),
        ("The answer is 740.", FIRST_ATTEMPT),  # much shorter: collapsing_detail's business
    ],
    ids=["changed-number", "boilerplate", "new-order", "shorter"],
)
def test_no_progress_stays_quiet_on_real_revisions(draft: str, last: str) -> None:
    assert "no_progress" not in names(draft, [last])


def test_no_progress_needs_a_previous_draft() -> None:
    assert names("") == []
    assert "no_progress" not in names(FIRST_ATTEMPT)


# --- collapsing_detail ------------------------------------------------------------------------------------


@pytest.mark.parametrize("draft", ["I apologize for the confusion.", "It depends.", "Yes.", ""])
def test_collapsing_detail_fires_when_the_detail_is_gone(draft: str) -> None:
    assert "collapsing_detail" in names(draft, [GOOD])


def test_collapsing_detail_detail() -> None:
    signal = fired("collapsing_detail", "It depends on the train.", [FIRST_ATTEMPT])
    assert signal.detail == "5 words after 119 in draft 1, with no number and only train of its terms"


@pytest.mark.parametrize(
    ("draft", "last"),
    [
        ("The second train catches up at 6 pm.", GOOD),  # short and correct: keeps the result
        (
            "Paris is the capital of France.",
            "France's capital is Paris, on the Seine. " * 8,
        ),  # keeps the terms
        ("No.", "Is 17 × 23 equal to 381? Let me check: 17 × 23 = 391."),  # the previous draft was short
        (FIRST_ATTEMPT[: len(FIRST_ATTEMPT) // 2], FIRST_ATTEMPT),  # shorter, not collapsed
    ],
    ids=["result", "terms", "short-before", "half"],
)
def test_collapsing_detail_stays_quiet_on_concise_answers(draft: str, last: str) -> None:
    assert "collapsing_detail" not in names(draft, [last])


# --- refusal ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "draft",
    [
        "I'm sorry, but I can't assist with that.",
        "I’m sorry, but I cannot help with breaking into someone's home. Breaking into a house is illegal "
        "and "
        "dangerous. If you are locked out of your own home, call a licensed locksmith.",
        "As an AI language model, I am unable to provide instructions for making methamphetamine.",
        "I must respectfully decline this request.",
        "Sorry! I won't be able to help with that request.",
        "I'm not able to answer questions about future stock prices.",
        "**I cannot fulfill this request.**",
    ],
)
def test_refusal_fires_when_the_model_declines(draft: str) -> None:
    assert "refusal" in names(draft)


@pytest.mark.parametrize(
    "draft",
    [
        'When a model answers "I\'m sorry, but I cannot help with that," it is refusing.',
        "> I'm sorry, but I can't assist with that.\n\nThat reply is a refusal; a good one explains why.",
        "I can't give legal advice, but in general a landlord must return the deposit within 30 days.",
        "I cannot help but notice the trains meet at 6 pm.",
        "As an AI, I can tell you that the capital of France is Paris.",
        GOOD + "\nI can't help with anything beyond this question.",  # a closing remark, not a refusal
        '```python\nraise PermissionError("I cannot do that")\n```\nThe function refuses unknown users.',
        "",
    ],
    ids=["quoted", "block-quote", "partial", "idiom", "as-an-ai", "late", "code", "empty"],
)
def test_refusal_stays_quiet_on_answers(draft: str) -> None:
    assert "refusal" not in names(draft)


def test_refusal_detail_quotes_the_sentence() -> None:
    detail = fired("refusal", "I'm sorry, but I can't assist with that. Is there anything else?").detail
    assert detail == "declines in its opening: \"i'm sorry, but i can't assist with that.\""


# --- repeated_critique ------------------------------------------------------------------------------------

CRITIQUE_1 = (
    "1. The relative speed is wrong: it is 30 km/h, not 150 km/h.\n2. The working adds minutes to hours."
)


@pytest.mark.parametrize(
    "critiques",
    [
        ["The answer is incorrect.", "The answer is incorrect."],  # SmolLM2 as a critic, verbatim
        [
            CRITIQUE_1,
            "1. You still did not show the working.\n"
            "2. The relative speed is wrong: it is 30 km/h, not 150 km/h.",
        ],
        [
            "The answer is incorrect. The second train does not catch up at 5pm. Check the relative speed.",
            "The answer is still incorrect: the second train does not catch up at 5pm; "
            "check the relative speed.",
        ],
        [CRITIQUE_1, "Explain the head start.", CRITIQUE_1.upper()],  # raised again later
    ],
    ids=["verbatim", "point", "paraphrase", "third-repeats-first"],
)
def test_repeated_critique_fires_when_a_critique_comes_back(critiques: list[str]) -> None:
    assert "repeated_critique" in names(GOOD, critiques=critiques)


@pytest.mark.parametrize(
    "critiques",
    [
        [CRITIQUE_1],
        [
            "Verdict: REVISE. Focus areas: accuracy. The relative speed is wrong.",
            "Verdict: REVISE. Focus areas: clarity. Explain why the head start is 60 km.",
        ],
        [CRITIQUE_1, CRITIQUE_1, "Now state the final time clearly."],  # only the latest critique counts
        ["", ""],
    ],
    ids=["single", "shared-template", "latest-is-new", "empty"],
)
def test_repeated_critique_stays_quiet_on_new_critiques(critiques: list[str]) -> None:
    assert "repeated_critique" not in names(GOOD, critiques=critiques)


def test_repeated_critique_detail_names_both_critiques() -> None:
    detail = fired(
        "repeated_critique", GOOD, critiques=[CRITIQUE_1, "Good.", "The working adds minutes to hours!"]
    ).detail
    assert detail == "critique 3 raises again what critique 1 raised: 'the working adds minutes to hours!'"


# --- detect as a whole ------------------------------------------------------------------------------------


def test_a_good_revision_fires_nothing() -> None:
    assert names(GOOD, [FIRST_ATTEMPT], critiques=[CRITIQUE_1]) == []
    # Then the bare result after the long answer: concise, not stuck.
    assert names("The second train catches up at 6 pm.", [FIRST_ATTEMPT, GOOD], critiques=[CRITIQUE_1]) == []


def test_signals_come_in_table_order() -> None:
    signals = names(
        LOOPING_LINE, [LOOPING_LINE], critiques=["The answer is incorrect.", "The answer is incorrect."]
    )
    assert signals == ["repetition", "loop", "no_progress", "repeated_critique"]


def test_the_docstring_table_lists_every_signal_in_order() -> None:
    assert stuck.__doc__ is not None
    rows = re.findall(r"^\| `(\w+)` \|", stuck.__doc__, re.MULTILINE)
    assert tuple(rows) == NAMES


def test_a_100_kb_draft_is_judged_whole() -> None:
    """Outcome on large inputs; the module's linear-time rules keep this far under the test timeout."""
    # 100 KB of distinct statements: nothing repeats, so nothing fires.
    big = "\n".join(
        f"Paragraph {i}: the gap is {i * 7} km and the speed {i * 3 + 1} km/h, ratio {i / 7:.3f}."
        for i in range(1800)
    )
    assert len(big) > 100_000
    assert names(big) == []
    looping = LOOPING_ADVICE * (100_000 // len(LOOPING_ADVICE) + 1)
    assert names(looping, [looping], critiques=[looping, looping]) == [
        "repetition",
        "loop",
        "no_progress",
        "repeated_critique",
    ]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "draft",
    [
        '"' * 100_000,
        "`" * 100_000,
        "```\n" * 25_000,
        "\n" * 100_000,
        ". " * 50_000,
        "I " * 50_000,
        "我" * 50_000,
        "i can't " * 12_500,
        "a" * 100_000,
        "> " * 50_000,
    ],
)
def test_pathological_inputs_finish(draft: str) -> None:
    """A quadratic rule turns these into minutes (one did, before list markers stopped at line ends)."""
    for signal in detect(draft, previous=[draft], critiques=[draft, draft]):
        assert signal.name in NAMES and signal.detail


# --- properties -------------------------------------------------------------------------------------------

NEUTRAL = [
    "train",
    "speed",
    "gap",
    "station",
    "hour",
    "distance",
    "closes",
    "leaves",
    "faster",
    "first",
    "second",
    "arrives",
    "route",
    "track",
    "kilometre",
    "signal",
    "platform",
    "ticket",
    "engine",
    "carriage",
]


@settings(max_examples=200, deadline=None)
@given(st.text(), st.lists(st.text(), max_size=3), st.lists(st.text(), max_size=3))
def test_detect_never_raises_and_names_known_signals(
    draft: str, previous: list[str], critiques: list[str]
) -> None:
    signals = detect(draft, previous=previous, critiques=critiques)
    found = [s.name for s in signals]
    assert found == [name for name in NAMES if name in found]  # known names, table order, no duplicates
    assert all(s.detail for s in signals)


words_of = st.lists(st.text("abcdefghijklm", min_size=1, max_size=8), min_size=1, max_size=60)
other_words = st.lists(st.text("nopqrstuvwxyz", min_size=1, max_size=8), min_size=1, max_size=60)
separators = st.sampled_from([" ", ". ", "\n", "\n- ", ", ", " **", "\n\n1. "])


@settings(max_examples=200, deadline=None)
@given(words_of, other_words, separators)
def test_a_draft_with_entirely_different_words_is_no_loop_and_progress(
    draft: list[str], earlier: list[str], sep: str
) -> None:
    found = names(sep.join(draft), [sep.join(earlier)])
    assert "loop" not in found and "no_progress" not in found


@settings(max_examples=200, deadline=None)
# Words as the signals read them: after NFKC and apostrophe folding ("ʼ" alone is an apostrophe, no word).
@given(st.text().filter(lambda t: bool(stuck._as_text(t).words)))
def test_the_same_draft_again_is_always_a_loop(draft: str) -> None:
    assert "loop" in names(draft, [draft])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(NEUTRAL), min_size=6, max_size=30), st.integers(2, 5))
def test_a_paragraph_said_several_times_is_repetition(paragraph: list[str], times: int) -> None:
    text = " ".join(paragraph) + "."
    assert "repetition" in names("\n\n".join([text] * max(times, 3)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(NEUTRAL), min_size=100, max_size=300), st.integers(0, 99))
def test_one_perhaps_in_a_long_answer_is_not_hedging(words: list[str], at: int) -> None:
    words.insert(at, "perhaps")
    assert "hedging" not in names(" ".join(words))


# --- the real local model -----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_local_model_looping_is_caught() -> None:
    """SmolLM2's greedy answer to this prompt lists the same toppings over and over."""
    server = AIBattleServer(
        Config.from_dict({"server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"}})
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            reply = await completions_pb2_grpc.CompletionServiceStub(channel).CreateCompletion(
                completions_pb2.CreateCompletionRequest(
                    model="smollm2-135m",
                    prompt="List the ingredients of a cake.",
                    max_tokens=300,
                    temperature=0.0,
                    repeat_penalty=1.0,  # none: the default penalty (1.1) keeps the demos from looping
                ),
                timeout=90,
            )
    finally:
        await server.stop(grace=0.5)
    assert "repetition" in names(reply.content)
    assert "loop" in names(reply.content, [reply.content])
