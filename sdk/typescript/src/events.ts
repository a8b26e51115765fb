/**
 * Event subscriptions that survive a dropped connection.
 *
 * A conversation's or reasoning session's events are numbered from 1 without gaps, and the server replays
 * them after any `after_sequence`. A subscription remembers the last sequence it delivered; when the stream
 * breaks for a reason that is not the API's answer (a network error, UNAVAILABLE, UNKNOWN from a body cut
 * short, its own idle timer, or a limit that says when to come back), it reopens with
 * `after_sequence = lastSequence` after a short, capped, jittered backoff (or the RetryInfo delay), so
 * nothing is lost and nothing is delivered twice. It ends for good on a terminal event
 * (the server then ends the stream too), on a terminal API error (NOT_FOUND, PERMISSION_DENIED, ...) or on
 * `close()`.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { RunStatus } from "./gen/aibattle/v1/common_pb.js";
import {
  type ConversationEvent,
  ConversationEventType,
} from "./gen/aibattle/v1/conversations_pb.js";
import {
  type ReasoningEvent,
  ReasoningEventType,
  type ReasoningIteration,
} from "./gen/aibattle/v1/reasoning_pb.js";
import { type AIBattleError, toAIBattleError } from "./errors.js";

export interface EventSubscription {
  /** The sequence of the last event delivered: where a new subscription would resume. */
  readonly lastSequence: bigint;
  /** Stop now; no reconnect. */
  close(): void;
  /** Resolves when the subscription ends for good: a terminal event, a terminal error, or close(). */
  readonly done: Promise<void>;
  /** The terminal error that ended it, if one did (also given to onError). */
  readonly error: AIBattleError | undefined;
}

export interface SubscribeOptions {
  /** Resume after this sequence (0, the default, replays every event). */
  afterSequence?: bigint;
  /** Aborting it is close(). */
  signal?: AbortSignal;
  /** Reopen when no event arrived for this long (0 disables); a quiet stream is reopened harmlessly. */
  idleTimeoutMs?: number;
  /** First reconnect delay; it doubles per failed attempt up to maxBackoffMs (with jitter). */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Give up (onError with the last error) after this many reconnects in a row without an event. */
  maxReconnects?: number;
}

export interface ReconnectInfo {
  /** Reconnects in a row without an event delivered, from 1. */
  attempt: number;
  /** The sequence the reopened stream resumes after. */
  afterSequence: bigint;
  /** Why the previous stream broke. */
  error: AIBattleError;
}

interface Lifecycle {
  onError?(error: AIBattleError): void;
  onReconnect?(info: ReconnectInfo): void;
}

/** Everything a stream can do to a subscription's run: deliver events in order, then end or break. */
export type OpenStream<E> = (afterSequence: bigint, signal: AbortSignal) => AsyncIterable<E>;

const IDLE = Symbol("idle");

/**
 * Whether a broken stream is worth reopening: the connection failed, or the server asked us to come back
 * later (a limit with RetryInfo). Anything else is the API's final answer.
 */
function transient(error: AIBattleError): boolean {
  if (error.code === Code.ResourceExhausted) return error.retryAfterMs !== undefined;
  return error.code === Code.Unavailable || error.code === Code.Unknown;
}

class Subscription<E extends { sequence: bigint }> implements EventSubscription {
  lastSequence: bigint;
  error: AIBattleError | undefined;
  readonly done: Promise<void>;
  private readonly stop = new AbortController();
  /** Whether the current (or last) stream delivered an event. */
  private progressed = false;

  constructor(
    private readonly open: OpenStream<E>,
    private readonly deliver: (event: E) => void,
    private readonly isTerminal: (event: E) => boolean,
    private readonly handlers: Lifecycle,
    private readonly options: SubscribeOptions,
  ) {
    this.lastSequence = options.afterSequence ?? 0n;
    const outer = options.signal;
    const onAbort = (): void => this.close();
    if (outer?.aborted) this.stop.abort();
    else outer?.addEventListener("abort", onAbort, { once: true });
    // The caller's signal may outlive this subscription: leave no listener on it once it is over.
    this.done = this.run().finally(() => outer?.removeEventListener("abort", onAbort));
  }

  close(): void {
    this.stop.abort();
  }

  private async run(): Promise<void> {
    let attempt = 0;
    while (!this.stop.signal.aborted) {
      let error: AIBattleError;
      try {
        if ((await this.follow()) === "ended") return;
        // Our idle timer cut a quiet stream: reopen at once (it may have been silently dead).
        attempt = 0;
        const idle = new ConnectError(`no event for ${this.options.idleTimeoutMs} ms`, Code.DeadlineExceeded);
        this.handlers.onReconnect?.({ attempt: 1, afterSequence: this.lastSequence, error: toAIBattleError(idle) });
        continue;
      } catch (reason) {
        if (this.stop.signal.aborted) return;
        error = toAIBattleError(reason);
      }
      if (this.progressed) attempt = 0; // the broken stream delivered: a fresh run of attempts
      attempt += 1;
      const limit = this.options.maxReconnects ?? Infinity;
      if (!transient(error) || attempt > limit) {
        this.error = error;
        this.handlers.onError?.(error);
        return;
      }
      this.handlers.onReconnect?.({ attempt, afterSequence: this.lastSequence, error });
      await this.sleep(Math.max(this.backoff(attempt), error.retryAfterMs ?? 0));
    }
  }

  /** One stream, from lastSequence: "ended" when the server ended it, "idle" when our timer did. */
  private async follow(): Promise<"ended" | "idle"> {
    const call = new AbortController();
    const onStop = (): void => call.abort();
    this.stop.signal.addEventListener("abort", onStop, { once: true });
    const idleMs = this.options.idleTimeoutMs ?? 0;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const arm = (): void => {
      if (idleMs <= 0) return;
      clearTimeout(timer);
      timer = setTimeout(() => call.abort(IDLE), idleMs);
    };
    this.progressed = false;
    try {
      arm();
      for await (const event of this.open(this.lastSequence, call.signal)) {
        arm();
        if (event.sequence <= this.lastSequence) continue; // replayed: already delivered
        this.lastSequence = event.sequence;
        this.progressed = true;
        this.emit(event);
        if (this.isTerminal(event)) return "ended"; // the server ends the stream now too; don't wait for it
      }
      return "ended"; // the server ends a stream only once its resource is done
    } catch (reason) {
      if (call.signal.reason === IDLE && !this.stop.signal.aborted) return "idle";
      throw reason;
    } finally {
      clearTimeout(timer);
      this.stop.signal.removeEventListener("abort", onStop);
      call.abort(); // a body left open would keep the connection (and the server's follower) busy
    }
  }

  /** A handler that throws must not end the subscription: its error is reported as an uncaught one. */
  private emit(event: E): void {
    try {
      this.deliver(event);
    } catch (err) {
      setTimeout(() => {
        throw err;
      });
    }
  }

  private backoff(attempt: number): number {
    const first = this.options.initialBackoffMs ?? 100;
    const cap = this.options.maxBackoffMs ?? 5000;
    const base = Math.min(cap, first * 2 ** (attempt - 1));
    return base * (0.5 + Math.random() / 2);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.stop.signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.stop.signal.addEventListener("abort", done, { once: true });
    });
  }
}

/** A resumable subscription over `open`; see the module comment. */
export function subscribe<E extends { sequence: bigint }>(
  open: OpenStream<E>,
  deliver: (event: E) => void,
  isTerminal: (event: E) => boolean,
  handlers: Lifecycle,
  options: SubscribeOptions = {},
): EventSubscription {
  return new Subscription(open, deliver, isTerminal, handlers, options);
}

// ---- conversations

interface Delivered<E> {
  sequence: bigint;
  event: E;
}

/** Seed 000 §7.2's callbacks, plus the rest of a conversation's events. Each gets a flat object. */
export interface ConversationHandlers extends Lifecycle {
  /** Every event, before its specific handler. */
  onEvent?(event: ConversationEvent): void;
  /** A recorded message (a person's or a model's whole turn). */
  onMessage?(
    data: Delivered<ConversationEvent> & { role: string; model: string; content: string; messageId: string; queued: boolean },
  ): void;
  /** A reasoning delta of the turn in progress. */
  onThinking?(data: Delivered<ConversationEvent> & { model: string; role: string; content: string }): void;
  /** A model called a tool (the conversation runs none: act on it and answer with addMessage). */
  onToolUse?(data: Delivered<ConversationEvent> & { model: string; role: string; tool: string; arguments: string; toolCallId: string }): void;
  /** A content delta of the turn in progress. */
  onToken?(data: Delivered<ConversationEvent> & { model: string; role: string; content: string }): void;
  /** A participant's turn began. */
  onTurnStarted?(data: Delivered<ConversationEvent> & { model: string; role: string }): void;
  /** The status changed (STATUS_CHANGED and COMPLETION), e.g. "RUN_STATUS_WAITING_FOR_INPUT". */
  onStatus?(data: Delivered<ConversationEvent> & { status: string; runStatus: RunStatus }): void;
  /** The conversation finished its rounds. */
  onCompletion?(data: Delivered<ConversationEvent> & { status: string }): void;
  /** A turn failed (an ERROR event; the subscription ends after it). */
  onTurnError?(data: Delivered<ConversationEvent> & { code: number; message: string }): void;
}

/** "RUN_STATUS_COMPLETED" for RunStatus.COMPLETED (the proto's own spelling). */
export function statusName(status: RunStatus): string {
  const name = RunStatus[status];
  return name === undefined ? String(status) : `RUN_STATUS_${name}`;
}

/** Whether a conversation's stream ends after this event (as the server's does). */
export function conversationEnds(event: ConversationEvent): boolean {
  return (
    event.type === ConversationEventType.COMPLETION ||
    event.type === ConversationEventType.ERROR ||
    (event.type === ConversationEventType.STATUS_CHANGED && event.status === RunStatus.CANCELLED)
  );
}

/**
 * A function that calls the handler each event is for. It remembers whose turn is in progress, since a
 * TOKEN, THINKING or TOOL_USE event may leave `model` and `role` to its turn's TURN_STARTED.
 */
export function conversationDispatcher(h: ConversationHandlers): (event: ConversationEvent) => void {
  let speaker = { model: "", role: "" };
  return (event) => {
    if (event.type === ConversationEventType.TURN_STARTED) speaker = { model: event.model, role: event.role };
    dispatchConversationEvent(event, h, speaker);
  };
}

/** Calls the handler an event is for; `speaker` fills in a delta's model and role when it has none. */
export function dispatchConversationEvent(
  event: ConversationEvent,
  h: ConversationHandlers,
  speaker: { model: string; role: string } = { model: "", role: "" },
): void {
  h.onEvent?.(event);
  const base = { sequence: event.sequence, event };
  const turn = { ...base, model: event.model || speaker.model, role: event.role || speaker.role };
  switch (event.type) {
    case ConversationEventType.MESSAGE: {
      const m = event.message;
      h.onMessage?.({
        ...base,
        role: m?.role ?? event.role,
        model: m?.model ?? event.model,
        content: m?.content ?? "",
        messageId: m?.messageId ?? "",
        queued: m?.queued ?? false,
      });
      break;
    }
    case ConversationEventType.THINKING:
      h.onThinking?.({ ...turn, content: event.delta });
      break;
    case ConversationEventType.TOKEN:
      h.onToken?.({ ...turn, content: event.delta });
      break;
    case ConversationEventType.TOOL_USE:
      h.onToolUse?.({
        ...turn,
        tool: event.tool || (event.toolCall?.name ?? ""),
        arguments: event.toolCall?.arguments ?? "",
        toolCallId: event.toolCall?.id ?? "",
      });
      break;
    case ConversationEventType.TURN_STARTED:
      h.onTurnStarted?.(turn);
      break;
    case ConversationEventType.STATUS_CHANGED:
      h.onStatus?.({ ...base, status: statusName(event.status), runStatus: event.status });
      break;
    case ConversationEventType.COMPLETION:
      h.onStatus?.({ ...base, status: statusName(event.status), runStatus: event.status });
      h.onCompletion?.({ ...base, status: statusName(event.status) });
      break;
    case ConversationEventType.ERROR:
      h.onTurnError?.({ ...base, code: event.error?.code ?? 0, message: event.error?.message ?? "" });
      break;
    default:
      break;
  }
}

// ---- reasoning sessions

/** A reasoning session's events, each with a flat object for its kind. */
export interface ReasoningHandlers extends Lifecycle {
  /** Every event, before its specific handler. */
  onEvent?(event: ReasoningEvent): void;
  /** A content delta of the model speaking. */
  onToken?(data: Delivered<ReasoningEvent> & { model: string; content: string; iterationIndex: number }): void;
  /** A reasoning delta of the model speaking. */
  onThinking?(data: Delivered<ReasoningEvent> & { model: string; content: string; iterationIndex: number }): void;
  /** A whole iteration: a model's answer, critique or vote, with its focus areas and stuck indicators. */
  onIteration?(data: Delivered<ReasoningEvent> & { iteration: ReasoningIteration; model: string; index: number }): void;
  /** The session noticed a model going in circles. */
  onStuck?(data: Delivered<ReasoningEvent> & { model: string; indicators: string[] }): void;
  /** Control passed from one model to another. */
  onHandoff?(data: Delivered<ReasoningEvent> & { from: string; to: string }): void;
  /** The status changed, e.g. "RUN_STATUS_IN_PROGRESS". */
  onStatus?(data: Delivered<ReasoningEvent> & { status: string; runStatus: RunStatus }): void;
  /** The session finished: its final result and why it stopped. */
  onCompletion?(data: Delivered<ReasoningEvent> & { finalResult: string; stopReason: string }): void;
  /** The session failed (an ERROR event; the subscription ends after it). */
  onFailure?(data: Delivered<ReasoningEvent> & { code: number; message: string }): void;
}

const REASONING_FINISHED = new Set([RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.INTERRUPTED]);

/** Whether a reasoning session's stream ends after this event (as the server's does). */
export function reasoningEnds(event: ReasoningEvent): boolean {
  return (
    event.type === ReasoningEventType.COMPLETION ||
    event.type === ReasoningEventType.ERROR ||
    (event.type === ReasoningEventType.STATUS_CHANGED && REASONING_FINISHED.has(event.status))
  );
}

/** Calls the handler an event is for. */
export function dispatchReasoningEvent(event: ReasoningEvent, h: ReasoningHandlers): void {
  h.onEvent?.(event);
  const base = { sequence: event.sequence, event };
  switch (event.type) {
    case ReasoningEventType.TOKEN:
      h.onToken?.({ ...base, model: event.model, content: event.delta, iterationIndex: event.iterationIndex });
      break;
    case ReasoningEventType.THINKING:
      h.onThinking?.({ ...base, model: event.model, content: event.delta, iterationIndex: event.iterationIndex });
      break;
    case ReasoningEventType.NEW_ITERATION:
      if (event.iteration) {
        h.onIteration?.({ ...base, iteration: event.iteration, model: event.iteration.model, index: event.iteration.index });
      }
      break;
    case ReasoningEventType.STUCK_DETECTED:
      h.onStuck?.({ ...base, model: event.model, indicators: event.stuckIndicators });
      break;
    case ReasoningEventType.HANDOFF:
      h.onHandoff?.({ ...base, from: event.model, to: event.toModel });
      break;
    case ReasoningEventType.STATUS_CHANGED:
      h.onStatus?.({ ...base, status: statusName(event.status), runStatus: event.status });
      break;
    case ReasoningEventType.COMPLETION:
      h.onCompletion?.({ ...base, finalResult: event.finalResult, stopReason: event.stopReason });
      break;
    case ReasoningEventType.ERROR:
      h.onFailure?.({ ...base, code: event.error?.code ?? 0, message: event.error?.message ?? "" });
      break;
    default:
      break;
  }
}
