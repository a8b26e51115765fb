"""Attachments as providers see them: text files inlined into the message, the rest passed along.

Nothing a client sends is dropped. A text attachment (FileData.type "text", or a "document"
whose mime type is text/*) becomes part of the message text, decoded as strict UTF-8, in a
block that names it:

    <attachment path="notes.txt" mime_type="text/plain">
    ...the file, verbatim...
    </attachment>

Blocks come first, in the order attached, then a blank line and the message's own text: the
"here is a file, now my question" layout instruction-tuned models follow. Attribute values are
HTML-escaped; the file itself is not, so the model reads exactly what was sent. Every other
attachment stays an `Attachment` and reaches only providers that consume it (the capability
check in providers/convert.py, and each provider's own refusal as defence in depth).
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from common.errors import CAPABILITY_MISSING, InvalidArgument
from server.providers.base import Attachment, ChatMessage, Role
from server.settings import ModelConfig


def is_text(type_: str, mime_type: str) -> bool:
    """Whether an attachment is read as text (and so needs only the "text" capability)."""
    return type_ == "text" or (type_ == "document" and mime_type.lower().startswith("text/"))


def text_block(attachment: Attachment, field: str) -> str:
    """The delimited block for one text attachment; invalid UTF-8 is an error naming `field`."""
    try:
        text = attachment.content.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"{field}.content", f"a text attachment must be UTF-8; invalid byte at offset {exc.start}"
        ) from None
    attributes = "".join(
        f' {name}="{html.escape(value, quote=True)}"'
        for name, value in (("path", attachment.path), ("mime_type", attachment.mime_type))
        if value
    )
    newline = "" if text.endswith("\n") or not text else "\n"
    return f"<attachment{attributes}>\n{text}{newline}</attachment>"


def chat_message(role: Role, content: str, files: Sequence[tuple[str, Attachment]]) -> ChatMessage:
    """A message whose text attachments are inlined before `content`; `files` pairs each
    attachment with the request field it came from, for error messages."""
    blocks = [text_block(a, field) for field, a in files if is_text(a.type, a.mime_type)]
    others = tuple(a for _, a in files if not is_text(a.type, a.mime_type))
    text = "\n\n".join([*blocks, content] if content else blocks)
    return ChatMessage(role, text, others)


def cannot_take(
    model: ModelConfig, attachment: Attachment, takes: str, *, where: str = ""
) -> InvalidArgument:
    """The one refusal of an attachment a provider cannot pass on (input is never dropped): it names
    the model, the attachment's kind and what the provider does take."""
    kind = f"{attachment.type!r} attachment ({attachment.mime_type or 'no mime type'})"
    return InvalidArgument(
        "file_data",
        f"model {model.id!r} ({model.provider}) cannot take a {kind}{' ' + where if where else ''};"
        f" it takes {takes}",
        reason=CAPABILITY_MISSING,
    )
