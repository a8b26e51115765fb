"""`make run-cluster`: a local PostgreSQL and Redis, and `python -m server --workers N` in front of them.

    python tools/run_cluster.py [--dir build/cluster] [--workers 2] [--fresh]

What a deployment of several replicas looks like, on one machine: PostgreSQL on a free port of
127.0.0.1 (its data kept in DIR/postgres, so conversations, sessions and keys outlive a restart of the
cluster; `--fresh` starts from an empty database), Redis on another (saving nothing: every counter in it
expires by itself, and a key's spend is read back from PostgreSQL), then the server's workers with
AIBATTLE_DB and AIBATTLE_REDIS_URL naming them. Every other setting is the user's: AIBATTLE_CONFIG,
AIBATTLE_GRPC_ADDR, AIBATTLE_HTTP_ADDR, AIBATTLE_ADMIN_KEY, ... pass through unchanged.

Stopping: Ctrl-C (SIGINT to the foreground process group) or SIGTERM reaches the server, which drains
(this script also passes the signal on, for a SIGTERM sent to it alone; the server takes a repeat within
a second as the same request). When the server has exited, Redis and then PostgreSQL are stopped: they
run in sessions of their own, so the terminal's Ctrl-C does not stop them under a draining server. The
exit status is the server's. Should this script be killed outright (SIGKILL), the kernel sends each of
its three children SIGTERM (PR_SET_PDEATHSIG): none of them outlives it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

import asyncpg  # type: ignore[import-untyped]
from local_services import PostgresServer, RedisServer, die_with_parent_hook, start_postgres, start_redis

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "aibattle"


async def create_database(server: PostgresServer, name: str) -> None:
    """The server's database, created on the first start (the server then creates its tables)."""
    admin = await asyncpg.connect(server.url())
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="run_cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "build" / "cluster", help="where the data lives")
    parser.add_argument("--workers", type=int, default=2, help="server processes sharing the ports")
    parser.add_argument("--fresh", action="store_true", help="remove the kept PostgreSQL data first")
    args = parser.parse_args()

    data = args.dir.resolve() / "postgres"
    if args.fresh:
        shutil.rmtree(data, ignore_errors=True)
    server: subprocess.Popen[bytes] | None = None
    signals: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals.append(signum)
        if server is not None and server.poll() is None:
            server.send_signal(signum)

    # Set before anything starts: a Ctrl-C during the start-up still stops what has started.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    postgres: PostgresServer | None = None
    redis: RedisServer | None = None
    try:
        postgres = start_postgres(directory=data, durable=True, new_session=True, die_with_parent=True)
        asyncio.run(create_database(postgres, DATABASE))
        redis = start_redis(new_session=True, die_with_parent=True)
        print(f"PostgreSQL on {postgres.url(DATABASE)} (data in {data}, log {postgres.log})", flush=True)
        print(f"Redis on {redis.url} (saves nothing)", flush=True)
        if signals:
            return 0
        env = {**os.environ, "AIBATTLE_DB": postgres.url(DATABASE), "AIBATTLE_REDIS_URL": redis.url}
        # The server stays in this process group: a Ctrl-C at the terminal reaches it directly.
        server = subprocess.Popen(
            [sys.executable, "-m", "server", "--workers", str(args.workers)],
            cwd=ROOT,
            env=env,
            preexec_fn=die_with_parent_hook,  # drains should this script be killed outright
        )
        if signals:  # came while it was being started: it never got it
            server.send_signal(signals[0])
        status = server.wait()
        print(
            f"server exited ({status}); stopping Redis and PostgreSQL (its data stays in {data})", flush=True
        )
        return status if status >= 0 else 128 - status
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        detail = (
            exc.stderr.decode(errors="replace").strip()
            if isinstance(exc, subprocess.CalledProcessError)
            else ""
        )
        print(f"run-cluster: cannot start: {exc}" + (f"\n{detail}" if detail else ""), file=sys.stderr)
        return 1
    finally:
        if server is not None and server.poll() is None:  # an error here, not a signal: stop it
            server.terminate()
            server.wait()
        if redis is not None:
            redis.stop()
        if postgres is not None:
            postgres.stop()
        print("cluster stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
