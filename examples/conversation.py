"""Run a two-model conversation and follow it live, one turn after another.

python examples/conversation.py                            # smollm2-135m in both seats
python examples/conversation.py --human M1 --assistant M2 --rounds 2
"""

from __future__ import annotations

import argparse

from aibattle_sdk import Client
from aibattle_sdk.v1 import ConversationEventType as Kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--human", default="smollm2-135m", help="model in the human seat")
    parser.add_argument("--assistant", default="smollm2-135m", help="model in the assistant seat")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("prompt", nargs="?", default="What makes a good unit test?")
    args = parser.parse_args()

    with Client() as client:
        conversation = client.conversations.create(
            models=[(args.human, "human"), (args.assistant, "assistant")],
            initial_prompt=args.prompt,
            mode="ai-ai",
            rounds=args.rounds,
            system_instruction="Answer briefly.",
        )
        print(f"conversation {conversation.conversation_id}")
        # Events from the first one: the recorded ones, then live ones; it ends when the run settles.
        for event in client.conversations.events(conversation.conversation_id):
            if event.type == Kind.MESSAGE and event.message is not None and event.message.role == "human":
                print(f"\n[{event.message.model} as human] {event.message.content}")
            elif event.type == Kind.TURN_STARTED:
                print(f"\n[{event.model} as {event.role}] ", end="")
            elif event.type == Kind.TOKEN:
                print(event.delta, end="", flush=True)
            elif event.type == Kind.COMPLETION:
                print(f"\n\n(conversation {event.status.name.lower()})")


if __name__ == "__main__":
    main()
