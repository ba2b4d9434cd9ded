"""The signed tokens in a mail's links: what the renderer writes and the tracker reads.

Short keys keep the URLs short; the tokens are signed, not encrypted, and carry ids
and the target URL only, never an address or a name.
"""

from dataclasses import dataclass
from typing import Any

from stepmail_common.errors import InvalidTokenError
from stepmail_common.signing import Signer


@dataclass(frozen=True, slots=True)
class MailRef:
    """Which mail a token belongs to."""

    message_id: str
    contact_id: str
    scenario_id: str
    scenario_version: int
    step_id: str
    step_index: int

    def _pack(self) -> dict[str, Any]:
        return {
            "m": self.message_id,
            "c": self.contact_id,
            "s": self.scenario_id,
            "v": self.scenario_version,
            "t": self.step_id,
            "x": self.step_index,
        }

    @classmethod
    def _unpack(cls, p: dict[str, Any]) -> "MailRef":
        try:
            ref = cls(p["m"], p["c"], p["s"], int(p["v"]), p["t"], int(p["x"]))
        except (KeyError, TypeError, ValueError):
            raise InvalidTokenError("token payload is incomplete") from None
        if not all(
            isinstance(v, str) and v
            for v in (ref.message_id, ref.contact_id, ref.scenario_id, ref.step_id)
        ):
            raise InvalidTokenError("token payload is incomplete")
        return ref


@dataclass(frozen=True, slots=True)
class ClickToken:
    """A tracked link: the mail, the link's position in it, and where it goes."""

    mail: MailRef
    link_index: int
    url: str

    def encode(self, signer: Signer) -> str:
        return signer.sign({"k": "c", **self.mail._pack(), "i": self.link_index, "u": self.url})

    @classmethod
    def decode(cls, signer: Signer, token: str) -> "ClickToken":
        p = signer.verify(token)
        if p.get("k") != "c" or not isinstance(p.get("u"), str) or not isinstance(p.get("i"), int):
            raise InvalidTokenError("not a click token")
        url: str = p["u"]
        if not url.startswith(("https://", "http://")):
            raise InvalidTokenError("click target is not http(s)")
        return cls(MailRef._unpack(p), p["i"], url)


@dataclass(frozen=True, slots=True)
class UnsubscribeToken:
    """An unsubscribe link or RFC 8058 one-click target: the mail and its kind."""

    mail: MailRef
    mail_kind: str

    def encode(self, signer: Signer) -> str:
        return signer.sign({"k": "u", **self.mail._pack(), "mk": self.mail_kind})

    @classmethod
    def decode(cls, signer: Signer, token: str) -> "UnsubscribeToken":
        p = signer.verify(token)
        if p.get("k") != "u" or p.get("mk") not in ("marketing", "transactional"):
            raise InvalidTokenError("not an unsubscribe token")
        return cls(MailRef._unpack(p), p["mk"])


@dataclass(frozen=True, slots=True)
class OpenToken:
    """The open pixel's token: only the mail it belongs to."""

    mail: MailRef

    def encode(self, signer: Signer) -> str:
        return signer.sign({"k": "o", **self.mail._pack()})

    @classmethod
    def decode(cls, signer: Signer, token: str) -> "OpenToken":
        p = signer.verify(token)
        if p.get("k") != "o":
            raise InvalidTokenError("not an open token")
        return cls(MailRef._unpack(p))
