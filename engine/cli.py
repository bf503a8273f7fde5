"""``livecart serve`` and ``livecart token``: the two things an operator does by hand.

Whatever stops either command before it does its work (a port in use, a data directory it
cannot write, a bad setting) is one line ``livecart COMMAND: ...`` on stderr and exit status 2,
not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
import sys

import uvloop

from engine.config import Config, add_arguments, from_args
from engine.gcpolicy import GcPolicy
from engine.shared_state import kept_shared_setting
from engine.storage import DataDirInUse, kept_setting
from signaling.tokens import ROLES, mint

LOG_LEVELS = ("debug", "info", "warning", "error")
#: Libraries that log at info per ICE connectivity check (aioice) or per listener and refused
#: connection (websockets): their info lines show with --log-level debug only.
CHATTY_LOGGERS = ("aioice", "websockets")
USAGE_ERROR = 2


class CommandError(Exception):
    """A reason the command cannot run, said in one line."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livecart", description="Live-stream commerce engine.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve rooms (HTTP, websocket, media)")
    add_arguments(serve)
    token = commands.add_parser(
        "token", help="print a signed access token",
        description="Print a token signed with the server's secret: the one kept in the server's data "
                    "directory (run it where the server runs, or give --data-dir), or --secret.")
    token.add_argument("--room", required=True, help="room id ('*' for a service reading every room)")
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--sub", default=None, help="user id (default: random)")
    token.add_argument("--ttl", type=int, default=None,
                       help="lifetime in seconds (default: LIVECART_TOKEN_TTL or 86400)")
    add_arguments(token, names=("data_dir", "secret", "redis_url", "redis_prefix"))
    return parser


def _announce(app: object) -> None:
    from engine.app import App

    assert isinstance(app, App)
    urls = app.urls()
    lines = [f"livecart serving on {urls.base} (websocket {urls.ws})", f"  admin key:   {app.admin_key}"]
    config = app.config
    room = app.rooms.get(config.demo_room) if config.demo_room else None
    if room is not None:
        viewer = mint(app.secret, room.id, "viewer", "demo-viewer", config.token_ttl)
        host = mint(app.secret, room.id, "host", "demo-host", config.token_ttl)
        lines += [
            f"  demo room:   {room.id}",
            f"  stream key:  {room.stream_key}   (WHIP: {urls.link(f'/whip/{room.id}')})",
            f"  studio:      {urls.link(f'/studio/{room.id}')}?token={host}&key={room.stream_key}",
            f"  watch:       {urls.link(f'/watch/{room.id}')}",
            f"  viewer token: {viewer}",
            f"  host token:   {host}",
        ]
    print("\n".join(lines), flush=True)


def _data_dir_error(config: Config, exc: OSError | sqlite3.Error) -> CommandError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return CommandError(f"cannot use the data directory {config.data_path.resolve()} (--data-dir): {reason}")


async def _serve(config: Config, gc_policy: GcPolicy) -> None:
    from engine.app import App, StartupError

    try:
        app = App(config)
    except ValueError as exc:  # a setting the engine refuses (--forwarding, --public-url, ...)
        raise CommandError(str(exc)) from None
    except DataDirInUse as exc:
        raise CommandError(str(exc)) from None
    except (OSError, sqlite3.Error) as exc:
        raise _data_dir_error(config, exc) from exc
    try:
        await app.start()
    except (StartupError, sqlite3.Error) as exc:
        await app.stop()
        if isinstance(exc, StartupError):
            raise CommandError(str(exc)) from exc
        raise _data_dir_error(config, exc) from exc
    gc_policy.start(lambda: len(app.channel.sessions) + app.media.peer_count)
    _announce(app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("livecart stopping: closing clients with a resumable code", flush=True)
    await app.stop()
    gc_policy.stop()


def configure_logging(level_name: str) -> None:
    """Log to stderr at ``level_name``; the chatty libraries' info lines only when that is debug."""
    if level_name not in LOG_LEVELS:
        raise CommandError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, not {level_name!r}")
    level = getattr(logging, level_name.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(level if level == logging.DEBUG else max(level, logging.WARNING))


def _token(args: argparse.Namespace, config: Config) -> None:
    if config.secret:
        secret = config.secret
    elif config.redis_url:
        try:
            secret = kept_shared_setting(config, "secret")
        except LookupError as exc:
            raise CommandError(f"{exc}. Pass the --redis-url and --redis-prefix the nodes serve with, "
                               "or the --secret they were given (LIVECART_SECRET)") from None
    else:
        try:
            secret = kept_setting(config.data_path, "secret")
        except LookupError as exc:
            raise CommandError(
                f"{exc}. The server keeps its secret in livecart.db in its data directory: run this where "
                "`livecart serve` runs, or pass its --data-dir (LIVECART_DATA_DIR), or the --secret it was "
                "given (LIVECART_SECRET)") from None
    try:
        print(mint(secret, args.room, args.role, args.sub, args.ttl or config.token_ttl))
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _run(args: argparse.Namespace) -> None:
    try:
        config = from_args(args)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.command == "token":
        _token(args, config)
        return
    configure_logging(config.log_level)
    try:
        gc_policy = GcPolicy(config.gc_policy, config.gc_thaw_below, config.gc_warn_ms, config.gc_young_ms)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    uvloop.run(_serve(config, gc_policy))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except CommandError as exc:
        print(f"livecart {args.command}: {exc}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
