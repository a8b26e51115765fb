// The public surface, without a server: every RPC is either wrapped by an AIBattleClient method or left to
// the raw client on purpose (adding an RPC to a proto fails here until it is decided), and the hand-written
// exports match public_api.txt (a change to them is a visible diff).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import * as sdk from "../dist/index.js";
import * as node from "../dist/node.js";

/** Each RPC: the AIBattleClient method that wraps it, or null when only the raw client has it (and why). */
const WRAPPED = {
  "aibattle.v1.ModelService/ListModels": "listModels",
  "aibattle.v1.ModelService/GetModel": "getModel",
  "aibattle.v1.CompletionService/CreateCompletion": "createCompletion",
  "aibattle.v1.CompletionService/StreamCompletion": "streamCompletion",
  "aibattle.v1.CompletionService/CountTokens": null, // a utility: client.completions.countTokens
  "aibattle.v1.ConversationService/CreateConversation": "createConversation",
  "aibattle.v1.ConversationService/GetConversation": "getConversation",
  "aibattle.v1.ConversationService/ListConversations": null, // paging is the caller's: client.conversations
  "aibattle.v1.ConversationService/DeleteConversation": "deleteConversation",
  "aibattle.v1.ConversationService/AddMessage": "addMessage",
  "aibattle.v1.ConversationService/RunConversation": "runConversation",
  "aibattle.v1.ConversationService/CancelConversation": "cancelConversation",
  "aibattle.v1.ConversationService/StreamConversationEvents": "connectToConversation",
  "aibattle.v1.ConversationService/Converse": null, // bidirectional: fetch cannot stream a request (WebSocket route)
  "aibattle.v1.EmbeddingService/CreateEmbeddings": null, // client.embeddings
  "aibattle.v1.KeyService/CreateKey": null, // admin only: client.keys
  "aibattle.v1.KeyService/ListKeys": null,
  "aibattle.v1.KeyService/RevokeKey": null,
  "aibattle.v1.ReasoningService/CreateReasoning": "createReasoning",
  "aibattle.v1.ReasoningService/GetReasoning": "getReasoning",
  "aibattle.v1.ReasoningService/ListReasonings": null, // paging is the caller's: client.reasoning
  "aibattle.v1.ReasoningService/CancelReasoning": "cancelReasoning",
  "aibattle.v1.ReasoningService/ResumeReasoning": "resumeReasoning",
  "aibattle.v1.ReasoningService/StreamReasoningEvents": "watchReasoning",
};
/** The raw generated client of each service, on every AIBattleClient. */
const RAW = {
  "aibattle.v1.ModelService": "models",
  "aibattle.v1.CompletionService": "completions",
  "aibattle.v1.ConversationService": "conversations",
  "aibattle.v1.EmbeddingService": "embeddings",
  "aibattle.v1.KeyService": "keys",
  "aibattle.v1.ReasoningService": "reasoning",
};

const services = Object.values(sdk).filter((value) => value?.kind === "service");

test("every RPC is wrapped by an AIBattleClient method or deliberately left to the raw client", () => {
  const rpcs = services.flatMap((service) => service.methods.map((m) => `${service.typeName}/${m.name}`));
  assert.deepEqual(rpcs.sort(), Object.keys(WRAPPED).sort());
  for (const [rpc, method] of Object.entries(WRAPPED)) {
    if (method !== null) assert.equal(typeof sdk.AIBattleClient.prototype[method], "function", `${rpc} → ${method}`);
  }
  const client = new sdk.AIBattleClient(null, "http://127.0.0.1:8080");
  assert.deepEqual(services.map((s) => s.typeName).sort(), Object.keys(RAW).sort());
  for (const service of services) {
    for (const method of service.methods) {
      assert.equal(typeof client[RAW[service.typeName]][method.localName], "function", `${service.typeName}/${method.name}`);
    }
  }
});

test("the hand-written exports are public_api.txt", () => {
  const generated = new Set(
    Object.entries(sdk)
      .filter(([, value]) => value?.kind === "file" || value?.kind === "message" || value?.kind === "enum" || value?.kind === "service")
      .map(([name]) => name),
  );
  // Generated enums are plain objects; their names end in their schema's name minus "Schema".
  for (const name of Object.keys(sdk)) if (name.endsWith("Schema")) generated.add(name.slice(0, -"Schema".length));
  const methods = Object.getOwnPropertyNames(sdk.AIBattleClient.prototype).filter((m) => m !== "constructor" && !m.startsWith("_"));
  const surface = [
    ...Object.keys(sdk).filter((name) => !generated.has(name)).map((name) => `@aibattle/sdk ${name}`),
    ...Object.keys(node).filter((name) => !(name in sdk)).map((name) => `@aibattle/sdk/node ${name}`),
    ...methods.map((m) => `AIBattleClient.${m}`),
  ].sort();
  const expected = readFileSync(new URL("./public_api.txt", import.meta.url), "utf8").trim().split("\n");
  assert.deepEqual(surface, expected);
});
