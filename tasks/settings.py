"""Process settings from the environment (JOURNEYS_*), with embedded defaults that just work."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOURNEYS_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./var/journeys.db",
        description="SQLAlchemy URL of the app database (SQLite file or PostgreSQL).",
    )
    artifacts_url: str = Field(
        default="file://./var/artifacts",
        description="Where documents and messages are archived: file://DIR or s3://bucket/prefix.",
    )
    mail_transport: str = Field(
        default="file",
        description="`file` (.eml into the archive), `smtp://host:port` or `ses`.",
    )
    config_dir: Path = Field(default=Path("./configs"), description="Business config (YAML).")
    secret_key: str = Field(
        default="journeys-dev-secret-change-me",
        description="HMAC key for promo codes, signed links and unsubscribe tokens.",
    )
    batch_size: int = Field(default=1000, ge=1, description="Orders per stage batch.")
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    s3_endpoint_url: str | None = Field(
        default=None, description="Custom S3 endpoint (SeaweedFS, MinIO); empty for AWS."
    )
    s3_sse: str | None = Field(default=None, description="Server-side encryption, e.g. AES256.")
    inbox_url: str | None = Field(
        default=None,
        description="Database of the webhook inbox. Default: the app database on PostgreSQL; "
        "beside a SQLite app database, its own file (inbox.db), so the edge never waits "
        "behind a sweep's write lock.",
    )
    shopify_webhook_secret: str | None = Field(
        default=None, description="The Shopify app's client secret: checks X-Shopify-Hmac-Sha256."
    )
    shopify_webhook_secret_previous: str | None = Field(
        default=None, description="The secret before a rotation (Shopify signs with it for up "
        "to an hour afterwards); remove it after that.",
    )
    aftership_webhook_secret: str | None = Field(
        default=None, description="AfterShip's webhook secret: checks aftership-hmac-sha256."
    )
    sns_topic_arns: str | None = Field(
        default=None, description="SNS topics whose SES notifications /webhooks/ses accepts "
        "(comma-separated ARNs); empty accepts any topic whose message SNS signed.",
    )
    sns_certificates: str | None = Field(
        default=None, description="A folder of trusted SNS signing certificates, "
        "<folder>/<host>/<file> for https://<host>/<file>, read instead of fetching them from "
        "AWS (tests; an edge without internet access). Empty: fetch from AWS over HTTPS.",
    )
    shopify_shop: str | None = Field(
        default=None, description="The shop's myshopify domain (example.myshopify.com), for the "
        "reconcile-shopify flow's Admin API calls.",
    )
    shopify_admin_token: str | None = Field(
        default=None, description="Admin API access token of the shop's custom app (shpat_...); "
        "needs read_orders (and read_all_orders to look back beyond 60 days).",
    )
    shopify_api_version: str = Field(
        default="2025-07", description="Shopify Admin API version the reconcile flow queries."
    )
    shopify_admin_url: str | None = Field(
        default=None, description="Base URL instead of https://{shop} (a proxy, or a test server); "
        "/admin/api/{version}/graphql.json is appended.",
    )
    shopify_reconcile_lookback_hours: int = Field(
        default=72, ge=1, description="How far back the first reconcile run (or one whose inbox "
        "rows were purged) asks Shopify for updated orders.",
    )


class SecretUnavailable(RuntimeError):
    """A secret expected from elsewhere (a Prefect Secret block) could not be read."""


@lru_cache
def get_settings() -> Settings:
    return Settings()
