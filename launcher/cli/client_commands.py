"""`bulk-export clients add|list|remove`: the SMART Backend Services clients a server accepts.

A client is registered with its public keys (a JWKS file, or the URL that
serves its JWKS), its tenant, and the most it may ever be granted. `serve`
then defaults to `--auth smart`. Removing a client revokes its access tokens
at once. Exit 2 for a refused registration (nothing is stored), 1 for
removing a client that is not registered.
"""

from __future__ import annotations

import argparse
import json
import sys

from launcher.stores import open_store
from transforms.fhir.instant import now_instant

# The key and scope checks (PyJWT, httpx, the R4 type list) load in the commands, not with `--help`.
DEFAULT_SCOPE = "system/*.read"


def add_parser(commands, store_options) -> None:
    """Adds `clients` and its subcommands to `commands`; `store_options(parser)` adds --state-dir and --job-store."""
    clients = commands.add_parser("clients", allow_abbrev=False, help="register SMART Backend Services clients",
                                  description=__doc__.split("\n\n")[1].replace("\n", " "))
    actions = clients.add_subparsers(dest="clients_command", required=True)
    add = actions.add_parser("add", allow_abbrev=False, help="register a client and its public keys")
    store_options(add)
    add.add_argument("--client-id", required=True, help="the client's id: its assertions' iss and sub")
    keys = add.add_mutually_exclusive_group(required=True)
    keys.add_argument("--jwks-url", help="the https URL serving the client's public JWKS (fetched when used)")
    keys.add_argument("--jwks", metavar="FILE", help="a JSON file holding the client's public JWKS")
    add.add_argument("--scope", action="append", metavar="SCOPE",
                     help=f"the most it may be granted, e.g. system/Patient.read; repeatable (default {DEFAULT_SCOPE})")
    add.add_argument("--tenant", default="default", help="the tenant its exports belong to (default: default)")
    add.set_defaults(handler=add_client)

    listing = actions.add_parser("list", allow_abbrev=False, help="list registered clients")
    store_options(listing)
    listing.add_argument("--tenant", dest="client_tenant", help="only this tenant's clients (default: every tenant's)")
    listing.add_argument("--json", action="store_true", help="one JSON object per client")
    listing.set_defaults(handler=list_clients)

    remove = actions.add_parser("remove", allow_abbrev=False, help="remove a client; its tokens stop working")
    store_options(remove)
    remove.add_argument("--client-id", required=True)
    remove.set_defaults(handler=remove_client)


def add_client(args: argparse.Namespace, _: list[str]) -> int:
    from launcher.auth.clients import Client, check_client_id
    from launcher.auth.keys import check_jwks_url
    from launcher.auth.scopes import parse_scopes

    scopes = " ".join(str(s) for s in parse_scopes(" ".join(args.scope or [DEFAULT_SCOPE])))
    jwks_url = check_jwks_url(args.jwks_url) if args.jwks_url else None
    jwks = _jwks_file(args.jwks) if args.jwks else None
    client = Client(check_client_id(args.client_id), args.tenant, scopes, jwks_url, jwks, now_instant())
    open_store(args.job_store or args.state_dir).add_client(client)
    print(f"client {client.client_id} registered: tenant {client.tenant}, at most {scopes}")
    return 0


def _jwks_file(path: str) -> dict:
    from launcher.auth.keys import KeysRefused, check_jwks

    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise KeysRefused(f"--jwks {path}: {getattr(exc, 'strerror', None) or 'not a JSON file'}") from None
    return check_jwks(data, f"--jwks {path}")


def list_clients(args: argparse.Namespace, _: list[str]) -> int:
    store = open_store(args.job_store or args.state_dir, read_only=True)
    for client in store.clients(args.client_tenant):
        if args.json:
            print(json.dumps(client.to_json_dict()))
        else:
            keys = client.jwks_url or "kids " + ",".join(k["kid"] for k in client.jwks["keys"])
            print(f"{client.client_id}  tenant {client.tenant}  {client.scopes}  {keys}")
    return 0


def remove_client(args: argparse.Namespace, _: list[str]) -> int:
    if not open_store(args.job_store or args.state_dir).remove_client(args.client_id):
        print(f"bulk-export: no client {args.client_id!r} is registered", file=sys.stderr)
        return 1
    print(f"client {args.client_id} removed")
    return 0
