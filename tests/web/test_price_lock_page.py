"""The watch page's cart shows the unit price locked at the tap, and says so when the host has
changed the price since; checkout charges that price (real Chromium against an in-process engine)."""

from __future__ import annotations

import shutil
from typing import Any

import aiohttp
import pytest

from engine.app import App
from signaling.tokens import mint
from tests.browser import CHROMIUM, FLAGS

pytestmark = [
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Chromium is not installed"),
    pytest.mark.timeout(120),
]

MUG = {"id": "mug", "title": "Mug", "price": 1500, "currency": "EUR", "stock": 10}


async def put_product(app: App, body: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{app.http_port}/api/rooms/demo/products/mug"
    async with aiohttp.ClientSession() as http, http.put(
        url, json=body, headers={"Authorization": f"Bearer {app.admin_key}"}
    ) as response:
        assert response.status == 200, await response.text()


async def test_cart_shows_the_price_held_since_the_tap(engine: App) -> None:
    from playwright.async_api import async_playwright

    await put_product(engine, MUG)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        errors: list[str] = []
        try:
            page = await browser.new_page()
            page.set_default_timeout(20_000)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            viewer = mint(engine.secret, "demo", "viewer", "alice", 3600)
            await page.goto(f"http://127.0.0.1:{engine.http_port}/watch/demo?token={viewer}")
            await page.locator(".product[data-product=mug] button.add").click()
            await page.locator("#cart-count", has_text="1").wait_for()

            await put_product(engine, {"price": 99900})  # the host raises the price after the tap
            await page.locator(".product[data-product=mug] .product-price", has_text="999").wait_for()
            await page.click("#cart-button")
            line = page.locator("#cart-lines .cart-line")
            await line.locator(".price-held", has_text="999").wait_for()
            assert "15" in await line.locator(".unit-price").inner_text()
            assert "15" in await page.locator("#cart-total").inner_text()

            await page.click("#checkout")
            # The dialog is filled when the order comes back: wait for its total before reading it.
            await page.locator("#order-dialog #order-total", has_text="15").wait_for()
            total = await page.locator("#order-dialog #order-total").inner_text()
            assert "15" in total and "999" not in total
        finally:
            await browser.close()
    assert not errors, errors
