// The run view: one column per model (its steps, the one in progress streaming), a timeline of what
// happened (role="log", so screen readers hear iterations, stalls and handoffs as they come), and the
// running totals. It knows nothing of the API: reasoning.ts and conversation.ts drive it from events.

import { append, byId, count, h, humanize, money } from "./dom.js";

export interface StepInfo {
  kind?: string;
  label?: string;
  verdict?: string;
  focusAreas?: readonly string[];
  stuck?: readonly string[];
  costUsd?: number;
  tokens?: number;
}

interface Column {
  el: HTMLElement;
  steps: HTMLOListElement;
  money: HTMLElement;
  costUsd: number;
  tokens: number;
}

interface Step {
  el: HTMLLIElement;
  column: string;
  text: Text;
  thinking: HTMLElement | null;
  head: HTMLElement;
  live: boolean;
}

const GOOD_VERDICTS = new Set(["approve", "accept"]);

export class Board {
  private readonly columnsEl = byId("columns");
  private readonly timelineEl = byId("timeline");
  private readonly columns = new Map<string, Column>();
  private readonly steps = new Map<string, Step>();
  private costUsd = 0;
  private tokens = 0;
  private stepCount = 0;

  constructor() {
    this.columnsEl.replaceChildren();
    this.timelineEl.replaceChildren();
    byId("final").hidden = true;
    this.setStatus("—");
    this.setSequence(0n);
    this.updateTotals();
  }

  /** A column for `key`, made on first use (titles fixed then). */
  column(key: string, title: string, seat: string): Column {
    let column = this.columns.get(key);
    if (column) return column;
    const id = `col-${this.columns.size}`;
    const moneyEl = h("span", { class: "money" });
    const steps = h("ol", { class: "steps", "aria-labelledby": `${id}-title` });
    steps.append(h("li", { class: "empty" }, "Waiting for its turn…"));
    const el = h(
      "section",
      { class: "column", id, "data-model": key },
      h("header", {}, h("h3", { id: `${id}-title` }, title), h("span", { class: "seat" }, seat), moneyEl),
      steps,
    );
    this.columnsEl.append(el);
    column = { el, steps, money: moneyEl, costUsd: 0, tokens: 0 };
    this.columns.set(key, column);
    this.updateColumn(column);
    return column;
  }

  hasStep(key: string): boolean {
    return this.steps.has(key);
  }

  /** Text (or thinking) of the step in progress; the step appears, live, with its first delta. */
  stream(stepKey: string, columnKey: string, delta: string, part: "text" | "thinking" = "text", info: StepInfo = {}): void {
    const step = this.steps.get(stepKey) ?? this.startStep(stepKey, columnKey, info);
    if (part === "text") step.text.appendData(delta);
    else {
      if (!step.thinking) {
        step.thinking = h("div", { class: "thinking", "aria-label": "thinking" });
        step.el.insertBefore(step.thinking, step.text.parentNode);
      }
      step.thinking.append(delta);
    }
  }

  startStep(stepKey: string, columnKey: string, info: StepInfo): Step {
    const column = this.columns.get(columnKey) ?? this.column(columnKey, columnKey, "");
    column.steps.querySelector(":scope > .empty")?.remove();
    const head = h("div", { class: "step-head" });
    const textEl = h("div", { class: "text" });
    const text = document.createTextNode("");
    textEl.append(text);
    const el = h("li", { class: "step live", "data-step": stepKey, "aria-busy": "true" }, head, textEl);
    column.steps.append(el);
    const step: Step = { el, column: columnKey, text, thinking: null, head, live: true };
    this.steps.set(stepKey, step);
    this.renderHead(step, info);
    this.setActive(columnKey);
    return step;
  }

  /** The step is recorded: its final text (when the stream brought none), verdict, focus, stalls, cost. */
  finishStep(stepKey: string, columnKey: string, content: string, info: StepInfo): void {
    const step = this.steps.get(stepKey) ?? this.startStep(stepKey, columnKey, info);
    if (step.text.data === "") step.text.data = content;
    else if (step.text.data.trim() !== content.trim()) {
      // The stream and the record disagree: the record is the truth (and a test watches for this).
      console.warn(`arena: streamed text of ${stepKey} differs from the recorded step`);
      step.text.data = content;
    }
    step.live = false;
    step.el.classList.remove("live");
    step.el.removeAttribute("aria-busy");
    if (info.stuck?.length) step.el.classList.add("stuck");
    this.renderHead(step, info);
    const chips = h("ul", { class: "chips" });
    for (const area of info.focusAreas ?? []) chips.append(h("li", { class: "chip focus" }, humanize(area)));
    for (const signal of info.stuck ?? []) chips.append(h("li", { class: "chip warn" }, `stuck: ${humanize(signal)}`));
    if (chips.childElementCount) step.el.append(chips);
    const column = this.columns.get(step.column);
    if (column) {
      column.costUsd += info.costUsd ?? 0;
      column.tokens += info.tokens ?? 0;
      this.updateColumn(column);
    }
    this.costUsd += info.costUsd ?? 0;
    this.tokens += info.tokens ?? 0;
    this.stepCount += 1;
    this.updateTotals();
  }

  private renderHead(step: Step, info: StepInfo): void {
    const kind = info.kind ?? step.head.dataset.kind ?? "";
    if (kind) step.head.dataset.kind = kind;
    const label = info.label ?? step.head.dataset.label ?? "";
    if (label) step.head.dataset.label = label;
    step.head.replaceChildren();
    append(
      step.head,
      h("span", { class: "kind" }, kind ? humanize(kind) : "Writing…"),
      label ? h("span", { class: "n" }, label) : null,
      info.verdict
        ? h("span", { class: `badge ${GOOD_VERDICTS.has(info.verdict) ? "good" : "redo"}` }, info.verdict)
        : null,
      info.costUsd || info.tokens
        ? h("span", { class: "cost" }, `${count(info.tokens ?? 0)} tok · ${money(info.costUsd ?? 0)}`)
        : null,
    );
  }

  /** A line inside a column, between its steps: a stall, a handoff. */
  columnNote(columnKey: string, cls: string, text: string): void {
    const column = this.columns.get(columnKey) ?? this.column(columnKey, columnKey, "");
    column.steps.querySelector(":scope > .empty")?.remove();
    column.steps.append(h("li", { class: `step ${cls}` }, text));
  }

  setActive(columnKey: string | null): void {
    for (const [key, column] of this.columns) column.el.classList.toggle("active", key === columnKey);
  }

  timeline(sequence: bigint, cls: string, ...content: (Node | string)[]): void {
    const item = h("li", { class: cls, "data-seq": sequence.toString() }, h("span", { class: "seq" }, `#${sequence}`));
    item.append(...content);
    // Follow the newest entry only when the reader is at the bottom already: never scroll them away.
    const box = this.timelineEl.parentElement;
    const atBottom = !box || box.scrollHeight - box.scrollTop - box.clientHeight < 24;
    this.timelineEl.append(item);
    if (box && atBottom) box.scrollTop = box.scrollHeight;
  }

  setStatus(status: string): void {
    byId("stat-status").textContent = status;
  }

  setSequence(sequence: bigint): void {
    byId("stat-seq").textContent = sequence.toString();
  }

  setFinal(text: string, reason: string): void {
    byId("final").hidden = false;
    byId("final-text").textContent = text;
    byId("final-reason").textContent = reason;
    this.setActive(null);
  }

  private updateColumn(column: Column): void {
    column.money.textContent = `${count(column.tokens)} tok · ${money(column.costUsd)}`;
  }

  private updateTotals(): void {
    byId("stat-steps").textContent = count(this.stepCount);
    byId("stat-tokens").textContent = count(this.tokens);
    byId("stat-cost").textContent = money(this.costUsd);
  }
}
