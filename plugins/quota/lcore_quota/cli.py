"""`lcore quota show|set|increase|revoke`: look at and change budgets in the quota database."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import sys
from collections.abc import Coroutine
from typing import Any

from lcore_core import ConfigError
from lcore_core.api import EXIT_CONFIG, config_arg
from lcore_quota.quota import Quota, iso
from lcore_quota.store import CLUSTER_SUBJECT, MAX_TOKENS, Limiter, QuotaDatabaseError

EXIT_DATABASE = 4


def add_commands(subparsers: Any) -> None:
    quota = subparsers.add_parser("quota", help="show and change token quotas (lcore-quota)")
    commands = quota.add_subparsers(dest="quota_command", required=True)

    show = commands.add_parser("show", help="a user's (or the cluster's) budgets and usage")
    _subject_args(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=show_command)

    for name, helptext, handler in (
            ("set", "set the available tokens until the next reset", set_command),
            ("increase", "add tokens to the available tokens", increase_command)):
        parser = commands.add_parser(name, help=helptext)
        _subject_args(parser)
        parser.add_argument("tokens", type=_tokens, help="number of tokens (0 to 2^63-1)")
        parser.add_argument("--limiter", help="only this limiter (default: every limiter of "
                                              "the subject's type)")
        parser.set_defaults(handler=handler)

    revoke = commands.add_parser("revoke", help="set the available tokens to 0 until the next "
                                                "reset")
    _subject_args(revoke)
    revoke.add_argument("--limiter", help="only this limiter")
    revoke.set_defaults(handler=revoke_command)


def _tokens(text: str) -> int:
    """A token count the quota database can hold (a 64-bit signed integer, never negative)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= MAX_TOKENS:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_TOKENS}, not {value}")
    return value


def _subject_args(parser: argparse.ArgumentParser) -> None:
    config_arg(parser)
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="the user id (as authentication reports it)")
    who.add_argument("--cluster", action="store_true", help="the cluster limiters")


def _quota(args: argparse.Namespace) -> Quota:
    # Not exported from lcore_core's root (asked for): what `lcore config check` uses.
    from lcore_core import load_config, load_plugins

    config = load_config(args.config, load_plugins())
    settings = config.get("quota_handlers")
    if not settings or not settings.get("limiters"):
        raise ConfigError("no quota limiters are configured", file=config.source,
                          key="quota_handlers")
    return Quota(settings)


def _limiters(quota: Quota, args: argparse.Namespace) -> list[Limiter]:
    chosen = [lim for lim in quota.limiters if lim.is_cluster == bool(args.cluster)]
    name = getattr(args, "limiter", None)
    if name is not None:
        chosen = [lim for lim in chosen if lim.name == name]
        if not chosen:
            kind = "cluster" if args.cluster else "user"
            names = ", ".join(lim.name for lim in quota.limiters
                              if lim.is_cluster == bool(args.cluster)) or "none"
            raise ConfigError(f"no {kind} limiter named {name!r} (configured: {names})",
                              key="quota_handlers.limiters")
    return chosen


def _on_own_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` on an event loop of its own: this thread's, or a worker thread's when this
    one runs a loop already (`main()` called from async code, as the tests do)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main).result()


def _run(args: argparse.Namespace, action: Any) -> int:
    """`action(quota, subject)` (a coroutine function) on an event loop of its own."""
    async def run() -> int:
        quota = _quota(args)
        try:
            return int(await action(quota, CLUSTER_SUBJECT if args.cluster else args.user) or 0)
        finally:
            await quota.close()

    try:
        return _on_own_loop(run())
    except ConfigError as exc:
        print(f"lcore quota: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except QuotaDatabaseError as exc:
        print(f"lcore quota: quota database error: {exc}", file=sys.stderr)
        return EXIT_DATABASE


def _change(args: argparse.Namespace, change: Any) -> int:
    async def act(quota: Quota, subject: str) -> int:
        now = quota.clock()
        for lim in _limiters(quota, args):
            await change(quota, lim, subject, now)
        return await _show(quota, args, subject)

    return _run(args, act)


def set_command(args: argparse.Namespace) -> int:
    return _change(args, lambda q, lim, who, now: q.store.set_available(lim, who, args.tokens,
                                                                          now))


def increase_command(args: argparse.Namespace) -> int:
    return _change(args, lambda q, lim, who, now: q.store.increase(lim, who, args.tokens, now))


def revoke_command(args: argparse.Namespace) -> int:
    return _change(args, lambda q, lim, who, now: q.store.set_available(lim, who, 0, now,
                                                                          revoke=True))


def show_command(args: argparse.Namespace) -> int:
    return _run(args, lambda quota, subject: _show(quota, args, subject))


async def _show(quota: Quota, args: argparse.Namespace, subject: str) -> int:
    # `states` needs a user id; for the cluster the user limiters are simply left out.
    states = [s for s in await quota.read_states(subject or CLUSTER_SUBJECT)
              if s.limiter.is_cluster == bool(args.cluster)]
    usage = [] if args.cluster or not quota.history else await quota.store.usage_totals(subject)
    report: dict[str, Any] = {
        "subject": "cluster" if args.cluster else subject,
        "limiters": [{"name": s.limiter.name, "type": s.limiter.type,
                      "period": s.limiter.period.text, "quota_limit": s.quota_limit,
                      "available": s.available, "resets_at": iso(s.resets_at),
                      "revoked_at": iso(s.revoked_at) if s.revoked_at else None}
                     for s in states],
        "token_usage": [{**row, "last_at": str(row["last_at"])} for row in usage],
        "token_history": quota.history,
    }
    if getattr(args, "json", False):
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(report["subject"] if args.cluster else f"user {subject}")
    for lim in report["limiters"]:
        revoked = f", revoked at {lim['revoked_at']}" if lim["revoked_at"] else ""
        print(f"  {lim['name']} ({lim['type']}, every {lim['period']}): {lim['available']} of "
              f"{lim['quota_limit']} tokens available, next reset {lim['resets_at']}{revoked}")
    if not args.cluster:
        if not quota.history:
            print("  token usage: not recorded (enable_token_history is off)")
        for row in report["token_usage"]:
            print(f"  {row['provider']}/{row['model']}: {row['input_tokens']} input + "
                  f"{row['output_tokens']} output tokens in {row['calls']} calls")
    return 0
