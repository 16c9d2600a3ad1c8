"""Declarative business config (configs/*.yaml), validated into one typed `Config` at load.

One module per file (configs/<name>.yaml → tasks/config/<name>.py), `model` joins them into
`Config` with the cross-file rules, `load` reads a folder: `load_config` (cached per process,
raises ConfigError) and `check_config` (every problem, one line each; `journeys config check`
and `journeys deploy` use it).
"""

from __future__ import annotations

from tasks.config.aftercare import AftercareConfig
from tasks.config.base import Amounts, ConfigError, Strict
from tasks.config.governor import GovernorConfig
from tasks.config.load import LINKS_BASE_URL_ENV, check_config, load_config
from tasks.config.loyalty import EarningRule, LoyaltyConfig, Tier
from tasks.config.messaging import MessagingConfig, TemplateSpec
from tasks.config.model import SECTIONS, Config
from tasks.config.packing import (
    CarrierConstraints,
    InsertRules,
    InsuranceRules,
    PackingCondition,
    PackingConfig,
    PackingRule,
)
from tasks.config.pages import LinkLifetimes, PagesConfig, ReviewRules
from tasks.config.quality import QualityConfig
from tasks.config.shipping import ShippingConfig, ShippingMethod
from tasks.config.store import BrandColors, StoreConfig
from tasks.config.tracking import TrackingConfig
from tasks.config.verification import VerificationConfig

__all__ = [
    "LINKS_BASE_URL_ENV", "SECTIONS", "AftercareConfig", "Amounts", "BrandColors",
    "CarrierConstraints", "Config", "ConfigError", "EarningRule", "GovernorConfig", "InsertRules",
    "InsuranceRules", "LinkLifetimes", "LoyaltyConfig", "MessagingConfig", "PackingCondition",
    "PackingConfig", "PackingRule", "PagesConfig", "QualityConfig", "ReviewRules",
    "ShippingConfig", "ShippingMethod", "Strict", "StoreConfig", "TemplateSpec", "Tier",
    "TrackingConfig", "VerificationConfig", "check_config", "load_config",
]
