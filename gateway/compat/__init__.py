"""Compatibility endpoints for clients that already speak another API: OpenAI and Ollama.

They run on the same core as the native routes (upstream channel, metadata, deadlines, the one
stream relay, the status table); each dialect module only translates JSON and writes its own
error shape (its `DIALECT`). `ENDPOINTS` is what the app registers.
"""

from __future__ import annotations

from gateway.compat import ollama, openai

ENDPOINTS = ((openai.DIALECT, openai.ROUTES), (ollama.DIALECT, ollama.ROUTES))
