"""The gRPC server: services, health, reflection, interceptors, and an orderly shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from common.addresses import join_host_port, parse_host_port
from common.api import api_services, grpc_module
from common.inprocess import Dispatcher
from server import reflection
from server.admission import AdmissionInterceptor, core_options
from server.config import Config
from server.interceptors import (
    BoundsInterceptor,
    ErrorInterceptor,
    RequestContextInterceptor,
    RequestParsingInterceptor,
)
from server.orchestration.collaboration import Collaborations
from server.orchestration.conversation import Conversations
from server.orchestration.lifecycle import Lifecycle
from server.orchestration.reasoning.sessions import ReasoningSessions
from server.orchestration.runs import Runs
from server.providers.registry import ModelRegistry
from server.security.context import Caller
from server.security.interceptor import AuthInterceptor, caller_of
from server.security.limits import Limiter
from server.security.metering import Metering
from server.security.redis_limits import make_limiter
from server.services.completions import CompletionServicer
from server.services.conversations import ConversationServicer
from server.services.embeddings import EmbeddingServicer
from server.services.keys import KeyServicer
from server.services.models import ModelServicer
from server.services.reasoning import ReasoningServicer
from server.settings import is_postgres_url
from server.storage import EventHub, open_store

log = logging.getLogger(__name__)

#: The services of the schema (common.api), in the order reflection lists them.
SERVICES = api_services()
#: How often readiness checks what the server depends on (the database, a configured Redis).
READINESS_SECONDS = 1.0


class AIBattleServer:
    """One gRPC server process: `await start()`, serve, `await stop(grace)`."""

    def __init__(self, config: Config, *, reuse_port: bool = False) -> None:
        """`reuse_port`: share the gRPC port with the other workers of `--workers N` (SO_REUSEPORT);
        off, a port already taken is an error at start-up rather than a silent second listener."""
        self.config = config
        self._reuse_port = reuse_port
        server = config.server
        # Every model call a caller makes passes the metering, bound to that caller by the registry.
        self.metering = Metering(max_prompt_chars=server.max_prompt_chars)
        ollama = config.providers.ollama
        self.registry = ModelRegistry(
            config.models,
            config.local,
            meter=self.metering.bind,
            discover=ollama if ollama.discover else None,
        )
        self.store = open_store(server.database)
        self.limiter: Limiter = make_limiter(server.redis_url)
        if is_postgres_url(server.database) and not server.redis_url:
            log.warning(
                "limits are per process: a database replicas share, but no [server].redis_url to share"
                " each key's rpm, tpm, streams and budget; every replica grants them in full"
            )
        self.hub = EventHub()
        #: The server's open response streams, against [server].max_concurrent_streams.
        self.admission = AdmissionInterceptor(server.max_concurrent_streams)
        self.runs = Runs(self.store, lease_seconds=server.lease_seconds)
        self.lifecycle = Lifecycle(
            store=self.store,
            hub=self.hub,
            runs=self.runs,
            resume_orphans=server.resume_orphans,
            sweep_seconds=server.orphan_sweep_seconds,
            caller_for=self._caller_for,
        )
        self.conversations = Conversations(
            lifecycle=self.lifecycle,
            registry=self.registry,
            max_prompt_chars=server.max_prompt_chars,
            # Half the response limit: a conversation can always be read whole, with room to spare.
            max_conversation_bytes=server.max_message_bytes // 2,
        )
        self.reasoning = ReasoningSessions(lifecycle=self.lifecycle, registry=self.registry)
        self.collaborations = Collaborations(
            config.collaborations, sessions=self.reasoning, registry=self.registry
        )
        self.health = health.aio.HealthServicer()
        self.ready = False
        self._readiness: asyncio.Task[None] | None = None
        self._server: grpc.aio.Server | None = None
        self._dispatcher: Dispatcher | None = None
        self.grpc_port = 0

    @property
    def grpc_target(self) -> str:
        host, _ = parse_host_port(self.config.server.grpc_addr)
        return join_host_port(host, self.grpc_port)

    async def start(self) -> None:
        await self.registry.start()
        await self.store.open()
        # Commits made by other replicas wake this process's followers too.
        await self.store.watch(self.hub.notify, self.hub.wake_all)
        limit = self.config.server.max_message_bytes
        interceptors = (
            RequestParsingInterceptor(),  # replaces deserializers only; runs nothing per call
            RequestContextInterceptor(),
            ErrorInterceptor(),
            self.admission,  # wraps streams only; before auth: a full server looks up no key
            AuthInterceptor(self.config.security, self.store, self.limiter),
            BoundsInterceptor(),  # after auth: a stranger learns nothing, not even our limits
        )
        # The same chain and handlers for calls dispatched in-process (the in-process gateway's).
        dispatcher = Dispatcher(interceptors, max_message_bytes=limit)
        grpc_server = grpc.aio.server(
            interceptors=interceptors,
            options=(
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", int(self._reuse_port)),
                *core_options(self.config.server.max_concurrent_streams),
            ),
        )
        server = dispatcher.recording(grpc_server)  # what is registered, on both
        _add_servicers(
            server,
            [
                ModelServicer(self.registry, self.collaborations),
                CompletionServicer(self.registry, self.collaborations),
                EmbeddingServicer(self.registry),
                ConversationServicer(self.conversations),
                ReasoningServicer(self.reasoning),
                KeyServicer(
                    self.store,
                    model_ids=frozenset(
                        [*(m.id for m in self.config.models), *(c.id for c in self.config.collaborations)]
                    ),
                ),
            ],
        )
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
        # Before serving: what was running when the last process died is adopted (or interrupted),
        # so no client sees a run "in progress" that nobody runs.
        await self.lifecycle.recover()
        await grpc_server.start()
        self.lifecycle.start()
        self._server = grpc_server
        self._dispatcher = dispatcher
        await self._set_ready(True)
        self._readiness = asyncio.create_task(self._follow_dependencies(), name="readiness")
        log.info("grpc serving", extra={"addr": self.grpc_target})

    def dispatcher(self) -> Dispatcher:
        """The server's handlers behind its interceptor chain, for calls made in this process without
        the network (gateway.inprocess.InProcessUpstream); once started."""
        if self._dispatcher is None:
            raise RuntimeError("the server has not started")
        return self._dispatcher

    async def _follow_dependencies(self) -> None:
        """Health (and so the gateway's /readyz) NOT_SERVING while the database or a configured Redis
        cannot be reached, SERVING again once they answer: a load balancer sends the calls elsewhere
        meanwhile. Checked every READINESS_SECONDS; the checks never raise."""
        while True:
            await asyncio.sleep(READINESS_SECONDS)
            store_up, limits_up = await asyncio.gather(self.store.ping(), self.limiter.ping())
            if store_up and limits_up:
                if not self.ready:
                    log.info("ready again: the database and the limits' store answer")
                    await self._set_ready(True)
            elif self.ready:
                missing = [
                    n for n, up in (("the database", store_up), ("the limits' Redis", limits_up)) if not up
                ]
                log.warning("not ready: %s cannot be reached", " and ".join(missing))
                await self._set_ready(False)

    async def _set_ready(self, ready: bool) -> None:
        self.ready = ready
        status = (
            health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *(s.full_name for s in SERVICES)):
            await self.health.set(name, status)  # ignored once draining: NOT_SERVING stays

    async def drain(self) -> None:
        """Tell load balancers to go elsewhere before we stop (health NOT_SERVING everywhere)."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones run for `grace` seconds, then cancel them."""
        if self._server is None:
            return
        await self.drain()
        if self._readiness is not None:
            self._readiness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._readiness
            self._readiness = None
        stops = [self._server.stop(grace)]
        if self._dispatcher is not None:  # the in-process calls, as grpc.aio's stop treats its own
            stops.append(self._dispatcher.stop(grace))
        await asyncio.gather(*stops)
        self._server = None
        await self.lifecycle.close()
        await self.registry.close()
        await self.store.close()
        await self.limiter.aclose()
        log.info("grpc stopped")

    async def _caller_for(self, owner: str) -> Caller | None:
        """Who an adopted run acts for: the key that owns it, as the run it continues did (its models,
        limits and budget); a key since revoked fails the run at its next model call. None (the server
        itself) when the server runs open or the key is gone."""
        if not owner or not self.config.security.enabled:
            return None
        row = await self.store.get_key(owner)
        return None if row is None else caller_of(row, self.limiter, self.store)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def _add_servicers(server: grpc.aio.Server, servicers: list[object]) -> None:
    """Each service of the schema, served by the servicer that implements its generated base class; a
    service declared with none, or a servicer of no declared service, is a bug caught at start-up."""
    for service in SERVICES:
        module = grpc_module(service)
        base = getattr(module, f"{service.name}Servicer")
        implementations = [s for s in servicers if isinstance(s, base)]
        if len(implementations) != 1:
            raise RuntimeError(f"{service.full_name} needs exactly one servicer, not {len(implementations)}")
        getattr(module, f"add_{service.name}Servicer_to_server")(implementations[0], server)
        servicers.remove(implementations[0])
    if servicers:
        raise RuntimeError(f"servicers of no declared service: {servicers}")
