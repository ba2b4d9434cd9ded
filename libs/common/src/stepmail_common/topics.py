"""Topic names, built from one prefix."""

from dataclasses import dataclass

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True, slots=True)
class Topics:
    """The platform's topics; each has a ``.dlq`` twin for what cannot be processed."""

    prefix: str = "stepmail."

    @property
    def contact_events(self) -> str:
        return f"{self.prefix}contact-events"

    @property
    def steps_due(self) -> str:
        return f"{self.prefix}steps-due"

    @property
    def mail_rendered(self) -> str:
        return f"{self.prefix}mail-rendered"

    @property
    def delivery_events(self) -> str:
        return f"{self.prefix}delivery-events"

    @property
    def engagement_events(self) -> str:
        return f"{self.prefix}engagement-events"

    def all(self) -> tuple[str, ...]:
        return (
            self.contact_events,
            self.steps_due,
            self.mail_rendered,
            self.delivery_events,
            self.engagement_events,
        )

    @staticmethod
    def dlq(topic: str) -> str:
        return topic + DLQ_SUFFIX
