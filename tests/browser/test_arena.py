"""/arena in headless Chromium against a real server with scripted models: a reasoning session shown live
(iterations, a stall, a handoff, the cost), a reload mid-run that loses and doubles nothing, a person
joining a human-ai conversation, the API key field, and how the page is served (offline, strict CSP)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ADMIN_KEY, Api, low_contrast, screenshot, sequences
from tests.sdk.proxy import Proxy

DELTAS = {"REASONING_EVENT_TYPE_TOKEN", "REASONING_EVENT_TYPE_THINKING"}
#: What a conversation's timeline shows (its transcript and what happened), of the server's events.
CONVERSATION_SHOWN = {
    "CONVERSATION_EVENT_TYPE_MESSAGE",
    "CONVERSATION_EVENT_TYPE_STATUS_CHANGED",
    "CONVERSATION_EVENT_TYPE_COMPLETION",
    "CONVERSATION_EVENT_TYPE_ERROR",
    "CONVERSATION_EVENT_TYPE_TOOL_USE",
}
PROBLEM = "What is the capital of Australia?"


def humanized(name: str) -> str:
    """As the page writes a step kind or signal (web/arena/src/dom.ts humanize)."""
    words = name.replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:]


def rendered_steps(page: Any) -> list[tuple[str, str, str, str]]:
    """(column's model, step key, kind, text) of every step on the board."""
    return [
        tuple(row)
        for row in page.eval_on_selector_all(
            "#columns .step[data-step]",
            """els => els.map(e => [e.closest('.column').dataset.model, e.dataset.step,
                e.querySelector('.kind').textContent, e.querySelector('.text').textContent])""",
        )
    ]


def recorded_steps(reasoning: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    steps = reasoning["iterations"]
    return [(it["model"], f"it-{it['index']}", humanized(it["kind"]), it["content"]) for it in steps]


def shown_dollars(page: Any) -> float:
    return float(page.locator("#stat-cost").inner_text().lstrip("$").replace(",", ""))


def start_reasoning(api: Api) -> str:
    created = api.call(
        "POST",
        "/api/v1/collaborative-reasoning",
        {"primary_model": "looper", "secondary_model": "rescuer", "prompt": PROBLEM, "max_iterations": 2},
    )
    return str(created["reasoning_id"])


def test_a_reasoning_session_shows_its_iterations_stall_and_handoff_live(server: Api, page: Any) -> None:
    page.goto(f"{server.base}/arena")
    page.locator("#primary option").first.wait_for(state="attached")
    # Usable by keyboard: every control has a name, and the first Tab reaches the skip link.
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter(e => !e.closest('[hidden]'))
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
            .filter(e => !e.textContent.trim())
            .map(e => e.outerHTML)"""
    )
    assert unnamed == []
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"

    page.get_by_label("Strategy", exact=True).select_option("iterative_refinement")
    page.get_by_label("Primary model").select_option("looper")
    page.get_by_label("Secondary model").select_option("rescuer")
    page.get_by_label("Rounds at most").fill("2")
    page.get_by_label("Problem", exact=True).fill(PROBLEM)
    page.get_by_role("button", name="Start").focus()
    page.keyboard.press("Enter")

    # Tokens stream into the speaking model's column before its step is recorded.
    page.locator("#columns .column[data-model=looper] .step.live").wait_for()
    # The stall and the handoff show while the session is still running.
    handoff = page.locator("#timeline li.handoff")
    handoff.wait_for()
    live_status = page.locator("#stat-status").inner_text()
    final_hidden = page.locator("#final").is_hidden()
    assert handoff.inner_text().endswith("Handoff: looper → rescuer")
    assert live_status == "In progress" and final_hidden
    assert "looper looks stuck (Loop" in page.locator("#timeline li.stuck").inner_text()
    looper = page.locator("#columns .column[data-model=looper]")
    assert looper.locator(".step.handoff").inner_text() == "⇢ Handed off to rescuer"
    assert looper.locator(".step.stuck .chip.warn").first.inner_text().startswith("stuck: Loop")
    assert low_contrast(page) == []
    screenshot(page, "reasoning-live-light")

    page.locator("#timeline li.done").wait_for()
    reasoning_id = page.url.split("#reasoning/", 1)[1]
    reasoning = server.call("GET", f"/api/v1/collaborative-reasoning/{reasoning_id}")
    assert reasoning["status"] == "RUN_STATUS_COMPLETED"
    assert sorted(rendered_steps(page)) == sorted(recorded_steps(reasoning))
    critique = page.locator("#columns .step[data-step=it-2]")
    assert critique.locator(".badge").inner_text().lower() == "revise"
    assert critique.locator(".chip.focus").all_inner_texts() == ["Factual accuracy", "Historical context"]
    assert page.locator("#stat-steps").inner_text() == str(len(reasoning["iterations"]))
    assert shown_dollars(page) == pytest.approx(reasoning["usage"]["cost_usd"], abs=5e-7)
    assert page.locator("#final-text").inner_text() == reasoning["final_result"]
    assert page.locator("#connection").inner_text() == "Finished"
    assert not page.console.problems
    assert low_contrast(page) == []
    screenshot(page, "reasoning-done-light")


def test_a_reload_mid_run_loses_and_doubles_nothing(server: Api, page: Any) -> None:
    reasoning_id = start_reasoning(server)
    page.goto(f"{server.base}/arena#reasoning/{reasoning_id}")
    page.locator("#timeline li.iteration").nth(1).wait_for()  # two steps in, four to go
    seen_before = max(sequences(page))
    page.reload()
    page.locator("#timeline li.done").wait_for()

    events = server.events(f"/api/v1/collaborative-reasoning/{reasoning_id}/events")
    completion = int(events[-1]["sequence"])
    assert seen_before < completion  # the reload did happen mid-run
    assert [int(e["sequence"]) for e in events] == list(range(1, completion + 1))
    # Every event the timeline shows (all but the token deltas), once each, in order.
    assert sequences(page) == [int(e["sequence"]) for e in events if e["type"] not in DELTAS]
    reasoning = server.call("GET", f"/api/v1/collaborative-reasoning/{reasoning_id}")
    # Token deltas: each step's streamed text is its recorded content, no word twice or missing (the
    # page warns on its console when they differ, and the test fails on any warning).
    assert sorted(rendered_steps(page)) == sorted(recorded_steps(reasoning))
    assert page.locator("#stat-seq").inner_text() == reasoning["last_sequence"] == str(completion)
    assert not page.console.problems


def test_a_person_joins_a_human_ai_conversation(server: Api, dark_page: Any) -> None:
    page = dark_page
    message = "Please say it once more, for the people at the back."
    page.goto(f"{server.base}/arena")
    page.locator("#primary option").first.wait_for(state="attached")
    page.get_by_label("Conversation", exact=True).check()
    page.get_by_label("Mode", exact=True).select_option("human-ai")
    seats = page.locator("#seats li")
    assert seats.count() == 2
    seats.nth(0).get_by_label("Role").fill("human")
    seats.nth(1).get_by_label("Model", exact=True).select_option("assistant")
    seats.nth(1).get_by_label("Role").fill("assistant")
    page.get_by_label("Rounds", exact=True).fill("2")
    page.get_by_label(re.compile("^Opening message")).fill("Hello, assistant.")
    page.get_by_role("button", name="Start").click()

    hint = page.locator("#composer-hint")
    expect(hint).to_have_text(re.compile("^Your turn"))
    assert page.locator("#timeline li.message").first.inner_text().endswith("You: Hello, assistant.")
    box = page.get_by_label("Your message")
    box.fill(message)
    box.press("Control+Enter")
    # The message is in the transcript as the server recorded it (it came back as a MESSAGE event).
    mine = page.locator("#timeline li.message", has_text=message)
    mine.wait_for()
    assert mine.inner_text().endswith(f"You: {message}")
    page.locator("#timeline li.done").wait_for()
    assert hint.inner_text() in ("", "Sent.")

    conversation_id = page.url.split("#conversation/", 1)[1]
    conversation = server.call("GET", f"/api/v1/conversations/{conversation_id}")
    said = [(m["role"], m["content"]) for m in conversation["messages"]]
    assert said == [("human", "Hello, assistant."), ("assistant", said[1][1]), ("human", message), said[3]]
    events = server.events(f"/api/v1/conversations/{conversation_id}/events")
    assert sequences(page) == [int(e["sequence"]) for e in events if e["type"] in CONVERSATION_SHOWN]
    [recorded] = [e for e in events if e.get("message", {}).get("content") == message]
    assert mine.get_attribute("data-seq") == recorded["sequence"]
    you = page.locator("#columns .column", has=page.locator("h3", has_text=re.compile("^You$")))
    assert message in you.inner_text()
    assert not page.console.problems
    assert low_contrast(page) == []
    screenshot(page, "conversation-dark")


def test_the_key_field_appears_when_keys_are_configured(keyed_server: Api, page: Any) -> None:
    page.goto(f"{keyed_server.base}/arena")
    key = page.get_by_label("API key")
    key.wait_for()
    assert page.evaluate("document.activeElement.id") == "api-key"
    assert "requires an API key" in page.locator("#key-hint").inner_text()
    assert page.locator("#alert").is_hidden()
    assert page.locator("#primary option").count() == 0
    screenshot(page, "api-key-light")

    key.fill("not-the-key-0123456789")
    key.press("Enter")
    expect(page.locator("#alert")).to_contain_text("refused")
    assert page.locator("#primary option").count() == 0

    key.fill(ADMIN_KEY)
    key.press("Enter")
    page.locator("#primary option").first.wait_for(state="attached")
    assert "looper — scripted" in page.locator("#primary option").all_inner_texts()
    assert page.locator("#key-form").is_hidden()
    assert page.evaluate("sessionStorage.getItem('aibattle.arena.apiKey')") == ADMIN_KEY
    assert page.evaluate("localStorage.length") == 0 and page.evaluate("document.cookie") == ""
    assert ADMIN_KEY not in page.url

    # The tab keeps it: a reload asks for nothing, and a run starts with it.
    page.reload()
    page.locator("#primary option").first.wait_for(state="attached")
    assert page.locator("#key-form").is_hidden()
    page.get_by_label("Strategy", exact=True).select_option("cascade")
    page.get_by_label("Problem", exact=True).fill(PROBLEM)
    page.get_by_role("button", name="Start").click()
    page.locator("#timeline li.done").wait_for()
    assert "401" not in page.locator("#alert").inner_text()
    reasoning_id = page.url.split("#reasoning/", 1)[1]
    reasoning = keyed_server.call("GET", f"/api/v1/collaborative-reasoning/{reasoning_id}")
    # What the events do not say, read when the run ends: what a cascade saved.
    expect(page.locator("#final-extra")).to_contain_text("the secondary model alone would have cost")
    assert reasoning["usage"]["secondary_only_cost_usd"] > 0
    # Back on the start page, the run is among the recent ones, a link to its view.
    page.get_by_role("button", name="New run").click()
    recent = page.locator(f"#recent-list a[href='#reasoning/{reasoning_id}']")
    expect(recent).to_contain_text("Cascade")
    assert page.evaluate("document.activeElement.name") == "kind"  # the keyboard starts at the form
    screenshot(page, "start-light")
    page.go_back()  # the run again, its events replayed
    expect(page.locator("#run-title")).to_contain_text(reasoning_id)
    page.locator("#timeline li.done").wait_for()
    # 401s of the first load are the console's "failed to load resource" errors, the only ones allowed.
    assert all("401" in p for p in page.console.problems), page.console.problems


def test_the_page_is_served_offline_under_a_strict_policy(server: Api, page: Any) -> None:
    for path in ("/arena", "/arena/"):
        with urllib.request.urlopen(server.base + path, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/html; charset=utf-8"
            policy = response.headers["Content-Security-Policy"]
            assert "default-src 'none'" in policy and "connect-src 'self'" in policy
            assert "script-src 'self';" in policy and "'unsafe-inline'" not in policy
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            etag = response.headers["ETag"]
    again = urllib.request.Request(server.base + "/arena", headers={"If-None-Match": etag})
    with pytest.raises(urllib.error.HTTPError) as not_modified:
        urllib.request.urlopen(again, timeout=10)
    not_modified.value.close()
    assert not_modified.value.code == 304
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server.base + "/arena/assets/../web_arena.py", timeout=10)
    missing.value.close()
    assert missing.value.code == 404

    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{server.base}/arena")
    page.locator("#primary option").first.wait_for(state="attached")
    assert requests and all(url.startswith(server.base + "/") for url in requests), requests
    assert any("/aibattle.v1.ModelService/ListModels" in url for url in requests), requests
    assert not page.console.problems


def test_a_dropped_connection_mid_run_resumes_after_the_last_sequence(
    server: Api, proxy: Proxy, page: Any
) -> None:
    resumed: list[int] = []

    def note(request: Any) -> None:
        if request.url.endswith("/aibattle.v1.ReasoningService/StreamReasoningEvents"):
            # A Connect stream's request is one envelope: a flags byte, a 4-byte length, the JSON.
            resumed.append(int(json.loads(request.post_data_buffer[5:]).get("afterSequence", 0)))

    page.on("request", note)
    reasoning_id = start_reasoning(server)
    page.goto(f"http://{proxy.target}/arena#reasoning/{reasoning_id}")
    page.locator("#timeline li.iteration").nth(1).wait_for()
    assert proxy.drop(reset=True) > 0  # the page's connections, its event stream among them, reset mid-run
    page.locator("#timeline li.done").wait_for()

    events = server.events(f"/api/v1/collaborative-reasoning/{reasoning_id}/events")
    # The stream was opened again, after what the page had already shown (not from the start).
    assert len(resumed) >= 2 and resumed[0] == 0 and 0 < resumed[1] < int(events[-1]["sequence"])
    assert sequences(page) == [int(e["sequence"]) for e in events if e["type"] not in DELTAS]
    reasoning = server.call("GET", f"/api/v1/collaborative-reasoning/{reasoning_id}")
    assert sorted(rendered_steps(page)) == sorted(recorded_steps(reasoning))
    # The reset itself shows on the console as a failed request; nothing else may.
    assert all("ERR_" in p or "Failed to load" in p for p in page.console.problems), page.console.problems
