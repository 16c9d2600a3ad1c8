"""configs/shipping.yaml: methods, transit days, cutoff and holidays."""

from __future__ import annotations

from datetime import date, time

from pydantic import Field

from tasks.config.base import Strict


class ShippingMethod(Strict):
    title: str
    transit_days: dict[str, int]

    def transit_to(self, country: str | None) -> int:
        return self.transit_days.get(country or "", self.transit_days["default"])


class ShippingConfig(Strict):
    origin_country: str
    timezone: str
    dispatch_cutoff: time
    processing_days: int = 1
    methods: dict[str, ShippingMethod]
    default_method: str
    aliases: dict[str, str] = Field(default_factory=dict)
    holidays: list[date] = Field(default_factory=list)
