"""Seed 000 §6.1's AIBattleClient over the SDK, against a real server: the seed's names, REST-shaped dicts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from aibattle_client import AIBattleClient, as_dict
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


def _settled(client: AIBattleClient, conversation_id: str, messages: int) -> dict[str, Any]:
    """The conversation once it holds `messages` messages and no turn runs."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        conversation = as_dict(client.client.conversations.get(conversation_id))
        if len(conversation["messages"]) >= messages and conversation["status"] != "RUN_STATUS_IN_PROGRESS":
            return conversation
        time.sleep(0.05)
    raise AssertionError(f"{conversation_id} never settled with {messages} messages: {conversation}")


def test_the_seed_client_takes_the_gateways_url(gateway_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed §6.1 as written: `AIBattleClient(api_key, base_url=<the REST API's URL>)`, every call of §6.1."""
    monkeypatch.setenv("AIBATTLE_TARGET", "127.0.0.1:1")  # nothing there: all goes through the URL
    client = AIBattleClient("your-api-key", base_url=gateway_url)
    try:
        assert [m["id"] for m in client.list_models()["models"]] == ["critic", "echo", "flaky", "slow"]
        completion = client.create_completion("echo", "Explain quantum computing", max_tokens=100)
        assert completion["content"] == "Hello there, friend. This is a scripted reply."
        conversation = client.create_conversation(
            [{"id": "echo", "role": "human"}, {"id": "echo", "role": "assistant"}],
            "Let's discuss the implications of quantum computing on cryptography",
            rounds=1,
        )
        messages: list[dict[str, Any]] = []
        connection = client.connect_to_conversation(
            conversation["conversation_id"], on_message=messages.append
        )
        assert connection.wait(20) and connection.error is None
        assert [(m["role"], m["content"]) for m in messages][-1] == (
            "assistant",
            "Hello there, friend. This is a scripted reply.",
        )
        with pytest.raises(NotFoundError):
            client.add_message("conv-nope", "What about Shor's algorithm specifically?", "human", "echo")
        result = client.create_collaborative_reasoning("echo", "critic", "2+2?", max_iterations=1)
        assert result["status"] == "RUN_STATUS_COMPLETED"
        assert [i["model"] for i in result["iterations"]] == ["echo", "critic"]
    finally:
        client.close()


@pytest.mark.parametrize("over", ["grpc", "url"])
def test_seed_3_1_3_then_3_1_4_a_message_right_after_creating(
    over: str, target: str, gateway_url: str
) -> None:
    """§3.1.3 creates a human-ai conversation (its first AI turn starts at once); §3.1.4 posts the human's
    next message straight away. It is accepted, queued as the human seat's next turn, and answered."""
    client = AIBattleClient("your-api-key", base_url=target if over == "grpc" else gateway_url)
    try:
        conversation = client.create_conversation(
            [{"id": "slow", "role": "human"}, {"id": "slow", "role": "assistant"}],
            "Let's discuss the implications of quantum computing on cryptography",
            mode="human-ai",
            rounds=3,
            system_instruction="This is a technical discussion between experts.",
        )
        assert conversation["status"] == "RUN_STATUS_IN_PROGRESS"
        message = client.add_message(
            conversation["conversation_id"], "What about Shor's algorithm specifically?", "human", "slow"
        )
        assert message["message_id"] and message["role"] == "human" and message["model"] == "slow"
        assert message["content"] == "What about Shor's algorithm specifically?"
        settled = _settled(client, conversation["conversation_id"], 5)
        assert [(m["role"], m["content"][:9]) for m in settled["messages"]] == [
            ("system", "This is a"),
            ("human", "Let's dis"),
            ("assistant", "word0 wor"),
            ("human", "What abou"),
            ("assistant", "word0 wor"),
        ]
    finally:
        client.close()
