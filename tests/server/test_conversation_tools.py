"""Tools in conversations, over real gRPC: stored with the conversation, offered to every model seat,
a call recorded on its message and announced as TOOL_USE before the MESSAGE, and read by the models
as text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from aibattle.v1 import common_pb2, conversations_pb2, conversations_pb2_grpc
from server.app import AIBattleServer
from server.providers.base import ChatRequest, Role
from tests.conftest import error_info, make_config
from tests.server.test_conversations import HANG, create, events, seat

pb = conversations_pb2
E = pb.ConversationEventType
S = common_pb2.RunStatus

MODELS: list[dict[str, Any]] = [
    {
        "id": "forecaster",
        "provider": "scripted",
        "script": ['Checking.\ntool:get_weather {"city": "Paris"}', "Sunny, as the tool said."],
    },
    {"id": "critic", "provider": "scripted", "script": ["Trust but verify."]},
    {
        "id": "planner",
        "provider": "scripted",
        "capabilities": ["text", "tools"],
        "script": ["No calls today."],
    },
]
WEATHER = common_pb2.Tool(name="get_weather", description="Weather in a city")
WEATHER.parameters.update({"type": "object", "properties": {"city": {"type": "string"}}})


@pytest.fixture
async def server() -> AsyncIterator[AIBattleServer]:
    srv = AIBattleServer(make_config(MODELS))
    await srv.start()
    yield srv
    await srv.stop(grace=0.5)


@pytest.fixture
async def stub(server: AIBattleServer) -> AsyncIterator[conversations_pb2_grpc.ConversationServiceStub]:
    async with grpc.aio.insecure_channel(server.grpc_target) as chan:
        yield conversations_pb2_grpc.ConversationServiceStub(chan)


async def test_a_tool_call_is_recorded_and_announced_before_its_message(
    stub: Any, scripted_requests: list[ChatRequest]
) -> None:
    conv = await create(
        stub,
        models=[seat("forecaster", "forecaster", "Fred"), seat("planner", "planner", "Pat")],
        mode="round-robin",
        rounds=2,
        initial_prompt="Plan a picnic in Paris.",
        tools=[WEATHER],
        wait=True,
    )
    assert conv.status == S.RUN_STATUS_COMPLETED
    assert [t.name for t in conv.tools] == ["get_weather"]
    # Turns: the prompt (Fred's), Pat's, then Fred's second (its first script entry: the call).
    called = conv.messages[2]
    assert (called.model, called.role, called.content) == ("forecaster", "forecaster", "Checking.")
    [call] = called.tool_calls
    assert call.id.startswith("call_") and (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')

    logged = await events(stub, conv.conversation_id)
    kinds = [e.type for e in logged]
    use = kinds.index(E.CONVERSATION_EVENT_TYPE_TOOL_USE)
    assert kinds.count(E.CONVERSATION_EVENT_TYPE_TOOL_USE) == 1
    assert kinds[use + 1] == E.CONVERSATION_EVENT_TYPE_MESSAGE
    announced = logged[use]
    assert (announced.model, announced.role, announced.tool) == ("forecaster", "forecaster", "get_weather")
    assert announced.tool_call == call
    assert logged[use + 1].message.tool_calls[0] == call
    assert [e.sequence for e in logged] == list(range(1, len(logged) + 1))  # dense: resumable by sequence
    # Resuming from just before the TOOL_USE replays it, then its message.
    resumed = await events(stub, conv.conversation_id, after=announced.sequence - 1)
    assert [e.type for e in resumed[:2]] == [
        E.CONVERSATION_EVENT_TYPE_TOOL_USE,
        E.CONVERSATION_EVENT_TYPE_MESSAGE,
    ]

    # Every model seat was offered the tools; each reads the call as text (no dangling tool call).
    assert all([t.name for t in r.tools] == ["get_weather"] for r in scripted_requests)
    pat_next = scripted_requests[-1].messages  # Pat's second turn, after Fred's call
    assert pat_next[-1].role == Role.USER
    assert pat_next[-1].content == 'Fred: Checking.\n[called get_weather({"city": "Paris"})]'
    assert not any(m.tool_calls for r in scripted_requests for m in r.messages)


async def test_the_callers_own_call_reads_as_its_text(
    stub: Any, scripted_requests: list[ChatRequest]
) -> None:
    conv = await create(
        stub,
        models=[seat("critic", "human"), seat("forecaster", "assistant")],
        mode="human-ai",
        rounds=2,
        initial_prompt="Weather?",
        tools=[WEATHER],
        wait=True,
    )
    assert conv.status == S.RUN_STATUS_WAITING_FOR_INPUT
    await stub.AddMessage(
        pb.AddMessageRequest(conversation_id=conv.conversation_id, content="And?"), timeout=HANG
    )
    done = await stub.RunConversation(
        pb.RunConversationRequest(conversation_id=conv.conversation_id, wait=True), timeout=HANG
    )
    assert done.conversation.messages[-1].content == "Sunny, as the tool said."
    second = scripted_requests[-1].messages
    assert [(m.role, m.content) for m in second] == [
        (Role.USER, "human: Weather?"),
        (Role.ASSISTANT, 'Checking.\n[called get_weather({"city": "Paris"})]'),
        (Role.USER, "human: And?"),
    ]


async def test_conversation_tools_are_checked_as_a_completions(stub: Any) -> None:
    seats = [seat("forecaster", "a"), seat("planner", "b")]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(stub, models=seats, mode="round-robin", initial_prompt="x", tools=[WEATHER, WEATHER])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("tools[1].name:")
    bad = common_pb2.Tool(name="f")
    bad.parameters.update({"type": "array"})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(stub, models=seats, mode="round-robin", initial_prompt="x", tools=[bad])
    assert caught.value.details().startswith("tools[0].parameters:")


async def test_a_seat_that_cannot_call_tools_refuses_them(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(
            stub,
            models=[seat("forecaster", "a"), seat("critic", "b")],
            mode="round-robin",
            initial_prompt="x",
            tools=[WEATHER],
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == ("CAPABILITY_MISSING", "tools")
    assert "'critic'" in caught.value.details()
    # A person's seat calls nothing: a tool-less model there is fine.
    conv = await create(
        stub,
        models=[seat("critic", "human"), seat("forecaster", "assistant")],
        mode="human-ai",
        initial_prompt="x",
        tools=[WEATHER],
    )
    assert conv.conversation_id


async def test_without_tools_a_scripted_call_is_not_made(stub: Any) -> None:
    conv = await create(
        stub,
        models=[seat("critic", "human"), seat("forecaster", "assistant")],
        mode="human-ai",
        initial_prompt="Weather?",
        wait=True,
    )
    reply = conv.messages[-1]
    assert (reply.content, list(reply.tool_calls)) == ("Checking.", [])
    kinds = [e.type for e in await events(stub, conv.conversation_id)]
    assert E.CONVERSATION_EVENT_TYPE_TOOL_USE not in kinds
