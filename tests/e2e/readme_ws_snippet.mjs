// Runs a JavaScript snippet from the README as written, under Node 20+ (`node --experimental-websocket`,
// a global WebSocket as in a browser).
//
// Usage: node --experimental-websocket readme_ws_snippet.mjs <snippet.js> <ws://host:port> <done-regex> \
//            <closes> [name=value…]
//
// Added around the snippet, nothing inside it:
// * the snippet names the README's address (ws://127.0.0.1:8080), so the global WebSocket is wrapped to
//   reach the gateway under test instead;
// * each name=value becomes a variable the snippet reads (reasoningId, conversationId, apiKey);
// * every socket's close is printed as `closed <code>`, after the snippet's own handlers;
// * the process exits 0 once a printed line matched <done-regex> and <closes> sockets have closed
//   (a socket that stays open, such as a conversation's, is left to the exit), 2 after 30 seconds.
import { readFileSync } from 'node:fs';

const [snippetPath, base, done, closes, ...bindings] = process.argv.slice(2);
const doneLine = new RegExp(done);
const names = bindings.map((b) => b.slice(0, b.indexOf('=')));
const values = bindings.map((b) => b.slice(b.indexOf('=') + 1));
let matched = false;
let closed = 0;
const check = () => {
  if (matched && closed >= Number(closes)) process.exit(0);
};

const print = console.log;
console.log = (...args) => {
  print(...args);
  if (doneLine.test(args.map(String).join(' '))) matched = true;
  check();
};

const Native = globalThis.WebSocket;
globalThis.WebSocket = class extends Native {
  constructor(url, protocols) {
    super(String(url).replace('ws://127.0.0.1:8080', base), protocols);
    this.addEventListener('close', (event) => {
      print(`closed ${event.code}`);
      closed += 1;
      check();
    });
  }
};

setTimeout(() => { print('not done within 30 seconds'); process.exit(2); }, 30000);

new Function(...names, readFileSync(snippetPath, 'utf8'))(...values);
