"""``livecart serve`` and ``livecart token``: the two things an operator does by hand."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import uvloop

from engine.config import Config, add_arguments, from_args
from engine.gcpolicy import GcPolicy
from engine.storage import Storage
from signaling.tokens import ROLES, mint


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livecart", description="Live-stream commerce engine.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve rooms (HTTP, websocket, media)")
    add_arguments(serve)
    token = commands.add_parser("token", help="print a signed access token")
    token.add_argument("--room", required=True, help="room id ('*' for a service reading every room)")
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--sub", default=None, help="user id (default: random)")
    token.add_argument("--ttl", type=int, default=None, help="lifetime in seconds")
    add_arguments(token)
    return parser


def _announce(config: Config, app: object) -> None:
    from engine.app import App

    assert isinstance(app, App)
    base = f"http://{config.base_url.split('://', 1)[1].rsplit(':', 1)[0]}:{app.http_port}"
    ws = f"{config.ws_url.rsplit(':', 1)[0]}:{app.ws_port}/ws"
    lines = [f"livecart serving on {base} (websocket {ws})", f"  admin key:   {app.admin_key}"]
    room = app.rooms.get(config.demo_room) if config.demo_room else None
    if room is not None:
        viewer = mint(app.secret, room.id, "viewer", "demo-viewer", config.token_ttl)
        host = mint(app.secret, room.id, "host", "demo-host", config.token_ttl)
        lines += [
            f"  demo room:   {room.id}",
            f"  stream key:  {room.stream_key}   (WHIP: {base}/whip/{room.id})",
            f"  studio:      {base}/studio/{room.id}?token={host}&key={room.stream_key}",
            f"  watch:       {base}/watch/{room.id}",
            f"  viewer token: {viewer}",
            f"  host token:   {host}",
        ]
    print("\n".join(lines), flush=True)


async def _serve(config: Config, gc_policy: GcPolicy) -> None:
    from engine.app import App

    app = App(config)
    await app.start()
    gc_policy.start(lambda: len(app.channel.sessions) + app.media.peer_count)
    _announce(config, app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("livecart stopping: closing clients with a resumable code", flush=True)
    await app.stop()
    gc_policy.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = from_args(args)
    if args.command == "token":
        secret = config.secret or Storage(config.data_path).secret_setting("secret")
        try:
            print(mint(secret, args.room, args.role, args.sub, args.ttl or config.token_ttl))
        except ValueError as exc:
            print(f"livecart token: {exc}", file=sys.stderr)
            return 2
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        gc_policy = GcPolicy(config.gc_policy, config.gc_thaw_below, config.gc_warn_ms, config.gc_young_ms)
        from engine.app import media_config

        media_config(config)  # a bad media setting (a filter range, a limit) stops here, not in a traceback
    except ValueError as exc:
        print(f"livecart serve: {exc}", file=sys.stderr)
        return 2
    uvloop.run(_serve(config, gc_policy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
