"""The cluster mode of the engine benches: K `livecart serve` nodes sharing one Redis, and how the
machine's cores are split between the nodes, Redis and the load.

Why one module: the fan-out and tap-storm benches start the same nodes the same way (one Redis, a
fresh key prefix per run, one node id each, each pinned to a core) and must say the same thing about
where each part ran, since a figure without its core split cannot be compared with another.

The default split on a 2-core machine: every node on core 0 (the server's core, as in the one-node
benches, so "others on core 0" still means load that was not ours) and Redis on core 1 beside the
load (clients and publisher). With ``--node-cores 0,1`` node i runs on core i mod 2 instead: one node
per core, the load and Redis sharing core 1 with the second node.
"""

from __future__ import annotations

import argparse
import contextlib
import uuid

from redis_meter import own_redis


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The cluster flags both benches take."""
    parser.add_argument("--nodes", type=int, default=0,
                        help="run K livecart nodes sharing one Redis (beside one memory-backed node, "
                             "in the same command); 0: the one-node bench")
    parser.add_argument("--redis-url", default="",
                        help="the Redis the nodes share (default: a redis-server of the bench's own, "
                             "no persistence, on a free port, pinned to --redis-core)")
    parser.add_argument("--node-cores", default="0",
                        help="comma-separated cores; node i is pinned to the (i mod count)-th")
    parser.add_argument("--redis-core", type=int, default=1, help="core of the bench's own redis-server")


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse cluster flags that cannot work, with the reason."""
    if args.nodes < 0:
        parser.error("--nodes must be 0 (one node) or more")
    if args.redis_url and not args.nodes:
        parser.error("--redis-url needs --nodes K (the nodes that share it)")
    try:
        args.node_core_list = [int(core) for core in args.node_cores.split(",")]
    except ValueError:
        parser.error(f"--node-cores {args.node_cores!r}: expected comma-separated core numbers")


def node_core(args: argparse.Namespace, i: int) -> int:
    """The core node ``i`` is pinned to."""
    cores: list[int] = args.node_core_list
    return cores[i % len(cores)]


def node_flags(url: str, prefix: str, i: int) -> list[str]:
    """The `livecart serve` flags that make node ``i`` one of the cluster on ``url`` under ``prefix``."""
    return ["--redis-url", url, "--redis-prefix", prefix, "--node-id", f"bench-node-{i}"]


def new_prefix() -> str:
    """A key prefix of one run: its nodes share it, no other run's keys are seen."""
    return f"livecart-bench:{uuid.uuid4().hex[:10]}:"


def redis_url(args: argparse.Namespace, stack: contextlib.ExitStack) -> str:
    """``--redis-url``, or the URL of a redis-server of the bench's own that ``stack`` stops at its end
    (at ``--server-nice``, as the nodes)."""
    return args.redis_url or stack.enter_context(own_redis(args.redis_core, args.server_nice))


def core_split(args: argparse.Namespace, load_core: int = 1) -> str:
    """One sentence saying where the nodes, Redis and the load ran."""
    cores = sorted(set(args.node_core_list))
    nodes = (f"all {args.nodes} nodes on core {cores[0]}" if len(cores) == 1 else
             f"{args.nodes} nodes, node i on core {' / '.join(str(c) for c in args.node_core_list)} (i mod "
             f"{len(args.node_core_list)})")
    redis = (f"Redis at {args.redis_url} (not pinned by the bench)" if args.redis_url else
             f"the bench's own redis-server (no persistence) on core {args.redis_core}"
             + (f" at the servers' nice value {args.server_nice}" if args.server_nice else ""))
    return (f"Cores: {nodes}; {redis}; the load (viewers or tappers, publisher, probe) on core {load_core}. "
            f"The memory-backed baseline is one node on core {cores[0]}.")
