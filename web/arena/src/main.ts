// The arena page: pick models and a strategy (or a conversation's seats), start the run, watch it live.
//
// Where a run is lives in the URL (#reasoning/<id>, #conversation/<id>), so a reload, a bookmark or a
// second tab shows the same run: the page replays its events from the first and follows it live; the
// Sequencer drops anything already shown, and the SDK's subscription resumes after the last sequence
// when the connection drops. An API key, when the server asks for one (a 401), is kept in this tab's
// sessionStorage only.

import { Board } from "./board.js";
import { ConversationRun } from "./conversation.js";
import { byId, h, humanize, money } from "./dom.js";
import { ReasoningRun } from "./reasoning.js";
import { TERMINAL, statusName } from "./runs.js";
import {
  AIBattleClient,
  AuthenticationError,
  type EventSubscription,
  type Model,
  type Reasoning,
  RunStatus,
} from "./sdk.js";
import { CONVERSATION_MODES, STRATEGIES, boundsOf } from "./schema.js";

const KEY_STORAGE = "aibattle.arena.apiKey";

let client = newClient();
/** The models the page offers: those that can chat (`canChat`). */
let models: Model[] = [];
let current: { close(): void } | null = null;

function newClient(): AIBattleClient {
  return new AIBattleClient(sessionStorage.getItem(KEY_STORAGE) || null, location.origin);
}

// --- messages, the key ---------------------------------------------------------------------------

function isUnauthenticated(error: unknown): boolean {
  return error instanceof AuthenticationError || (error as { code?: unknown } | null)?.code === 16;
}

function messageOf(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}

function showAlert(text: string): void {
  const alert = byId("alert");
  alert.textContent = text;
  alert.hidden = !text;
}

function setConnection(text: string, state: "" | "live" | "retry" = ""): void {
  const el = byId("connection");
  el.textContent = text;
  el.className = `connection ${state}`;
}

/** An event arrived: apply it, and if the stream was reconnecting, it is live again. */
function live(apply: () => void): void {
  if (byId("connection").classList.contains("retry")) setConnection("Live", "live");
  apply();
}

/** Runs `action`; a 401 opens the key field (a key given there loads the page again), another error shows. */
async function guarded<T>(action: () => Promise<T>): Promise<T | undefined> {
  try {
    return await action();
  } catch (error) {
    if (isUnauthenticated(error)) {
      askForKey(sessionStorage.getItem(KEY_STORAGE) ? "The server refused this key. Try another." : null);
      return undefined;
    }
    showAlert(messageOf(error));
    return undefined;
  }
}

function askForKey(problem: string | null): void {
  const form = byId<HTMLFormElement>("key-form");
  const toggle = byId<HTMLButtonElement>("key-toggle");
  form.hidden = false;
  toggle.hidden = false;
  toggle.setAttribute("aria-expanded", "true");
  showAlert(problem ?? ""); // the form says why it is there; the alert is for a refused key
  byId("key-forget").hidden = !sessionStorage.getItem(KEY_STORAGE);
  byId<HTMLInputElement>("api-key").focus();
}

function setUpKey(): void {
  const form = byId<HTMLFormElement>("key-form");
  const input = byId<HTMLInputElement>("api-key");
  const toggle = byId<HTMLButtonElement>("key-toggle");
  toggle.hidden = !sessionStorage.getItem(KEY_STORAGE);
  toggle.addEventListener("click", () => {
    form.hidden = !form.hidden;
    toggle.setAttribute("aria-expanded", String(!form.hidden));
    if (!form.hidden) input.focus();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) {
      input.focus();
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    input.value = "";
    form.hidden = true;
    toggle.setAttribute("aria-expanded", "false");
    showAlert("");
    client = newClient();
    void start();
  });
  byId("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    byId("key-forget").hidden = true;
    client = newClient();
    input.value = "";
    input.focus();
  });
}

// --- the start form ------------------------------------------------------------------------------

function option(value: string, text: string): HTMLOptionElement {
  return h("option", { value }, text);
}

function modelLabel(model: Model): string {
  const name = model.displayName && model.displayName !== model.id ? `${model.displayName} (${model.id})` : model.id;
  return model.provider ? `${name} — ${model.provider}` : name;
}

function modelSelect(select: HTMLSelectElement, chosen: string): void {
  select.replaceChildren(...models.map((m) => option(m.id, modelLabel(m))));
  if (models.some((m) => m.id === chosen)) select.value = chosen;
}

/** Only models that can take a turn: an embedding-only model (smollm2-embed) cannot chat. */
function canChat(model: Model): boolean {
  return !(model.capabilities.includes("embedding") && !model.capabilities.includes("text"));
}

function fillModels(): void {
  const primary = byId<HTMLSelectElement>("primary");
  const secondary = byId<HTMLSelectElement>("secondary");
  const ids = models.map((m) => m.id);
  modelSelect(primary, primary.value || ids[0]);
  modelSelect(secondary, secondary.value || ids[1] || ids[0]);
  const list = byId("additional-list");
  list.replaceChildren(
    ...models.map((m, i) =>
      h("label", {}, h("input", { type: "checkbox", name: "additional", value: m.id, id: `additional-${i}` }), m.id),
    ),
  );
  const seats = byId("seats");
  if (!seats.childElementCount) {
    addSeat("human", ids[0]);
    addSeat("assistant", ids[1] || ids[0]);
  } else {
    for (const select of seats.querySelectorAll<HTMLSelectElement>("select")) modelSelect(select, select.value);
  }
}

let seatIds = 0;

function addSeat(role: string, model: string): void {
  const seats = byId("seats");
  const n = ++seatIds;
  const select = h("select", { id: `seat-model-${n}`, name: "seat-model" });
  modelSelect(select, model);
  const remove = h("button", { type: "button", class: "ghost", "aria-label": `Remove participant ${n}` }, "Remove");
  const row = h(
    "li",
    {},
    h("div", {}, h("label", { for: `seat-model-${n}` }, "Model"), select),
    h(
      "div",
      {},
      h("label", { for: `seat-role-${n}` }, "Role"),
      h("input", { id: `seat-role-${n}`, name: "seat-role", value: role, autocomplete: "off" }),
    ),
    remove,
  );
  remove.addEventListener("click", () => {
    row.remove();
    updateSeatButtons();
    byId("add-seat").focus();
  });
  seats.append(row);
  updateSeatButtons();
}

function updateSeatButtons(): void {
  const rows = byId("seats").children.length;
  byId<HTMLButtonElement>("add-seat").disabled = rows >= 8;
  for (const button of byId("seats").querySelectorAll<HTMLButtonElement>("button")) button.disabled = rows <= 2;
}

function kind(): "reasoning" | "conversation" {
  const checked = document.querySelector<HTMLInputElement>('input[name="kind"]:checked');
  return checked?.value === "conversation" ? "conversation" : "reasoning";
}

function updateForm(): void {
  const isReasoning = kind() === "reasoning";
  byId("reasoning-fields").hidden = !isReasoning;
  byId("conversation-fields").hidden = isReasoning;
  byId("prompt-label").textContent = isReasoning ? "Problem" : "Opening message (the first participant says it)";
  const strategy = STRATEGIES.find((s) => s.name === byId<HTMLSelectElement>("strategy").value) ?? STRATEGIES[0];
  byId("strategy-help").textContent = strategy.help;
  byId("additional").hidden = !strategy.allSeats;
  byId("samples-field").hidden = !strategy.samples;
  byId("iterations-field").hidden = !strategy.rounds;
  const mode = CONVERSATION_MODES.find((m) => m.name === byId<HTMLSelectElement>("conv-mode").value);
  byId("mode-help").textContent = mode?.help ?? "";
  byId<HTMLTextAreaElement>("prompt").required = isReasoning;
}

function setUpForm(): void {
  const strategy = byId<HTMLSelectElement>("strategy");
  strategy.replaceChildren(...STRATEGIES.map((s) => option(s.name, humanize(s.name))));
  const mode = byId<HTMLSelectElement>("conv-mode");
  mode.replaceChildren(...CONVERSATION_MODES.map((m) => option(m.name, m.name)));
  for (const [id, bounds] of [
    ["max-iterations", boundsOf("maxIterations")],
    ["samples", boundsOf("samples")],
    ["rounds", boundsOf("rounds")],
  ] as const) {
    const input = byId<HTMLInputElement>(id);
    input.min = String(Math.max(1, bounds.min));
    input.max = String(bounds.max);
  }
  for (const el of document.querySelectorAll('input[name="kind"], #strategy, #conv-mode')) {
    el.addEventListener("change", updateForm);
  }
  byId("add-seat").addEventListener("click", () => addSeat("assistant", models[0]?.id ?? ""));
  byId<HTMLFormElement>("start-form").addEventListener("submit", (event) => {
    event.preventDefault();
    void submit();
  });
  updateForm();
}

function invalid(id: string, message: string): undefined {
  const field = byId(id);
  field.setAttribute("aria-invalid", "true");
  showAlert(message);
  field.focus();
  field.addEventListener("input", () => field.removeAttribute("aria-invalid"), { once: true });
  return undefined;
}

function numberOf(id: string): number {
  const value = Number.parseInt(byId<HTMLInputElement>(id).value, 10);
  return Number.isFinite(value) ? value : 0;
}

async function submit(): Promise<void> {
  showAlert("");
  const prompt = byId<HTMLTextAreaElement>("prompt").value.trim();
  const systemInstruction = byId<HTMLTextAreaElement>("system").value.trim();
  const button = byId<HTMLButtonElement>("start");
  button.disabled = true;
  try {
    if (kind() === "reasoning") {
      if (!prompt) return invalid("prompt", "Write the problem the models should work on.");
      const strategy = byId<HTMLSelectElement>("strategy").value;
      const spec = STRATEGIES.find((s) => s.name === strategy);
      const additionalModels = spec?.allSeats
        ? [...document.querySelectorAll<HTMLInputElement>('input[name="additional"]:checked')].map((i) => i.value)
        : [];
      const created = await guarded(() =>
        client.createReasoning({
          primaryModel: byId<HTMLSelectElement>("primary").value,
          secondaryModel: byId<HTMLSelectElement>("secondary").value,
          prompt,
          systemInstruction,
          collaborationStrategy: strategy,
          maxIterations: spec?.rounds ? numberOf("max-iterations") : 0,
          additionalModels,
          ...(spec?.samples ? { samples: numberOf("samples") } : {}),
        }),
      );
      if (created) location.hash = `#reasoning/${created.reasoningId}`;
    } else {
      const seats = [...byId("seats").children].map((row) => ({
        id: row.querySelector("select")?.value ?? "",
        role: row.querySelector("input")?.value.trim() ?? "",
      }));
      const empty = [...byId("seats").querySelectorAll("input")].find((i) => !i.value.trim());
      if (empty) return invalid(empty.id, "Every participant needs a role.");
      const created = await guarded(() =>
        client.createConversation(seats, prompt, {
          mode: byId<HTMLSelectElement>("conv-mode").value,
          rounds: numberOf("rounds"),
          systemInstruction,
        }),
      );
      if (created) location.hash = `#conversation/${created.conversationId}`;
    }
  } finally {
    button.disabled = false;
  }
}

// --- a run ---------------------------------------------------------------------------------------

function showSetup(): void {
  current?.close();
  current = null;
  setConnection("");
  byId("run").hidden = true;
  byId("home").hidden = false;
  void showRecent();
}

const RECENT = 8;

/** The caller's latest runs, newest first, each a link to its view. */
async function showRecent(): Promise<void> {
  const found = await Promise.all([
    client.reasoning.listReasonings({ pageSize: RECENT }).then((r) => r.reasonings, () => []),
    client.conversations.listConversations({ pageSize: RECENT }).then((r) => r.conversations, () => []),
  ]);
  type Item = { when: bigint; href: string; what: string; meta: string };
  const items: Item[] = [
    ...found[0].map((r) => ({
      when: r.createdAt?.seconds ?? 0n,
      href: `#reasoning/${r.reasoningId}`,
      what: humanize(r.collaborationStrategy || "iterative_refinement"),
      meta: `${[r.primaryModel, r.secondaryModel, ...r.additionalModels].filter(Boolean).join(" + ")} · ${statusName(r.status)} · ${r.prompt.slice(0, 80)}`,
    })),
    ...found[1].map((c) => ({
      when: c.createdAt?.seconds ?? 0n,
      href: `#conversation/${c.conversationId}`,
      what: `Conversation (${c.mode})`,
      meta: `${c.models.map((p) => `${p.role}: ${p.id}`).join(", ")} · ${statusName(c.status)}`,
    })),
  ];
  items.sort((a, b) => (a.when === b.when ? 0 : a.when < b.when ? 1 : -1));
  const list = byId("recent-list");
  list.replaceChildren(
    ...items.slice(0, RECENT).map((item) =>
      h(
        "li",
        {},
        h("a", { href: item.href }, h("span", { class: "what" }, item.what), h("span", { class: "meta" }, item.meta)),
      ),
    ),
  );
  byId("recent").hidden = items.length === 0;
}

function showRun(title: string, prompt: string): void {
  byId("home").hidden = true;
  byId("run").hidden = false;
  byId("run-title").textContent = title;
  byId("run-prompt").textContent = prompt;
  byId("composer").hidden = true;
  byId("cancel").hidden = false;
  byId("resume").hidden = true;
  byId("final-extra").replaceChildren();
  byId("run-title").focus();
}

interface Followed {
  sequencer: { last: bigint };
  status: RunStatus;
}

/**
 * Follows a run's events until it ends: `watch` opens a subscription after a sequence, and the SDK resumes
 * it over dropped connections by itself. A subscription that ends without an error was ended by the
 * server, which does so only once the run is over (completed, failed, cancelled or interrupted).
 */
function follow(
  run: Followed,
  watch: (after: bigint, signal: AbortSignal) => EventSubscription,
  finished: () => void = () => {},
): { close(): void } {
  const abort = new AbortController();
  setConnection("Live", "live");
  const subscription = watch(run.sequencer.last, abort.signal);
  void subscription.done.then(() => {
    if (abort.signal.aborted) return;
    if (subscription.error) {
      setConnection("Stopped"); // the API's final answer (onError showed it), not a dropped connection
      return;
    }
    setConnection("Finished");
    byId("cancel").hidden = true;
    finished();
  });
  return {
    close(): void {
      abort.abort();
      subscription.close();
    },
  };
}

function onStreamError(error: unknown): void {
  if (isUnauthenticated(error)) askForKey(null);
  else showAlert(messageOf(error));
}

async function openReasoning(id: string): Promise<void> {
  const reasoning = await guarded(() => client.getReasoning(id));
  if (!reasoning || location.hash !== `#reasoning/${id}`) return;
  showRun(`${humanize(reasoning.collaborationStrategy || "iterative_refinement")} · ${id}`, reasoning.prompt);
  const run = new ReasoningRun(new Board(), reasoning);
  const resume = byId<HTMLButtonElement>("resume");
  resume.hidden = !RESUMABLE.has(reasoning.status);
  resume.onclick = () =>
    void guarded(async () => {
      await client.resumeReasoning(id);
      await route(); // a new run of the same session: follow it from its first event again
    });
  current?.close(); // an overlapping route() may have followed one meanwhile
  current = follow(
    run,
    (after, signal) =>
      client.watchReasoning(
        id,
        {
          onEvent: (event) => live(() => run.apply(event)),
          onError: onStreamError,
          onReconnect: () => setConnection("Reconnecting…", "retry"),
        },
        { afterSequence: after, signal },
      ),
    () =>
      void guarded(() => client.getReasoning(id)).then((done) => {
        if (!done || location.hash !== `#reasoning/${id}`) return;
        resume.hidden = !RESUMABLE.has(done.status);
        showOutcome(done);
      }),
  );
  byId("cancel").onclick = () => void guarded(() => client.cancelReasoning(id));
}

/** Statuses ResumeReasoning takes: a run that stopped before its end. */
const RESUMABLE = new Set<RunStatus>([RunStatus.INTERRUPTED, RunStatus.FAILED, RunStatus.CANCELLED]);

/** What the events do not carry: a vote's tally, and what a cascade saved. */
function showOutcome(reasoning: Reasoning): void {
  const extra = byId("final-extra");
  extra.replaceChildren();
  const vote = reasoning.vote;
  if (vote?.tallies.length) {
    extra.append(
      h(
        "table",
        {},
        h("caption", { class: "help" }, vote.tie ? "The vote (a tie)" : "The vote"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Answer"), h("th", { scope: "col" }, "Votes"), h("th", { scope: "col" }, "From"))),
        h(
          "tbody",
          {},
          ...vote.tallies.map((t) =>
            h("tr", {}, h("td", {}, t.answer), h("td", {}, String(t.votes)), h("td", {}, t.models.join(", "))),
          ),
        ),
      ),
    );
    if (vote.tieBrokenBy) extra.append(h("p", {}, `The tie was broken by ${vote.tieBrokenBy}.`));
  }
  const usage = reasoning.usage;
  if (reasoning.collaborationStrategy === "cascade" && usage) {
    extra.append(
      h(
        "p",
        {},
        `${usage.escalated ? "Escalated" : "Not escalated"}: this run cost ${money(usage.costUsd)}; ` +
          `the secondary model alone would have cost ${money(usage.secondaryOnlyCostUsd)}.`,
      ),
    );
  }
}

async function openConversation(id: string): Promise<void> {
  const conversation = await guarded(() => client.getConversation(id));
  if (!conversation || location.hash !== `#conversation/${id}`) return;
  showRun(`Conversation (${conversation.mode}) · ${id}`, "");
  const hint = byId("composer-hint");
  const run = new ConversationRun(new Board(), conversation, (status) => {
    byId("composer").hidden = !run.human || TERMINAL.has(status);
    hint.textContent =
      status === RunStatus.WAITING_FOR_INPUT ? "Your turn: the models are waiting for you." : "";
  });
  const composer = byId("composer");
  composer.hidden = !run.human || TERMINAL.has(run.status);
  current?.close(); // an overlapping route() may have followed one meanwhile
  current = follow(run, (after, signal) =>
    client.connectToConversation(
      id,
      {
        onEvent: (event) => live(() => run.apply(event)),
        onError: onStreamError,
        onReconnect: () => setConnection("Reconnecting…", "retry"),
      },
      { afterSequence: after, signal },
    ),
  );
  byId("cancel").onclick = () => void guarded(() => client.cancelConversation(id));
  const form = byId<HTMLFormElement>("composer");
  byId("message").onkeydown = (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  };
  form.onsubmit = (event) => {
    event.preventDefault();
    const box = byId<HTMLTextAreaElement>("message");
    const text = box.value.trim();
    if (!text || !run.human) return;
    const send = byId<HTMLButtonElement>("send");
    send.disabled = true;
    void (async () => {
      try {
        await client.addMessage(id, text, run.human!.role, run.human!.model);
        box.value = "";
        hint.textContent = "Sent.";
      } catch (error) {
        if (isUnauthenticated(error)) askForKey(null);
        else hint.textContent = messageOf(error);
      } finally {
        send.disabled = false;
        box.focus();
      }
    })();
  };
}

async function route(): Promise<void> {
  current?.close();
  current = null;
  showAlert("");
  const [kind, id] = location.hash.slice(1).split("/", 2);
  if (kind === "reasoning" && id) return openReasoning(decodeURIComponent(id));
  if (kind === "conversation" && id) return openConversation(decodeURIComponent(id));
  showSetup();
}

async function start(): Promise<void> {
  const listed = await guarded(() => client.listModels());
  if (listed) {
    models = listed.filter(canChat);
    fillModels();
  }
  if (listed || location.hash) await route();
}

function main(): void {
  setUpKey();
  setUpForm();
  window.addEventListener("hashchange", () => void route());
  byId("new-run").addEventListener("click", () => {
    history.pushState(null, "", location.pathname); // no hash: the start page (Back returns to the run)
    void route();
    document.querySelector<HTMLInputElement>('input[name="kind"]:checked')?.focus();
  });
  void start();
}

main();
