"""The gRPC server: services, health, reflection, interceptors, and an orderly shutdown."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aibattle.v1 import (
    completions_pb2,
    completions_pb2_grpc,
    conversations_pb2,
    conversations_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    reasoning_pb2,
    reasoning_pb2_grpc,
)
from common.addresses import join_host_port, parse_host_port
from server import reflection
from server.config import Config
from server.interceptors import BoundsInterceptor, ErrorInterceptor, RequestContextInterceptor
from server.orchestration.conversation import Conversations
from server.orchestration.runs import Runs
from server.providers.registry import ModelRegistry
from server.security.interceptor import AuthInterceptor
from server.security.limits import Limiter, MemoryLimiter
from server.security.scoped import OwnerScopedStore
from server.security.service import KeyServicer
from server.services.completions import CompletionServicer
from server.services.conversations import ConversationServicer
from server.services.models import ModelServicer
from server.services.reasoning import ReasoningServicer
from server.services.unimplemented import unimplemented_service
from server.storage import EventHub, SqliteStore

log = logging.getLogger(__name__)

# The services of the schema, in the order reflection lists them.
SERVICES = (
    models_pb2.DESCRIPTOR.services_by_name["ModelService"],
    completions_pb2.DESCRIPTOR.services_by_name["CompletionService"],
    conversations_pb2.DESCRIPTOR.services_by_name["ConversationService"],
    reasoning_pb2.DESCRIPTOR.services_by_name["ReasoningService"],
    keys_pb2.DESCRIPTOR.services_by_name["KeyService"],
)
# Declared in the schema, served by a later version.
NOT_YET_IMPLEMENTED: tuple[Any, ...] = ()


class AIBattleServer:
    """One gRPC server process: `await start()`, serve, `await stop(grace)`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = ModelRegistry(config)
        self.store = SqliteStore(config.server.database)
        # What services see: each caller's own conversations and sessions (server.security.scoped).
        self.scoped_store = OwnerScopedStore(self.store)
        self.limiter: Limiter = MemoryLimiter()
        self.hub = EventHub()
        self.runs = Runs(self.store)
        self.reasoning: ReasoningServicer | None = None
        self.conversations = Conversations(
            store=self.scoped_store, hub=self.hub, runs=self.runs, registry=self.registry
        )
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self.grpc_port = 0

    @property
    def grpc_target(self) -> str:
        host, _ = parse_host_port(self.config.server.grpc_addr)
        return join_host_port(host, self.grpc_port)

    async def start(self) -> None:
        await self.registry.start()
        await self.store.open()
        # Before serving: what was running when the last process died is nobody's now.
        await self.conversations.recover()
        limit = self.config.server.max_message_bytes
        server = grpc.aio.server(
            interceptors=(
                RequestContextInterceptor(),
                ErrorInterceptor(),
                AuthInterceptor(self.config.security, self.store, self.limiter),
                BoundsInterceptor(),  # after auth: a stranger learns nothing, not even our limits
            ),
            options=(
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ),
        )
        models_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.registry), server)
        completions_pb2_grpc.add_CompletionServiceServicer_to_server(
            CompletionServicer(self.registry), server
        )
        self.reasoning = ReasoningServicer(
            store=self.scoped_store, hub=self.hub, runs=self.runs, registry=self.registry
        )
        # Before serving: no client may see a session "in progress" that nobody runs.
        await self.reasoning.recover()
        reasoning_pb2_grpc.add_ReasoningServiceServicer_to_server(self.reasoning, server)
        conversations_pb2_grpc.add_ConversationServiceServicer_to_server(
            ConversationServicer(self.conversations), server
        )
        keys_pb2_grpc.add_KeyServiceServicer_to_server(
            KeyServicer(self.store, model_ids=frozenset(m.id for m in self.config.models)), server
        )
        server.add_generic_rpc_handlers(tuple(unimplemented_service(s) for s in NOT_YET_IMPLEMENTED))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [s.full_name for s in SERVICES]
        reflection.enable(server, [*names, health.SERVICE_NAME])
        try:
            self.grpc_port = server.add_insecure_port(self.config.server.grpc_addr)
        except RuntimeError:  # grpc's way of saying the address is taken or not ours
            self.grpc_port = 0
        if not self.grpc_port:
            await self.registry.close()
            await self.store.close()
            raise OSError(f"cannot listen on {self.config.server.grpc_addr} (address in use or not local?)")
        await server.start()
        self.reasoning.start()
        for name in ("", *names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        log.info("grpc serving", extra={"addr": self.grpc_target})

    async def drain(self) -> None:
        """Tell load balancers to go elsewhere before we stop (health NOT_SERVING everywhere)."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones run for `grace` seconds, then cancel them."""
        if self._server is None:
            return
        await self.drain()
        await self._server.stop(grace)
        self._server = None
        if self.reasoning is not None:
            await self.reasoning.close()
        await self.runs.close()
        await self.registry.close()
        await self.store.close()
        log.info("grpc stopped")

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
