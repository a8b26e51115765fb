"""Watch collaborative reasoning live: each step's tokens, stuck detections, handoffs, the answer.

python examples/reasoning_live.py                           # smollm2-135m as both models
python examples/reasoning_live.py --primary M1 --secondary M2 --strategy debate "A hard question"
"""

from __future__ import annotations

import argparse

from aibattle_sdk import Client
from aibattle_sdk.v1 import ReasoningEventType as Kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--primary", default="smollm2-135m")
    parser.add_argument("--secondary", default="smollm2-135m")
    parser.add_argument("--strategy", default="iterative_refinement")
    parser.add_argument("--max-iterations", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=48, help="per step")
    parser.add_argument("prompt", nargs="?", default="Is 91 a prime number? Answer and explain briefly.")
    args = parser.parse_args()

    with Client() as client:
        session = client.reasoning.create(
            primary_model=args.primary,
            secondary_model=args.secondary,
            prompt=args.prompt,
            collaboration_strategy=args.strategy,
            max_iterations=args.max_iterations,
            max_tokens=args.max_tokens,
        )
        print(f"reasoning {session.reasoning_id} ({session.collaboration_strategy})")
        step = 0
        for event in client.reasoning.events(session.reasoning_id):
            if event.type == Kind.TOKEN:
                if event.iteration_index != step:
                    step = event.iteration_index
                    print(f"\n--- step {step}: {event.model} ---")
                print(event.delta, end="", flush=True)
            elif event.type == Kind.NEW_ITERATION and event.iteration is not None:
                print(f"\n[{event.iteration.kind} recorded]")
            elif event.type == Kind.STUCK_DETECTED:
                print(f"\n[stuck: {event.model}: {', '.join(event.stuck_indicators)}]")
            elif event.type == Kind.HANDOFF:
                print(f"\n[handoff: {event.model} -> {event.to_model}]")
            elif event.type == Kind.COMPLETION:
                print(f"\n=== final result ===\n{event.final_result}")
            elif event.type == Kind.ERROR and event.error is not None:
                print(f"\n[failed: {event.error.message}]")


if __name__ == "__main__":
    main()
