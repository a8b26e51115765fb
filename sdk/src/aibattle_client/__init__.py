"""Seed 000 §6.1's `AIBattleClient`, as a thin facade over `aibattle_sdk.Client`.

The method names and arguments are the seed's; results are plain dicts shaped like the REST bodies
(proto field names, snake_case). Given `base_url`, the URL of the HTTP gateway as in the seed
(`make run`: http://127.0.0.1:8080), it speaks REST to it; without, gRPC to `$AIBATTLE_TARGET` (default
127.0.0.1:50051). Either way seed §7.1's example runs as written against `make run`, with model ids the
server has:

    from aibattle_client import AIBattleClient

    client = AIBattleClient(api_key="your-api-key")
    result = client.create_collaborative_reasoning(primary_model="smollm2-135m", ...)
    print(result["final_result"])

Errors are `aibattle_sdk`'s typed exceptions (`NotFoundError`, `RateLimitError`, …).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import betterproto2

from aibattle_sdk import Client
from aibattle_sdk.v1 import ConversationEvent, FileData, Message

Handler = Callable[[dict[str, Any]], object]

__all__ = ["AIBattleClient", "ConversationConnection"]


def as_dict(message: betterproto2.Message) -> dict[str, Any]:
    """A message as its REST JSON body: proto field names, every field present."""
    return message.to_dict(casing=betterproto2.Casing.SNAKE, include_default_values=True)


def _file(file_data: dict[str, Any] | None) -> FileData | None:
    return None if file_data is None else FileData.from_dict(file_data)


class AIBattleClient:
    """Python SDK for the AI Battle API (seed 000 §6.1), over gRPC.

    Args:
        api_key: sent as `authorization: Bearer <key>`; None: `$AIBATTLE_API_KEY`, else none.
        base_url: the HTTP gateway's URL, as in the seed (e.g. "http://127.0.0.1:8080"; https:// uses TLS
            with the system's roots), or a gRPC server's host:port; None: `$AIBATTLE_TARGET`, else
            127.0.0.1:50051 (gRPC).
        tls: connect to a host:port with TLS.
        timeout: seconds each call may take; collaborative reasoning waits for the session regardless.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        tls: bool = False,
        timeout: float | None = 300.0,
    ) -> None:
        self.api_key = api_key
        self.client = Client(base_url, api_key=api_key, tls=tls, timeout=timeout)
        """The `aibattle_sdk.Client` underneath, for everything the seed's surface lacks."""

    def close(self) -> None:
        """Close the connection."""
        self.client.close()

    def list_models(self, provider: str | None = None) -> dict[str, Any]:
        """List available models: {"models": [...], "next_page_token": ..., "total_size": ...}."""
        return as_dict(self.client.models.list(provider=provider or ""))

    def create_completion(
        self,
        model: str,
        prompt: str,
        max_tokens: int = 1000,
        temperature: float = 0.7,
        system_instruction: str | None = None,
        history: Sequence[dict[str, Any]] | None = None,
        file_data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create a completion: {"id", "model", "content", "usage", ...}. `history` is prior messages
        as {"role", "content"} dicts."""
        response = self.client.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            system_instruction=system_instruction or "",
            messages=[Message.from_dict(m) for m in history or ()],
            file_data=_file(file_data),
        )
        return as_dict(response)

    def create_conversation(
        self,
        models: Sequence[dict[str, str]],
        initial_prompt: str,
        mode: str = "human-ai",
        rounds: int = 3,
        system_instruction: str | None = None,
        file_data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create a new conversation: {"conversation_id", "status", "messages", "next_model", ...}."""
        conversation = self.client.conversations.create(
            models=models,
            initial_prompt=initial_prompt,
            mode=mode,
            rounds=rounds,
            system_instruction=system_instruction or "",
            file_data=_file(file_data),
        )
        return as_dict(conversation)

    def add_message(self, conversation_id: str, content: str, role: str, model: str) -> dict[str, Any]:
        """Add a message to a conversation: {"message_id", "role", "model", "content", "created_at", ...}."""
        message = self.client.conversations.add_message(
            conversation_id, content=content, role=role, model=model
        )
        return as_dict(message)

    def create_collaborative_reasoning(
        self,
        primary_model: str,
        secondary_model: str,
        prompt: str,
        system_instruction: str | None = None,
        collaboration_strategy: str = "iterative_refinement",
        max_iterations: int = 5,
        file_data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run a collaborative reasoning session to its end and return it (seed §3.1.5):
        {"reasoning_id", "status", "iterations", "final_result", "usage", ...}."""
        reasoning = self.client.reasoning.create(
            primary_model=primary_model,
            secondary_model=secondary_model,
            prompt=prompt,
            system_instruction=system_instruction or "",
            collaboration_strategy=collaboration_strategy,
            max_iterations=max_iterations,
            file_data=_file(file_data),
            wait=True,
            timeout=None,  # a session takes as long as its models do
        )
        return as_dict(reasoning)

    def connect_to_conversation(
        self,
        conversation_id: str,
        on_message: Handler | None = None,
        on_thinking: Handler | None = None,
        on_tool_use: Handler | None = None,
    ) -> ConversationConnection:
        """Follow a conversation live on a background thread, calling a handler per event.

        Each handler gets one flat dict, as seed §4.1.1's WebSocket frames: {"type": "message", "role",
        "model", "content", "sequence", ...}; "thinking" frames carry the model's reasoning delta as
        `content`. The server has no tool-use events yet, so `on_tool_use` is accepted and never called.
        The stream resumes by itself after a dropped connection; it ends when the conversation settles.
        """
        handlers = {"message": on_message, "thinking": on_thinking, "tool_use": on_tool_use}
        return ConversationConnection(self.client, conversation_id, handlers)


def flat_event(event: ConversationEvent) -> dict[str, Any]:
    """An event as one flat dict, like the gateway's flat WebSocket dialect."""
    body = as_dict(event)
    frame: dict[str, Any] = {"type": event.type.name.lower(), "sequence": event.sequence}
    message = body.pop("message", None)
    if event.message is not None and message:
        frame.update(message)
    for key, value in body.items():
        if key not in ("type", "sequence") and value not in ("", None, [], {}) and key not in frame:
            frame[key] = value
    if event.delta:
        frame["content"] = event.delta
    return frame


class ConversationConnection:
    """A live follow of one conversation (what `connect_to_conversation` returns)."""

    def __init__(self, client: Client, conversation_id: str, handlers: dict[str, Handler | None]) -> None:
        self._events = client.conversations.events(conversation_id)
        self._handlers = handlers
        self.error: Exception | None = None
        """What ended the follow early, if anything did."""
        self._thread = threading.Thread(target=self._run, name=f"follow-{conversation_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._events:
                frame = flat_event(event)
                handler = self._handlers.get(frame["type"])
                if handler is not None:
                    handler(frame)
        except Exception as exc:  # kept for the caller: a background thread has nowhere to raise
            self.error = exc

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the conversation settles (or timeout); True if the follow ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        """Stop following."""
        self._events.cancel()
        self._thread.join(5)
