// Seed 000 §4.1.1's JavaScript client, VERBATIM between the BEGIN/END markers, run by Node 20+
// (`node --experimental-websocket`, a global WebSocket; Node 22+ has it by default).
//
// Usage: node --experimental-websocket seed_ws_client.mjs <ws://host:port> <conversation_id> <message>
//
// Added around the seed's code, nothing inside it:
// * the seed's URL names its production host, so the global WebSocket is wrapped to send
//   `wss://api.aibattle.com` to the gateway under test instead;
// * `conversationId` comes from the command line;
// * after the seed's own onopen (auth), the seed's `sendMessage` sends one human message;
// * the process exits once the seed's handler has printed an AI participant's message.

const [base, conversationId, content] = process.argv.slice(2);
const SeedWebSocket = globalThis.WebSocket;
globalThis.WebSocket = class extends SeedWebSocket {
  constructor(url, protocols) {
    super(String(url).replace('wss://api.aibattle.com', base), protocols);
  }
};
const print = console.log;
console.log = (...args) => {
  print(...args);
  if (/^New message from (?!human\b)/.test(String(args[0]))) process.exit(0);
};
setTimeout(() => { print('no AI reply within 30 seconds'); process.exit(2); }, 30000);

// ---- BEGIN seed 000 §4.1.1 (verbatim) ----
const ws = new WebSocket(`wss://api.aibattle.com/api/v1/ws/conversations/${conversationId}`);

ws.onopen = () => {
  console.log('Connected to conversation');
  
  // Send authentication
  ws.send(JSON.stringify({
    type: 'auth',
    token: 'your-auth-token'
  }));
};

ws.onmessage = (event) => {
  const data = JSON.parse(event.data);
  
  switch (data.type) {
    case 'message':
      console.log(`New message from ${data.role} (${data.model}): ${data.content}`);
      break;
    case 'thinking':
      console.log(`${data.model} is thinking: ${data.content}`);
      break;
    case 'tool_use':
      console.log(`${data.model} is using tool: ${data.tool}`);
      break;
  }
};

// Send a new message
function sendMessage(content) {
  ws.send(JSON.stringify({
    type: 'message',
    content: content
  }));
}
// ---- END seed 000 §4.1.1 ----

ws.addEventListener('open', () => sendMessage(content));
ws.addEventListener('close', (event) => { print(`closed ${event.code} ${event.reason}`); process.exit(1); });
