"""``bot data erase | purge | revoke``: delete a customer's conversations, or all past
retention; end a conversation's resume tokens (a lost or leaked device)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from bot.config import Config
from bot.errors import BotError

Handler = Callable[[argparse.Namespace, Config], int]


def register(subparsers: Any) -> dict[str, Handler]:
    data = subparsers.add_parser("data", help="erase or purge stored conversations (GDPR)")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = sub.add_parser("erase", help="delete one customer's conversations everywhere")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--conversation", action="append", metavar="ID", help="repeatable")
    who.add_argument("--email", help="every conversation in which the customer wrote it")
    p.add_argument("--db", help="database URL (default: database.url)")
    p.set_defaults(func=cmd_erase)

    p = sub.add_parser("revoke", help="no resume token of these conversations works again")
    p.add_argument("--conversation", action="append", required=True, metavar="ID")
    p.add_argument("--db", help="database URL (default: database.url)")
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("purge", help="delete conversations idle longer than the retention")
    p.add_argument("--older-than-days", type=float, help="default: privacy.retention_days")
    p.add_argument("--db", help="database URL (default: database.url)")
    p.set_defaults(func=cmd_purge)
    return {"erase": cmd_erase, "purge": cmd_purge, "revoke": cmd_revoke}


def _database(args: argparse.Namespace, config: Config) -> Any:
    return dataclasses.replace(config.database, url=args.db) if args.db else config.database


def cmd_erase(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_erase(args, config))


async def _erase(args: argparse.Namespace, config: Config) -> int:
    from bot.store import Store
    from bot.store.retention import conversations_of, erase

    async with Store(_database(args, config)) as store:
        await store.check_schema()
        try:
            ids = list(args.conversation or []) or await conversations_of(store, args.email)
        except ValueError as exc:
            raise BotError(str(exc)) from exc
        deleted = await erase(store, ids)
    print(f"bot: erased {deleted} conversation(s)", file=sys.stderr)
    return 0


def cmd_revoke(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_revoke(args, config))


async def _revoke(args: argparse.Namespace, config: Config) -> int:
    from bot.store import Store

    async with Store(_database(args, config)) as store:
        await store.check_schema()
        revoked = await store.revoke_resume(list(args.conversation))
    print(f"bot: revoked the resume tokens of {revoked} conversation(s)", file=sys.stderr)
    return 0


def cmd_purge(args: argparse.Namespace, config: Config) -> int:
    days = args.older_than_days or config.privacy.retention_days
    if not days:
        raise BotError(
            "no retention set: privacy.retention_days is 0 (keep) and no --older-than-days"
        )
    return asyncio.run(_purge(args, config, days))


async def _purge(args: argparse.Namespace, config: Config, days: float) -> int:
    from bot.store import Store
    from bot.store.retention import purge

    async with Store(_database(args, config)) as store:
        await store.check_schema()
        deleted = await purge(store, days)
    print(
        f"bot: purged {deleted} conversation(s) idle for more than {days:g} days", file=sys.stderr
    )
    return 0
