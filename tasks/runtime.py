"""What a stage needs besides the session and the clock: config, settings, archive, transport."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from tasks.config import Config, load_config
from tasks.settings import Settings, get_settings

if TYPE_CHECKING:
    from tasks.archive import ArtifactStore
    from tasks.messaging.transports import Transport


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

        return open_transport(self.settings.mail_transport, self.settings, lambda: self.archive)
