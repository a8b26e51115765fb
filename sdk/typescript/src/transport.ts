/**
 * Transports: how calls reach the gateway's HTTP port. Browsers and Node 20 both have fetch, so the default
 * is connect-web's; `createNodeTransport` (in "@aibattle/sdk/node") uses Node's own http module instead.
 * The API key is not a transport setting: `withApiKey` adds it to any transport, the caller's own included.
 */
import { createRegistry } from "@bufbuild/protobuf";
import type { Interceptor, Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { file_google_rpc_error_details } from "./gen/google/rpc/error_details_pb.js";

/**
 * What JSON on the wire needs to read a `google.protobuf.Any`: the event streams' `error` is a
 * `google.rpc.Status` whose details (ErrorInfo, RetryInfo, BadRequest…) come as Any, and protobuf-es parses
 * an Any only of a type it is given.
 */
export const jsonOptions = { registry: createRegistry(file_google_rpc_error_details) };

/** Which wire the calls use; both are served at `/<package>.<Service>/<Method>` on the HTTP port. */
export type Protocol = "connect" | "grpc-web";

export interface TransportOptions {
  /** "connect" (the default) or "grpc-web". */
  protocol?: Protocol;
  /** Protobuf binary instead of JSON on the wire (gRPC-Web is always binary here). */
  binary?: boolean;
  /** Interceptors run on every call, in order. */
  interceptors?: Interceptor[];
  /** A fetch to use instead of globalThis.fetch (web transport only). */
  fetch?: typeof globalThis.fetch;
}

/** Where a client connects when given no base URL: the page's own origin, else a local gateway. */
export function defaultBaseUrl(): string {
  const origin = (globalThis as { location?: { origin?: string } }).location?.origin;
  return origin && origin !== "null" ? origin : "http://127.0.0.1:8080";
}

/**
 * A fetch-based transport (connect-web), for browsers and Node 20+. Connect clients send the
 * NO_SIDE_EFFECTS RPCs (List*, Get*) as cacheable GET requests.
 */
export function createWebTransport(baseUrl: string = defaultBaseUrl(), options: TransportOptions = {}): Transport {
  const common = {
    baseUrl: baseUrl.replace(/\/+$/, ""),
    interceptors: options.interceptors ?? [],
    ...(options.fetch ? { fetch: options.fetch } : {}),
  };
  if (options.protocol === "grpc-web") return createGrpcWebTransport({ ...common, useBinaryFormat: true });
  return createConnectTransport({ ...common, useBinaryFormat: options.binary ?? false, useHttpGet: true, jsonOptions });
}

/** `transport` with `Authorization: Bearer <apiKey>` on every call (none when apiKey is empty). */
export function withApiKey(transport: Transport, apiKey: string | null | undefined): Transport {
  if (!apiKey) return transport;
  const authorized = (header: HeadersInit | undefined): Headers => {
    const headers = new Headers(header);
    headers.set("authorization", `Bearer ${apiKey}`);
    return headers;
  };
  return {
    unary: (method, signal, timeoutMs, header, input, contextValues) =>
      transport.unary(method, signal, timeoutMs, authorized(header), input, contextValues),
    stream: (method, signal, timeoutMs, header, input, contextValues) =>
      transport.stream(method, signal, timeoutMs, authorized(header), input, contextValues),
  };
}
