"""(being built)"""

from __future__ import annotations

from fastapi import FastAPI

from flows.pages.site import Site


def register(app: FastAPI, site: Site) -> None:
    """Add this page's routes to the edge app."""
