/**
 * AIBattleClient: seed 000 §7.2's client over the generated Connect clients.
 *
 * Every method goes through `call` (unary) or `stream` (server streams), the one place where failures become
 * typed errors. Anything not wrapped here is on the raw generated clients (`client.models`, `.keys`, ...),
 * which share the client's transport and API key but throw ConnectError.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { base64Decode } from "@bufbuild/protobuf/wire";
import { type CallOptions, type Client, Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import type { FileData, Message, ToolSchema } from "./gen/aibattle/v1/common_pb.js";
import { FileDataSchema } from "./gen/aibattle/v1/common_pb.js";
import {
  CompletionService,
  type CreateCompletionRequestSchema,
  type CreateCompletionResponse,
  type StreamCompletionRequestSchema,
  type StreamCompletionResponse,
} from "./gen/aibattle/v1/completions_pb.js";
import {
  type Conversation,
  type ConversationEvent,
  ConversationService,
} from "./gen/aibattle/v1/conversations_pb.js";
import { EmbeddingService } from "./gen/aibattle/v1/embeddings_pb.js";
import { KeyService } from "./gen/aibattle/v1/keys_pb.js";
import { type Model, ModelService } from "./gen/aibattle/v1/models_pb.js";
import {
  type CreateReasoningRequestSchema,
  type Reasoning,
  type ReasoningEvent,
  ReasoningService,
} from "./gen/aibattle/v1/reasoning_pb.js";
import { toAIBattleError } from "./errors.js";
import {
  type ConversationHandlers,
  conversationDispatcher,
  conversationEnds,
  type EventSubscription,
  type ReasoningHandlers,
  reasoningEnds,
  dispatchReasoningEvent,
  type SubscribeOptions,
  subscribe,
} from "./events.js";
import { createWebTransport, defaultBaseUrl, type Protocol, withApiKey } from "./transport.js";

export interface ClientOptions {
  /** A transport of your own (e.g. createNodeTransport's); the API key is added to its calls. */
  transport?: Transport;
  /** For the default transport: "connect" (default) or "grpc-web". */
  protocol?: Protocol;
  /** For the default transport: protobuf binary instead of JSON. */
  binary?: boolean;
  /** Deadline of each unary call in milliseconds (a model's whole answer included); none by default. */
  timeoutMs?: number;
}

/** An attachment as seed 000 writes it: base64 text (or bytes) and a kind. */
export interface FileDataInput {
  /** "image", "document", "audio", "video" or "text". */
  type: string;
  /** File name or path, informational only (the server never reads local paths). */
  path?: string;
  /** The content, base64-encoded. */
  base64?: string;
  /** The content as bytes (instead of base64). */
  content?: Uint8Array;
  /** IANA media type, e.g. "image/jpeg"; the server infers it from the bytes when left out. */
  mimeType?: string;
}

export interface CreateConversationOptions {
  /** "human-ai" (default), "ai-ai" or "round-robin". */
  mode?: string;
  /** Rounds, 1 to 50. */
  rounds?: number;
  systemInstruction?: string;
  fileData?: FileDataInput;
  /** Whether the AI turns start at once (default true). */
  autoRun?: boolean;
  /** Whether to answer only once the started turns finished. */
  wait?: boolean;
  /** Tools the AI participants may call; a call is announced to onToolUse for the client to act on. */
  tools?: MessageInitShape<typeof ToolSchema>[];
}

/** A conversation with seed 000's snake_case id alongside protobuf-es's camelCase one. */
export type ConversationWithId = Conversation & { readonly conversation_id: string };
/** A message with seed 000's snake_case id alongside protobuf-es's camelCase one. */
export type MessageWithId = Message & { readonly message_id: string };

/** Adds a read-only, non-enumerable alias (so the message serializes and compares as before). */
function alias<T extends object, K extends string>(target: T, name: K, read: (t: T) => string): T & { readonly [P in K]: string } {
  Object.defineProperty(target, name, { get: () => read(target), enumerable: false });
  return target as T & { readonly [P in K]: string };
}

/** A response field the server always sets; its absence is a broken answer, not an empty result. */
function required<T>(value: T | undefined, what: string): T {
  if (value === undefined) {
    throw toAIBattleError(new ConnectError(`the server's answer has no ${what}`, Code.Internal));
  }
  return value;
}

/** Seed 000's `conversation.conversation_id`, beside protobuf-es's `conversationId`. */
function withConversationId(conversation: Conversation): Conversation & { readonly conversation_id: string } {
  return alias(conversation, "conversation_id", (c) => c.conversationId);
}

function fileData(input: FileDataInput): FileData {
  return create(FileDataSchema, {
    type: input.type,
    path: input.path ?? "",
    mimeType: input.mimeType ?? "",
    content: input.content ?? (input.base64 ? base64Decode(input.base64) : new Uint8Array()),
  });
}

export class AIBattleClient {
  readonly baseUrl: string;
  readonly transport: Transport;
  readonly models: Client<typeof ModelService>;
  readonly completions: Client<typeof CompletionService>;
  readonly conversations: Client<typeof ConversationService>;
  readonly reasoning: Client<typeof ReasoningService>;
  readonly keys: Client<typeof KeyService>;
  readonly embeddings: Client<typeof EmbeddingService>;
  readonly #timeoutMs: number | undefined;

  /**
   * @param apiKey the gateway's API key (sent as `Authorization: Bearer`); null or "" when keys are off.
   * @param baseUrl the gateway's HTTP port, e.g. "http://127.0.0.1:8080" (default: the page's origin in a
   *   browser, else that address).
   */
  constructor(apiKey?: string | null, baseUrl?: string, options: ClientOptions = {}) {
    this.baseUrl = baseUrl ?? defaultBaseUrl();
    const transport =
      options.transport ?? createWebTransport(this.baseUrl, { protocol: options.protocol ?? "connect", binary: options.binary ?? false });
    this.transport = withApiKey(transport, apiKey);
    this.#timeoutMs = options.timeoutMs;
    this.models = createClient(ModelService, this.transport);
    this.completions = createClient(CompletionService, this.transport);
    this.conversations = createClient(ConversationService, this.transport);
    this.reasoning = createClient(ReasoningService, this.transport);
    this.keys = createClient(KeyService, this.transport);
    this.embeddings = createClient(EmbeddingService, this.transport);
  }

  // ---- the choke points

  #options(signal?: AbortSignal): CallOptions {
    return { ...(this.#timeoutMs ? { timeoutMs: this.#timeoutMs } : {}), ...(signal ? { signal } : {}) };
  }

  async #call<T>(run: (options: CallOptions) => Promise<T>, signal?: AbortSignal): Promise<T> {
    try {
      return await run(this.#options(signal));
    } catch (reason) {
      throw toAIBattleError(reason);
    }
  }

  /**
   * A server stream whose failures are typed errors. Leaving the loop early aborts the call: connect-web
   * would otherwise leave the response body open (and the server talking) until the stream's end.
   */
  async *#stream<T>(open: (options: CallOptions) => AsyncIterable<T>, signal?: AbortSignal): AsyncGenerator<T> {
    const call = new AbortController();
    const abort = (): void => call.abort(signal?.reason);
    if (signal?.aborted) abort();
    signal?.addEventListener("abort", abort, { once: true });
    try {
      yield* open({ signal: call.signal });
    } catch (reason) {
      throw toAIBattleError(reason);
    } finally {
      signal?.removeEventListener("abort", abort);
      call.abort();
    }
  }

  // ---- models and completions

  /** Every model the key may use, all pages (of `pageSize` each; default the server's). */
  async listModels(options: { provider?: string; capability?: string; pageSize?: number } = {}): Promise<Model[]> {
    const models: Model[] = [];
    let pageToken = "";
    do {
      const page = await this.#call((o) => this.models.listModels({ ...options, pageToken }, o));
      models.push(...page.models);
      pageToken = page.nextPageToken;
    } while (pageToken);
    return models;
  }

  async getModel(id: string): Promise<Model> {
    const response = await this.#call((o) => this.models.getModel({ modelId: id }, o));
    return required(response.model, "model");
  }

  async createCompletion(
    request: MessageInitShape<typeof CreateCompletionRequestSchema>,
    options: { signal?: AbortSignal } = {},
  ): Promise<CreateCompletionResponse> {
    return this.#call((o) => this.completions.createCompletion(request, o), options.signal);
  }

  /** The completion's chunks as they come; leaving the loop early (or aborting) cancels it on the server. */
  streamCompletion(
    request: MessageInitShape<typeof StreamCompletionRequestSchema>,
    options: { signal?: AbortSignal } = {},
  ): AsyncIterable<StreamCompletionResponse> {
    // No timeoutMs: a deadline for a whole stream would cut long answers.
    return this.#stream((call) => this.completions.streamCompletion(request, call), options.signal);
  }

  // ---- conversations (seed 000 §7.2)

  async createConversation(
    models: { id: string; role: string; name?: string }[],
    initialPrompt: string,
    options: CreateConversationOptions = {},
  ): Promise<ConversationWithId> {
    const response = await this.#call((o) =>
      this.conversations.createConversation(
        {
          models,
          initialPrompt,
          mode: options.mode ?? "",
          rounds: options.rounds ?? 0,
          systemInstruction: options.systemInstruction ?? "",
          ...(options.fileData ? { fileData: fileData(options.fileData) } : {}),
          ...(options.autoRun !== undefined ? { autoRun: options.autoRun } : {}),
          wait: options.wait ?? false,
          tools: options.tools ?? [],
        },
        o,
      ),
    );
    return withConversationId(required(response.conversation, "conversation"));
  }

  /**
   * Follows a conversation's events: recorded ones after `afterSequence`, then live ones, reconnecting after
   * a drop without losing or repeating any. Ends when the conversation completes, fails or is cancelled.
   */
  connectToConversation(
    conversationId: string,
    handlers: ConversationHandlers,
    options: SubscribeOptions = {},
  ): EventSubscription {
    return subscribe<ConversationEvent>(
      (afterSequence, signal) =>
        this.#events<ConversationEvent>(this.conversations.streamConversationEvents({ conversationId, afterSequence }, { signal })),
      conversationDispatcher(handlers),
      conversationEnds,
      handlers,
      options,
    );
  }

  /** Says something as a participant (seed 000: role "human"); `model` tells two seats of one role apart. */
  async addMessage(conversationId: string, content: string, role = "human", model = ""): Promise<MessageWithId> {
    const response = await this.#call((o) => this.conversations.addMessage({ conversationId, content, role, model }, o));
    return alias(required(response.message, "message"), "message_id", (m) => m.messageId);
  }

  /** Runs the pending AI turns (or `additionalRounds` more). */
  async runConversation(
    conversationId: string,
    options: { additionalRounds?: number; wait?: boolean } = {},
  ): Promise<ConversationWithId> {
    const response = await this.#call((o) =>
      this.conversations.runConversation(
        { conversationId, additionalRounds: options.additionalRounds ?? 0, wait: options.wait ?? false },
        o,
      ),
    );
    return withConversationId(required(response.conversation, "conversation"));
  }

  async cancelConversation(conversationId: string): Promise<ConversationWithId> {
    const response = await this.#call((o) => this.conversations.cancelConversation({ conversationId }, o));
    return withConversationId(required(response.conversation, "conversation"));
  }

  async getConversation(conversationId: string): Promise<ConversationWithId> {
    const response = await this.#call((o) => this.conversations.getConversation({ conversationId }, o));
    return withConversationId(required(response.conversation, "conversation"));
  }

  async deleteConversation(conversationId: string): Promise<void> {
    await this.#call((o) => this.conversations.deleteConversation({ conversationId }, o));
  }

  // ---- collaborative reasoning

  async createReasoning(request: MessageInitShape<typeof CreateReasoningRequestSchema>): Promise<Reasoning> {
    const response = await this.#call((o) => this.reasoning.createReasoning(request, o));
    return required(response.reasoning, "reasoning");
  }

  /** Follows a reasoning session's events like connectToConversation; ends when the session finishes. */
  watchReasoning(reasoningId: string, handlers: ReasoningHandlers, options: SubscribeOptions = {}): EventSubscription {
    return subscribe<ReasoningEvent>(
      (afterSequence, signal) =>
        this.#events<ReasoningEvent>(this.reasoning.streamReasoningEvents({ reasoningId, afterSequence }, { signal })),
      (event) => dispatchReasoningEvent(event, handlers),
      reasoningEnds,
      handlers,
      options,
    );
  }

  async getReasoning(reasoningId: string): Promise<Reasoning> {
    const response = await this.#call((o) => this.reasoning.getReasoning({ reasoningId }, o));
    return required(response.reasoning, "reasoning");
  }

  async cancelReasoning(reasoningId: string): Promise<Reasoning> {
    const response = await this.#call((o) => this.reasoning.cancelReasoning({ reasoningId }, o));
    return required(response.reasoning, "reasoning");
  }

  /** Continues an interrupted session from its last iteration. */
  async resumeReasoning(reasoningId: string, options: { wait?: boolean } = {}): Promise<Reasoning> {
    const response = await this.#call((o) => this.reasoning.resumeReasoning({ reasoningId, wait: options.wait ?? false }, o));
    return required(response.reasoning, "reasoning");
  }

  /** The events of a stream of `{event}` responses. */
  async *#events<E>(responses: AsyncIterable<{ event?: E | undefined }>): AsyncGenerator<E> {
    for await (const response of responses) {
      if (response.event) yield response.event;
    }
  }
}
