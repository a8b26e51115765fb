"""Standalone proxy: `python -m gateway --grpc-target HOST:PORT [--config FILE] [--http-addr ADDR] [knobs]`.

The knobs are GatewaySettings' fields: `--config FILE` reads them from the file's `[gateway]` table (and
the listen address from `[server].http_addr`), and each field is also a flag, derived here from the model,
so a new knob needs no edit in this file. Flags override the file. Bad input: a message and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import typing
from dataclasses import dataclass
from typing import Any

from pydantic.fields import FieldInfo

from common.addresses import AddressError, parse_host_port
from common.config import ConfigError, read_toml, validate
from common.logs import configure_json
from gateway.options import GatewayOptions, GatewaySettings
from gateway.web_app import start_gateway

DEFAULT_HTTP_ADDR = "127.0.0.1:8080"


@dataclass(frozen=True)
class Launch:
    """What to run: the upstream, where to listen, and the options."""

    grpc_target: str
    host: str
    port: int
    options: GatewayOptions


def _flag(name: str, field: FieldInfo) -> str:
    # An array knob is a repeatable flag named for one item: cors_origins -> --cors-origin.
    item = name.removesuffix("s") if _is_array(field) else name
    return "--" + item.replace("_", "-")


def _is_array(field: FieldInfo) -> bool:
    return typing.get_origin(field.annotation) is tuple


def _is_bool(field: FieldInfo) -> bool:
    return field.annotation is bool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grpc-target", required=True, help="gRPC server to proxy, HOST:PORT")
    parser.add_argument(
        "--config", help="TOML file: its [gateway] table, and [server].http_addr to listen on"
    )
    parser.add_argument(
        "--http-addr", help=f"listen on HOST:PORT (default: the file's, else {DEFAULT_HTTP_ADDR})"
    )
    knobs = parser.add_argument_group("gateway settings (override the file's [gateway] table)")
    for name, field in GatewaySettings.model_fields.items():
        doc = (field.description or "").replace("%", "%%")
        if field.default_factory is None:  # a factory's default is described by the docstring
            doc += f" (default: {field.default!r})"
        # SUPPRESS: an absent flag leaves the file's value (or the model's default) alone.
        if _is_bool(field):
            knobs.add_argument(
                _flag(name, field),
                dest=name,
                default=argparse.SUPPRESS,
                help=doc,
                action=argparse.BooleanOptionalAction,
            )
        elif _is_array(field):
            knobs.add_argument(
                _flag(name, field),
                dest=name,
                default=argparse.SUPPRESS,
                help=doc + "; repeat",
                action="append",
                metavar="VALUE",
            )
        else:
            knobs.add_argument(
                _flag(name, field), dest=name, default=argparse.SUPPRESS, help=doc, metavar="VALUE"
            )
    return parser


def parse_args(argv: list[str] | None = None) -> Launch:
    """The launch the command line asks for; bad input prints every problem, one line each, and exits 2."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    flags = {name: args[name] for name in GatewaySettings.model_fields if name in args}
    errors: list[str] = []
    settings, file_addr = GatewaySettings(), None
    if args["config"]:
        try:
            table, file_addr = _read_file(args["config"])
            settings = validate(
                GatewaySettings, table, source=f"config file {args['config']}", prefix=("gateway",)
            )
        except ConfigError as exc:
            errors += exc.lines
    options = None
    try:
        # A command line has only strings: validate flags laxly ("1024" is 1024); the file's values are
        # already checked (strictly) and typed.
        names: dict[tuple[str | int, ...], str] = {
            (name,): _flag(name, GatewaySettings.model_fields[name]) for name in flags
        }
        options = validate(
            GatewayOptions, {**dict(settings), **flags}, source="command line", names=names, strict=False
        )
    except ConfigError as exc:
        errors += exc.lines
    address = None
    try:
        address = parse_host_port(args["http_addr"] or file_addr or DEFAULT_HTTP_ADDR)
    except AddressError as exc:
        where = "--http-addr" if args["http_addr"] else f"config file {args['config']}: server.http_addr"
        errors.append(f"{where}: {exc}")
    if errors or options is None or address is None:
        parser.print_usage(sys.stderr)
        parser.exit(2, "".join(f"{parser.prog}: error: {line}\n" for line in errors))
    return Launch(grpc_target=args["grpc_target"], host=address[0], port=address[1], options=options)


def _read_file(path: str) -> tuple[dict[str, Any], str | None]:
    """The file's [gateway] table and [server].http_addr; its other tables are the server's business."""
    data = read_toml(path)
    table, server = data.get("gateway", {}), data.get("server", {})
    http_addr = server.get("http_addr") if isinstance(server, dict) else None
    if http_addr is not None and not isinstance(http_addr, str):
        raise ConfigError([f"config file {path}: server.http_addr: should be a string, got {http_addr!r}"])
    return table, http_addr or None


async def serve(launch: Launch) -> None:
    handle = await start_gateway(
        grpc_target=launch.grpc_target, host=launch.host, port=launch.port, options=launch.options
    )
    logging.getLogger("gateway").info("gateway on %s → gRPC %s", handle.url, launch.grpc_target)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await handle.close()


def main(argv: list[str] | None = None) -> None:
    launch = parse_args(argv)
    # JSON lines, as the server writes them: one format for whatever collects the logs of either.
    configure_json("INFO")
    asyncio.run(serve(launch))


if __name__ == "__main__":
    main()
