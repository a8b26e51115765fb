"""A test-only ConversationService / ReasoningService on our real protos, with scripted event logs.

The real services are being written elsewhere; the gateway's side of events (SSE ids, Last-Event-ID,
keep-alives, the WebSocket dialects) is tested against this one. It keeps what the real ones promise
about events: per-resource sequences from 1 without gaps, `after_sequence` replays what came after,
then follows live, and the stream ends after the terminal event. Converse takes a first frame naming
the conversation and answers each human message with a scripted AI turn.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message

from aibattle.v1 import (
    common_pb2,
    conversations_pb2,
    conversations_pb2_grpc,
    reasoning_pb2,
    reasoning_pb2_grpc,
)

C = conversations_pb2
R = reasoning_pb2
AI_MODEL = "scripted-echo"
AI_REPLY = "Shor's algorithm factors integers in polynomial time."


class EventLog:
    """One resource's events: append stamps the next sequence; follow replays, then waits for more."""

    def __init__(self, is_terminal: Callable[[Any], bool]) -> None:
        self.events: list[Any] = []
        self._is_terminal = is_terminal
        self._changed = asyncio.Condition()

    async def append(self, event: Any) -> None:
        async with self._changed:
            event.sequence = len(self.events) + 1
            self.events.append(event)
            self._changed.notify_all()

    async def follow(self, after: int) -> AsyncIterator[Any]:
        position = after
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda at=position: len(self.events) > at or self._ended(at))
                if self._ended(position):
                    return
                event = self.events[position]
            position += 1
            yield event
            if self._is_terminal(event):
                return

    def _ended(self, position: int) -> bool:
        # A client resuming after the terminal event gets nothing and the stream ends.
        return any(self._is_terminal(e) for e in self.events[:position])


def _conversation_terminal(event: Any) -> bool:
    return event.type in (C.CONVERSATION_EVENT_TYPE_COMPLETION, C.CONVERSATION_EVENT_TYPE_ERROR)


def _reasoning_terminal(event: Any) -> bool:
    return event.type in (R.REASONING_EVENT_TYPE_COMPLETION, R.REASONING_EVENT_TYPE_ERROR)


@dataclass
class Collab:
    """Both services' state, and what the tests look at: requests and metadata as received."""

    conversations: defaultdict[str, EventLog] = field(
        default_factory=lambda: defaultdict(lambda: EventLog(_conversation_terminal))
    )
    reasonings: defaultdict[str, EventLog] = field(
        default_factory=lambda: defaultdict(lambda: EventLog(_reasoning_terminal))
    )
    stream_requests: list[Message] = field(default_factory=list)
    converse_requests: list[Any] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    calls: int = 0

    def _record(self, context: Any) -> None:
        self.calls += 1
        self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})


class ScriptedConversations(conversations_pb2_grpc.ConversationServiceServicer):
    def __init__(self, state: Collab) -> None:
        self.state = state

    async def StreamConversationEvents(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.state._record(context)
        self.state.stream_requests.append(request)
        async for event in self.state.conversations[request.conversation_id].follow(request.after_sequence):
            yield C.StreamConversationEventsResponse(event=event)

    async def Converse(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        self.state._record(context)
        first = await anext(request_iterator)
        self.state.converse_requests.append(first)
        if not first.conversation_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first frame must name the conversation"
            )
        log = self.state.conversations[first.conversation_id]
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def pump() -> None:
            if first.HasField("message"):
                await self._turn(log, first)
            async for request in request_iterator:
                self.state.converse_requests.append(request)
                await self._turn(log, request)

        async def forward() -> None:
            async for event in log.follow(first.after_sequence):
                await queue.put(event)
            await queue.put(None)

        tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(forward())]
        try:
            while (event := await queue.get()) is not None:
                yield C.ConverseResponse(event=event)
        finally:
            for task in tasks:
                task.cancel()

    async def _turn(self, log: EventLog, request: Any) -> None:
        """A human message, then the AI's scripted turn: started, thinking, tokens, message."""
        if not request.HasField("message"):
            return
        human = request.message
        cid = request.conversation_id
        await log.append(
            C.ConversationEvent(
                conversation_id=cid,
                type=C.CONVERSATION_EVENT_TYPE_MESSAGE,
                message=common_pb2.Message(message_id="msg-h", role=human.role, content=human.content),
            )
        )
        turn = {"conversation_id": cid, "model": AI_MODEL, "role": "assistant"}
        await log.append(C.ConversationEvent(type=C.CONVERSATION_EVENT_TYPE_TURN_STARTED, **turn))
        await log.append(
            C.ConversationEvent(type=C.CONVERSATION_EVENT_TYPE_THINKING, delta="Recall Shor.", **turn)
        )
        for word in AI_REPLY.split(" "):
            await log.append(
                C.ConversationEvent(type=C.CONVERSATION_EVENT_TYPE_TOKEN, delta=word + " ", **turn)
            )
        await log.append(
            C.ConversationEvent(
                conversation_id=cid,
                type=C.CONVERSATION_EVENT_TYPE_MESSAGE,
                message=common_pb2.Message(
                    message_id="msg-a", role="assistant", model=AI_MODEL, content=AI_REPLY
                ),
            )
        )


class ScriptedReasonings(reasoning_pb2_grpc.ReasoningServiceServicer):
    def __init__(self, state: Collab) -> None:
        self.state = state

    async def StreamReasoningEvents(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.state._record(context)
        self.state.stream_requests.append(request)
        async for event in self.state.reasonings[request.reasoning_id].follow(request.after_sequence):
            yield R.StreamReasoningEventsResponse(event=event)


def conversation_script(cid: str, *, terminal: bool = True) -> list[Any]:
    """A finished two-turn conversation's events (without sequences: the log stamps them)."""
    events = [
        C.ConversationEvent(
            conversation_id=cid,
            type=C.CONVERSATION_EVENT_TYPE_STATUS_CHANGED,
            status=common_pb2.RUN_STATUS_IN_PROGRESS,
        ),
        C.ConversationEvent(
            conversation_id=cid,
            type=C.CONVERSATION_EVENT_TYPE_MESSAGE,
            message=common_pb2.Message(role="human", model="m1", content="Quantum cryptography?"),
        ),
        C.ConversationEvent(
            conversation_id=cid, type=C.CONVERSATION_EVENT_TYPE_TURN_STARTED, model="m2", role="assistant"
        ),
        C.ConversationEvent(
            conversation_id=cid,
            type=C.CONVERSATION_EVENT_TYPE_MESSAGE,
            message=common_pb2.Message(role="assistant", model="m2", content="Lattices."),
        ),
    ]
    if terminal:
        events.append(
            C.ConversationEvent(
                conversation_id=cid,
                type=C.CONVERSATION_EVENT_TYPE_COMPLETION,
                status=common_pb2.RUN_STATUS_COMPLETED,
            )
        )
    return events


def reasoning_script(rid: str) -> list[Any]:
    """An iterative refinement that gets stuck, hands off and completes."""
    return [
        R.ReasoningEvent(
            reasoning_id=rid,
            type=R.REASONING_EVENT_TYPE_NEW_ITERATION,
            iteration=R.ReasoningIteration(index=1, kind="draft", model="primary", content="A first draft."),
        ),
        R.ReasoningEvent(
            reasoning_id=rid,
            type=R.REASONING_EVENT_TYPE_STUCK_DETECTED,
            model="primary",
            stuck_indicators=["repetition", "no_progress"],
        ),
        R.ReasoningEvent(
            reasoning_id=rid, type=R.REASONING_EVENT_TYPE_HANDOFF, model="primary", to_model="secondary"
        ),
        R.ReasoningEvent(
            reasoning_id=rid,
            type=R.REASONING_EVENT_TYPE_NEW_ITERATION,
            iteration=R.ReasoningIteration(
                index=2,
                kind="critique",
                model="secondary",
                content="Be concrete.",
                focus_areas=["security_analysis"],
            ),
        ),
        R.ReasoningEvent(
            reasoning_id=rid,
            type=R.REASONING_EVENT_TYPE_COMPLETION,
            final_result="Use lattices.",
            status=common_pb2.RUN_STATUS_COMPLETED,
        ),
    ]


@dataclass
class RunningCollab:
    target: str
    state: Collab


async def start_collab() -> tuple[grpc.aio.Server, RunningCollab]:
    """Both scripted services on a grpc.aio server on port 0."""
    state = Collab()
    server = grpc.aio.server()
    conversations_pb2_grpc.add_ConversationServiceServicer_to_server(ScriptedConversations(state), server)
    reasoning_pb2_grpc.add_ReasoningServiceServicer_to_server(ScriptedReasonings(state), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, RunningCollab(target=f"127.0.0.1:{port}", state=state)


async def seed(log: EventLog, events: list[Any]) -> None:
    for event in events:
        await log.append(event)
