"""Reading an unsubscribe POST: RFC 8058 one-click or the confirm page's form."""

from email import message_from_bytes, policy
from email.message import EmailMessage
from urllib.parse import parse_qs

ONE_CLICK_FIELD = "List-Unsubscribe"
ONE_CLICK_VALUE = "One-Click"
MAX_BODY_BYTES = 64 * 1024


def _multipart_fields(content_type: str, body: bytes) -> dict[str, str]:
    raw = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1") + body
    msg = message_from_bytes(raw, policy=policy.HTTP)
    fields: dict[str, str] = {}
    if not isinstance(msg, EmailMessage) or not msg.is_multipart():
        return fields
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and isinstance(part, EmailMessage):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                fields[name] = payload.decode("utf-8", "replace").strip()
    return fields


def form_fields(content_type: str | None, body: bytes) -> dict[str, list[str]]:
    """The fields of a urlencoded or multipart POST body (unreadable bodies give none)."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        if kind == "multipart/form-data":
            return {k: [v] for k, v in _multipart_fields(content_type or "", body).items()}
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    except (ValueError, LookupError):
        return {}
    return {k: [v.strip() for v in values] for k, values in parsed.items()}


def method_of(content_type: str | None, body: bytes) -> str:
    """``one-click`` when the body says ``List-Unsubscribe=One-Click``, else ``page``.

    Any POST with a valid token unsubscribes (unless the page asked for something else):
    scanners do not POST, and refusing a malformed one-click body would keep sending
    mail to someone who asked to stop.
    """
    fields = form_fields(content_type, body)
    return "one-click" if fields.get(ONE_CLICK_FIELD, [""])[0] == ONE_CLICK_VALUE else "page"
