"""`llmpi keys ...`: the keys that open the API, one per device, each with its share and limits, and what each used.

A key change takes effect at once: llama-server re-reads its key file when it changes; requests already running
finish.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

from ..core import keys
from ..core.env import ConfigError
from ..core.settings import Settings
from ..usage import ledger


def shorten(key: str) -> str:
    return key[:12] + "…" if len(key) > 16 else key[:4] + "…"


def current_auth(s: Settings) -> keys.Auth:
    """The configured or stored keys, as the launcher resolved them at start."""
    return keys.resolve(s.auth, s.api_keys, s.api_keys_origin, s.data_dir)


def add_policy_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-slots", type=int, metavar="N", help="most slots the key holds at once (0: no cap of its own)")
    p.add_argument("--priority", choices=keys.PRIORITIES, help="high: its requests take the next free slot first")
    p.add_argument("--daily-tokens", type=int, metavar="N", help="tokens (prompt + answer) a day; 0: no limit")
    p.add_argument("--hourly-tokens", type=int, metavar="N", help="tokens (prompt + answer) an hour; 0: no limit")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    k = sub.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    k.add_parser("list", help="the keys that open the API, with each one's share and limits")
    show = k.add_parser("show", help="print a key: the generated one, or a named one")
    show.add_argument("name", nargs="?")
    add = k.add_parser("add", help="make a key for one device")
    add.add_argument("name")
    add_policy_arguments(add)
    change = k.add_parser("set", help="change a named key's share or limits (the key stays the same)")
    change.add_argument("name")
    add_policy_arguments(change)
    revoke = k.add_parser("revoke", help="remove a named key")
    revoke.add_argument("name")
    usage = k.add_parser("usage", help="tokens and requests per key: today, this week, since the start")
    usage.add_argument("--json", action="store_true", help="as JSON")


def policy_from(args: argparse.Namespace, base: keys.KeyPolicy) -> keys.KeyPolicy:
    """The share and limits the command line sets, the others as in `base`."""
    for flag, value in (("--max-slots", args.max_slots), ("--daily-tokens", args.daily_tokens)):
        if value is not None and value < 0:
            raise ConfigError(f"{flag} {value}: use 0 or more")
    if args.hourly_tokens is not None and args.hourly_tokens < 0:
        raise ConfigError(f"--hourly-tokens {args.hourly_tokens}: use 0 or more")
    return keys.KeyPolicy(
        slots=base.slots if args.max_slots is None else args.max_slots,
        priority=base.priority if args.priority is None else args.priority,
        tokens_day=base.tokens_day if args.daily_tokens is None else args.daily_tokens,
        tokens_hour=base.tokens_hour if args.hourly_tokens is None else args.hourly_tokens,
    )


def keys_list(s: Settings) -> str:
    auth = current_auth(s)
    if not auth.enabled:
        return "authentication is off (LLMPI_AUTH=off): the API takes no key"
    origin = {"stored": f"{s.data_dir / keys.KEY_FILE_NAME}", "generated": f"{s.data_dir / keys.KEY_FILE_NAME}"}
    lines = [f"{origin.get(auth.source, auth.source):<28} {shorten(k)}" for k in auth.keys]
    for name, (k, policy) in keys.read_named(s.data_dir).items():
        limits = policy.describe()
        lines.append(f"{name:<28} {shorten(k)}" + (f"  {limits}" if limits else ""))
    return "\n".join(lines)


def keys_show(s: Settings, name: str | None) -> str:
    if name:
        named = keys.read_named_keys(s.data_dir)
        if name not in named:
            raise ConfigError(f"there is no key named {name!r} (llmpi keys list)")
        return named[name]
    auth = current_auth(s)
    if not auth.enabled:
        raise ConfigError("authentication is off (LLMPI_AUTH=off): there is no key")
    if auth.source not in ("stored", "generated"):
        raise ConfigError(f"the key comes from {auth.source}, set by you; it is not shown here")
    return auth.keys[0]


def keys_add(s: Settings, name: str, policy: keys.KeyPolicy | None = None) -> str:
    keys.check_name(name)
    if name in (keys.DEFAULT_KEY_NAME, keys.ADMIN_KEY_NAME):
        raise ConfigError(f"{name!r} names the configured or admin keys in usage and logs: choose another name")
    auth = current_auth(s)
    if not auth.enabled:
        raise ConfigError("authentication is off (LLMPI_AUTH=off): a key would open nothing; turn it on first")
    named = keys.read_named(s.data_dir)
    if name in named:
        raise ConfigError(f"a key named {name!r} exists already; revoke it first to replace it")
    named[name] = (keys.generate_key(), policy or keys.KeyPolicy())
    keys.write_named(s.data_dir, named)
    keys.write_server_keys(auth, s.data_dir, s.key_max_slots)
    return named[name][0]


def keys_set(s: Settings, name: str, args: argparse.Namespace) -> str:
    named = keys.read_named(s.data_dir)
    if name not in named:
        raise ConfigError(f"there is no key named {name!r} (llmpi keys list)")
    key, before = named[name]
    after = policy_from(args, before)
    named[name] = (key, after)
    keys.write_named(s.data_dir, named)
    keys.write_server_keys(current_auth(s), s.data_dir, s.key_max_slots)
    return f"{name!r}: {after.describe() or 'no share or limits of its own'}; in effect for its next request"


def keys_revoke(s: Settings, name: str) -> str:
    named = keys.read_named(s.data_dir)
    if name not in named:
        raise ConfigError(f"there is no key named {name!r} (llmpi keys list)")
    del named[name]
    keys.write_named(s.data_dir, named)
    keys.write_server_keys(current_auth(s), s.data_dir, s.key_max_slots)
    return f"revoked {name!r}: new requests with it are refused (401); requests already running finish"


def keys_usage(s: Settings, as_json: bool) -> str:
    summary = ledger.summarize(ledger.read(s.usage_file), dt.date.today())
    return json.dumps(ledger.as_json(summary), indent=2) if as_json else ledger.table(summary)


def keys_main(args: argparse.Namespace, s: Settings) -> str:
    if args.action == "list":
        return keys_list(s)
    if args.action == "show":
        return keys_show(s, args.name)
    if args.action == "add":
        return keys_add(s, args.name, policy_from(args, keys.KeyPolicy()))
    if args.action == "set":
        return keys_set(s, args.name, args)
    if args.action == "usage":
        return keys_usage(s, args.json)
    return keys_revoke(s, args.name)
