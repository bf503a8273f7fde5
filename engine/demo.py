"""The demo room a newcomer sees on first start: a few products so the shop is not empty."""

from __future__ import annotations

from overlays.runtime import Commerce

DEMO_PRODUCTS = (
    {"id": "sneaker", "title": "Runner sneaker", "description": "Light mesh runner, sizes 36-46",
     "price": 8900, "currency": "EUR", "stock": 50},
    {"id": "hoodie", "title": "Studio hoodie", "description": "Heavy cotton, oversized fit",
     "price": 5900, "currency": "EUR", "stock": 30},
    {"id": "cap", "title": "Logo cap", "description": "Adjustable, one size",
     "price": 2400, "currency": "EUR", "stock": 100},
)


async def seed_demo_catalog(commerce: Commerce, room: str) -> None:
    """Put the demo products into a freshly created demo room."""
    for product in DEMO_PRODUCTS:
        await commerce.put_product(room, product)
