// What both kinds of run share: events applied once each, in sequence order, and status names.

import { RunStatus } from "./sdk.js";
import { humanize } from "./dom.js";

/** RunStatus.WAITING_FOR_INPUT → "Waiting for input". */
export function statusName(status: RunStatus): string {
  const name = RunStatus[status] ?? "UNSPECIFIED";
  return humanize(name.toLowerCase());
}

/** Statuses after which a run's event stream ends (as the server and the SDK's `*Ends` say). */
export const TERMINAL = new Set<RunStatus>([
  RunStatus.COMPLETED,
  RunStatus.CANCELLED,
  RunStatus.FAILED,
  RunStatus.INTERRUPTED,
]);

/**
 * Sequences already applied. A resumed stream starts after the last one, a reloaded page replays from
 * the first: either way an event at or below the last applied one is dropped, so nothing shows twice.
 */
export class Sequencer {
  last = 0n;

  /** Whether `sequence` is new (and is now the last applied). */
  accept(sequence: bigint): boolean {
    if (sequence <= this.last) return false;
    if (sequence !== this.last + 1n) console.warn(`arena: events ${this.last + 1n}..${sequence - 1n} missing`);
    this.last = sequence;
    return true;
  }
}
