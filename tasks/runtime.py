"""What a stage needs besides the session and the clock: config, settings, archive, transport."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from tasks.config import Config, load_config
from tasks.settings import Settings, get_settings

if TYPE_CHECKING:
    from tasks.archive import ArtifactStore
    from tasks.messaging.transports import Transport


@dataclass
class StageResult:
    """Counts a stage reports for one batch; the flow adds them up per run."""

    stage: str
    received: int = 0  # set by the caller from the ids it passed, not by the stage itself
    advanced: int = 0
    held: int = 0
    closed: int = 0
    skipped: int = 0
    quarantined: int = 0
    details: dict[str, int] = field(default_factory=dict)

    def add(self, other: StageResult) -> None:
        for name in ("received", "advanced", "held", "closed", "skipped", "quarantined"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, value in other.details.items():
            self.details[key] = self.details.get(key, 0) + value


@dataclass
class Runtime:
    """One object carrying everything configurable; built once per process or per test."""

    settings: Settings
    config: Config

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Runtime:
        settings = settings or get_settings()
        return cls(settings=settings, config=load_config(settings.config_dir))

    @cached_property
    def archive(self) -> ArtifactStore:
        from tasks.archive import open_store

        return open_store(self.settings.artifacts_url, self.settings)

    @cached_property
    def transport(self) -> Transport:
        from tasks.messaging.transports import open_transport

        return open_transport(self.settings.mail_transport, self)
