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


def method_of(content_type: str | None, body: bytes) -> str:
    """``one-click`` when the body says ``List-Unsubscribe=One-Click``, else ``page``.

    Any POST with a valid token unsubscribes: scanners do not POST, and refusing a
    malformed one-click body would keep sending mail to someone who asked to stop.
    """
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    fields: dict[str, str] = {}
    try:
        if kind == "multipart/form-data":
            fields = _multipart_fields(content_type or "", body)
        else:
            parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            fields = {k: v[0].strip() for k, v in parsed.items() if v}
    except (ValueError, LookupError):
        fields = {}
    return "one-click" if fields.get(ONE_CLICK_FIELD) == ONE_CLICK_VALUE else "page"
