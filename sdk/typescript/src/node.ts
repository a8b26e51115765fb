/**
 * "@aibattle/sdk/node": everything of "@aibattle/sdk", plus a transport over Node's own http module
 * (connect-node), for Node programs that want its agent and keep-alive settings rather than fetch.
 */
import type { Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { defaultBaseUrl, jsonOptions, type TransportOptions } from "./transport.js";

export * from "./index.js";

/** A connect-node transport (HTTP/1.1, which the gateway's HTTP port speaks). */
export function createNodeTransport(
  baseUrl: string = defaultBaseUrl(),
  options: Omit<TransportOptions, "fetch"> = {},
): Transport {
  const common = {
    baseUrl: baseUrl.replace(/\/+$/, ""),
    httpVersion: "1.1" as const,
    interceptors: options.interceptors ?? [],
  };
  if (options.protocol === "grpc-web") return createGrpcWebTransport({ ...common, useBinaryFormat: true });
  return createConnectTransport({ ...common, useBinaryFormat: options.binary ?? false, useHttpGet: true, jsonOptions });
}
