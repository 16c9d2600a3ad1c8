""""How does it fit?": the apparel survey, declared as a plain mail step (tasks/journey.py).

The mail's three buttons open our survey page at `/f/{token}/fit?a=<choice>` (the delivery
survey's token: the same page, limits and checks); as there, opening records nothing and the
form's POST stores the answer as a `FeedbackResponse` with topic "fit" (tasks/storefront/survey.py
`record_answer`). A fit answer opens no service case: a size that does not fit is the customer's
to exchange, not a failure of ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tasks.i18n import N_
from tasks.links import Purpose, link_url
from tasks.storefront.reviews import product_name

if TYPE_CHECKING:
    from tasks.journey import StepSpec
    from tasks.runtime import Runtime
    from tasks.store.models import Order, Product

# Marked: the survey page words them in the reader's language.
CHOICES = {"too_small": N_("Too small"), "just_right": N_("Just right"),
           "too_big": N_("Too big")}


def fit_links(base_url: str, secret_key: str, order_id: int, now: datetime
              ) -> list[dict[str, str]]:
    """One button per choice: the survey page's fit form with the choice selected."""
    url = link_url(base_url, secret_key, Purpose.FEEDBACK, order_id, now)
    return [{"choice": choice, "label": label, "url": f"{url}/fit?a={choice}"}
            for choice, label in CHOICES.items()]


def fit_context(spec: StepSpec, order: Order, products: Mapping[str, Product], rt: Runtime,
                now: datetime) -> dict[str, Any]:
    """The mail's `fit`: the products asked about (not their sizes) and the answer links."""
    items = sorted({product_name(li, products[li.sku].title) for li in order.lines
                    if li.sku in products and products[li.sku].category in spec.categories})
    links = fit_links(rt.config.store.links_base_url, rt.settings.secret_key, order.id, now)
    return {"fit": {"products": items, "links": links}}


def parse_choice(value: Any) -> str | None:
    """A fit choice from a query or form value; None for anything else (shown unselected)."""
    return value if isinstance(value, str) and value in CHOICES else None
