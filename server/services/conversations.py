"""ConversationService: thin handlers over `server.orchestration.conversation.Conversations`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from aibattle.v1 import conversations_pb2 as pb
from aibattle.v1 import conversations_pb2_grpc
from common import bounds
from common.errors import ApiError, InvalidArgument, Unauthenticated
from server.orchestration.conversation import Conversations
from server.security import context as caller_context
from server.security.context import Caller


class ConversationServicer(conversations_pb2_grpc.ConversationServiceServicer):
    def __init__(self, conversations: Conversations) -> None:
        self._conversations = conversations

    async def CreateConversation(
        self, request: pb.CreateConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateConversationResponse:
        return pb.CreateConversationResponse(
            conversation=await self._conversations.create(request, caller_context.current())
        )

    async def GetConversation(
        self, request: pb.GetConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConversationResponse:
        conversation = await self._conversations.get(request.conversation_id, caller_context.current())
        return pb.GetConversationResponse(conversation=conversation)

    async def ListConversations(
        self, request: pb.ListConversationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListConversationsResponse:
        page, token = await self._conversations.list_page(
            caller_context.current(), status=request.status, size=request.page_size, token=request.page_token
        )
        return pb.ListConversationsResponse(conversations=page, next_page_token=token)

    async def DeleteConversation(
        self, request: pb.DeleteConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteConversationResponse:
        await self._conversations.delete(request.conversation_id, caller_context.current())
        return pb.DeleteConversationResponse()

    async def AddMessage(
        self, request: pb.AddMessageRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddMessageResponse:
        return pb.AddMessageResponse(
            message=await self._conversations.add_message(request, caller_context.current())
        )

    async def RunConversation(
        self, request: pb.RunConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.RunConversationResponse:
        conv = await self._conversations.run(
            request.conversation_id,
            caller_context.current(),
            additional_rounds=request.additional_rounds,
            wait=request.wait,
        )
        return pb.RunConversationResponse(conversation=conv)

    async def CancelConversation(
        self, request: pb.CancelConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelConversationResponse:
        return pb.CancelConversationResponse(
            conversation=await self._conversations.cancel(request.conversation_id, caller_context.current())
        )

    async def StreamConversationEvents(
        self, request: pb.StreamConversationEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamConversationEventsResponse]:
        events = self._conversations.events(
            request.conversation_id, caller_context.current(), after=request.after_sequence
        )
        async for event in events:
            yield pb.StreamConversationEventsResponse(event=event)

    async def Converse(
        self, request_iterator: AsyncIterator[pb.ConverseRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ConverseResponse]:
        """Actions in, events out, on one call.

        The first frame names the conversation (and where to resume); its action, if any, and every
        later frame's are carried out in order. A refused action comes back as `rejected` and the call
        goes on. Events flow until the client half-closes; then the call ends once no run here is
        taking turns and every event committed by then was sent. Terminal events do not end it: the
        client may run the conversation again on the same call.
        """
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        bounds.check(first)
        cid = first.conversation_id
        caller = caller_context.current()
        await self._conversations.get(cid, caller)  # NOT_FOUND (or INVALID_ARGUMENT) before anything else
        out: asyncio.Queue[pb.ConverseResponse | int] = asyncio.Queue()

        async def act(frame: pb.ConverseRequest, *, later: bool = True) -> None:
            try:
                if later:  # the call itself was admitted with its first frame
                    await caller_context.admit_request(caller)
                await self._act(cid, frame, caller)
            except Unauthenticated:
                raise  # the key was revoked or expired meanwhile: the call ends
            except ApiError as exc:
                await out.put(pb.ConverseResponse(rejected=exc.to_status()))

        async def read() -> None:
            await act(first, later=False)
            async for frame in request_iterator:
                await act(frame)
            await out.put(await self._conversations.settled(cid, caller))  # the last sequence to send

        async def relay() -> None:
            async for event in self._conversations.events(
                cid, caller, after=first.after_sequence, session=True
            ):
                await out.put(pb.ConverseResponse(event=event))

        reader = asyncio.create_task(read())
        relayer = asyncio.create_task(relay())
        sent, until = first.after_sequence, None
        try:
            while until is None or sent < until:
                getter = asyncio.ensure_future(out.get())
                await asyncio.wait({getter, relayer, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    for task in (relayer, reader):  # a deleted conversation's NOT_FOUND ends the call
                        if task.done() and (error := task.exception()) is not None:
                            raise error
                    if relayer.done():
                        return
                    continue
                item = getter.result()
                if isinstance(item, int):
                    until = item
                    continue
                if item.HasField("event"):
                    sent = item.event.sequence
                yield item
        finally:
            for task in (reader, relayer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _act(self, cid: str, frame: pb.ConverseRequest, caller: Caller | None) -> None:
        bounds.check(frame)
        action = frame.WhichOneof("action")
        if action == "message":
            m = frame.message
            request = pb.AddMessageRequest(conversation_id=cid, content=m.content, role=m.role, model=m.model)
            if m.HasField("file_data"):
                request.file_data.CopyFrom(m.file_data)
            await self._conversations.add_message(request, caller)
        elif action == "run":
            if frame.run.conversation_id not in ("", cid):
                raise InvalidArgument("run.conversation_id", "must be empty or this call's conversation")
            await self._conversations.run(
                cid, caller, additional_rounds=frame.run.additional_rounds, wait=False
            )
        elif action == "cancel":
            if frame.cancel.conversation_id not in ("", cid):
                raise InvalidArgument("cancel.conversation_id", "must be empty or this call's conversation")
            await self._conversations.cancel(cid, caller)
