"""Standalone proxy: `python -m gateway --grpc-target HOST:PORT [--config FILE] [--http-addr ADDR] [knobs]`.

The knobs are GatewaySettings' fields: `--config FILE` reads them from the file's `[gateway]` table (and
the listen address from `[server].http_addr`), and each field is also a flag, derived here from the model,
so a new knob needs no edit in this file. The metrics keys are the server's, MetricsSettings: the file's
`[server].metrics` and `metrics_addr`, and their flags. Flags override the file. Bad
input: a message and exit 2. OpenTelemetry is configured from the `OTEL_*` environment alone.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from common import event_loop
from common.addresses import AddressError, parse_host_port
from common.config import ConfigError, read_toml, validate
from common.logs import configure_json
from common.observability import metrics, tracing
from gateway.options import GatewayOptions, GatewaySettings, MetricsSettings
from gateway.web_app import start_gateway
from gateway.web_metrics import start_metrics

DEFAULT_HTTP_ADDR = "127.0.0.1:8080"


@dataclass(frozen=True)
class Launch:
    """What to run: the upstream, where to listen, and the options."""

    grpc_target: str
    host: str
    port: int
    options: GatewayOptions
    metrics: MetricsSettings = dataclasses.field(default_factory=MetricsSettings)


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
    _add_knobs(
        parser.add_argument_group("gateway settings (override the file's [gateway] table)"), GatewaySettings
    )
    _add_knobs(parser.add_argument_group("metrics (override the file's [server] keys)"), MetricsSettings)
    return parser


def _add_knobs(knobs: argparse._ArgumentGroup, model: type[BaseModel]) -> None:
    """A flag per field of `model`."""
    for name, field in model.model_fields.items():
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


def parse_args(argv: list[str] | None = None) -> Launch:
    """The launch the command line asks for; bad input prints every problem, one line each, and exits 2."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    flags = {name: args[name] for name in GatewaySettings.model_fields if name in args}
    metrics_flags = {name: args[name] for name in MetricsSettings.model_fields if name in args}
    errors: list[str] = []
    settings, file_addr = GatewaySettings(), None
    metrics_table: dict[str, Any] = {}
    if args["config"]:
        source = f"config file {args['config']}"
        try:
            table, file_addr, metrics_table = _read_file(args["config"])
            settings = validate(GatewaySettings, table, source=source, prefix=("gateway",))
        except ConfigError as exc:
            errors += exc.lines
        try:
            metrics_table = dict(validate(MetricsSettings, metrics_table, source=source, prefix=("server",)))
        except ConfigError as exc:
            errors += exc.lines
    # A command line has only strings: validate flags laxly ("1024" is 1024); the file's values are
    # already checked (strictly) and typed.
    options = _from_flags(GatewayOptions, {**dict(settings), **flags}, flags, errors)
    metrics = _from_flags(MetricsSettings, {**metrics_table, **metrics_flags}, metrics_flags, errors)
    address = None
    try:
        address = parse_host_port(args["http_addr"] or file_addr or DEFAULT_HTTP_ADDR)
    except AddressError as exc:
        where = "--http-addr" if args["http_addr"] else f"config file {args['config']}: server.http_addr"
        errors.append(f"{where}: {exc}")
    if errors or options is None or metrics is None or address is None:
        parser.print_usage(sys.stderr)
        parser.exit(2, "".join(f"{parser.prog}: error: {line}\n" for line in errors))
    # /metrics on the gateway's port, unless --metrics-addr gives it a listener of its own.
    options = options.model_copy(update={"metrics_route": not metrics.metrics_addr})
    return Launch(
        grpc_target=args["grpc_target"], host=address[0], port=address[1], options=options, metrics=metrics
    )


M = TypeVar("M", bound=BaseModel)


def _from_flags(model: type[M], data: dict[str, Any], flags: dict[str, Any], errors: list[str]) -> M | None:
    """`model` from the file's values and the flags over them; problems are added to `errors`."""
    names: dict[tuple[str | int, ...], str] = {
        (name,): _flag(name, model.model_fields[name]) for name in flags
    }
    try:
        return validate(model, data, source="command line", names=names, strict=False)
    except ConfigError as exc:
        errors += exc.lines
        return None


def _read_file(path: str) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """The file's [gateway] table, [server].http_addr and the [server] metrics keys (MetricsSettings);
    its other tables and keys are the server's business."""
    data = read_toml(path)
    table, server = data.get("gateway", {}), data.get("server", {})
    if not isinstance(server, dict):
        server = {}
    http_addr = server.get("http_addr")
    if http_addr is not None and not isinstance(http_addr, str):
        raise ConfigError([f"config file {path}: server.http_addr: should be a string, got {http_addr!r}"])
    metrics = {key: server[key] for key in MetricsSettings.model_fields if key in server}
    return table, http_addr or None, metrics


async def serve(launch: Launch) -> None:
    handle = await start_gateway(
        grpc_target=launch.grpc_target, host=launch.host, port=launch.port, options=launch.options
    )
    log = logging.getLogger("gateway")
    log.info("gateway on %s → gRPC %s", handle.url, launch.grpc_target)
    listener = None
    if launch.metrics.metrics and launch.metrics.metrics_addr:
        host, port = parse_host_port(launch.metrics.metrics_addr)
        try:
            listener = await start_metrics(host=host, port=port)
        except BaseException:
            await handle.close()
            raise
        log.info("metrics on %s", listener.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await handle.close()
        if listener is not None:
            await listener.close()


def main(argv: list[str] | None = None) -> None:
    launch = parse_args(argv)
    # JSON lines, as the server writes them: one format for whatever collects the logs of either.
    configure_json("INFO")
    metrics.configure(on=launch.metrics.metrics)
    tracing.configure(service_name="aibattle-gateway")  # OTEL_* only; nothing installed without them
    try:
        event_loop.run(serve(launch))  # uvloop's, by default
    finally:
        tracing.shutdown()  # flush pending spans, the event loop gone


if __name__ == "__main__":
    main()
