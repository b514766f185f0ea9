"""`python -m sidecar` serves; `python -m sidecar keys ...` manages keys in a keys file."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime
from pathlib import Path

from aiohttp import web

from sidecar.app import create_app
from sidecar.keys import KeyFileError, add_key, read_key_file, revoke_key
from sidecar.logs import log_config
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


def keys_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidecar keys", description="Manage API keys in a keys file.")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="add a key (or replace the key with that id); prints it once")
    create.add_argument("--file", type=Path, required=True)
    create.add_argument("--id", required=True)
    create.add_argument("--priority", type=int, default=0)
    create.add_argument("--expires", type=datetime.fromisoformat, default=None, help="ISO 8601 date-time")
    listing = sub.add_parser("list", help="list key ids and metadata (never keys)")
    listing.add_argument("--file", type=Path, required=True)
    revoke = sub.add_parser("revoke", help="disable a key by id")
    revoke.add_argument("--file", type=Path, required=True)
    revoke.add_argument("--id", required=True)
    args = parser.parse_args(argv)
    try:
        if args.action == "create":
            print(add_key(args.file, args.id, args.priority, args.expires))
        elif args.action == "list":
            for entry in read_key_file(args.file):
                state = "disabled" if entry.disabled else ("expired" if entry.expired() else "active")
                print(f"{entry.id}\tpriority={entry.priority}\t{state}")
        elif args.action == "revoke" and not revoke_key(args.file, args.id):
            print(f"no active key with id {args.id!r}", file=sys.stderr)
            return 1
    except KeyFileError as err:
        print(err, file=sys.stderr)
        return 2
    return 0


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
