"""Stream a completion token by token.

python examples/stream_completion.py                       # smollm2-135m on $AIBATTLE_TARGET
python examples/stream_completion.py --model M "Your prompt"
"""

from __future__ import annotations

import argparse

from aibattle_sdk import Client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("prompt", nargs="?", default="Explain what a gRPC stream is, in two sentences.")
    args = parser.parse_args()

    with Client() as client:
        stream = client.completions.create(
            model=args.model, prompt=args.prompt, max_tokens=args.max_tokens, stream=True
        )
        for chunk in stream:
            print(chunk.content, end="", flush=True)
            if chunk.is_final and chunk.usage is not None:
                print(f"\n\n({chunk.usage.completion_tokens} tokens, {chunk.finish_reason.name.lower()})")


if __name__ == "__main__":
    main()
