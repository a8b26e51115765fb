"""The request each SDK method sends, shared by `Client` and `AsyncClient` so they cannot drift."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aibattle_sdk._gen.aibattle import v1
from aibattle_sdk._rpcs import Rpc, rpc

LIST_MODELS = rpc("ModelService", "ListModels")
GET_MODEL = rpc("ModelService", "GetModel")
CREATE_COMPLETION = rpc("CompletionService", "CreateCompletion")
STREAM_COMPLETION = rpc("CompletionService", "StreamCompletion")
CREATE_CONVERSATION = rpc("ConversationService", "CreateConversation")
GET_CONVERSATION = rpc("ConversationService", "GetConversation")
LIST_CONVERSATIONS = rpc("ConversationService", "ListConversations")
DELETE_CONVERSATION = rpc("ConversationService", "DeleteConversation")
ADD_MESSAGE = rpc("ConversationService", "AddMessage")
RUN_CONVERSATION = rpc("ConversationService", "RunConversation")
CANCEL_CONVERSATION = rpc("ConversationService", "CancelConversation")
STREAM_CONVERSATION_EVENTS = rpc("ConversationService", "StreamConversationEvents")
CONVERSE = rpc("ConversationService", "Converse")
CREATE_REASONING = rpc("ReasoningService", "CreateReasoning")
GET_REASONING = rpc("ReasoningService", "GetReasoning")
LIST_REASONINGS = rpc("ReasoningService", "ListReasonings")
CANCEL_REASONING = rpc("ReasoningService", "CancelReasoning")
STREAM_REASONING_EVENTS = rpc("ReasoningService", "StreamReasoningEvents")
RESUME_REASONING = rpc("ReasoningService", "ResumeReasoning")
CREATE_KEY = rpc("KeyService", "CreateKey")
LIST_KEYS = rpc("KeyService", "ListKeys")
REVOKE_KEY = rpc("KeyService", "RevokeKey")


def completion(
    rpc_: Rpc,
    model: str,
    prompt: str,
    *,
    max_tokens: int | None,
    temperature: float | None,
    system_instruction: str,
    messages: Sequence[v1.Message],
    file_data: v1.FileData | None,
    top_p: float | None,
    stop: Sequence[str],
    seed: int | None,
) -> Any:
    """CreateCompletionRequest or StreamCompletionRequest (the same fields)."""
    make: Any = rpc_.request_type
    return make(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        system_instruction=system_instruction,
        messages=list(messages),
        file_data=file_data,
        top_p=top_p,
        stop=list(stop),
        seed=seed,
    )


def participants(models: Sequence[v1.Participant | dict[str, str] | tuple[str, str]]) -> list[v1.Participant]:
    """Participants from messages, seed-style dicts ({"id", "role"}) or (id, role) pairs."""
    out = []
    for seat in models:
        if isinstance(seat, v1.Participant):
            out.append(seat)
        elif isinstance(seat, dict):
            out.append(v1.Participant(id=seat["id"], role=seat["role"], name=seat.get("name", "")))
        else:
            out.append(v1.Participant(id=seat[0], role=seat[1]))
    return out


def event_sequence(response: Any) -> int:
    """The sequence of a Stream*EventsResponse's event."""
    return int(response.event.sequence) if response.event is not None else 0


def event_of(response: Any) -> Any:
    """The event a Stream*EventsResponse carries."""
    return response.event
