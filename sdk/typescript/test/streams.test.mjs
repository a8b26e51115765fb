// Server streams: completion chunks, and the resumable event subscriptions of conversations and reasoning.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  AIBattleError,
  Code,
  ConversationEventType,
  NotFoundError,
  ReasoningEventType,
  RunStatus,
} from "../dist/index.js";
import { createNodeTransport } from "../dist/node.js";
import { client, live, within } from "./live.mjs";

const ECHO_REPLY = process.env.AIBATTLE_ECHO_REPLY;
const WIRES = {
  "connect json": () => ({}),
  "connect binary": () => ({ binary: true }),
  "grpc-web": () => ({ protocol: "grpc-web" }),
  "connect (node http)": () => ({ transport: createNodeTransport(live.url) }),
};

for (const [wire, options] of Object.entries(WIRES)) {
  test(`streamCompletion over ${wire} streams the reply chunk by chunk`, async () => {
    const chunks = [];
    for await (const chunk of client(options()).streamCompletion({ model: "scripted-echo", prompt: "Hi" })) {
      chunks.push(chunk);
    }
    assert.ok(chunks.length > 3, `only ${chunks.length} chunks`);
    assert.equal(chunks.map((c) => c.content).join(""), ECHO_REPLY);
    const last = chunks.at(-1);
    assert.equal(last.isFinal, true);
    assert.equal(last.usage?.completionTokens, ECHO_REPLY.split(" ").length);
  });
}

test("leaving a completion stream early ends it at once", async () => {
  const started = Date.now();
  let n = 0;
  // scripted-slow says 200 words 20 ms apart: reading it all would take 4 s.
  for await (const chunk of client().streamCompletion({ model: "scripted-slow", prompt: "Go" })) {
    if (chunk.content) n += 1;
    if (n === 3) break;
  }
  assert.equal(n, 3);
  assert.ok(Date.now() - started < 2000, `took ${Date.now() - started} ms`);
});

test("an upstream failure mid-stream is a typed error", async () => {
  const seen = [];
  await assert.rejects(
    (async () => {
      for await (const chunk of client().streamCompletion({ model: "scripted-fail", prompt: "Go" })) seen.push(chunk.content);
    })(),
    (error) => {
      assert.ok(error instanceof AIBattleError, String(error));
      assert.notEqual(error.reason, "");
      return true;
    },
  );
  // error_after_chunks = 2: the words said before the failure arrived first.
  assert.equal(seen.join(""), "one two ");
});

for (const [wire, options] of Object.entries(WIRES)) {
  test(`connectToConversation over ${wire} delivers every event once, in order, to the right handler`, async () => {
    const c = client(options());
    const conversation = await c.createConversation(
      [
        { id: "scripted-echo", role: "assistant" },
        { id: "scripted-vision", role: "critic" },
      ],
      "Discuss.",
      { mode: "ai-ai", rounds: 1 },
    );
    const events = [];
    const messages = [];
    const tokens = new Map();
    const statuses = [];
    const turns = [];
    let completed = 0;
    const sub = c.connectToConversation(conversation.conversation_id, {
      onEvent: (e) => events.push(e),
      onMessage: (d) => messages.push([d.role, d.model, d.content, d.sequence]),
      onToken: (d) => tokens.set(d.model, (tokens.get(d.model) ?? "") + d.content),
      onTurnStarted: (d) => turns.push(`${d.role}/${d.model}`),
      onStatus: (d) => statuses.push(d.status),
      onCompletion: () => (completed += 1),
    });
    await within(10000, sub.done, "the conversation");
    assert.equal(sub.error, undefined);
    assert.deepEqual(
      events.map((e) => e.sequence),
      events.map((_, i) => BigInt(i + 1)),
    );
    assert.equal(sub.lastSequence, events.at(-1).sequence);
    assert.equal(events.at(-1).type, ConversationEventType.COMPLETION);
    assert.equal(completed, 1);
    assert.equal(statuses.at(-1), "RUN_STATUS_COMPLETED");
    const final = await c.getConversation(conversation.conversation_id);
    assert.equal(final.lastSequence, sub.lastSequence);
    assert.deepEqual(
      messages.map(([role, model, content]) => [role, model, content]),
      final.messages.map((m) => [m.role, m.model, m.content]),
    );
    assert.deepEqual(turns, ["critic/scripted-vision"]);
    assert.equal(tokens.get("scripted-vision"), "I see.");
  });
}

for (const [wire, options] of Object.entries(WIRES)) {
  test(`a conversation whose model fails sends its error, details and all, over ${wire}`, async () => {
    // The ERROR event's google.rpc.Status carries its details as google.protobuf.Any: JSON needs them
    // registered (transport.ts jsonOptions), binary does not.
    const c = client(options());
    const conversation = await c.createConversation(
      [
        { id: "scripted-echo", role: "assistant" },
        { id: "scripted-fail", role: "critic" },
      ],
      "Discuss.",
      { mode: "ai-ai", rounds: 1 },
    );
    const events = [];
    const sub = c.connectToConversation(conversation.conversation_id, { onEvent: (e) => events.push(e) });
    await within(10000, sub.done, "the conversation");
    assert.equal(sub.error, undefined, String(sub.error));
    const failed = events.find((e) => e.type === ConversationEventType.ERROR);
    assert.ok(failed, `no ERROR event among ${events.map((e) => e.type)}`);
    assert.equal(failed.error?.code, Code.Unavailable);
    assert.ok(
      failed.error.details.some((d) => d.typeUrl.endsWith("/google.rpc.ErrorInfo")),
      JSON.stringify(failed.error.details.map((d) => d.typeUrl)),
    );
  });
}

test("connectToConversation from afterSequence replays only what follows it", async () => {
  const c = client();
  const conversation = await c.createConversation(
    [
      { id: "scripted-echo", role: "assistant" },
      { id: "scripted-echo", role: "critic" },
    ],
    "Discuss.",
    { mode: "ai-ai", rounds: 1, wait: true },
  );
  const all = [];
  await c.connectToConversation(conversation.conversation_id, { onEvent: (e) => all.push(e.sequence) }).done;
  assert.ok(all.length > 4);
  const tail = [];
  const sub = c.connectToConversation(conversation.conversation_id, { onEvent: (e) => tail.push(e.sequence) }, { afterSequence: 3n });
  await within(5000, sub.done, "the replay");
  assert.deepEqual(tail, all.slice(3));
  // Subscribing after the last event of a finished conversation ends at once, with nothing.
  const none = [];
  await within(5000, c.connectToConversation(conversation.conversation_id, { onEvent: (e) => none.push(e) }, { afterSequence: all.at(-1) }).done, "an empty replay");
  assert.deepEqual(none, []);
});

test("a subscription to a conversation that is not there ends with NotFoundError", async () => {
  const errors = [];
  const sub = client().connectToConversation("conv-does-not-exist", { onError: (e) => errors.push(e) });
  await within(5000, sub.done, "the subscription");
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof NotFoundError);
  assert.equal(errors[0].reason, "CONVERSATION_NOT_FOUND");
  assert.equal(sub.error, errors[0]);
});

test("close() ends a subscription to a conversation waiting for a person", async () => {
  const c = client();
  const conversation = await c.createConversation(
    [
      { id: "scripted-echo", role: "human" },
      { id: "scripted-echo", role: "assistant" },
    ],
    "Hello",
    { mode: "human-ai", rounds: 2 },
  );
  const statuses = [];
  const sub = c.connectToConversation(conversation.conversation_id, { onStatus: (d) => statuses.push(d.status) });
  while (!statuses.includes("RUN_STATUS_WAITING_FOR_INPUT")) await new Promise((r) => setTimeout(r, 20));
  sub.close();
  await within(2000, sub.done, "close()");
  assert.equal(sub.error, undefined);
});

test("an idle subscription reopens from its last sequence and still gets the next event once", async () => {
  const c = client();
  const conversation = await c.createConversation(
    [
      { id: "scripted-echo", role: "human" },
      { id: "scripted-echo", role: "assistant" },
    ],
    "Hello",
    { mode: "human-ai", rounds: 2, wait: true },
  );
  const reconnects = [];
  const sequences = [];
  const said = [];
  const sub = c.connectToConversation(
    conversation.conversation_id,
    {
      onEvent: (e) => sequences.push(e.sequence),
      onMessage: (d) => said.push(d.content),
      onReconnect: (info) => reconnects.push(info),
    },
    { idleTimeoutMs: 150 },
  );
  await new Promise((r) => setTimeout(r, 500));
  assert.ok(reconnects.length >= 2, `${reconnects.length} reconnects`);
  assert.equal(reconnects[0].error.name, "AIBattleError");
  assert.equal(reconnects[0].afterSequence, conversation.lastSequence);
  await c.addMessage(conversation.conversation_id, "One more thing.");
  while (said.length < 4) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(said.slice(-2), ["One more thing.", ECHO_REPLY]);
  assert.deepEqual(sequences, sequences.map((_, i) => BigInt(i + 1)));
  sub.close();
  await sub.done;
});

for (const [wire, options] of Object.entries(WIRES)) {
  test(`watchReasoning over ${wire} shows iterations, handoffs and the result`, async () => {
    const c = client(options());
    const session = await c.createReasoning({
      primaryModel: "scripted-echo",
      secondaryModel: "scripted-vision",
      prompt: "Why is the sky blue?",
      collaborationStrategy: "iterative_refinement",
      maxIterations: 2,
    });
    const kinds = [];
    const iterations = [];
    const handoffs = [];
    const tokens = [];
    let result;
    const sub = c.watchReasoning(session.reasoningId, {
      onEvent: (e) => kinds.push(e.type),
      onIteration: (d) => iterations.push([d.index, d.model]),
      onHandoff: (d) => handoffs.push([d.from, d.to]),
      onToken: (d) => tokens.push(d.content),
      onCompletion: (d) => (result = d.finalResult),
    });
    await within(10000, sub.done, "the reasoning session");
    assert.equal(sub.error, undefined);
    assert.equal(kinds.at(-1), ReasoningEventType.COMPLETION);
    const final = await c.getReasoning(session.reasoningId);
    assert.equal(final.status, RunStatus.COMPLETED);
    assert.equal(sub.lastSequence, final.lastSequence);
    assert.deepEqual(iterations, final.iterations.map((it) => [it.index, it.model]));
    assert.ok(handoffs.length >= 1);
    assert.ok(tokens.join("").length > 0);
    assert.equal(result, final.finalResult);
  });
}

test("onToolUse hears a model call a tool the conversation offers", async () => {
  const c = client();
  const conversation = await c.createConversation(
    [
      { id: "scripted-echo", role: "human" },
      { id: "scripted-tools", role: "assistant" },
    ],
    "What causes MRI artifacts?",
    {
      mode: "human-ai",
      rounds: 1,
      tools: [
        {
          name: "web_search",
          description: "Search the web",
          parameters: { type: "object", properties: { query: { type: "string" } } },
        },
      ],
    },
  );
  const uses = [];
  const messages = [];
  const sub = c.connectToConversation(conversation.conversation_id, {
    onToolUse: (d) => uses.push([d.model, d.role, d.tool, d.arguments]),
    onMessage: (d) => messages.push(d),
  });
  await within(10000, sub.done, "the conversation");
  assert.deepEqual(uses, [["scripted-tools", "assistant", "web_search", '{"query": "MRI artifacts"}']]);
  const said = messages.at(-1);
  assert.equal(said.model, "scripted-tools");
  assert.equal(said.content, "Let me look that up.");
  assert.equal(said.event.message.toolCalls[0].name, "web_search");
});

test("onThinking hears a model think before it answers", async () => {
  const c = client();
  const conversation = await c.createConversation(
    [
      { id: "scripted-echo", role: "human" },
      { id: "ollama-thinker", role: "assistant" },
    ],
    "Where is the spot?",
    { mode: "human-ai", rounds: 1 },
  );
  const thoughts = [];
  const messages = [];
  const sub = c.connectToConversation(conversation.conversation_id, {
    onThinking: (d) => thoughts.push([d.model, d.role, d.content]),
    onMessage: (d) => messages.push([d.role, d.model, d.content]),
  });
  await within(10000, sub.done, "the conversation");
  assert.ok(thoughts.length >= 1);
  assert.ok(thoughts.every(([model, role]) => model === "ollama-thinker" && role === "assistant"));
  assert.equal(thoughts.map(([, , text]) => text).join(""), "Which lobe?");
  assert.deepEqual(messages.at(-1), ["assistant", "ollama-thinker", process.env.AIBATTLE_THINKER_REPLY]);
});
