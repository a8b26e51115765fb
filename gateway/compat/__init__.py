"""Compatibility endpoints for clients that already speak another API: OpenAI, Ollama and Anthropic.

They run on the same core as the native routes (upstream channel, metadata, deadlines, the one
stream relay, the status table); each dialect module only translates JSON and writes its own
error shape (its `DIALECT`). `ENDPOINTS` is what the app registers; `PATH_DIALECTS` gives the rest
of each dialect's path space its error shape, so that a client of it gets a 404 it can parse.
"""

from __future__ import annotations

from gateway.compat import anthropic, ollama, openai


def _ollama_path(raw_path: str) -> bool:
    # Ollama's API is /api/<name>; /api/v1/… is the native REST API, whose errors stay google.rpc.Status.
    return raw_path.startswith("/api/") and not (raw_path == "/api/v1" or raw_path.startswith("/api/v1/"))


ENDPOINTS = (
    (openai.DIALECT, openai.ROUTES),
    (ollama.DIALECT, ollama.ROUTES),
    (anthropic.DIALECT, anthropic.ROUTES),
)
# First match wins: Anthropic's /v1/messages… before the rest of /v1/, which is OpenAI's.
PATH_DIALECTS = (
    (anthropic.owns_path, anthropic.DIALECT),
    (lambda raw_path: raw_path.startswith("/v1/"), openai.DIALECT),
    (_ollama_path, ollama.DIALECT),
)
