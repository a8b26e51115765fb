"""ReasoningService: thin handlers over `server.orchestration.reasoning.sessions.ReasoningSessions`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from aibattle.v1 import reasoning_pb2, reasoning_pb2_grpc
from server.orchestration.reasoning.sessions import ReasoningSessions
from server.security import context as caller_context


class ReasoningServicer(reasoning_pb2_grpc.ReasoningServiceServicer):
    def __init__(self, sessions: ReasoningSessions) -> None:
        self._sessions = sessions

    async def CreateReasoning(
        self, request: reasoning_pb2.CreateReasoningRequest, context: grpc.aio.ServicerContext
    ) -> reasoning_pb2.CreateReasoningResponse:
        return reasoning_pb2.CreateReasoningResponse(
            reasoning=await self._sessions.create(request, caller_context.current())
        )

    async def GetReasoning(
        self, request: reasoning_pb2.GetReasoningRequest, context: grpc.aio.ServicerContext
    ) -> reasoning_pb2.GetReasoningResponse:
        return reasoning_pb2.GetReasoningResponse(
            reasoning=await self._sessions.get(request.reasoning_id, caller_context.current())
        )

    async def ListReasonings(
        self, request: reasoning_pb2.ListReasoningsRequest, context: grpc.aio.ServicerContext
    ) -> reasoning_pb2.ListReasoningsResponse:
        page, token = await self._sessions.list_page(
            caller_context.current(), status=request.status, size=request.page_size, token=request.page_token
        )
        return reasoning_pb2.ListReasoningsResponse(reasonings=page, next_page_token=token)

    async def CancelReasoning(
        self, request: reasoning_pb2.CancelReasoningRequest, context: grpc.aio.ServicerContext
    ) -> reasoning_pb2.CancelReasoningResponse:
        return reasoning_pb2.CancelReasoningResponse(
            reasoning=await self._sessions.cancel(request.reasoning_id, caller_context.current())
        )

    async def ResumeReasoning(
        self, request: reasoning_pb2.ResumeReasoningRequest, context: grpc.aio.ServicerContext
    ) -> reasoning_pb2.ResumeReasoningResponse:
        return reasoning_pb2.ResumeReasoningResponse(
            reasoning=await self._sessions.resume(
                request.reasoning_id, caller_context.current(), wait=request.wait
            )
        )

    async def StreamReasoningEvents(
        self, request: reasoning_pb2.StreamReasoningEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[reasoning_pb2.StreamReasoningEventsResponse]:
        events = self._sessions.events(
            request.reasoning_id, caller_context.current(), after=request.after_sequence
        )
        async for event in events:
            yield reasoning_pb2.StreamReasoningEventsResponse(event=event)
