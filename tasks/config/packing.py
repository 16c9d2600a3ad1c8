"""configs/packing.yaml: packing rules, insurance and inserts."""

from __future__ import annotations

from pydantic import Field, model_validator

from tasks.config.base import Amounts, Strict


class PackingCondition(Strict):
    """A rule matches a line when ANY listed condition holds."""

    tags_any: list[str] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    min_grams: int | None = None
    min_unit_price: Amounts | None = None


class CarrierConstraints(Strict):
    max_transit_days: int | None = None
    ship_weekdays: list[int] | None = None  # 0 = Monday
    no_air: bool = False
    signature: bool = False
    methods: list[str] | None = None


class PackingRule(Strict):
    name: str
    when: PackingCondition
    materials: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    handling: list[str] = Field(default_factory=list)
    carrier: CarrierConstraints = CarrierConstraints()


class InsuranceRules(Strict):
    order_value_threshold: Amounts
    categories: list[str] = Field(default_factory=list)


class HandwrittenNoteRules(Strict):
    first_order: bool = True
    vip_tags: list[str] = Field(default_factory=list)
    gift_message: bool = True


class PromoRules(Strict):
    enabled: bool = True
    prefix: str = "THANKS"
    percent_off: int = 10
    valid_days: int = 60


class InsertRules(Strict):
    handwritten_note: HandwrittenNoteRules = HandwrittenNoteRules()
    promo: PromoRules = PromoRules()
    samples: dict[str, str] = Field(default_factory=dict)


class DocumentOutput(Strict):
    """What the print step (tasks/print_batch.py) makes after each sweep, outside any
    transaction: a PDF beside each archived packing slip, invoice and credit note (about 0.1 to
    0.15 s of CPU each: ten times what the rest of the journey costs an order), and one print
    batch PDF of the sweep's packing slips, per `batch_size` documents."""

    pdf: bool = False
    print_batch: bool = True  # with pdf
    batch_size: int = Field(default=500, ge=1, le=5000)  # documents per print batch


class PackingConfig(Strict):
    rules: list[PackingRule]
    insurance: InsuranceRules
    inserts: InsertRules = InsertRules()
    documents: DocumentOutput = DocumentOutput()

    @model_validator(mode="after")
    def _same_currencies(self) -> PackingConfig:
        """Every money rule names the same currencies: none is judged by only some of them."""
        expected = set(self.insurance.order_value_threshold)
        for rule in self.rules:
            prices = rule.when.min_unit_price
            if prices is not None and set(prices) != expected:
                raise ValueError(f"rule {rule.name}: min_unit_price currencies "
                                 f"{sorted(prices)} differ from insurance.order_value_threshold "
                                 f"{sorted(expected)}")
        return self

    @property
    def currencies(self) -> frozenset[str]:
        return frozenset(self.insurance.order_value_threshold)
