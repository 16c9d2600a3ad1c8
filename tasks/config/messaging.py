"""configs/messaging.yaml: the sender and every template's class, version and subject."""

from __future__ import annotations

from pydantic import Field

from tasks.config.base import Strict


class TemplateSpec(Strict):
    msg_class: str = Field(alias="class", pattern="^(transactional|marketing)$")
    version: int
    priority: int = 50
    subject: str


class MessagingConfig(Strict):
    from_name: str
    from_address: str
    templates: dict[str, TemplateSpec]
