"""What the renderer reads from ``stepmail.step.due.v1``, already schema-checked."""

from dataclasses import dataclass
from typing import Any

from stepmail_common.tracking import MailRef

DEFAULT_LOCALE = "ja-JP"
DEFAULT_TIME_ZONE = "Asia/Tokyo"


@dataclass(frozen=True, slots=True)
class StepDue:
    """A send step that is due: the mail to render and everything needed for it."""

    message_id: str
    enrollment_id: str
    scenario_id: str
    scenario_version: int
    step_id: str
    step_index: int
    template_id: str
    template_version: int | None
    mail_kind: str
    contact: dict[str, Any]
    event_name: str
    event_properties: dict[str, Any]
    # The preference-centre topic, passed on to the sender (which honours opt-outs of it).
    topic: str | None = None

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> "StepDue":
        return cls(
            message_id=data["message_id"],
            enrollment_id=data["enrollment_id"],
            scenario_id=data["scenario"]["id"],
            scenario_version=data["scenario"]["version"],
            step_id=data["step"]["id"],
            step_index=data["step"]["index"],
            template_id=data["template"],
            template_version=data.get("template_version"),
            mail_kind=data["mail_kind"],
            contact=data["contact"],
            event_name=data["event"]["name"],
            event_properties=data["event"]["properties"],
            topic=data.get("topic"),
        )

    @property
    def contact_id(self) -> str:
        return str(self.contact["id"])

    @property
    def email(self) -> str:
        return str(self.contact["email"])

    @property
    def contact_name(self) -> str | None:
        """The name, or ``None`` when absent or blank (so ``default(...)`` applies)."""
        name = self.contact.get("name")
        return name.strip() if isinstance(name, str) and name.strip() else None

    @property
    def mail_ref(self) -> MailRef:
        return MailRef(
            message_id=self.message_id,
            contact_id=self.contact_id,
            scenario_id=self.scenario_id,
            scenario_version=self.scenario_version,
            step_id=self.step_id,
            step_index=self.step_index,
        )

    def template_context(
        self, unsubscribe_url: str, sender: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """What a template sees: ``contact``, ``event``, ``scenario``, ``step``, ``sender``
        and ``unsubscribe_url``."""
        contact: dict[str, Any] = {
            "id": self.contact_id,
            "email": self.email,
            "locale": self.contact.get("locale") or DEFAULT_LOCALE,
            "time_zone": self.contact.get("time_zone") or DEFAULT_TIME_ZONE,
            "attributes": self.contact.get("attributes") or {},
        }
        if self.contact_name is not None:
            contact["name"] = self.contact_name
        return {
            "contact": contact,
            "event": {"name": self.event_name, "properties": self.event_properties},
            "scenario": {"id": self.scenario_id, "version": self.scenario_version},
            "step": {"id": self.step_id, "index": self.step_index},
            "sender": sender or {},
            "unsubscribe_url": unsubscribe_url,
        }
