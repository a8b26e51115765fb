"""Structured logs: one JSON object per line, tagged with the request id and the caller's key id, and
with the trace and span ids when a span is active (so a line leads to its trace, and back).

The server and the gateway (in-process or standalone) write the same lines. The request id and key id
live in context variables, set where a request starts (the server's request interceptor, the gateway's
request-id middleware), so every line written while serving it carries them without being passed around.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

from common.observability import tracing

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
#: The API key id of the call (never its secret), set once it is authenticated: who did what.
key_id: contextvars.ContextVar[str] = contextvars.ContextVar("key_id", default="")

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged as a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if rid := request_id.get():
            entry["request_id"] = rid
        if kid := key_id.get():
            entry["key_id"] = kid
        if ids := tracing.current_ids():
            entry["trace_id"], entry["span_id"] = ids
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_json(level: str) -> logging.Logger:
    """Send every log record to stderr as one JSON line, from `level` up; returns the root logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return root
