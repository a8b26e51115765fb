/**
 * @aibattle/sdk: a TypeScript client for the AI Battle gateway, over Connect or gRPC-Web, in browsers and
 * Node. `AIBattleClient` is seed 000 §7.2's client; the generated messages, enums and service descriptors
 * are exported too (for the raw clients and `create(XSchema, ...)`). Node-only helpers live in
 * "@aibattle/sdk/node", so a browser bundle never pulls in Node's http modules.
 */
export * from "./client.js";
export * from "./errors.js";
export * from "./events.js";
export * from "./transport.js";
export { ConnectError } from "@connectrpc/connect";
export type { Transport } from "@connectrpc/connect";
export { create, fromJson, toJson } from "@bufbuild/protobuf";

export * from "./gen/aibattle/v1/common_pb.js";
export * from "./gen/aibattle/v1/completions_pb.js";
export * from "./gen/aibattle/v1/conversations_pb.js";
export * from "./gen/aibattle/v1/embeddings_pb.js";
export * from "./gen/aibattle/v1/keys_pb.js";
export * from "./gen/aibattle/v1/models_pb.js";
export * from "./gen/aibattle/v1/reasoning_pb.js";
export * from "./gen/google/rpc/error_details_pb.js";
