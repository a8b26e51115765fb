// Typed errors: each failure is the AIBattleError subclass of its code, with the server's reason and details.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  AIBattleClient,
  AIBattleError,
  AuthenticationError,
  Code,
  ConnectError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  RateLimitError,
  toAIBattleError,
  UnavailableError,
  createWebTransport,
} from "../dist/index.js";
import { createNodeTransport } from "../dist/node.js";
import { client, live } from "./live.mjs";

const WIRES = {
  "connect json": () => ({}),
  "connect binary": () => ({ binary: true }),
  "grpc-web": () => ({ protocol: "grpc-web" }),
  "connect (node http)": () => ({ transport: createNodeTransport(live.url) }),
};

/** An assert.rejects predicate: the error is `Class` (never a raw ConnectError) with these properties. */
function typed(Class, expected) {
  return (error) => {
    assert.ok(error instanceof Class, `${error?.name}: ${error?.message}`);
    assert.ok(error instanceof AIBattleError);
    assert.ok(!(error instanceof ConnectError));
    assert.ok(error.cause instanceof ConnectError);
    for (const [key, value] of Object.entries(expected)) assert.equal(error[key], value, key);
    return true;
  };
}

for (const [wire, options] of Object.entries(WIRES)) {
  test(`401 without a key and with a wrong one, over ${wire}`, async () => {
    const anonymous = new AIBattleClient(null, live.url, options());
    await assert.rejects(
      anonymous.listModels(),
      typed(AuthenticationError, { code: Code.Unauthenticated, httpStatus: 401, reason: "API_KEY_MISSING" }),
    );
    const wrong = new AIBattleClient("not-a-key-of-this-server", live.url, options());
    await assert.rejects(wrong.getModel("scripted-echo"), typed(AuthenticationError, { reason: "API_KEY_INVALID" }));
    // A stream refused before its first message is typed the same way.
    await assert.rejects(
      (async () => {
        for await (const _ of wrong.streamCompletion({ model: "scripted-echo", prompt: "hi" }));
      })(),
      typed(AuthenticationError, { reason: "API_KEY_INVALID" }),
    );
  });

  test(`404 for an unknown model and for another key's conversation, over ${wire}`, async () => {
    const c = client(options());
    await assert.rejects(
      c.getModel("no-such-model"),
      typed(NotFoundError, { code: Code.NotFound, httpStatus: 404, reason: "MODEL_NOT_FOUND" }),
    );
    await assert.rejects(
      c.createCompletion({ model: "no-such-model", prompt: "hi" }),
      typed(NotFoundError, { reason: "MODEL_NOT_FOUND" }),
    );
    const theirs = await client(options(), live.otherKey).createConversation(
      [
        { id: "scripted-echo", role: "human" },
        { id: "scripted-echo", role: "assistant" },
      ],
      "Private.",
      { rounds: 1 },
    );
    await assert.rejects(c.getConversation(theirs.conversation_id), typed(NotFoundError, { reason: "CONVERSATION_NOT_FOUND" }));
    await assert.rejects(c.addMessage(theirs.conversation_id, "Hi"), typed(NotFoundError, { reason: "CONVERSATION_NOT_FOUND" }));
  });
}

test("403 for KeyService with a key that is not the admin's", async () => {
  // The raw generated clients throw ConnectError; toAIBattleError types it as the client's methods do.
  const error = await client().keys.listKeys({}).then(
    () => assert.fail("listKeys succeeded"),
    (e) => {
      assert.ok(e instanceof ConnectError);
      return toAIBattleError(e);
    },
  );
  typed(PermissionDeniedError, { code: Code.PermissionDenied, httpStatus: 403, reason: "ADMIN_KEY_REQUIRED" })(error);
});

test("403 for a model outside the key's allow-list, on unary calls and streams", async () => {
  const narrow = client({}, live.narrowKey);
  assert.equal((await narrow.createCompletion({ model: "scripted-echo", prompt: "hi" })).model, "scripted-echo");
  await assert.rejects(
    narrow.createCompletion({ model: "scripted-vision", prompt: "hi" }),
    typed(PermissionDeniedError, { httpStatus: 403, reason: "MODEL_NOT_ALLOWED" }),
  );
  await assert.rejects(
    (async () => {
      for await (const _ of narrow.streamCompletion({ model: "scripted-vision", prompt: "hi" }));
    })(),
    typed(PermissionDeniedError, { reason: "MODEL_NOT_ALLOWED" }),
  );
});

test("429 when the key's requests per minute are spent, with RetryInfo's delay", async () => {
  const limited = client({}, live.limitedKey);
  // rpm = 1, and buckets hold twice the rate: two requests pass, the third is refused.
  await limited.getModel("scripted-echo");
  await limited.getModel("scripted-echo");
  const error = await limited.listModels().then(
    () => assert.fail("a third request in the minute succeeded"),
    (e) => e,
  );
  typed(RateLimitError, { code: Code.ResourceExhausted, httpStatus: 429, reason: "RATE_LIMITED" })(error);
  assert.ok(error.retryAfterMs > 0 && error.retryAfterMs <= 60000, `retryAfterMs ${error.retryAfterMs}`);
  // Over gRPC-Web as well, where the details travel in grpc-status-details-bin.
  await assert.rejects(
    client({ protocol: "grpc-web" }, live.limitedKey).getModel("scripted-echo"),
    typed(RateLimitError, { reason: "RATE_LIMITED" }),
  );
});

test("400 names the field at fault", async () => {
  await assert.rejects(
    client().createConversation([{ id: "scripted-echo", role: "assistant" }], "Alone?"),
    typed(InvalidArgumentError, { code: Code.InvalidArgument, httpStatus: 400, field: "models" }),
  );
  await assert.rejects(
    client({ protocol: "grpc-web" }).createCompletion({ model: "scripted-echo", prompt: "hi", maxTokens: 0 }),
    typed(InvalidArgumentError, { field: "max_tokens" }),
  );
});

test("a gateway that cannot be reached is UnavailableError, over fetch and over Node's http", async () => {
  const closed = "http://127.0.0.1:1"; // nothing listens on port 1
  for (const options of [{}, { transport: createNodeTransport(closed) }]) {
    await assert.rejects(
      new AIBattleClient(live.key, closed, options).listModels(),
      typed(UnavailableError, { code: Code.Unavailable, httpStatus: 503, reason: "" }),
    );
  }
});

test("a call past the client's timeoutMs is DeadlineExceeded (504), and sends Connect-Timeout-Ms", async () => {
  const headers = [];
  const recording = (input, init) => {
    headers.push(new Headers(init?.headers).get("connect-timeout-ms"));
    return fetch(input, init);
  };
  const c = new AIBattleClient(live.key, live.url, {
    timeoutMs: 300,
    transport: createWebTransport(live.url, { fetch: recording }),
  });
  const started = Date.now();
  // scripted-slow takes 4 s to say its 200 words.
  await assert.rejects(
    c.createCompletion({ model: "scripted-slow", prompt: "Go" }),
    typed(AIBattleError, { code: Code.DeadlineExceeded, httpStatus: 504 }),
  );
  assert.ok(Date.now() - started < 2000);
  assert.deepEqual(headers, ["300"]);
});
