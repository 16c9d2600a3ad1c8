"""A running edge (its own process, real HTTP) over a SQLite store the tests seed directly.

The mails' links point at this edge (JOURNEYS_LINKS_BASE_URL), so a link taken from a rendered
mail opens here. One edge per test module; each test seeds its own orders.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tasks.config import Config, load_config
from tasks.runtime import Runtime
from tasks.settings import Settings
from tasks.store.db import make_engine
from tasks.store.migrate import ensure_schema
from tests.conftest import ROOT
from tests.edge_process import Edge

SECRET = "pages-test-secret"


@dataclass
class PagesEdge:
    url: str
    engine: Engine
    cfg: Config  # with links_base_url = url
    rt: Runtime  # what the journey's stages use to write mails whose links open this edge
    secret: str
    edge: Edge


@pytest.fixture(scope="module")
def pages_edge(tmp_path_factory) -> Iterator[PagesEdge]:
    folder = tmp_path_factory.mktemp("pages")
    database_url = f"sqlite:///{folder / 'journeys.db'}"
    engine = make_engine(database_url)
    ensure_schema(engine)
    edge = Edge(database_url, folder, {"JOURNEYS_SECRET_KEY": SECRET})
    edge.env["JOURNEYS_LINKS_BASE_URL"] = edge.url
    # Never through this process's environment: the session's `cfg` fixture must not see it.
    cfg = load_config.__wrapped__(ROOT / "configs")  # not the cached one: links to this edge
    cfg = cfg.model_copy(update={"store": cfg.store.model_copy(
        update={"links_base_url": edge.url})})
    settings = Settings(database_url=database_url, artifacts_url=f"file://{folder / 'archive'}",
                        mail_transport="file", config_dir=ROOT / "configs", secret_key=SECRET)
    edge.env["JOURNEYS_ARTIFACTS_URL"] = settings.artifacts_url  # a return label is read here
    edge.start()
    try:
        yield PagesEdge(edge.url, engine, cfg, Runtime(settings=settings, config=cfg), SECRET,
                        edge)
    finally:
        edge.stop()
        engine.dispose()


def folder_of(edge: PagesEdge) -> Path:
    return edge.edge.log.parent
