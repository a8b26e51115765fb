"""`aibattle`: the SDK from a terminal. Tokens print as they arrive; `--json` gives NDJSON for scripts.

    aibattle models
    aibattle complete --model smollm2-135m "Say hello"
    aibattle converse -m smollm2-135m:human -m smollm2-135m:assistant --rounds 2 "Let's talk"
    aibattle reason --primary smollm2-135m --secondary smollm2-135m "What is 17 * 23?"

An error prints one line on stderr and exits 1 (2 for bad usage, 130 on Ctrl-C); never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import betterproto2

from aibattle_sdk import v1
from aibattle_sdk._config import API_KEY_ENV, DEFAULT_TARGET, TARGET_ENV
from aibattle_sdk.client import Client
from aibattle_sdk.errors import AIBattleError, APIError


def _json(message: betterproto2.Message) -> dict[str, Any]:
    return message.to_dict(casing=betterproto2.Casing.SNAKE)


class Output:
    """Where a command writes: text for people, or one JSON document per line."""

    def __init__(self, as_json: bool, out: TextIO = sys.stdout) -> None:
        self.as_json = as_json
        self.out = out

    def text(self, text: str) -> None:
        if not self.as_json:
            self.out.write(text)
            self.out.flush()

    def record(self, message: betterproto2.Message) -> None:
        if self.as_json:
            self.out.write(json.dumps(_json(message), ensure_ascii=False) + "\n")
            self.out.flush()


def cmd_models(client: Client, args: argparse.Namespace, out: Output) -> int:
    page = client.models.list(provider=args.provider, capability=args.capability)
    for model in page.models:
        out.record(model)
        out.text(f"{model.id:<28} {model.provider:<10} {','.join(model.capabilities)}\n")
    return 0


def cmd_complete(client: Client, args: argparse.Namespace, out: Output) -> int:
    stream = client.completions.create(
        model=args.model,
        prompt=args.prompt,
        stream=True,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        system_instruction=args.system or "",
        timeout=args.timeout,
    )
    with stream:
        for chunk in stream:
            out.record(chunk)
            out.text(chunk.content)
            if chunk.is_final and chunk.usage is not None:
                out.text(f"\n[{chunk.finish_reason.name.lower()}; {chunk.usage.total_tokens} tokens]\n")
    return 0


def _seat(text: str) -> tuple[str, str]:
    model, sep, role = text.partition(":")
    if not sep or not model or not role:
        raise argparse.ArgumentTypeError(f"expected MODEL:ROLE, got {text!r}")
    return model, role


def cmd_converse(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.id:
        conversation_id = args.id
    else:
        if len(args.model) < 2:
            raise SystemExit("aibattle: error: a new conversation needs at least two -m MODEL:ROLE (or --id)")
        created = client.conversations.create(
            models=args.model,
            initial_prompt=args.prompt or "",
            mode=args.mode,
            rounds=args.rounds,
            system_instruction=args.system or "",
        )
        conversation_id = created.conversation_id
        out.text(f"conversation {conversation_id}\n")
    interactive = args.interactive and sys.stdin.isatty()
    with client.conversations.converse(conversation_id, timeout=args.timeout) as session:
        if args.id and not args.prompt:
            session.run()
        elif args.id:
            session.send(args.prompt, role=args.role)
        if not interactive:
            session.close()  # the server sends what the running turns produce, then ends the call
        for response in session:
            if response.rejected is not None:
                out.text(f"\n! refused: {response.rejected.message}\n")
                continue
            event = response.event
            if event is None:
                continue
            out.record(event)
            _show_conversation_event(event, out)
            if interactive and event.type == v1.ConversationEventType.STATUS_CHANGED:
                if event.status == v1.RunStatus.WAITING_FOR_INPUT:
                    line = _ask()
                    if line:
                        session.send(line, role=args.role)
                    else:
                        session.close()
                elif event.status in _SETTLED:
                    session.close()
    return 0


_SETTLED = {v1.RunStatus.COMPLETED, v1.RunStatus.CANCELLED, v1.RunStatus.FAILED, v1.RunStatus.INTERRUPTED}


def _ask() -> str:
    try:
        return input("\nyou> ").strip()
    except EOFError:
        return ""


def _show_conversation_event(event: v1.ConversationEvent, out: Output) -> None:
    kind = v1.ConversationEventType
    if event.type == kind.TURN_STARTED:
        out.text(f"\n[{event.model} ({event.role})] ")
    elif event.type in (kind.TOKEN, kind.THINKING):
        out.text(event.delta)
    elif event.type == kind.MESSAGE and event.message is not None and event.message.role in ("human", "user"):
        out.text(f"\n[{event.message.model or 'you'} ({event.message.role})] {event.message.content}")
    elif event.type == kind.COMPLETION:
        out.text("\n[conversation completed]\n")
    elif event.type == kind.ERROR and event.error is not None:
        out.text(f"\n! turn failed: {event.error.message}\n")


def cmd_reason(client: Client, args: argparse.Namespace, out: Output) -> int:
    reasoning = client.reasoning.create(
        primary_model=args.primary,
        secondary_model=args.secondary or "",
        prompt=args.prompt,
        collaboration_strategy=args.strategy,
        max_iterations=args.max_iterations,
        max_tokens=args.max_tokens,
        system_instruction=args.system or "",
    )
    out.text(f"reasoning {reasoning.reasoning_id} ({reasoning.collaboration_strategy})\n")
    kind = v1.ReasoningEventType
    step = 0
    status = v1.RunStatus.UNSPECIFIED
    with client.reasoning.events(reasoning.reasoning_id, timeout=args.timeout) as events:
        for event in events:
            out.record(event)
            if event.type in (kind.TOKEN, kind.THINKING):
                if event.iteration_index != step:
                    step = event.iteration_index
                    out.text(f"\n── step {step} · {event.model} ──\n")
                out.text(event.delta)
            elif event.type == kind.NEW_ITERATION and event.iteration is not None:
                it = event.iteration
                verdict = f", verdict {it.verdict}" if it.verdict else ""
                out.text(f"\n✓ step {it.index}: {it.kind} by {it.model}{verdict}\n")
            elif event.type == kind.STUCK_DETECTED:
                out.text(f"\n⚠ stuck: {event.model} ({', '.join(event.stuck_indicators)})\n")
            elif event.type == kind.HANDOFF:
                out.text(f"\n→ handoff: {event.model} → {event.to_model}\n")
            elif event.type == kind.STATUS_CHANGED:
                status = event.status
                out.text(f"\n· status: {status.name.lower()}\n")
            elif event.type == kind.COMPLETION:
                status = event.status
                out.text(f"\n═══ final result ═══\n{event.final_result}\n")
            elif event.type == kind.ERROR and event.error is not None:
                out.text(f"\n! failed: {event.error.message}\n")
    if status in (v1.RunStatus.FAILED, v1.RunStatus.INTERRUPTED):
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="aibattle", description="Talk to an AI Battle server over gRPC.")
    top.add_argument(
        "--target", help=f"host:port of the server (default ${TARGET_ENV}, else {DEFAULT_TARGET})"
    )
    top.add_argument("--api-key", help=f"API key (default ${API_KEY_ENV})")
    top.add_argument("--tls", action="store_true", help="connect with TLS")
    top.add_argument("--json", action="store_true", help="print JSON (one object per line) instead of text")
    top.add_argument("--timeout", type=float, default=None, help="seconds the whole command may take")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the models")
    p.add_argument("--provider", default="")
    p.add_argument("--capability", default="")
    p.set_defaults(run=cmd_models)

    p = sub.add_parser("complete", help="stream a completion")
    p.add_argument("--model", required=True)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--system", help="system instruction")
    p.add_argument("prompt")
    p.set_defaults(run=cmd_complete)

    p = sub.add_parser("converse", help="start (or join) a conversation and follow it live")
    p.add_argument("-m", "--model", type=_seat, action="append", default=[], metavar="MODEL:ROLE")
    p.add_argument("--id", help="join this conversation instead of creating one")
    p.add_argument("--mode", default="", help='"human-ai" (default), "ai-ai" or "round-robin"')
    p.add_argument("--rounds", type=int, default=0)
    p.add_argument("--system", help="system instruction")
    p.add_argument("--role", default="human", help="the role you speak as (default human)")
    p.add_argument("-i", "--interactive", action="store_true", help="type your turns when asked")
    p.add_argument("prompt", nargs="?", help="the first message (or, with --id, your next one)")
    p.set_defaults(run=cmd_converse)

    p = sub.add_parser("reason", help="run collaborative reasoning and watch it live")
    p.add_argument("--primary", required=True)
    p.add_argument("--secondary")
    p.add_argument("--strategy", default="", help="iterative_refinement (default), debate, mixture, …")
    p.add_argument("--max-iterations", type=int, default=0)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--system", help="system instruction")
    p.add_argument("prompt")
    p.set_defaults(run=cmd_reason)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Output(args.json)
    try:
        with Client(args.target, api_key=args.api_key, tls=args.tls, timeout=args.timeout) as client:
            code: int = args.run(client, args, out)
            return code
    except APIError as exc:
        print(f"aibattle: error: {exc}", file=sys.stderr)
        return 1
    except AIBattleError as exc:
        print(f"aibattle: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aibattle: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
