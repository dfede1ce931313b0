"""``bot agent``: console accounts, registered on the main parser by ``bot.cli``.

bot agent add NAME [--role agent|admin] [--password-stdin] [--db URL]
bot agent list [--db URL]
bot agent disable NAME [--db URL]     (also ends the agent's console sessions)
bot agent enable NAME [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any

from bot.auth import MIN_PASSWORD_CHARS, hash_password
from bot.config import Config
from bot.store.models import AGENT_ROLES


def register(sub: Any) -> None:
    agent = sub.add_parser("agent", help="agent console accounts")
    agent_sub = agent.add_subparsers(dest="agent_command", required=True, metavar="COMMAND")
    p = agent_sub.add_parser("add", help="create an agent (asks for the password)")
    p.add_argument("name")
    p.add_argument("--role", choices=AGENT_ROLES, default="agent")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    _db_flag(p)
    p.set_defaults(func=cmd_add)
    p = agent_sub.add_parser("list", help="list the agents")
    _db_flag(p)
    p.set_defaults(func=cmd_list)
    for name, active in (("disable", False), ("enable", True)):
        p = agent_sub.add_parser(name, help=f"{name} an agent's login")
        p.add_argument("name")
        _db_flag(p)
        p.set_defaults(func=cmd_set_active, active=active)


def _db_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="URL", help="database URL (default: database.url)")


def _config(args: argparse.Namespace, config: Config) -> Config:
    from bot.store import resolve_url

    url = resolve_url(args.db or config.database.url, config.root)
    return config.replace(database={"url": url})


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("bot: the passwords differ")
    return first


def cmd_add(args: argparse.Namespace, config: Config) -> int:
    name = args.name.strip()
    if not name or len(name) > 80:
        print("bot: an agent name has 1 to 80 characters", file=sys.stderr)
        return 2
    password = _read_password(args)
    if len(password) < MIN_PASSWORD_CHARS:
        print(f"bot: use a password of {MIN_PASSWORD_CHARS} characters or more", file=sys.stderr)
        return 2
    return asyncio.run(_add(_config(args, config), name, hash_password(password), args.role))


async def _add(config: Config, name: str, password_hash: str, role: str) -> int:
    from bot.errors import StoreError
    from bot.store import Store

    async with Store(config.database) as store:
        await store.check_schema()
        try:
            await store.add_agent(name, password_hash, role=role)
        except StoreError as exc:
            print(f"bot: {exc}", file=sys.stderr)
            return 1
    print(f"bot: agent {name} ({role}) added", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_list(_config(args, config)))


async def _list(config: Config) -> int:
    from bot.store import Store

    async with Store(config.database) as store:
        await store.check_schema()
        for agent in await store.agents():
            state = "active" if agent.active else "disabled"
            print(f"{agent.name}\t{agent.role}\t{state}")
    return 0


def cmd_set_active(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_set_active(_config(args, config), args.name, args.active))


async def _set_active(config: Config, name: str, active: bool) -> int:
    from bot.store import Store

    async with Store(config.database) as store:
        await store.check_schema()
        if not await store.set_agent_active(name, active):
            print(f"bot: no agent named {name!r}", file=sys.stderr)
            return 1
    print(f"bot: agent {name} {'enabled' if active else 'disabled'}", file=sys.stderr)
    return 0
