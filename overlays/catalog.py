"""A room's catalog: validated products, plus the input checks the rest of the domain reuses.

Pure data and rules; the shop decides when to persist and what to publish.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from engine.errors import shown
from overlays.events import DomainError

MAX_PRICE = 10**9  # minor units: ten million in a two-decimal currency is plenty for a live shop
MAX_STOCK = 10**7
MAX_TITLE = 200  # characters
MAX_DESCRIPTION = 4000  # characters
MAX_IMAGE_URL = 2048  # characters
MAX_CATALOG_BYTES = 256 * 1024  # a room's products as JSON, unless configured lower
#: Control characters have no use in a product's text (a description may keep newlines and tabs),
#: and each would take six bytes as a JSON escape.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_CURRENCY = re.compile(r"[A-Z]{3}")


def check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """An int in [lo, hi]; bools are refused (JSON true is not 1 unit)."""
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise DomainError("bad_request", f"{name} must be an integer in [{lo}, {hi}]")
    return value


def check_float(name: str, value: Any, lo: float, hi: float) -> float:
    """A finite number in [lo, hi] (ints accepted, NaN and bools refused)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise DomainError("bad_request", f"{name} must be a number")
    if not lo <= value <= hi:
        raise DomainError("bad_request", f"{name} must be in [{lo}, {hi}]")
    return float(value)


def check_text(name: str, value: Any, max_len: int, *, required: bool = False) -> str:
    """A string of at most max_len characters without control characters (newlines and tabs
    allowed); stripped so blank titles count as missing."""
    if not isinstance(value, str) or len(value) > max_len:
        raise DomainError("bad_request", f"{name} must be a string of at most {max_len} characters")
    if _CONTROL.search(value):
        raise DomainError("bad_request", f"{name} must not contain control characters")
    value = value.strip()
    if required and not value:
        raise DomainError("bad_request", f"{name} is required")
    return value


def check_id(name: str, value: Any) -> str:
    """Ids travel in URLs, keys and logs, so they are restricted to a safe alphabet."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise DomainError("bad_request", f"{name} must be 1-64 characters of [A-Za-z0-9_.:-]")
    return value


def check_currency(value: Any) -> str:
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise DomainError("bad_request", "currency must be an ISO 4217 code such as EUR")
    return value


def check_url(value: Any) -> str:
    """Empty, site-relative, or http(s): anything else (javascript:, data:) could run in the page."""
    url = check_text("image_url", value, MAX_IMAGE_URL)
    if url and not (
        url.startswith(("https://", "http://")) or (url.startswith("/") and not url.startswith("//"))
    ):
        raise DomainError("bad_request", "image_url must be http(s) or a site-relative path")
    return url


@dataclass(frozen=True, slots=True)
class Product:
    """A product on offer. `stock` is the pool's total quantity (sold units included);
    `pool` names its stock pool, fixed at creation so a re-added id starts a fresh pool."""

    id: str
    title: str
    description: str
    price: int
    currency: str
    image_url: str
    stock: int
    pool: str

    @classmethod
    def parse(cls, fields: Mapping[str, Any], pool: str) -> Product:
        return cls(
            id=check_id("id", fields.get("id")),
            title=check_text("title", fields.get("title"), MAX_TITLE, required=True),
            description=check_text("description", fields.get("description", ""), MAX_DESCRIPTION),
            price=check_int("price", fields.get("price"), 0, MAX_PRICE),
            currency=check_currency(fields.get("currency")),
            image_url=check_url(fields.get("image_url", "")),
            stock=check_int("stock", fields.get("stock"), 0, MAX_STOCK),
            pool=pool,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def public(self) -> dict[str, Any]:
        """What clients see: the pool name is internal."""
        out = asdict(self)
        del out["pool"]
        return out


#: Room of a product's "available" field in a view, beyond its encoded public fields.
AVAILABLE_BYTES = 24


class Catalog:
    """Products by id, bounded in count and in encoded size so one room cannot grow without limit:
    every snapshot carries the whole catalog, and it must fit a client's send queue.

    Each product's public view is built once when it is put (views and lookups reuse it), with
    its size as JSON, the larger of the two wire encodings."""

    def __init__(self, max_products: int, max_bytes: int = MAX_CATALOG_BYTES) -> None:
        self.max_products = max_products
        self.max_bytes = max_bytes
        self._products: dict[str, Product] = {}
        self._public: dict[str, tuple[dict[str, Any], int]] = {}  # id -> (public view, encoded size)
        self.encoded_bytes = 0

    def __iter__(self) -> Iterator[Product]:
        return iter(self._products.values())

    def __len__(self) -> int:
        return len(self._products)

    def find(self, product_id: str) -> Product | None:
        return self._products.get(product_id)

    def get(self, product_id: str) -> Product:
        product = self._products.get(product_id)
        if product is None:
            raise DomainError("not_found", f"no product {shown(product_id)}")
        return product

    def public(self, product_id: str) -> dict[str, Any]:
        """The product's public view, shared: callers copy it before adding to it."""
        return self._public[product_id][0]

    def check_fits(self, product: Product) -> None:
        """Refuse (full) a product that would bring the catalog past its encoded size."""
        total = self.encoded_bytes - self._size(product.id) + _encoded(product.public())
        if total > self.max_bytes:
            raise DomainError("full", f"a room's products take at most {self.max_bytes} bytes as JSON; "
                                      f"this would make {total}")

    def _size(self, product_id: str) -> int:
        found = self._public.get(product_id)
        return 0 if found is None else found[1]

    def check_space(self) -> None:
        """Refuse (full) a new product when the catalog is at its maximum."""
        if len(self._products) >= self.max_products:
            raise DomainError("full", f"the catalog holds at most {self.max_products} products")

    def put(self, product: Product) -> None:
        if product.id not in self._products:
            self.check_space()
        public = product.public()
        size = _encoded(public)
        self.encoded_bytes += size - self._size(product.id)
        self._products[product.id] = product
        self._public[product.id] = (public, size)

    def remove(self, product_id: str) -> Product:
        product = self.get(product_id)
        del self._products[product_id]
        self.encoded_bytes -= self._public.pop(product_id)[1]
        return product


def _encoded(public: dict[str, Any]) -> int:
    return len(orjson.dumps(public)) + AVAILABLE_BYTES
