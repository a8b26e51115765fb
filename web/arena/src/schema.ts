// What the form offers, read off the schema where the schema says it: the strategies and conversation
// modes a request accepts (the fields' `allowed_values` option) and the ranges of its numbers (`bounds`),
// so a strategy added to the proto shows up here with `make gen`. Only the one-line help of each, and
// which fields a strategy uses, are written here.

import { getOption, hasOption } from "@bufbuild/protobuf";
import type { DescField } from "@bufbuild/protobuf";
import { CreateConversationRequestSchema, CreateReasoningRequestSchema, allowed_values, bounds } from "./sdk.js";

export interface StrategySpec {
  name: string;
  help: string;
  /** Uses every seat (further models), not just primary and secondary. */
  allSeats: boolean;
  /** Takes `samples`. */
  samples: boolean;
  /** Uses `max_iterations`. */
  rounds: boolean;
}

const STRATEGY_HELP: Record<string, Omit<StrategySpec, "name">> = {
  iterative_refinement: {
    help: "The primary drafts, the secondary critiques, the primary revises — until the critic approves. A stuck drafter hands the draft to the critic.",
    allSeats: false,
    samples: false,
    rounds: true,
  },
  debate: {
    help: "Every model answers, then reads the others and updates, round after round, until the answers agree or the secondary judges.",
    allSeats: true,
    samples: false,
    rounds: true,
  },
  mixture: {
    help: "Layers of proposals from every model, each seeing the last; the primary aggregates them.",
    allSeats: true,
    samples: false,
    rounds: true,
  },
  critique: {
    help: "The primary answers, the secondary verifies: accept, or correct and have the correction verified.",
    allSeats: false,
    samples: false,
    rounds: true,
  },
  cascade: {
    help: "The primary answers; the secondary answers only when the primary cannot. Shows what escalating saves.",
    allSeats: false,
    samples: false,
    rounds: false,
  },
  self_consistency: {
    help: "Several samples from the primary, then a majority vote on their final answers.",
    allSeats: false,
    samples: true,
    rounds: false,
  },
  vote: {
    help: "One answer per model, then a majority vote; the secondary breaks a tie.",
    allSeats: true,
    samples: false,
    rounds: false,
  },
};

const MODE_HELP: Record<string, string> = {
  "human-ai": "You speak for the human seat: type when it is your turn (or ahead of it).",
  "ai-ai": "Every seat is played by its model, the human one too.",
  "round-robin": "Every participant is a model, and each sees the others as users.",
};

function allowed(field: DescField): string[] {
  return hasOption(field, allowed_values) ? [...getOption(field, allowed_values).values] : [];
}

const reasoningFields = CreateReasoningRequestSchema.field;
const conversationFields = CreateConversationRequestSchema.field;

export const STRATEGIES: StrategySpec[] = allowed(reasoningFields.collaborationStrategy).map((name) => ({
  name,
  ...(STRATEGY_HELP[name] ?? { help: "", allSeats: false, samples: false, rounds: true }),
}));

export const CONVERSATION_MODES = allowed(conversationFields.mode).map((name) => ({
  name,
  help: MODE_HELP[name] ?? "",
}));

const NUMBERS = {
  maxIterations: reasoningFields.maxIterations,
  samples: reasoningFields.samples,
  rounds: conversationFields.rounds,
};

/** The range the schema gives a number field (`aibattle.v1.bounds`). */
export function boundsOf(field: keyof typeof NUMBERS): { min: number; max: number } {
  const desc = NUMBERS[field];
  const range = hasOption(desc, bounds) ? getOption(desc, bounds) : undefined;
  return {
    min: range?.min !== undefined ? Number(range.min) : 0,
    max: range?.max !== undefined ? Number(range.max) : 1000,
  };
}
