"""Order and catalog intake: read files in any supported format, store them idempotently."""

from tasks.intake.formats import IntakeError, read_orders, read_products
from tasks.intake.ingest import IntakeResult, chunks, ingest_orders, ingest_products
from tasks.intake.schema import OrderIn, ProductIn, Rejected

__all__ = [
    "IntakeError",
    "IntakeResult",
    "OrderIn",
    "ProductIn",
    "Rejected",
    "chunks",
    "ingest_orders",
    "ingest_products",
    "read_orders",
    "read_products",
]
