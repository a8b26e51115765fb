// A conversation on the board: one column per participant (a person's seat too), each turn streamed
// then recorded; the timeline is the transcript, as the server recorded it.

import { Board } from "./board.js";
import { h } from "./dom.js";
import { type Conversation, type ConversationEvent, ConversationEventType as T, RunStatus } from "./sdk.js";
import { Sequencer, statusName } from "./runs.js";

/** The seats a person takes, as the server reads them (server/orchestration/turns.py). */
const HUMAN_ROLES = new Set(["human", "user"]);

export class ConversationRun {
  readonly sequencer = new Sequencer();
  status: RunStatus;
  /** The seat a person speaks for (human-ai), or null. */
  readonly human: { model: string; role: string } | null;
  private turn: { step: string; column: string } | null = null;
  private turns = 0;
  private readonly titles = new Map<string, string>();

  constructor(
    private readonly board: Board,
    conversation: Conversation,
    private readonly onStatus: (status: RunStatus, run: ConversationRun) => void = () => {},
  ) {
    this.status = conversation.status;
    const people =
      conversation.mode === "human-ai"
        ? conversation.models.filter((p) => HUMAN_ROLES.has(p.role.toLowerCase()))
        : [];
    this.human = people.length ? { model: people[0].id, role: people[0].role } : null;
    for (const seat of conversation.models) {
      const person = people.some((p) => p.id === seat.id && p.role === seat.role);
      const title = person ? "You" : seat.name || seat.id;
      this.titles.set(seatKey(seat.id, seat.role), title);
      board.column(seatKey(seat.id, seat.role), title, person ? `${seat.role} seat` : seat.role);
    }
    board.setStatus(statusName(conversation.status));
  }

  apply(event: ConversationEvent): void {
    if (!this.sequencer.accept(event.sequence)) return;
    const board = this.board;
    const seq = event.sequence;
    switch (event.type) {
      case T.TURN_STARTED: {
        this.turns += 1;
        const column = seatKey(event.model, event.role);
        this.turn = { step: `turn-${seq}`, column };
        board.startStep(this.turn.step, column, { kind: event.role, label: `turn ${this.turns}` });
        break;
      }
      case T.TOKEN:
      case T.THINKING: {
        const column = event.model ? seatKey(event.model, event.role) : this.turn?.column;
        if (!column) break;
        if (!this.turn || this.turn.column !== column) this.turn = { step: `turn-${seq}`, column };
        board.stream(this.turn.step, column, event.delta, event.type === T.TOKEN ? "text" : "thinking");
        break;
      }
      case T.MESSAGE: {
        const message = event.message;
        if (!message) break;
        const column = seatKey(message.model, message.role);
        const who = this.titles.get(column) ?? `${message.role} (${message.model})`;
        if (!message.queued) {
          const step = this.turn?.column === column ? this.turn.step : `msg-${seq}`;
          board.finishStep(step, column, message.content, {
            kind: message.role,
            costUsd: message.usage?.costUsd ?? 0,
            tokens: message.usage?.totalTokens ?? 0,
          });
          if (this.turn?.column === column) this.turn = null;
        }
        board.timeline(
          seq,
          "message",
          h("span", { class: "who" }, `${who}${message.queued ? " (queued)" : ""}: `),
          h("span", { class: "said" }, message.content),
        );
        break;
      }
      case T.TOOL_USE:
        board.timeline(seq, "tool", `${event.model} calls ${event.tool}`);
        break;
      case T.STATUS_CHANGED:
      case T.COMPLETION:
        this.status = event.status;
        board.setStatus(statusName(event.status));
        if (event.status !== RunStatus.IN_PROGRESS) board.setActive(null);
        if (event.type === T.COMPLETION) board.timeline(seq, "done", "Finished: every round was spoken");
        else board.timeline(seq, "status", `Status: ${statusName(event.status)}`);
        this.onStatus(event.status, this);
        break;
      case T.ERROR:
        board.setActive(null);
        board.timeline(seq, "error", h("strong", {}, "Error: "), event.error?.message || "a turn failed");
        break;
      default:
        break;
    }
    board.setSequence(this.sequencer.last);
  }
}

function seatKey(model: string, role: string): string {
  return `${role}:${model}`;
}
