"""`bulk-export keys list|rotate`: the keys that sign `serve --auth smart`'s access tokens.

`rotate` adds a new signing key; the old ones verify the tokens they signed
until `--grace` ends (default: an access token's lifetime, so no token is cut
short), or are revoked at once with `--revoke-now`. Every server sharing the
store signs with the new key and honours the revocation within seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Optional

from launcher.stores import open_store
from transforms.fhir.instant import now_instant

_MS = 1000


def add_parser(commands, store_options, duration) -> None:
    """Adds `keys` and its subcommands to `commands`; `store_options(parser)` adds --state-dir and --job-store,
    `duration(name)` parses a duration flag."""
    keys = commands.add_parser("keys", allow_abbrev=False, help="rotate the keys that sign access tokens",
                               description=__doc__.split("\n\n")[1].replace("\n", " "))
    actions = keys.add_subparsers(dest="keys_command", required=True)
    listing = actions.add_parser("list", allow_abbrev=False, help="list the signing keys in force (never the keys)")
    store_options(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per key")
    listing.set_defaults(handler=list_keys)

    rotate = actions.add_parser("rotate", allow_abbrev=False, help="sign new tokens with a new key")
    store_options(rotate)
    ending = rotate.add_mutually_exclusive_group()
    ending.add_argument("--grace", type=duration("--grace"), metavar="DURATION",
                        help="how long the old keys still verify the tokens they signed, e.g. 10m (default: an"
                        " access token's lifetime)")
    ending.add_argument("--revoke-now", action="store_true",
                        help="revoke the old keys at once: every token they signed stops working")
    rotate.set_defaults(handler=rotate_keys)


def _instant(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / _MS))


def _state(row: dict) -> str:
    return "active" if row["retires_ms"] is None else "retiring until " + _instant(row["retires_ms"])


def list_keys(args: argparse.Namespace, _: list[str]) -> int:
    store = open_store(args.job_store or args.state_dir, read_only=True)
    for row in store.signing_keys(int(time.time() * _MS)):
        if args.json:
            print(json.dumps({"kid": row["name"], "state": "active" if row["retires_ms"] is None else "retiring",
                              "retires_ms": row["retires_ms"], "created_at": row["created_at"]}))
        else:
            print(f"{row['name']}  {_state(row)}  created {row['created_at']}")
    return 0


def rotate_keys(args: argparse.Namespace, _: list[str]) -> int:
    from launcher.auth.access_tokens import ACCESS_TOKEN_S
    from launcher.auth.signing_keys import new_key

    now_ms = int(time.time() * _MS)
    retire_ms: Optional[int] = None if args.revoke_now else now_ms + int((args.grace or ACCESS_TOKEN_S) * _MS)
    kid, pem = new_key()
    dropped = open_store(args.job_store or args.state_dir).rotate_signing_key(kid, pem, now_instant(), now_ms,
                                                                              retire_ms)
    print(f"signing key {kid} is active", end="")
    if retire_ms is None:
        print(f"; revoked {', '.join(dropped) or 'nothing'}")
    else:
        print(f"; the old keys verify their tokens until {_instant(retire_ms)}")
    return 0
