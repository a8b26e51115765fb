// A reasoning session on the board: one column per model, each step streamed then recorded, stalls and
// handoffs where they happen, the cost as it accrues.

import { Board } from "./board.js";
import { h, humanize } from "./dom.js";
import { type Reasoning, type ReasoningEvent, ReasoningEventType as T } from "./sdk.js";
import { Sequencer, statusName } from "./runs.js";

const SEATS = ["primary", "secondary"];

export class ReasoningRun {
  readonly sequencer = new Sequencer();
  status: Reasoning["status"];

  constructor(
    private readonly board: Board,
    reasoning: Reasoning,
  ) {
    this.status = reasoning.status;
    const models = [reasoning.primaryModel, reasoning.secondaryModel, ...reasoning.additionalModels];
    models.forEach((model, i) => {
      if (model) board.column(model, model, SEATS[i] ?? "further");
    });
    board.setStatus(statusName(reasoning.status));
  }

  apply(event: ReasoningEvent): void {
    if (!this.sequencer.accept(event.sequence)) return;
    const board = this.board;
    const seq = event.sequence;
    switch (event.type) {
      case T.TOKEN:
        board.stream(stepKey(event.iterationIndex), event.model, event.delta, "text", { label: `#${event.iterationIndex}` });
        break;
      case T.THINKING:
        board.stream(stepKey(event.iterationIndex), event.model, event.delta, "thinking", {
          label: `#${event.iterationIndex}`,
        });
        break;
      case T.NEW_ITERATION: {
        const it = event.iteration;
        if (!it) break;
        board.finishStep(stepKey(it.index), it.model, it.content, {
          kind: it.kind,
          label: `#${it.index}`,
          verdict: it.verdict,
          focusAreas: it.focusAreas,
          stuck: it.stuckIndicators,
          costUsd: it.usage?.costUsd ?? 0,
          tokens: it.usage?.totalTokens ?? 0,
        });
        const extra = it.verdict ? ` — ${it.verdict}` : "";
        board.timeline(seq, "iteration", `Step ${it.index}: ${humanize(it.kind)} by ${it.model}${extra}`);
        break;
      }
      case T.STUCK_DETECTED: {
        const signals = event.stuckIndicators.map(humanize).join(", ");
        board.columnNote(event.model, "stuck-note", `⚠ Stuck: ${signals}`);
        board.timeline(seq, "stuck", `${event.model} looks stuck (${signals})`);
        break;
      }
      case T.HANDOFF:
        board.columnNote(event.model, "handoff", `⇢ Handed off to ${event.toModel}`);
        board.timeline(seq, "handoff", `Handoff: ${event.model} → ${event.toModel}`);
        break;
      case T.STATUS_CHANGED:
        this.status = event.status;
        board.setStatus(statusName(event.status));
        board.timeline(seq, "status", `Status: ${statusName(event.status)}`);
        break;
      case T.COMPLETION:
        this.status = event.status;
        board.setStatus(statusName(event.status));
        board.setFinal(event.finalResult, event.stopReason ? `Stopped: ${humanize(event.stopReason)}` : "");
        board.timeline(seq, "done", `Completed${event.stopReason ? ` (${humanize(event.stopReason)})` : ""}`);
        break;
      case T.ERROR: {
        const message = event.error?.message || "the session failed";
        board.setActive(null);
        board.timeline(seq, "error", h("strong", {}, "Error: "), message);
        break;
      }
      default:
        break;
    }
    board.setSequence(this.sequencer.last);
  }
}

function stepKey(index: number): string {
  return `it-${index}`;
}
