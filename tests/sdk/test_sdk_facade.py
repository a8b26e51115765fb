"""Seed 000 §6.1's AIBattleClient over the SDK, against a real server: the seed's names, REST-shaped dicts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from aibattle_client import AIBattleClient
from aibattle_sdk import NotFoundError


@pytest.fixture
def seed_client(target: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[AIBattleClient]:
    monkeypatch.setenv("AIBATTLE_TARGET", target)  # as against `make run`: no address given
    client = AIBattleClient(api_key="your-api-key")
    yield client
    client.close()


def test_list_models_and_create_completion(seed_client: AIBattleClient) -> None:
    models = seed_client.list_models()
    assert {m["id"] for m in models["models"]} >= {"echo", "critic"}
    assert {m["id"] for m in seed_client.list_models(provider="nobody")["models"]} == set()
    completion = seed_client.create_completion("echo", "Hi", system_instruction="Be brief.")
    assert completion["content"] == "Hello there, friend. This is a scripted reply."
    assert completion["usage"]["total_tokens"] == completion["usage"]["prompt_tokens"] + 8
    assert completion["id"].startswith("cmpl-")


def test_conversation_add_message_and_connect(seed_client: AIBattleClient) -> None:
    conversation = seed_client.create_conversation(
        [{"id": "echo", "role": "human"}, {"id": "echo", "role": "assistant"}],
        "Let's discuss the implications of quantum computing on cryptography",
        rounds=1,
        system_instruction="This is a technical discussion between experts.",
    )
    assert conversation["conversation_id"].startswith("conv-")
    assert conversation["mode"] == "human-ai"
    messages: list[dict[str, Any]] = []
    connection = seed_client.connect_to_conversation(
        conversation["conversation_id"], on_message=messages.append
    )
    assert connection.wait(20) and connection.error is None
    assert [(m["type"], m["role"]) for m in messages] == [
        ("message", "system"),
        ("message", "human"),
        ("message", "assistant"),
    ]
    assert messages[2]["content"] == "Hello there, friend. This is a scripted reply."
    assert [m["sequence"] for m in messages] == sorted(m["sequence"] for m in messages)
    with pytest.raises(NotFoundError):
        seed_client.add_message("conv-nope", "What about Shor's algorithm specifically?", "human", "echo")


def test_collaborative_reasoning_returns_the_finished_session(seed_client: AIBattleClient) -> None:
    result = seed_client.create_collaborative_reasoning("echo", "critic", "2+2?", max_iterations=1)
    assert result["status"] == "RUN_STATUS_COMPLETED"
    assert [i["model"] for i in result["iterations"]] == ["echo", "critic"]
    assert result["final_result"] == "Hello there, friend. This is a scripted reply."
    assert result["usage"]["total_tokens"] > 0
