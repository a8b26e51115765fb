// Unary calls over every wire the gateway speaks: Connect JSON and binary, gRPC-Web, by fetch and by Node's http.
import assert from "node:assert/strict";
import { test } from "node:test";
import { AIBattleClient, FinishReason, RunStatus, createWebTransport } from "../dist/index.js";
import { createNodeTransport } from "../dist/node.js";
import { client, live } from "./live.mjs";

const MODELS = JSON.parse(process.env.AIBATTLE_MODELS);
const ECHO_REPLY = process.env.AIBATTLE_ECHO_REPLY;

const WIRES = {
  "connect json (fetch)": () => ({}),
  "connect binary (fetch)": () => ({ binary: true }),
  "grpc-web (fetch)": () => ({ protocol: "grpc-web" }),
  "connect json (node http)": () => ({ transport: createNodeTransport(live.url) }),
  "grpc-web (node http)": () => ({ transport: createNodeTransport(live.url, { protocol: "grpc-web" }) }),
};

for (const [wire, options] of Object.entries(WIRES)) {
  test(`listModels, getModel and createCompletion over ${wire}`, async () => {
    const c = client(options());
    const models = await c.listModels();
    assert.deepEqual(models.map((m) => m.id).sort(), [...MODELS].sort());
    const echo = await c.getModel("scripted-echo");
    assert.equal(echo.id, "scripted-echo");
    assert.equal(echo.provider, "scripted");
    assert.deepEqual(echo.capabilities, ["text", "conversation"]);
    assert.equal(echo.pricing?.output, 0.002);
    const answer = await c.createCompletion({ model: "scripted-echo", prompt: "Say hello", maxTokens: 64 });
    assert.equal(answer.content, ECHO_REPLY);
    assert.equal(answer.model, "scripted-echo");
    assert.equal(answer.finishReason, FinishReason.STOP);
    assert.equal(answer.usage?.completionTokens, ECHO_REPLY.split(" ").length);
  });
}

test("listModels follows next_page_token through every page", async () => {
  const c = client();
  const first = await c.models.listModels({ pageSize: 2 });
  assert.equal(first.models.length, 2);
  assert.notEqual(first.nextPageToken, "");
  const all = await c.listModels({ pageSize: 2 });
  assert.deepEqual(all.map((m) => m.id).sort(), [...MODELS].sort());
});

test("Connect sends the NO_SIDE_EFFECTS reads as GET and the rest as POST", async () => {
  const seen = [];
  const recording = (input, init) => {
    seen.push(`${init?.method ?? "GET"} ${new URL(String(input)).pathname}`);
    return fetch(input, init);
  };
  const c = new AIBattleClient(live.key, live.url, { transport: createWebTransport(live.url, { fetch: recording }) });
  await c.getModel("scripted-echo");
  await c.createCompletion({ model: "scripted-echo", prompt: "hi" });
  assert.deepEqual(seen, [
    "GET /aibattle.v1.ModelService/GetModel",
    "POST /aibattle.v1.CompletionService/CreateCompletion",
  ]);
});

test("conversation calls return the resource with seed 000's snake_case ids", async () => {
  const c = client();
  const conversation = await c.createConversation(
    [
      { id: "scripted-echo", role: "human" },
      { id: "scripted-echo", role: "assistant" },
    ],
    "Hello?",
    { mode: "human-ai", rounds: 2, systemInstruction: "Be brief.", wait: true },
  );
  assert.match(conversation.conversation_id, /^conv-/);
  assert.equal(conversation.conversation_id, conversation.conversationId);
  assert.equal(conversation.mode, "human-ai");
  assert.equal(conversation.systemInstruction, "Be brief.");
  // The alias is not a field: it leaves the message's own keys alone.
  assert.ok(!Object.keys(conversation).includes("conversation_id"));
  assert.deepEqual(
    conversation.messages.map((m) => [m.role, m.content]),
    [
      ["system", "Be brief."],
      ["human", "Hello?"],
      ["assistant", ECHO_REPLY],
    ],
  );

  const message = await c.addMessage(conversation.conversation_id, "Thanks!", "human", "scripted-echo");
  assert.match(message.message_id, /.+/);
  assert.equal(message.message_id, message.messageId);
  assert.equal(message.content, "Thanks!");
  assert.equal(message.role, "human");

  const again = await c.getConversation(conversation.conversation_id);
  assert.equal(again.conversation_id, conversation.conversation_id);
  assert.ok(again.messages.some((m) => m.messageId === message.message_id));

  const cancelled = await c.cancelConversation(conversation.conversation_id);
  assert.equal(cancelled.conversation_id, conversation.conversation_id);
  await c.deleteConversation(conversation.conversation_id);
  await assert.rejects(c.getConversation(conversation.conversation_id), { name: "NotFoundError" });
});

test("createReasoning, getReasoning and cancelReasoning", async () => {
  const c = client();
  const done = await c.createReasoning({
    primaryModel: "scripted-echo",
    secondaryModel: "scripted-vision",
    prompt: "Why is the sky blue?",
    maxIterations: 2,
    wait: true,
  });
  assert.match(done.reasoningId, /.+/);
  assert.equal(done.status, RunStatus.COMPLETED);
  assert.ok(done.iterations.length >= 2, `iterations: ${done.iterations.length}`);
  assert.notEqual(done.finalResult, "");
  const read = await c.getReasoning(done.reasoningId);
  assert.equal(read.reasoningId, done.reasoningId);
  assert.equal(read.iterations.length, done.iterations.length);

  const running = await c.createReasoning({
    primaryModel: "scripted-slow",
    secondaryModel: "scripted-echo",
    prompt: "Take your time.",
  });
  const cancelled = await c.cancelReasoning(running.reasoningId);
  assert.equal(cancelled.reasoningId, running.reasoningId);
  assert.equal((await c.getReasoning(running.reasoningId)).status, RunStatus.CANCELLED);
});
