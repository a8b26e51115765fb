"""Compatibility endpoints for clients that already speak another API: OpenAI and Ollama.

They run on the same core as the native routes (upstream channel, metadata, deadlines, the one
stream relay, the status table); each dialect module only translates JSON and writes its own
error shape (its `DIALECT`). `ENDPOINTS` is what the app registers; `PATH_DIALECTS` gives the rest
of each dialect's path space its error shape, so that a client of it gets a 404 it can parse.
"""

from __future__ import annotations

from gateway.compat import ollama, openai


def _ollama_path(raw_path: str) -> bool:
    # Ollama's API is /api/<name>; /api/v1/… is the native REST API, whose errors stay google.rpc.Status.
    return raw_path.startswith("/api/") and not (raw_path == "/api/v1" or raw_path.startswith("/api/v1/"))


ENDPOINTS = ((openai.DIALECT, openai.ROUTES), (ollama.DIALECT, ollama.ROUTES))
PATH_DIALECTS = (
    (lambda raw_path: raw_path.startswith("/v1/"), openai.DIALECT),
    (_ollama_path, ollama.DIALECT),
)
