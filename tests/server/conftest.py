"""Fixtures for server tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from server.config import ModelConfig
from server.providers.base import ChatRequest, StreamItem
from server.providers.scripted import ScriptedProvider


@pytest.fixture
def scripted_requests(monkeypatch: pytest.MonkeyPatch) -> list[ChatRequest]:
    """ChatRequests as the scripted provider receives them; the real provider still answers."""
    requests: list[ChatRequest] = []
    original = ScriptedProvider.stream

    def spy(self: ScriptedProvider, model: ModelConfig, chat: ChatRequest) -> AsyncIterator[StreamItem]:
        requests.append(chat)
        return original(self, model, chat)

    monkeypatch.setattr(ScriptedProvider, "stream", spy)
    return requests
