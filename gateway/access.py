"""What the access log line of an HTTP request says beyond its status and route: its key and model.

web_middlewares.access_log_middleware opens an `AccessRecord` per request and writes the line when the
request ends; the code that learns each fact notes it here, in the request's context (the record is
shared with the tasks the request starts, such as a WebSocket's request pump). The route template is the
request's observation's (gateway.observe), which its metrics and span name share.

* the credential, from the headers, a WebSocket's `bearer.` subprotocol or flat auth frame. Only the
  key id it names is logged (`aib_<key_id>_…`), never the secret; the server's own access line says
  whether the key was accepted;
* the model, from the first request message sent upstream (its `model`, or `primary_model`).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from common.api_keys import key_id_of

#: Request fields that name the model a request is for, in order of preference.
_MODEL_FIELDS = ("model", "primary_model")


@dataclass
class AccessRecord:
    _credential: str | None = None
    model: str = ""

    @property
    def key_id(self) -> str | None:
        return key_id_of(self._credential) if self._credential else None

    @property
    def credential(self) -> str:
        """What kind of credential came: "key" (one of ours), "other" (e.g. the admin key) or "none"."""
        if not self._credential:
            return "none"
        return "key" if self.key_id else "other"

    def __repr__(self) -> str:  # never the secret
        return f"AccessRecord(credential={self.credential!r}, model={self.model!r})"


_current: contextvars.ContextVar[AccessRecord | None] = contextvars.ContextVar("access_record", default=None)


def open_record() -> tuple[AccessRecord, contextvars.Token[AccessRecord | None]]:
    record = AccessRecord()
    return record, _current.set(record)


def close_record(token: contextvars.Token[AccessRecord | None]) -> None:
    _current.reset(token)


def note_credential(secret: str) -> None:
    """A bearer token or API key the request carries (kept only to read the key id it names)."""
    if (record := _current.get()) is not None and secret and record._credential is None:
        record._credential = secret


def note_request(message: Any) -> None:
    """A request message going upstream: the first one that names a model names the request's."""
    record = _current.get()
    if record is None or record.model or message is None:
        return
    fields = message.DESCRIPTOR.fields_by_name
    for name in _MODEL_FIELDS:
        field = fields.get(name)
        if field is not None and field.type == field.TYPE_STRING and not field.is_repeated:
            if value := getattr(message, name):
                record.model = value
                return
