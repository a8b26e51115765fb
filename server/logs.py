"""The server's logging: JSON lines on stderr (common.logs, shared with the gateway).

The request id lives in a context variable set by the request interceptor, so every
log line written while serving a call carries it without being passed around.
"""

from __future__ import annotations

import logging

from common.logs import JsonFormatter, configure_json, key_id, request_id

__all__ = ["JsonFormatter", "configure", "key_id", "request_id"]


def configure(level: str) -> None:
    root = configure_json(level)
    # aiosqlite logs every statement with its parameters at DEBUG: key hashes, prompts, replies. No
    # log level of ours turns that on.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
