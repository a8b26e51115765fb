"""ReasoningService over REST: seed 000 §3.1.5's request body as written, and its response shape.

The scripted models carry the seed's model ids, so the body is posted verbatim."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway import GatewayOptions, create_app
from server.app import AIBattleServer
from server.config import Config

SEED_BODY = """{
  "primary_model": "ollama-phi4",
  "secondary_model": "claude-3-sonnet",
  "prompt": "Develop a novel approach to quantum-resistant cryptography",
  "system_instruction": "You are a cryptography researcher exploring new approaches.",
  "collaboration_strategy": "iterative_refinement",
  "max_iterations": 5
}"""

INITIAL = (
    "Initial approach: build a signature scheme on structured lattices, with keys derived from module"
    " learning with errors and a hash-based fallback for long-term roots of trust."
)
IMPROVED = (
    "Improved approach: a hybrid scheme. Module-LWE key encapsulation with explicit parameter sets,"
    " a reduction to worst-case lattice problems for the security argument, constant-time NTT"
    " arithmetic for implementations, and SPHINCS+ signatures for the roots of trust."
)
SUGGESTIONS = (
    "Refinement suggestions: state the hardness assumption and its reduction, and say how"
    " implementations avoid timing leaks.\nVERDICT: REVISE\nFOCUS: mathematical foundation;"
    " implementation details"
)
APPROVAL = "The revision answers both points.\nVERDICT: APPROVE"

CONFIG: dict[str, Any] = {
    "server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"},
    "models": [
        {"id": "ollama-phi4", "provider": "scripted", "script": [INITIAL, IMPROVED]},
        {"id": "claude-3-sonnet", "provider": "scripted", "script": [SUGGESTIONS, APPROVAL]},
    ],
}


@pytest.fixture
async def seed_api(aiohttp_client: Any, api_descriptor_set: Path) -> AsyncIterator[Any]:
    server = AIBattleServer(Config.from_dict(CONFIG))
    await server.start()
    try:
        yield await aiohttp_client(
            create_app(server.grpc_target, GatewayOptions(descriptor_set=api_descriptor_set)),
            server_kwargs={"handler_cancellation": True},
        )
    finally:
        await server.stop(grace=0.5)


async def stream(api: Any, reasoning_id: str, after: int = 0) -> list[dict[str, Any]]:
    """The session's events as NDJSON frames, until the stream ends after the terminal one."""
    resp = await api.get(
        f"/api/v1/collaborative-reasoning/{reasoning_id}/events?after_sequence={after}",
        headers={"Accept": "application/x-ndjson"},
    )
    assert resp.status == 200
    return [json.loads(line)["result"]["event"] for line in (await resp.text()).splitlines()]


async def test_seed_body_as_written_gives_the_documented_shape(seed_api: Any) -> None:
    resp = await seed_api.post(
        "/api/v1/collaborative-reasoning", data=SEED_BODY, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 200
    created = await resp.json()
    assert created["reasoning_id"].startswith("reas-")
    assert created["status"] == "RUN_STATUS_IN_PROGRESS"  # answered at once; the models work on

    events = await stream(seed_api, created["reasoning_id"])
    assert events[-1]["type"] == "REASONING_EVENT_TYPE_COMPLETION"
    resp = await seed_api.get(f"/api/v1/collaborative-reasoning/{created['reasoning_id']}")
    body = await resp.json()

    # The documented fields, with the documented types.
    assert body["reasoning_id"] == created["reasoning_id"]
    assert body["status"] == "RUN_STATUS_COMPLETED"
    iterations = body["iterations"]
    assert [(it["model"], it["kind"]) for it in iterations] == [
        ("ollama-phi4", "draft"),
        ("claude-3-sonnet", "critique"),
        ("ollama-phi4", "revision"),
        ("claude-3-sonnet", "critique"),
    ]
    assert iterations[0]["content"].startswith("Initial approach:")
    assert iterations[1]["content"].startswith("Refinement suggestions:")
    assert iterations[1]["focus_areas"] == ["mathematical_foundation", "implementation_details"]
    assert iterations[2]["content"].startswith("Improved approach:")
    assert all(isinstance(it.get("stuck_indicators", []), list) for it in iterations)
    assert body["final_result"] == IMPROVED
    usage = body["usage"]
    assert usage["primary_model_tokens"] > 0 and usage["secondary_model_tokens"] > 0
    assert usage["total_tokens"] == usage["primary_model_tokens"] + usage["secondary_model_tokens"]
    # Proto-JSON writes 64-bit integers as strings.
    assert int(body["last_sequence"]) == int(events[-1]["sequence"])
    assert body["system_instruction"] == "You are a cryptography researcher exploring new approaches."


async def test_wait_answers_with_the_finished_session(seed_api: Any) -> None:
    body = {**json.loads(SEED_BODY), "wait": True, "max_iterations": 1}
    resp = await seed_api.post("/api/v1/collaborative-reasoning", json=body)
    reasoning = await resp.json()
    assert reasoning["status"] == "RUN_STATUS_COMPLETED"
    assert [it["kind"] for it in reasoning["iterations"]] == ["draft", "critique", "revision"]


async def test_events_resume_after_a_sequence_over_rest(seed_api: Any) -> None:
    resp = await seed_api.post(
        "/api/v1/collaborative-reasoning", json={**json.loads(SEED_BODY), "wait": True}
    )
    reasoning_id = (await resp.json())["reasoning_id"]
    whole = await stream(seed_api, reasoning_id)
    tail = await stream(seed_api, reasoning_id, after=int(whole[3]["sequence"]))
    assert tail == whole[4:]


async def test_list_get_and_cancel_routes(seed_api: Any) -> None:
    resp = await seed_api.post(
        "/api/v1/collaborative-reasoning", json={**json.loads(SEED_BODY), "wait": True}
    )
    reasoning_id = (await resp.json())["reasoning_id"]
    listed = await (await seed_api.get("/api/v1/collaborative-reasoning?status=RUN_STATUS_COMPLETED")).json()
    assert [r["reasoning_id"] for r in listed["reasonings"]] == [reasoning_id]
    assert listed["reasonings"][0].get("iterations", []) == []  # a list leaves them out
    cancel = await seed_api.post(f"/api/v1/collaborative-reasoning/{reasoning_id}:cancel", json={})
    assert (await cancel.json())["status"] == "RUN_STATUS_COMPLETED"  # finished work stays finished
    missing = await seed_api.get("/api/v1/collaborative-reasoning/reas-nope")
    assert missing.status == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"collaboration_strategy": "brainstorm"}, "collaboration_strategy"),
        ({"max_iterations": 50}, "max_iterations"),
        ({"prompt": ""}, "prompt"),
    ],
)
async def test_bad_bodies_are_400_naming_the_field(seed_api: Any, change: dict[str, Any], field: str) -> None:
    resp = await seed_api.post("/api/v1/collaborative-reasoning", json={**json.loads(SEED_BODY), **change})
    assert resp.status == 400
    assert field in json.dumps(await resp.json())


async def test_unknown_model_is_404(seed_api: Any) -> None:
    resp = await seed_api.post(
        "/api/v1/collaborative-reasoning", json={**json.loads(SEED_BODY), "secondary_model": "gpt-nope"}
    )
    assert resp.status == 404


WORDS = " ".join(f"step{i}" for i in range(60)) + "."
#: Slow enough that a watcher can leave and come back while the session runs (3 steps, 60 words each).
SLOW_CONFIG: dict[str, Any] = {
    "server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"},
    "models": [
        {
            "id": "drafter",
            "provider": "scripted",
            "script": [WORDS, WORDS.replace("step", "phase")],
            "chunk_delay_ms": 5,
        },
        {
            "id": "critic",
            "provider": "scripted",
            "chunk_delay_ms": 5,
            "script": ["Needs more.\nVERDICT: REVISE\nFOCUS: depth", "Fine.\nVERDICT: APPROVE"],
        },
    ],
}


async def sse_frames(resp: Any, until: Any) -> list[tuple[str, dict[str, Any]]]:
    """(id, event) pairs of an open SSE response, read as they arrive, until `until(event)` holds
    or the stream ends; comments (keep-alives) are skipped."""
    frames: list[tuple[str, dict[str, Any]]] = []
    event_id, data = "", ""
    while line := await resp.content.readline():
        text = line.decode().rstrip("\n")
        if text.startswith("id: "):
            event_id = text[4:]
        elif text.startswith("data: "):
            data = text[6:]
        elif not text and data:
            frames.append((event_id, json.loads(data)["result"]["event"]))
            data = ""
            if until(frames[-1][1]):
                break
    return frames


async def test_sse_watcher_resumes_a_running_session_with_last_event_id(
    aiohttp_client: Any, api_descriptor_set: Path
) -> None:
    server = AIBattleServer(Config.from_dict(SLOW_CONFIG))
    await server.start()
    try:
        api = await aiohttp_client(
            create_app(server.grpc_target, GatewayOptions(descriptor_set=api_descriptor_set)),
            server_kwargs={"handler_cancellation": True},
        )
        created = await (
            await api.post(
                "/api/v1/collaborative-reasoning",
                json={"primary_model": "drafter", "secondary_model": "critic", "prompt": "Explain."},
            )
        ).json()
        rid = created["reasoning_id"]
        url = f"/api/v1/collaborative-reasoning/{rid}/events"
        sse = {"Accept": "text/event-stream"}

        # Leave mid-session: after the first iteration, a few token deltas into the next step.
        resp = await api.get(url, headers=sse)
        first = await sse_frames(resp, lambda e: e["type"] == "REASONING_EVENT_TYPE_NEW_ITERATION")
        first += await sse_frames(resp, lambda e: e["type"] == "REASONING_EVENT_TYPE_TOKEN")
        resp.close()
        running = await (await api.get(f"/api/v1/collaborative-reasoning/{rid}")).json()
        assert running["status"] == "RUN_STATUS_IN_PROGRESS"  # the session goes on without the watcher

        # Come back the way EventSource does: the last id seen, in Last-Event-ID.
        again = await api.get(url, headers={**sse, "Last-Event-ID": first[-1][0]})
        rest = await sse_frames(again, lambda e: False)  # until the stream ends by itself
        whole = await stream(api, rid)
    finally:
        await server.stop(grace=0.5)
    assert [e for _, e in first + rest] == whole  # none lost, none twice
    assert [int(i) for i, _ in first + rest] == list(range(1, len(whole) + 1))  # id: is the sequence
    assert whole[-1]["type"] == "REASONING_EVENT_TYPE_COMPLETION"
    assert len(rest) > 1
