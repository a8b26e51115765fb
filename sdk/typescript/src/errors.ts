/**
 * Typed errors: every AIBattleClient method throws an AIBattleError (or a subclass), never a raw ConnectError.
 *
 * The gateway renders each failure as a Connect (or gRPC-Web) status whose details follow AIP-193: an
 * ErrorInfo always (its `reason` is stable, e.g. MODEL_NOT_FOUND, RATE_LIMITED), a RetryInfo when the client
 * should wait, a BadRequest when a field is at fault. `toAIBattleError` is the one place that reads them.
 */
import { durationMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";

export { Code };

/** The HTTP status each code answers with (Connect's table, which is also the gateway's REST table). */
const HTTP_STATUS: Record<Code, number> = {
  [Code.Canceled]: 499,
  [Code.Unknown]: 500,
  [Code.InvalidArgument]: 400,
  [Code.DeadlineExceeded]: 504,
  [Code.NotFound]: 404,
  [Code.AlreadyExists]: 409,
  [Code.PermissionDenied]: 403,
  [Code.ResourceExhausted]: 429,
  [Code.FailedPrecondition]: 400,
  [Code.Aborted]: 409,
  [Code.OutOfRange]: 400,
  [Code.Unimplemented]: 501,
  [Code.Internal]: 500,
  [Code.Unavailable]: 503,
  [Code.DataLoss]: 500,
  [Code.Unauthenticated]: 401,
};

/** A failed call: its status code, the server's machine-readable reason, and what the details add. */
export class AIBattleError extends Error {
  /** The status code (Connect's numbering, which is gRPC's). */
  readonly code: Code;
  /** ErrorInfo.reason, e.g. "MODEL_NOT_FOUND"; "" when the failure did not come from the server. */
  readonly reason: string;
  /** The HTTP status of the code (401, 403, 404, 429, ...); a unary answer's own may be more precise (413). */
  readonly httpStatus: number;
  /** BadRequest's first field violation: the request field at fault, e.g. "models[1].id". */
  readonly field?: string;
  /** RetryInfo.retry_delay: how long the server asks the client to wait before trying again. */
  readonly retryAfterMs?: number;
  /** ErrorInfo.metadata (e.g. the limit that was hit). */
  readonly metadata: Readonly<Record<string, string>>;
  /** The status message without Connect's "[code]" prefix. */
  readonly rawMessage: string;
  declare readonly cause: ConnectError;
  // Spelled out rather than taken from the constructor: a minifying bundler renames classes.
  override name = "AIBattleError";

  constructor(cause: ConnectError) {
    super(cause.message, { cause });
    this.code = cause.code;
    this.rawMessage = cause.rawMessage;
    this.httpStatus = HTTP_STATUS[cause.code];
    const info = cause.findDetails(ErrorInfoSchema)[0];
    this.reason = info?.reason ?? "";
    this.metadata = { ...(info?.metadata ?? {}) };
    const violation = cause.findDetails(BadRequestSchema)[0]?.fieldViolations[0];
    if (violation?.field) this.field = violation.field;
    const delay = cause.findDetails(RetryInfoSchema)[0]?.retryDelay;
    if (delay) this.retryAfterMs = Math.round(durationMs(delay));
  }
}

/** 401: no API key, an unknown one, or a revoked or expired one. */
export class AuthenticationError extends AIBattleError {
  override name = "AuthenticationError";
}
/** 403: the key may not do this (an admin-only RPC, a model outside the key's allow-list). */
export class PermissionDeniedError extends AIBattleError {
  override name = "PermissionDeniedError";
}
/** 404: no such model, conversation or reasoning session for this key (another key's look the same). */
export class NotFoundError extends AIBattleError {
  override name = "NotFoundError";
}
/** 429: a rate, concurrency, token or budget limit was hit; `retryAfterMs` says when to try again. */
export class RateLimitError extends AIBattleError {
  override name = "RateLimitError";
}
/** 400: the request is wrong; `field` names the field at fault when there is one. */
export class InvalidArgumentError extends AIBattleError {
  override name = "InvalidArgumentError";
}
/** 503: the gateway or a model's provider cannot answer now; safe to retry later. */
export class UnavailableError extends AIBattleError {
  override name = "UnavailableError";
}

const SUBCLASS: Partial<Record<Code, new (cause: ConnectError) => AIBattleError>> = {
  [Code.Unauthenticated]: AuthenticationError,
  [Code.PermissionDenied]: PermissionDeniedError,
  [Code.NotFound]: NotFoundError,
  [Code.ResourceExhausted]: RateLimitError,
  [Code.InvalidArgument]: InvalidArgumentError,
  [Code.Unavailable]: UnavailableError,
};

/**
 * Any failure (a ConnectError, a network TypeError, an abort) as the AIBattleError for its code. fetch fails
 * with a TypeError when it cannot connect or its body is cut ("fetch failed", "Failed to fetch",
 * "terminated"), which connect-web reports as Unknown: that is Unavailable, as connect-node says for the same.
 */
export function toAIBattleError(reason: unknown): AIBattleError {
  if (reason instanceof AIBattleError) return reason;
  let cause = ConnectError.from(reason);
  if (cause.code === Code.Unknown && cause.cause instanceof TypeError) {
    cause = new ConnectError(cause.rawMessage, Code.Unavailable, cause.metadata, undefined, cause.cause);
  }
  const Class = SUBCLASS[cause.code] ?? AIBattleError;
  return new Class(cause);
}
