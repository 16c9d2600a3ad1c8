"""The one `Config`: every configs/*.yaml file is a section of it, validated together."""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from tasks.config.aftercare import AftercareConfig
from tasks.config.base import ConfigError, Strict
from tasks.config.governor import GovernorConfig
from tasks.config.loyalty import LoyaltyConfig
from tasks.config.messaging import MessagingConfig
from tasks.config.packing import PackingConfig
from tasks.config.pages import PagesConfig
from tasks.config.quality import QualityConfig
from tasks.config.returns import ReturnsConfig
from tasks.config.shipping import ShippingConfig
from tasks.config.store import StoreConfig, logo_data_uri
from tasks.config.tracking import TrackingConfig
from tasks.config.verification import VerificationConfig


class Config(Strict):
    """All business config; `dir` is where it was read from (templates live under it).

    Each field but `dir` is one file, configs/<field>.yaml. A new file is a new field here
    (its model in a module of this package); cross-file rules are validators on this class.
    """

    dir: Path
    store: StoreConfig
    verification: VerificationConfig
    packing: PackingConfig
    shipping: ShippingConfig
    messaging: MessagingConfig
    quality: QualityConfig
    pages: PagesConfig
    loyalty: LoyaltyConfig
    aftercare: AftercareConfig
    tracking: TrackingConfig
    governor: GovernorConfig
    returns: ReturnsConfig

    @model_validator(mode="after")
    def _money_rules_agree(self) -> Config:
        """Verification and packing know the same currencies (verification holds the others)."""
        risk, packing = set(self.verification.risk.max_order_value), set(self.packing.currencies)
        if risk != packing:
            raise ValueError(
                f"verification.yaml risk.max_order_value currencies {sorted(risk)} differ from "
                f"packing.yaml money thresholds {sorted(packing)}")
        return self

    @model_validator(mode="after")
    def _logo_readable(self) -> Config:
        """A missing or oversized logo file fails at load, not at the first document."""
        try:
            logo_data_uri(self.store.logo, self.dir)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self


SECTIONS = tuple(name for name in Config.model_fields if name != "dir")
