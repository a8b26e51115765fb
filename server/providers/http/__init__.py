"""Providers reached over HTTP: one pooled client session, incremental stream parsers, one error table.

`base.HttpProvider` holds what every adapter shares (the request, status checks, timeouts, key
handling); each adapter (`openai.py`, `ollama.py`, `anthropic.py`, `gemini.py`) only builds its
request body and turns its wire format into `Delta`s and one `Finish`. Retries, fallback and
cooldown are not here: `server.providers.resilience` wraps every provider alike.
"""
