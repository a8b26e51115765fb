// Seed 000 §7.2 ("Real-time Collaborative Analysis"), verbatim but for the two model ids, run against the live
// server. What the seed leaves to the page is bound here: `AIBattleClient` is the SDK's, pointed at the live
// gateway with a real key in place of the seed's 'your-api-key'; `imageBase64Data` is a real PNG; updateUI and
// the indicators record what they are shown. tests/sdk_ts/test_typescript_client.py checks the block against
// the seed's text.
import assert from "node:assert/strict";
import { after, test } from "node:test";
import * as sdk from "../dist/index.js";
import { live, within } from "./live.mjs";

class AIBattleClient extends sdk.AIBattleClient {
  constructor(apiKey) {
    super(apiKey === "your-api-key" ? live.key : apiKey, live.url);
  }
}
// A 1x1 PNG.
const imageBase64Data =
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
const shown = [];
const indicators = [];
const updateUI = (data) => shown.push(data);
const showThinkingIndicator = (model, content) => indicators.push(["thinking", model, content]);
const showToolUseIndicator = (model, tool) => indicators.push(["tool", model, tool]);
const printed = [];
const print = console.log;
console.log = (...args) => {
  printed.push(args.join(" "));
  print(...args);
};

// ---- BEGIN seed 000 §7.2 (verbatim, model ids swapped) ----
const client = new AIBattleClient('your-api-key');

// Create a conversation with multiple models
const conversation = await client.createConversation(
  [
    { id: 'scripted-human', role: 'human' },
    { id: 'scripted-analyst', role: 'assistant' }
  ],
  'Analyze this MRI scan and identify any abnormalities',
  {
    mode: 'human-ai',
    rounds: 5,
    systemInstruction: 'This is a medical analysis session between experts.',
    fileData: {
      type: 'image',
      path: '/path/to/mri_scan.jpg',
      base64: imageBase64Data
    }
  }
);

// Connect to the conversation via WebSocket
const ws = client.connectToConversation(conversation.conversation_id, {
  onMessage: (data) => {
    console.log(`New message from ${data.role} (${data.model}): ${data.content}`);
    updateUI(data);
  },
  onThinking: (data) => {
    console.log(`${data.model} is thinking: ${data.content}`);
    showThinkingIndicator(data.model, data.content);
  },
  onToolUse: (data) => {
    console.log(`${data.model} is using tool: ${data.tool}`);
    showToolUseIndicator(data.model, data.tool);
  }
});

// Add a message to the conversation
async function sendMessage(content) {
  const message = await client.addMessage(
    conversation.conversation_id,
    content,
    'human',
    'scripted-human'
  );
  console.log(`Message sent: ${message.message_id}`);
}
// ---- END seed 000 §7.2 ----

const ANALYST_REPLY = process.env.AIBATTLE_ANALYST_REPLY;
const QUESTION = "Is the dark spot in the upper left lobe significant?";

/** Resolves once updateUI has been shown `n` messages. */
async function messagesShown(n) {
  while (shown.length < n) await new Promise((resolve) => setTimeout(resolve, 20));
}

// The seed never closes its subscription (a page would on unload); the test does, pass or fail.
after(() => ws.close());

test("seed 000 §7.2: create with an image, follow, and talk as the human", async () => {
  // The opening: the human's prompt (with the scan), then the analyst's answer, live.
  await within(10000, messagesShown(3), "the analyst's first answer");
  assert.deepEqual(
    shown.map((d) => [d.role, d.model, d.content]),
    [
      ["system", "", "This is a medical analysis session between experts."],
      ["human", "scripted-human", "Analyze this MRI scan and identify any abnormalities"],
      ["assistant", "scripted-analyst", ANALYST_REPLY],
    ],
  );
  assert.equal(conversation.mode, "human-ai");
  assert.equal(conversation.rounds, 5);
  assert.equal(conversation.systemInstruction, "This is a medical analysis session between experts.");

  await sendMessage(QUESTION);
  await within(10000, messagesShown(5), "the analyst's second answer");
  assert.deepEqual(
    shown.slice(3).map((d) => [d.role, d.model, d.content]),
    [
      ["human", "scripted-human", QUESTION],
      ["assistant", "scripted-analyst", ANALYST_REPLY],
    ],
  );
  const sent = printed.find((line) => line.startsWith("Message sent: "));
  assert.equal(sent, `Message sent: ${shown[3].messageId}`);
  assert.deepEqual(
    printed.filter((line) => line.startsWith("New message from ")),
    [
      "New message from system (): This is a medical analysis session between experts.",
      "New message from human (scripted-human): Analyze this MRI scan and identify any abnormalities",
      `New message from assistant (scripted-analyst): ${ANALYST_REPLY}`,
      `New message from human (scripted-human): ${QUESTION}`,
      `New message from assistant (scripted-analyst): ${ANALYST_REPLY}`,
    ],
  );
  // The image was attached to the opening message, as the seed's fileData says.
  const stored = await client.getConversation(conversation.conversation_id);
  const attachment = stored.messages.find((m) => m.role === "human")?.fileData[0];
  assert.equal(attachment?.type, "image");
  assert.equal(attachment?.path, "/path/to/mri_scan.jpg");
  assert.equal(Buffer.from(attachment.content).toString("base64"), imageBase64Data);
  // Scripted models neither think nor call tools unprompted: the indicators stayed dark.
  assert.deepEqual(indicators, []);
  ws.close();
  await within(2000, ws.done, "close()");
});
