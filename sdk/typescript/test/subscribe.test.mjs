// subscribe(), the engine under connectToConversation and watchReasoning, driven by scripted streams (no
// server): what it reopens after each kind of failure, from where, how long it waits, and when it stops.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { test } from "node:test";
import { Code, ConnectError, NotFoundError, RetryInfoSchema, subscribe } from "../dist/index.js";

/** A scripted stream opener: each call plays the next script (events by sequence, then maybe an error). */
function scripted(...scripts) {
  const opened = [];
  const open = (afterSequence, signal) => {
    opened.push(afterSequence);
    const script = scripts[Math.min(opened.length - 1, scripts.length - 1)];
    return (async function* () {
      for (const step of script) {
        if (step instanceof Error) throw step;
        if (step === "hang") {
          await new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason), { once: true }));
        }
        yield { sequence: BigInt(step) };
      }
    })();
  };
  return { open, opened };
}

const cut = () => new ConnectError("terminated", Code.Unknown);
const isLast = (n) => (e) => e.sequence === BigInt(n);
const quick = { initialBackoffMs: 1, maxBackoffMs: 5 };

test("reopens after a cut from the last delivered sequence and skips what the server replays", async () => {
  const { open, opened } = scripted([1, 2, 3, cut()], [2, 3, 4, 5]);
  const seen = [];
  const reconnects = [];
  const sub = subscribe(open, (e) => seen.push(e.sequence), isLast(5), { onReconnect: (i) => reconnects.push(i) }, quick);
  await sub.done;
  assert.deepEqual(seen, [1n, 2n, 3n, 4n, 5n]);
  assert.deepEqual(opened, [0n, 3n]);
  assert.equal(reconnects.length, 1);
  assert.equal(reconnects[0].afterSequence, 3n);
  assert.equal(reconnects[0].error.code, Code.Unknown);
  assert.equal(sub.lastSequence, 5n);
  assert.equal(sub.error, undefined);
});

test("starts after afterSequence, and a clean end of the stream is the end", async () => {
  const { open, opened } = scripted([8, 9]);
  const seen = [];
  const sub = subscribe(open, (e) => seen.push(e.sequence), () => false, {}, { afterSequence: 7n });
  await sub.done;
  assert.deepEqual(opened, [7n]);
  assert.deepEqual(seen, [8n, 9n]);
});

test("a rate limit with RetryInfo is waited out, then the stream reopens", async () => {
  const limited = new ConnectError("slow down", Code.ResourceExhausted, undefined, [
    { desc: RetryInfoSchema, value: { retryDelay: { seconds: 0n, nanos: 200_000_000 } } },
  ]);
  const { open, opened } = scripted([1, limited], [2]);
  const started = Date.now();
  const reconnects = [];
  const sub = subscribe(open, () => {}, isLast(2), { onReconnect: (i) => reconnects.push(i) }, quick);
  await sub.done;
  assert.deepEqual(opened, [0n, 1n]);
  assert.equal(reconnects[0].error.retryAfterMs, 200);
  assert.ok(Date.now() - started >= 190, `reopened after ${Date.now() - started} ms`);
});

test("the API's final answer ends it with onError, without reopening", async () => {
  const { open, opened } = scripted([new ConnectError("conversation 'x' not found", Code.NotFound)]);
  const errors = [];
  const sub = subscribe(open, () => {}, () => false, { onError: (e) => errors.push(e) }, quick);
  await sub.done;
  assert.deepEqual(opened, [0n]);
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof NotFoundError);
  assert.equal(sub.error, errors[0]);
});

test("maxReconnects failures in a row without an event end it with the last error", async () => {
  const { open, opened } = scripted([1, cut()], [cut()]);
  const errors = [];
  const sub = subscribe(open, () => {}, () => false, { onError: (e) => errors.push(e) }, { ...quick, maxReconnects: 3 });
  await sub.done;
  // The first stream delivered, so its cut starts the count afresh: then three reopenings fail in a row.
  assert.deepEqual(opened, [0n, 1n, 1n, 1n]);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, Code.Unknown);
});

test("close() during a backoff ends it at once", async () => {
  const { open, opened } = scripted([cut()]);
  const sub = subscribe(open, () => {}, () => false, {}, { initialBackoffMs: 60_000, maxBackoffMs: 60_000 });
  await new Promise((resolve) => setTimeout(resolve, 20));
  const closing = Date.now();
  sub.close();
  await sub.done;
  assert.ok(Date.now() - closing < 100);
  assert.deepEqual(opened, [0n]);
});

test("an aborted signal closes it, even while the stream is silent", async () => {
  const { open } = scripted([1, "hang"]);
  const controller = new AbortController();
  const seen = [];
  const sub = subscribe(open, (e) => seen.push(e.sequence), () => false, {}, { signal: controller.signal });
  await new Promise((resolve) => setTimeout(resolve, 20));
  controller.abort();
  await sub.done;
  assert.deepEqual(seen, [1n]);
  assert.equal(sub.error, undefined);
});

test("a handler that throws is reported as uncaught and the events keep coming", () => {
  // In a process of its own: node:test fails whichever test an uncaught exception lands in.
  const program = `
    import { subscribe } from ${JSON.stringify(new URL("../dist/index.js", import.meta.url).href)};
    const uncaught = [];
    process.on("uncaughtException", (error) => uncaught.push(error.message));
    async function* events() { for (const n of [1n, 2n, 3n]) yield { sequence: n }; }
    const seen = [];
    const deliver = (e) => { seen.push(Number(e.sequence)); if (e.sequence === 2n) throw new Error("handler bug"); };
    await subscribe(() => events(), deliver, (e) => e.sequence === 3n, {}).done;
    setTimeout(() => console.log(JSON.stringify({ seen, uncaught })), 10);
  `;
  const out = execFileSync(process.execPath, ["--input-type=module", "-e", program], { encoding: "utf8" });
  assert.deepEqual(JSON.parse(out), { seen: [1, 2, 3], uncaught: ["handler bug"] });
});
