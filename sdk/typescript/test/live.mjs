// What the live tests share: the server tests/sdk_ts/test_typescript_client.py started, from the environment.
import { AIBattleClient } from "../dist/index.js";

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through tests/sdk_ts/test_typescript_client.py`);
  return value;
}

export const live = {
  /** The gateway's HTTP port. */
  url: env("AIBATTLE_URL"),
  /** A TCP proxy in front of it whose connections POST {control}/drop cuts. */
  proxyUrl: env("AIBATTLE_PROXY_URL"),
  controlUrl: env("AIBATTLE_CONTROL_URL"),
  /** A normal key, another normal key, a key limited to one request a minute, one allowed only scripted-echo. */
  key: env("AIBATTLE_API_KEY"),
  otherKey: env("AIBATTLE_OTHER_KEY"),
  limitedKey: env("AIBATTLE_LIMITED_KEY"),
  narrowKey: env("AIBATTLE_NARROW_KEY"),
};

export function client(options = {}, key = live.key, url = live.url) {
  return new AIBattleClient(key, url, options);
}

/** Cut every connection through the proxy now (both sides), as a network failure would. */
export async function dropConnections() {
  const response = await fetch(`${live.controlUrl}/drop`, { method: "POST" });
  if (!response.ok) throw new Error(`drop failed: ${response.status}`);
  return (await response.json()).dropped;
}

/** Rejects when `promise` takes longer than `ms`. */
export function within(ms, promise, what = "operation") {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took more than ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
