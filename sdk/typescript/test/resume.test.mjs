// Resume after a forced disconnect: the proxy in front of the gateway cuts every connection mid-stream; the
// subscription reopens with after_sequence and delivers every event exactly once.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, ConversationEventType, ReasoningEventType } from "../dist/index.js";
import { client, dropConnections, live, within } from "./live.mjs";

/** Each event's sequence, type and text, to compare two subscriptions' deliveries. */
const shape = (e) => `${e.sequence}:${e.type}:${e.delta}:${e.message?.content ?? e.iteration?.content ?? ""}`;

/** Follows `subscribe` and cuts the connections after the `cutAfter` events (by sequence); what it saw. */
async function followWithCuts(subscribe, cutAfter) {
  const events = [];
  const reconnects = [];
  const cuts = [];
  const sub = subscribe({
    onEvent: (e) => {
      events.push(e);
      if (cutAfter.includes(e.sequence)) cuts.push(dropConnections());
    },
    // What was delivered when the stream broke: the resume point must be exactly its last sequence.
    onReconnect: (info) => reconnects.push({ ...info, delivered: events.at(-1)?.sequence ?? 0n }),
    onError: (error) => assert.fail(`the subscription ended with ${error.name}: ${error.message}`),
  });
  await within(15000, sub.done, "the subscription");
  const dropped = await Promise.all(cuts);
  return { sub, events, reconnects, dropped };
}

test("a conversation followed through two cut connections loses nothing and repeats nothing", async () => {
  const viaProxy = client({}, live.key, live.proxyUrl);
  const conversation = await viaProxy.createConversation(
    [
      { id: "scripted-talker", role: "assistant" },
      { id: "scripted-talker", role: "critic" },
    ],
    "Talk for a while.",
    { mode: "ai-ai", rounds: 1 },
  );
  const tokens = [];
  const { sub, events, reconnects, dropped } = await followWithCuts(
    (handlers) =>
      viaProxy.connectToConversation(conversation.conversation_id, {
        ...handlers,
        onToken: (d) => tokens.push([d.model, d.content]),
      }),
    [4n, 8n],
  );
  assert.ok(dropped.every((n) => n > 0), `sockets cut: ${dropped}`);
  // Both cuts landed mid-run (the stream broke twice), and each reopening resumed after what was delivered.
  assert.ok(reconnects.length >= 2, `${reconnects.length} reconnects`);
  for (const r of reconnects) {
    assert.equal(r.afterSequence, r.delivered);
    assert.ok(r.afterSequence >= 4n && r.afterSequence < events.at(-1).sequence, `resumed after ${r.afterSequence}`);
  }
  for (const r of reconnects) {
    assert.ok([Code.Unknown, Code.Unavailable].includes(r.error.code), `reconnected after ${r.error.name}: ${r.error.message}`);
  }
  // Every sequence once, in order, up to the completion.
  assert.deepEqual(
    events.map((e) => e.sequence),
    events.map((_, i) => BigInt(i + 1)),
  );
  assert.equal(events.at(-1).type, ConversationEventType.COMPLETION);
  assert.equal(sub.lastSequence, events.at(-1).sequence);
  // The tokens add up to the recorded message, word for word.
  const final = await client().getConversation(conversation.conversation_id);
  const said = final.messages.at(-1);
  assert.equal(said.model, "scripted-talker");
  assert.equal(tokens.map(([, text]) => text).join(""), said.content);
  assert.ok(tokens.every(([model]) => model === "scripted-talker"));
  // A direct replay of the finished conversation delivers exactly the same events.
  const replay = [];
  await client().connectToConversation(conversation.conversation_id, { onEvent: (e) => replay.push(e) }).done;
  assert.deepEqual(events.map(shape), replay.map(shape));
});

test("a reasoning session followed over gRPC-Web through a cut connection loses nothing and repeats nothing", async () => {
  const viaProxy = client({ protocol: "grpc-web" }, live.key, live.proxyUrl);
  const session = await viaProxy.createReasoning({
    primaryModel: "scripted-echo",
    secondaryModel: "scripted-talker",
    prompt: "Think it through.",
    maxIterations: 1,
  });
  const { sub, events, reconnects } = await followWithCuts(
    (handlers) => viaProxy.watchReasoning(session.reasoningId, handlers),
    [3n],
  );
  assert.ok(reconnects.length >= 1, `${reconnects.length} reconnects`);
  assert.equal(reconnects[0].afterSequence, reconnects[0].delivered);
  assert.ok(reconnects[0].afterSequence >= 3n && reconnects[0].afterSequence < events.at(-1).sequence);
  assert.deepEqual(
    events.map((e) => e.sequence),
    events.map((_, i) => BigInt(i + 1)),
  );
  assert.equal(events.at(-1).type, ReasoningEventType.COMPLETION);
  assert.equal(sub.lastSequence, events.at(-1).sequence);
  const replay = [];
  await client().watchReasoning(session.reasoningId, { onEvent: (e) => replay.push(e) }).done;
  assert.deepEqual(events.map(shape), replay.map(shape));
});
