"""The asyncio edge of the commerce domain: one Shop per room, its events onto the bus, the room clock.

The Shop is pure (no sockets, no tasks); this module is where time passes and events travel:
- each DomainEvent goes to the bus by kind: state -> `set_state` (coalesced per key at the bus tick),
  to one user -> `send_direct`, otherwise -> `publish` (ordered, kept in history);
- a task ticks every room's shop on the room clock (reservation expiry, scheduled sales starting
  and ending, the "bought in the last minute" window); among several nodes, only the rooms whose
  clock lease this node holds (`ClockLeases`);
- calls that read then write across awaits (checkout, payment transitions, host edits, the tick)
  are serialised per user, order or room, so a backend whose calls really suspend (Redis) cannot
  interleave two of them. Taps are not: each is one atomic store call (then a read of the cart's
  totals for the answer), and the hot path stays lean;
- with records shared by several nodes (Redis), another node's host edits reach this one's copy
  of the offer (catalog, tags, sales) by the room's records revision: read for every loaded room
  at each tick, and before a host edit, a checkout, or a tap on a product or sale this copy does
  not know (the event announcing it may reach a viewer before the tick). The single-node stores
  have no revision and skip all of it. Such records also count the room's sales (totals, units
  bought in the last window) over every node's orders: each tick reads them for every loaded room
  in one round trip, every node's shop takes them (its snapshots show them), and the node running
  the room's clock publishes them when they change.

`clock` is a plain attribute so tests can swap in a controllable clock at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

from engine.errors import shown
from engine.storage import StorageUnavailable
from overlays import metrics
from overlays.events import DomainError, DomainEvent
from overlays.purchases.base import PurchaseLog
from overlays.records import RecordStore
from overlays.records.base import SalesFigures, SharedRecords
from overlays.shop import Shop, ShopConfig
from overlays.stock.base import StockStore
from overlays.stock.memory import MemoryStockStore

log = logging.getLogger(__name__)
T = TypeVar("T")


class EventSink(Protocol):
    """The part of the engine's Bus the commerce edge uses."""

    async def publish(self, room: str, type: str, data: dict[str, Any]) -> Any: ...
    def set_state(self, room: str, key: str, type: str, data: dict[str, Any]) -> None: ...
    async def send_direct(self, room: str, user: str, type: str, data: dict[str, Any]) -> None: ...


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that completes without suspending, synchronously.

    For the channel's synchronous snapshot hook: the memory stock store never suspends, so a
    shop snapshot is plain computation. A backend that does suspend raises here instead of
    handing out a half-built snapshot."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("this stock backend suspends: snapshots need an async hook")


class ClockLeases(Protocol):
    """Which rooms' clocks run on this node (engine.leases.keeper.LeaseKeeper): one node per room at a time."""

    def token(self, room: str) -> int | None: ...
    async def confirm(self, room: str, token: int) -> bool: ...


class KeyedLocks:
    """One asyncio.Lock per key while someone holds or waits for it (bounded by callers in flight)."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Commerce:
    """Every room's shop on this node, and the calls the HTTP and websocket handlers make.

    Each call returns the caller's result after the events it caused are handed to the bus, so
    a client sees its cart event before its ack. Failures raise DomainError."""

    def __init__(
        self,
        bus: EventSink,
        *,
        stock: StockStore,
        log: PurchaseLog,
        records: RecordStore,
        config: ShopConfig,
        room_exists: Callable[[str], bool],
        tick_seconds: float = 0.2,
        clock: Callable[[], float] = time.time,
        clock_leases: ClockLeases | None = None,
    ) -> None:
        self.bus = bus
        self.stock = stock
        self.log = log
        self.records = records
        self.config = config
        self.clock = clock
        self._room_exists = room_exists
        self._tick_seconds = tick_seconds
        self._clock_leases = clock_leases  # None: this process alone runs every room's clock
        self._shops: dict[str, Shop] = {}
        self._loading: dict[str, asyncio.Task[Shop]] = {}
        self._unloaded: set[str] = set()  # rooms whose records failed to load at start
        self._locks = KeyedLocks()
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._ticks_failing: set[str] = set()  # rooms whose last tick found the store unavailable
        self._shared = records if isinstance(records, SharedRecords) else None
        self._revisions: dict[str, int] = {}  # room -> records revision its loaded shop reflects

    def _now(self) -> float:
        return self.clock()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, rooms: Iterable[str]) -> None:
        """Load every known room (this also logs order transitions an older version left
        unlogged). One room that cannot load is reported and left out; the others are served."""
        for room in rooms:
            try:
                shop = await self.shop(room)
            except Exception:
                log.exception("room %s: its shop could not be loaded; its commerce is unavailable", room)
                self._unloaded.add(room)
                continue
            for pool, (sold, quantity) in shop.oversold.items():
                log.error("room %s: pool %s has %d units sold but offers %d (two processes sold from one"
                          " data directory?); it is served sold out", room, pool, sold, quantity)
        metrics.UNLOADED_ROOMS.set(len(self._unloaded))
        metrics.OVERSOLD_POOLS.set(sum(len(shop.oversold) for shop in self._shops.values()))
        self._stopping.clear()
        self._ticker = asyncio.get_running_loop().create_task(self._run_ticker(), name="commerce-tick")

    async def stop(self) -> None:
        """Stop the ticker after its current tick. It is not cancelled: a Redis call cancelled
        midway (redis-py) can leave its task waiting forever, and a tick's calls are bounded anyway."""
        self._stopping.set()
        if self._ticker is not None:
            await self._ticker
            self._ticker = None

    async def shop(self, room: str) -> Shop:
        """The room's shop, loaded from the records on first use; not_found for unknown rooms."""
        shop = self._shops.get(room)
        if shop is not None:
            return shop
        if not self._room_exists(room):
            raise DomainError("not_found", f"no room {shown(room)}")
        if room in self._unloaded:
            raise StorageUnavailable(f"the shop of room {shown(room)} could not be loaded; see the server log")
        task = self._loading.get(room)
        if task is None:  # concurrent first uses share one load
            task = self._loading[room] = asyncio.get_running_loop().create_task(self._load(room))
        return await asyncio.shield(task)

    async def _load(self, room: str) -> Shop:
        try:
            shop = self._shops.get(room)
            if shop is None:
                shop = self._new_shop(room)
                if self._shared is not None:  # read first: a change made during the load is caught up later
                    self._revisions[room] = (await self._shared.revisions([room]))[0]
                await shop.load()
                shop = self._shops.setdefault(room, shop)  # the snapshot hook may have made it meanwhile
            return shop
        finally:
            del self._loading[room]

    def _new_shop(self, room: str) -> Shop:
        # Rooms have no owner account yet: the room id is the host the purchase events name.
        return Shop(room, room, stock=self.stock, records=self.records, config=self.config, clock=self._now)

    # -- other nodes' edits ---------------------------------------------------------------------

    async def _catch_up(self, room: str, shop: Shop) -> None:
        """Reload the room's offer if another node changed it since this one read it. The caller
        holds the room's lock, so no host edit or tick of this node runs across the reload. This
        node's own edits move the revision too: they are read back once, changing nothing."""
        if self._shared is None:
            return
        revision = (await self._shared.revisions([room]))[0]
        if revision != self._revisions.get(room):
            await shop.reload_offer()
            self._revisions[room] = revision

    async def _catch_up_if_moved(self, room: str, shop: Shop) -> None:
        """`_catch_up` for callers without the room's lock: it is taken only when the revision
        moved, so a flood of taps on unknown ids costs reads, never a queue on the lock that the
        room's clock and host edits wait on."""
        assert self._shared is not None
        if (await self._shared.revisions([room]))[0] != self._revisions.get(room):
            async with self._locks.hold(("room", room)):
                await self._catch_up(room, shop)

    async def catch_up(self) -> None:
        """Bring every loaded room's offer up to the shared records: one round trip for all of them,
        then a reload of the few that changed."""
        if self._shared is None or not self._shops:
            return
        rooms = list(self._shops)
        try:
            revisions = await self._shared.revisions(rooms)
        except StorageUnavailable:
            return  # the tick reports the outage; the next one tries again
        for room, revision in zip(rooms, revisions, strict=True):
            shop = self._shops.get(room)
            if shop is None or revision == self._revisions.get(room):
                continue
            try:
                async with self._locks.hold(("room", room)):
                    await self._catch_up(room, shop)
            except StorageUnavailable:
                return
            except Exception:  # one room's records must not stop the others' catching up
                log.exception("room %s: its offer could not be read again", room)

    # -- delivery and the clock ---------------------------------------------------------------

    async def deliver(self, room: str, events: list[DomainEvent]) -> None:
        """Hand a call's events to the bus: its state values first, then the rest in order.

        The bus sends the state values pending at a discrete event right after it in the same
        batch, so a sale's start carries its counter and a product's edit its stock: one write to
        every viewer rather than a second one at the tick."""
        bus = self.bus
        for event in events:
            if event.state:
                bus.set_state(room, event.key, event.type, event.data)
        for event in events:
            if event.state:
                continue
            if event.user is None:
                await bus.publish(room, event.type, event.data)
            else:
                await bus.send_direct(room, event.user, event.type, event.data)

    async def tick(self) -> None:
        """Advance every loaded shop whose clock lease this node holds to the clock's now and publish
        what changed.

        Fencing: before a tick's events go out, the lease's token is checked against the store. If
        another node took the room over meanwhile (this one paused past the TTL), the room-wide
        announcements (sale.started, sale.ended) are withheld, since the new holder makes them; what
        the stock store applied atomically (an expired reservation is removed by one caller only) and
        latest-wins state values are still reported by the node that applied them. Nothing goes out twice."""
        await self.catch_up()
        figures = await self._figures()
        leases = self._clock_leases
        for room, shop in list(self._shops.items()):
            token = None if leases is None else leases.token(room)
            if leases is not None and token is None:
                if room in figures:  # another node runs this room's clock and publishes them
                    shop.take_figures(figures[room])
                continue
            try:
                async with self._locks.hold(("room", room)):
                    events = await shop.tick()
                    if room in figures:
                        events += shop.take_figures(figures[room])
                if token is not None and events and not await leases.confirm(room, token):
                    log.warning("room %s: its clock lease was lost during a tick; its announcements are withheld", room)
                    events = [event for event in events if event.state or event.user is not None]
                if room in self._ticks_failing:
                    self._ticks_failing.discard(room)
                    log.warning("room %s: its clock runs again", room)
                await self.deliver(room, events)
            except StorageUnavailable as error:  # said once per outage, not at every tick
                if room not in self._ticks_failing:
                    self._ticks_failing.add(room)
                    log.warning("room %s: its clock waits for the store: %s", room, error)
            except Exception:  # one room's failure must not stop the clock of the others
                log.exception("commerce tick failed in room %s", room)

    async def _figures(self) -> dict[str, SalesFigures]:
        """Every loaded room's sales figures from records several nodes share (none otherwise, or
        while they are unavailable: the tick reports the outage)."""
        if self._shared is None or not self._shops:
            return {}
        rooms = list(self._shops)
        try:
            return dict(zip(rooms, await self._shared.figures(rooms, self.clock() - self.config.proof_window),
                            strict=True))
        except StorageUnavailable:
            return {}

    async def _run_ticker(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), self._tick_seconds)
                return
            except TimeoutError:
                await self.tick()

    # -- viewers ------------------------------------------------------------------------------

    def cart_ready(self, room: str) -> bool:
        """Whether a cart read of `room` would call nothing but the stock store: its shop is
        loaded. Such a call runs on Redis's pipelined calls alone (see signaling.channel's hot
        answers)."""
        return room in self._shops

    def tap_ready(self, room: str, product_id: Any, sale_id: Any) -> bool:
        """Whether a tap on `room` would call nothing but the stock store and the bus: its shop is
        loaded and knows the item, so `tap` reads no records first. A tap naming no item is not:
        where records are shared (as they are with Redis) no shop knows such an item, so `tap`
        reads the records' revisions before it is refused."""
        shop = self._shops.get(room)
        if shop is None or product_id is None and sale_id is None:
            return False
        return self._knows(shop, product_id, sale_id)

    def _knows(self, shop: Shop, product_id: Any, sale_id: Any) -> bool:
        """Whether `shop` may answer about this product or sale as it is: records no other node
        writes, or the item is in it (else another node may have made it since it was read)."""
        return self._shared is None or shop.knows(product_id, sale_id)

    async def tap(
        self, room: str, user: str, request_id: str, *,
        product_id: Any = None, sale_id: Any = None, qty: Any = 1,
    ) -> dict[str, Any] | DomainError:
        """The tap's answer (the reservation and the cart's totals; the line itself goes to the
        user as `cart.added`, handed to the bus before this returns), or the refusal as a value
        (see Shop.tap_or_refusal). The hot path: no lock."""
        shop = self._shops.get(room) or await self.shop(room)
        if not self._knows(shop, product_id, sale_id):
            shop = await self._knowing(room, product_id, sale_id)  # before its refusal is remembered
        outcome = await shop.tap_or_refusal(user, request_id, product_id=product_id, sale_id=sale_id, qty=qty)
        if type(outcome) is DomainError:
            return outcome
        if outcome.events:
            await self.deliver(room, outcome.events)
        return outcome.result

    async def uncart(self, room: str, user: str, reservation_id: Any) -> dict[str, Any]:
        if type(reservation_id) is not str:
            raise DomainError("bad_request", "reservation must be a reservation id string")
        shop = await self.shop(room)
        async with self._locks.hold(("user", room, user)):
            outcome = await shop.uncart(user, reservation_id)
            await self.deliver(room, outcome.events)
            return await shop.cart_of(user)

    async def cart(self, room: str, user: str) -> dict[str, Any]:
        return await (await self.shop(room)).cart_of(user)

    async def checkout(self, room: str, user: str, request_id: str) -> dict[str, Any]:
        """The order, committed and logged before this returns. Serialised per user so a retry
        racing its original cannot see an emptied cart and answer cart_empty."""
        shop = await self.shop(room)
        if self._shared is not None:  # the cart may hold units of a sale another node made since
            await self._catch_up_if_moved(room, shop)
        async with self._locks.hold(("user", room, user)):
            outcome = await shop.checkout(user, request_id)
            await self.deliver(room, outcome.events)
            return outcome.result

    # -- payment (services) -------------------------------------------------------------------

    async def confirm(self, room: str, order_id: Any) -> dict[str, Any]:
        return await self._transition(room, order_id, paid=True)

    async def cancel(self, room: str, order_id: Any) -> dict[str, Any]:
        return await self._transition(room, order_id, paid=False)

    async def _transition(self, room: str, order_id: Any, *, paid: bool) -> dict[str, Any]:
        shop = await self.shop(room)
        async with self._locks.hold(("order", room, order_id)):
            outcome = await (shop.confirm(order_id) if paid else shop.cancel(order_id))
            await self.deliver(room, outcome.events)
            return outcome.result

    # -- hosts --------------------------------------------------------------------------------

    async def host(self, room: str, call: Callable[[Shop], Coroutine[Any, Any, Any]]) -> Any:
        """Run one host edit (catalog, tags, sales) under the room's lock and publish its events."""
        shop = await self.shop(room)
        async with self._locks.hold(("room", room)):
            await self._catch_up(room, shop)  # an edit merges into the current offer, not a stale copy
            outcome = await call(shop)
            await self.deliver(room, outcome.events)
            return outcome.result

    async def put_product(self, room: str, fields: Any) -> dict[str, Any]:
        return await self.host(room, lambda shop: shop.put_product(fields))

    async def remove_product(self, room: str, product_id: Any) -> dict[str, Any]:
        return await self.host(room, lambda shop: shop.remove_product(product_id))

    async def pin(self, room: str, fields: Any) -> dict[str, Any]:
        """Pin a tag; one without an id gets a fresh one (ids let a host move or unpin it later)."""
        if isinstance(fields, Mapping) and fields.get("id") is None:
            fields = {**fields, "id": f"t_{secrets.token_hex(4)}"}
        return await self.host(room, lambda shop: shop.pin(fields))

    async def unpin(self, room: str, tag_id: Any) -> dict[str, Any]:
        return await self.host(room, lambda shop: shop.unpin(tag_id))

    async def start_sale(self, room: str, fields: Any) -> dict[str, Any]:
        return await self.host(room, lambda shop: shop.start_sale(fields))

    async def end_sale(self, room: str, sale_id: Any) -> dict[str, Any]:
        return await self.host(room, lambda shop: shop.end_sale(sale_id))

    # -- reads --------------------------------------------------------------------------------

    async def view(self, room: str, user: str | None = None) -> dict[str, Any]:
        """The shop part of the room snapshot (products, tags, sales, totals, recent, cart)."""
        return await (await self.shop(room)).snapshot(user)

    async def product(self, room: str, product_id: Any) -> dict[str, Any]:
        """One product of the room's public view (not_found if there is none)."""
        return await (await self._knowing(room, product_id, None)).product_view(product_id)

    async def sale(self, room: str, sale_id: Any) -> dict[str, Any]:
        """One sale of the room's public view (not_found if there is none)."""
        return await (await self._knowing(room, None, sale_id)).sale_view(sale_id)

    async def _knowing(self, room: str, product_id: Any, sale_id: Any) -> Shop:
        """The room's shop, caught up first if it does not know the product or sale asked for."""
        shop = await self.shop(room)
        if not self._knows(shop, product_id, sale_id):
            await self._catch_up_if_moved(room, shop)
        return shop

    @property
    def suspends(self) -> bool:
        """Whether stock calls really wait (a networked store): snapshots are then read ahead
        with `snapshot`, as `snapshot_now` cannot run them."""
        return not isinstance(self.stock, MemoryStockStore)

    async def snapshot(self, room: str, user: str | None) -> dict[str, Any]:
        """The shop part of the room snapshot, read again (at most twice more) if the shop changed
        while it was read, so its parts agree with each other."""
        shop = await self.shop(room)
        for _ in range(3):
            version = shop.version
            snap = await shop.snapshot(user)
            if shop.version == version:
                break
        return snap

    def snapshot_now(self, room: str, user: str | None) -> dict[str, Any]:
        """The same, synchronously, for the channel's snapshot hook. It never touches the
        database: every room known at start was loaded by `start`, so a room without a shop yet
        was created since and has no records (its shop starts empty), or failed to load."""
        shop = self._shops.get(room)
        if shop is None:
            if not self._room_exists(room) or room in self._unloaded:  # e.g. a service of no room
                return {}
            shop = self._shops[room] = self._new_shop(room)
        return run_now(shop.snapshot(user))

    async def order(self, room: str, order_id: Any) -> dict[str, Any]:
        """One order of the room as stored (with its buyer), or not_found."""
        await self.shop(room)
        data = await self.records.order(room, order_id) if type(order_id) is str else None
        if data is None:
            raise DomainError("not_found", f"no order {shown(order_id)}")
        return data

    async def orders(self, room: str, status: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        await self.shop(room)
        return await self.records.orders(room, status, limit, offset)
