"""`aibattle`: the SDK from a terminal. Tokens print as they arrive; `--json` gives NDJSON for scripts.

    aibattle models
    aibattle complete --model smollm2-135m "Say hello"
    aibattle count-tokens --model smollm2-135m "Say hello"
    aibattle embed --model smollm2-embed "a cat" "a dog"
    aibattle converse -m smollm2-135m:human -m smollm2-135m:assistant --rounds 2 "Let's talk"
    aibattle reason --primary smollm2-135m --secondary smollm2-135m "What is 17 * 23?"

An error prints one line on stderr and exits 1 (2 for bad usage, 130 on Ctrl-C); never a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

import betterproto2

from aibattle_sdk import __version__, v1
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
            if chunk.failover is not None:
                f = chunk.failover
                out.text(f"\n[failover: {f.from_model} → {f.to_model}, {f.reason}]\n")
            out.text(chunk.content)
            if chunk.is_final and chunk.usage is not None:
                out.text(f"\n[{chunk.finish_reason.name.lower()}; {chunk.usage.total_tokens} tokens]\n")
    return 0


def cmd_count_tokens(client: Client, args: argparse.Namespace, out: Output) -> int:
    counted = client.completions.count_tokens(
        model=args.model, prompt=args.prompt, system_instruction=args.system or "", timeout=args.timeout
    )
    out.record(counted)
    out.text(f"{counted.input_tokens} tokens{' (estimated)' if counted.estimated else ''}\n")
    return 0


def cmd_embed(client: Client, args: argparse.Namespace, out: Output) -> int:
    response = client.embeddings.create(
        model=args.model, input=args.text, dimensions=args.dimensions, timeout=args.timeout
    )
    out.record(response)
    for embedding in response.embeddings:
        head = ", ".join(f"{value:.4f}" for value in embedding.values[:4])
        out.text(f"{embedding.index}: {len(embedding.values)} dims [{head}, …]\n")
    if response.usage is not None:
        out.text(f"[{response.usage.prompt_tokens} tokens]\n")
    return 0


def _seat(text: str) -> tuple[str, str]:
    model, sep, role = text.partition(":")
    if not sep or not model or not role:
        raise argparse.ArgumentTypeError("expected a model and a role joined by a colon")
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
    interactive = args.interactive
    # Joining replays the conversation's history first: only what comes from its last event on is
    # live, and only a live "waiting for input" asks for your next line.
    history = client.conversations.get(conversation_id).last_sequence if args.id else 0
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
            if (
                interactive
                and event.sequence >= history
                and event.type == v1.ConversationEventType.STATUS_CHANGED
            ):
                if event.status == v1.RunStatus.WAITING_FOR_INPUT:
                    line = _next_turn(out)
                    if line is not None:
                        session.send(line, role=args.role)
                    else:
                        interactive = False
                        session.close()
                        resume = f"aibattle converse --id {conversation_id} -i"
                        out.text(f"\n[waiting for input; go on with: {resume}]\n")
                elif event.status in _SETTLED:
                    interactive = False
                    session.close()
    return 0


_SETTLED = {v1.RunStatus.COMPLETED, v1.RunStatus.CANCELLED, v1.RunStatus.FAILED, v1.RunStatus.INTERRUPTED}


def _next_turn(out: Output) -> str | None:
    """Your next message, or None to stop.

    From a terminal: a prompt, one line; an empty line or end of input stops. From a pipe or file: each
    non-empty line is one message, in order, and end of input stops (no prompt: nobody reads it).
    """
    if sys.stdin.isatty():
        try:
            line = input("\nyou> ").strip()
        except EOFError:
            return None
        return line or None
    for raw in sys.stdin:
        if line := raw.strip():
            return line
    return None


def _show_conversation_event(event: v1.ConversationEvent, out: Output) -> None:
    kind = v1.ConversationEventType
    if event.type == kind.TURN_STARTED:
        out.text(f"\n[{event.model} ({event.role})] ")
    elif event.type in (kind.TOKEN, kind.THINKING):
        out.text(event.delta)
    elif event.type == kind.MESSAGE and event.message is not None and event.message.role in ("human", "user"):
        out.text(f"\n[{event.message.model or 'you'} ({event.message.role})] {event.message.content}")
    elif event.type == kind.TOOL_USE and event.tool_call is not None:
        out.text(f"\n[{event.model} calls {event.tool}({event.tool_call.arguments})]")
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


class _Parser(argparse.ArgumentParser):
    """argparse that never echoes what was typed: a value may be a secret (`--api-key`), and argparse's own
    messages quote values (`invalid float value: 'x'`, `unrecognized arguments: --api-key SECRET`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._typed: list[str] = []

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._typed = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._typed, namespace)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self._fail(_unrecognized(self._typed, extras))
        return parsed

    def error(self, message: str) -> NoReturn:
        self._fail(_without_values(message))

    def _fail(self, clean_message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {clean_message} (see {self.prog} --help)\n")


def _unrecognized(typed: list[str], extras: list[str]) -> str:
    """Where the unrecognized arguments are (1 = the first after `aibattle`), not what they are."""
    used: set[int] = set()
    for extra in extras:
        index = next((i for i, arg in enumerate(typed) if arg == extra and i not in used), None)
        if index is not None:
            used.add(index)
    positions = ", ".join(str(i + 1) for i in sorted(used))
    where = f" at position {positions}" if len(used) == len(extras) else ""
    return f"unrecognized argument{'s' if len(extras) > 1 else ''}{where}"


_ARGUMENT = re.compile(r"argument ([^:]+): (.*)", re.DOTALL)


def _without_values(message: str) -> str:
    """argparse's message, cut before anything the user typed.

    Kept: the option's name (ours), and the kind of problem up to the first quote or colon, which is where
    argparse starts quoting a value ("invalid float value: 'x'", "invalid choice: 'x' (…)", "ignored
    explicit argument 'x'"). Messages that name only our own options pass whole; any other is generic.
    """
    if message.startswith(("the following arguments are required: ", "one of the arguments ")):
        return message  # names and metavars only
    if message.startswith("unrecognized arguments"):
        return "unrecognized arguments"
    if message.startswith("ambiguous option: "):
        # the typed prefix (possibly with "=value") is left out; the candidates after the last
        # " could match " are our option strings
        return "ambiguous option: it could match " + message.rsplit(" could match ", 1)[-1]
    if match := _ARGUMENT.fullmatch(message):
        name, detail = match.groups()
        kind = re.split(r"[:'\"]", detail, maxsplit=1)[0].strip()
        return f"argument {name}: {kind}" if kind else f"argument {name}: invalid value"
    return "invalid arguments"


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The options of every command, accepted before or after its name.

    Under a command they default to SUPPRESS: a subparser copies its namespace onto the top one, so a
    default there would undo the same option given before the command.
    """

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("global options") if not top else parser
    group.add_argument(
        "--target",
        default=default(None),
        help=f"host:port of the server, or the http(s):// URL of its gateway "
        f"(default ${TARGET_ENV}, else {DEFAULT_TARGET})",
    )
    group.add_argument("--api-key", default=default(None), help=f"API key (default ${API_KEY_ENV})")
    group.add_argument("--tls", action="store_true", default=default(False), help="connect with TLS")
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print JSON (one object per line) instead of text",
    )
    group.add_argument(
        "--timeout", type=float, default=default(None), help="seconds the whole command may take"
    )
    group.add_argument("--version", action="version", version=f"aibattle {__version__}")


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="aibattle",
        description="Talk to an AI Battle server over gRPC (or its HTTP gateway, given a URL).",
    )
    _add_global_options(top, top=True)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
        _add_global_options(p, top=False)
        return p

    p = command("models", "list the models")
    p.add_argument("--provider", default="")
    p.add_argument("--capability", default="")
    p.set_defaults(run=cmd_models)

    p = command("complete", "stream a completion")
    p.add_argument("--model", required=True)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--system", help="system instruction")
    p.add_argument("prompt")
    p.set_defaults(run=cmd_complete)

    p = command("count-tokens", "count the tokens a prompt takes")
    p.add_argument("--model", required=True)
    p.add_argument("--system", help="system instruction")
    p.add_argument("prompt")
    p.set_defaults(run=cmd_count_tokens)

    p = command("embed", "embed texts with an embedding model")
    p.add_argument("--model", required=True)
    p.add_argument("--dimensions", type=int, help="shorten the vectors (models that can)")
    p.add_argument("text", nargs="+")
    p.set_defaults(run=cmd_embed)

    p = command("converse", "start (or join) a conversation and follow it live")
    p.add_argument("-m", "--model", type=_seat, action="append", default=[], metavar="MODEL:ROLE")
    p.add_argument("--id", help="join this conversation instead of creating one")
    p.add_argument("--mode", default="", help='"human-ai" (default), "ai-ai" or "round-robin"')
    p.add_argument("--rounds", type=int, default=0)
    p.add_argument("--system", help="system instruction")
    p.add_argument("--role", default="human", help="the role you speak as (default human)")
    p.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="type your turns when asked (piped: one message per line)",
    )
    p.add_argument("prompt", nargs="?", help="the first message (or, with --id, your next one)")
    p.set_defaults(run=cmd_converse)

    p = command("reason", "run collaborative reasoning and watch it live")
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
