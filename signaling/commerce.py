"""Commerce over the wire: websocket actions and REST routes that call the commerce runtime.

Handlers only parse, check the caller's role and translate errors: every rule lives in the
domain (overlays/), every side effect in the runtime (overlays/runtime.py). A DomainError
becomes a websocket error with the same code, or an HTTP status from `signaling.http.STATUS`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from engine.config import Config
from engine.digits import parse_uint
from engine.errors import shown
from overlays.events import DomainError
from overlays.runtime import Commerce
from signaling.channel import Channel, Session
from signaling.http import ApiError, Auth, json_response, read_json
from signaling.protocol import ProtocolError

log = logging.getLogger(__name__)

HOSTS = frozenset({"host"})
SHOPPERS = frozenset({"viewer", "host"})
MAX_LIST = 1000
ORDER_STATUSES = ("placed", "paid", "cancelled")

Handler = Callable[[Session, dict[str, Any]], Awaitable[dict[str, Any]]]


def _request_id(message: dict[str, Any], action: str) -> str:
    """Taps and checkouts are idempotent on the request id, so they must carry one."""
    request_id = message.get("id")
    if request_id is None:
        raise ProtocolError("bad_request", f"a {action} needs an 'id' (a retry reuses it)")
    return str(request_id)


def register_commerce(channel: Channel, commerce: Commerce, config: Config) -> None:
    """The websocket actions of issue 'Commerce in the room' and the shop's part of the snapshot."""
    cart_rate = (config.tap_rate, config.tap_burst)

    def may_buy(session: Session) -> None:
        """With --no-guest-checkout, guest tokens (minted for anyone) watch and chat but do not buy."""
        if session.identity.guest and not config.guest_checkout:
            raise ProtocolError("forbidden", "guests may watch and chat; buying needs a token from the shop")

    async def tap(session: Session, message: dict[str, Any]) -> dict[str, Any] | DomainError:
        """A storm is mostly refusals, so they come back as values and are answered without a raise.
        The answer is the runtime's as it is (`reservation`, `cart` totals): the new line reached
        the user as `cart.added` just before it."""
        may_buy(session)
        return await commerce.tap(
            session.room, session.sub, _request_id(message, "tap"),
            product_id=message.get("product_id"), sale_id=message.get("sale_id"), qty=message.get("qty", 1),
        )

    async def uncart(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        return {"cart": await commerce.uncart(session.room, session.sub, message.get("reservation"))}

    async def cart(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        return {"cart": await commerce.cart(session.room, session.sub)}

    async def checkout(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        may_buy(session)
        request_id = _request_id(message, "checkout")
        return {"order": await commerce.checkout(session.room, session.sub, request_id)}

    async def product_put(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        return {"product": await commerce.put_product(session.room, message.get("product"))}

    async def product_remove(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        return await commerce.remove_product(session.room, message.get("product_id"))

    async def pin(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        return {"tag": await commerce.pin(session.room, message.get("tag"))}

    async def unpin(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        return await commerce.unpin(session.room, message.get("tag_id"))

    async def sale_start(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        return {"sale": await commerce.start_sale(session.room, message.get("sale"))}

    async def sale_end(session: Session, message: dict[str, Any]) -> dict[str, Any]:
        return {"sale": await commerce.end_sale(session.room, message.get("sale_id"))}

    def tap_is_hot(session: Session, message: dict[str, Any]) -> bool:
        return commerce.tap_ready(session.room, message.get("product_id"), message.get("sale_id"))

    def cart_is_hot(session: Session, message: dict[str, Any]) -> bool:
        return commerce.cart_ready(session.room)

    register = channel.actions.register
    register("tap", SHOPPERS, tap, rate=cart_rate, inline=True, hot=tap_is_hot)
    register("uncart", SHOPPERS, uncart, rate=cart_rate, inline=True)
    register("cart", SHOPPERS, cart, inline=True, hot=cart_is_hot)
    register("checkout", SHOPPERS, checkout, rate=cart_rate)
    register("product.put", HOSTS, product_put)
    register("product.remove", HOSTS, product_remove)
    register("pin", HOSTS, pin)
    register("unpin", HOSTS, unpin)
    register("sale.start", HOSTS, sale_start)
    register("sale.end", HOSTS, sale_end)

    def shopper(session: Session) -> str | None:
        return session.sub if session.role in SHOPPERS else None

    async def prepare(session: Session) -> dict[str, Any]:
        """Read ahead of the snapshot when the store suspends (Redis); the channel passes the part on."""
        try:
            return await commerce.snapshot(session.room, shopper(session))
        except Exception as error:  # the room stays watchable; its shop comes with a later snapshot
            log.warning("room %s: the shop part of a snapshot could not be read: %s", session.room, error)
            return {}

    def snapshot_part(session: Session) -> dict[str, Any]:
        """Products, tags, sales, totals, recent and (for shoppers) the connecting user's cart."""
        return commerce.snapshot_now(session.room, shopper(session))

    if commerce.suspends:
        channel.snapshot_prepares.append(prepare)
    else:  # the memory store is read in the snapshot itself, with no task per join
        channel.snapshot_parts.append(snapshot_part)


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    value = parse_uint(raw, len(str(hi)))
    if value is None or not lo <= value <= hi:
        raise ApiError("bad_request", f"{name} must be an integer in [{lo}, {hi}]")
    return value


def commerce_routes(app: web.Application, commerce: Commerce, auth: Auth) -> None:
    """REST: catalog, tags and sales for hosts (host token or admin key), orders and payment
    transitions for payment services (service token or admin key). Reads of the catalog and
    sales are public, like the room snapshot that carries them."""

    def room_of(request: web.Request, *roles: str) -> str:
        room = request.match_info["room"]
        if roles:
            auth.identity(request, room, roles)
        return room

    async def list_products(request: web.Request) -> web.Response:
        view = await commerce.view(room_of(request))
        return json_response({"products": view["products"]})

    async def get_product(request: web.Request) -> web.Response:
        return json_response({"product": await commerce.product(room_of(request), request.match_info["id"])})

    async def put_product(request: web.Request) -> web.Response:
        room = room_of(request, "host")
        body = await read_json(request)
        product_id = request.match_info["id"]
        if body.get("id", product_id) != product_id:
            raise ApiError("bad_request", "the body's id differs from the URL's")
        return json_response({"product": await commerce.put_product(room, {**body, "id": product_id})})

    async def delete_product(request: web.Request) -> web.Response:
        room = room_of(request, "host")
        return json_response(await commerce.remove_product(room, request.match_info["id"]))

    async def list_tags(request: web.Request) -> web.Response:
        view = await commerce.view(room_of(request))
        return json_response({"tags": view["tags"]})

    async def post_tag(request: web.Request) -> web.Response:
        room = room_of(request, "host")
        tag = await commerce.pin(room, await read_json(request))
        return json_response({"tag": tag}, status=201,
                             headers={"Location": f"/api/rooms/{room}/tags/{tag['id']}"})

    async def delete_tag(request: web.Request) -> web.Response:
        room = room_of(request, "host")
        return json_response(await commerce.unpin(room, request.match_info["id"]))

    async def list_sales(request: web.Request) -> web.Response:
        view = await commerce.view(room_of(request))
        return json_response({"sales": view["sales"], "totals": view["totals"], "recent": view["recent"]})

    async def get_sale(request: web.Request) -> web.Response:
        return json_response({"sale": await commerce.sale(room_of(request), request.match_info["id"])})

    async def post_sale(request: web.Request) -> web.Response:
        room = room_of(request, "host")
        sale = await commerce.start_sale(room, await read_json(request))
        return json_response({"sale": sale}, status=201,
                             headers={"Location": f"/api/rooms/{room}/sales/{sale['id']}"})

    async def end_sale(request: web.Request) -> web.Response:
        room = room_of(request, "host")
        return json_response({"sale": await commerce.end_sale(room, request.match_info["id"])})

    async def list_orders(request: web.Request) -> web.Response:
        room = room_of(request, "host", "service")
        status = request.query.get("status")
        if status is not None and status not in ORDER_STATUSES:
            raise ApiError("bad_request", f"status must be one of {', '.join(ORDER_STATUSES)}")
        limit = _int_param(request, "limit", 100, 1, MAX_LIST)
        offset = _int_param(request, "offset", 0, 0, 10**9)
        return json_response({"orders": await commerce.orders(room, status, limit, offset)})

    async def get_order(request: web.Request) -> web.Response:
        """Hosts and services see any order of the room; a viewer sees their own."""
        room = request.match_info["room"]
        identity = auth.identity(request, room, ("host", "service", "viewer"))
        order = await commerce.order(room, request.match_info["id"])
        if identity is not None and identity.role == "viewer" and identity.sub != order["user"]:
            raise DomainError("not_found", f"no order {shown(request.match_info['id'])}")
        return json_response({"order": order})

    async def confirm(request: web.Request) -> web.Response:
        room = room_of(request, "service")
        return json_response({"order": await commerce.confirm(room, request.match_info["id"])})

    async def cancel(request: web.Request) -> web.Response:
        room = room_of(request, "service")
        return json_response({"order": await commerce.cancel(room, request.match_info["id"])})

    base = "/api/rooms/{room}"
    routes = [
        ("GET", "/products", list_products), ("GET", "/products/{id}", get_product),
        ("PUT", "/products/{id}", put_product), ("DELETE", "/products/{id}", delete_product),
        ("GET", "/tags", list_tags), ("POST", "/tags", post_tag), ("DELETE", "/tags/{id}", delete_tag),
        ("GET", "/sales", list_sales), ("POST", "/sales", post_sale), ("GET", "/sales/{id}", get_sale),
        ("POST", "/sales/{id}/end", end_sale),
        ("GET", "/orders", list_orders), ("GET", "/orders/{id}", get_order),
        ("POST", "/orders/{id}/confirm", confirm), ("POST", "/orders/{id}/cancel", cancel),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, base + path, handler)
