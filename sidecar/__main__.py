"""`python -m sidecar` serves; `python -m sidecar keys ...` manages keys in a keys file."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path

import redis
from aiohttp import web

from sidecar.app import create_app
from sidecar.keys import KeyFileError, add_key, read_key_file, revoke_key, rotate_key
from sidecar.logs import log_config
from sidecar.redis_keys import RedisKeyAdmin, describe
from sidecar.settings import Settings, SettingsError

logger = logging.getLogger("sidecar")


def serve() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(err, file=sys.stderr)
        return 2
    log_config(settings.log_level)
    try:
        app = create_app(settings)
    except KeyFileError as err:
        print(f"invalid llm-pod settings:\n  - {err}", file=sys.stderr)
        return 2
    logger.info(
        "sidecar listening on %s:%d for model %s",
        settings.sidecar_host,
        settings.sidecar_port,
        settings.served_model,
    )
    web.run_app(app, host=settings.sidecar_host, port=settings.sidecar_port, print=None, access_log=None)
    return 0


def _store_args(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--file", type=Path, help="a static keys file (YAML)")
    where.add_argument("--redis", metavar="URL", help="a Redis key store (default: $LLM_POD_REDIS_URL)")
    parser.add_argument("--prefix", default=os.environ.get("LLM_POD_REDIS_PREFIX", "llm-pod"))


def _limits(args: argparse.Namespace) -> dict[str, int]:
    return {name: value for name, value in (("rpm", args.rpm), ("concurrency", args.concurrency)) if value}


def keys_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar keys", description="Manage API keys in a keys file or a Redis key store."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="make a key; prints it once (it is stored only as a hash)")
    create.add_argument("--id", required=True)
    create.add_argument("--priority", type=int, default=0)
    create.add_argument("--expires", type=datetime.fromisoformat, default=None, help="ISO 8601 date-time")
    create.add_argument("--rpm", type=int, default=0, help="requests per minute (0: no limit)")
    create.add_argument("--concurrency", type=int, default=0, help="requests in flight at once (0: no limit)")
    create.add_argument(
        "--model", action="append", default=[], help="a served model it may use (repeat; default any)"
    )
    listing = sub.add_parser("list", help="key ids and metadata (never keys)")
    show = sub.add_parser("show", help="one key's metadata (never the key)")
    show.add_argument("--id", required=True)
    revoke = sub.add_parser("revoke", help="disable a key by id")
    revoke.add_argument("--id", required=True)
    rotate = sub.add_parser("rotate", help="a new key for an id, same metadata; the old one stops working")
    rotate.add_argument("--id", required=True)
    for p in (create, listing, show, revoke, rotate):
        _store_args(p)
    args = parser.parse_args(argv)
    try:
        if args.file is not None:
            return _file_keys(args)
        url = args.redis or os.environ.get("LLM_POD_REDIS_URL", "")
        if not url:
            print(
                "say where the keys live: --file PATH or --redis URL (or set LLM_POD_REDIS_URL)",
                file=sys.stderr,
            )
            return 2
        with redis.Redis.from_url(url, decode_responses=True) as client:
            return _redis_keys(args, RedisKeyAdmin(client, args.prefix))
    except KeyFileError as err:
        print(err, file=sys.stderr)
        return 2
    except redis.RedisError as err:
        print(f"redis: {err}", file=sys.stderr)
        return 1


def _file_keys(args: argparse.Namespace) -> int:
    if args.action == "create":
        # As with Redis: an id names one key; replacing it is `rotate`, and says so.
        if args.file.exists() and any(e.id == args.id for e in read_key_file(args.file)):
            raise KeyFileError(f"a key with id {args.id!r} exists: rotate or revoke it")
        print(add_key(args.file, args.id, args.priority, args.expires, _limits(args), tuple(args.model)))
    elif args.action == "list":
        for entry in read_key_file(args.file):
            print(json.dumps(describe(entry)))
    elif args.action == "show":
        found = [e for e in read_key_file(args.file) if e.id == args.id]
        if not found:
            raise KeyFileError(f"no key with id {args.id!r}")
        print(json.dumps(describe(found[0])))
    elif args.action == "rotate":
        print(rotate_key(args.file, args.id))
    elif args.action == "revoke" and not revoke_key(args.file, args.id):
        print(f"no active key with id {args.id!r}", file=sys.stderr)
        return 1
    return 0


def _redis_keys(args: argparse.Namespace, admin: RedisKeyAdmin) -> int:
    if args.action == "create":
        print(admin.create(args.id, args.priority, args.expires, _limits(args), tuple(args.model)))
    elif args.action == "list":
        for entry in admin.list():
            print(json.dumps(describe(entry)))
    elif args.action == "show":
        print(json.dumps(describe(admin.show(args.id))))
    elif args.action == "rotate":
        print(admin.rotate(args.id))
    elif args.action == "revoke":
        admin.revoke(args.id)
    return 0


def keys_main() -> int:
    """The `llm-pod-keys` console script: `python -m sidecar keys` under a name of its own."""
    return keys_command(sys.argv[1:])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["keys"]:
        return keys_command(args[1:])
    if args:
        print("usage: python -m sidecar [keys ...]", file=sys.stderr)
        return 2
    return serve()


if __name__ == "__main__":
    sys.exit(main())
