"""``featurestore join``: call a running server over HTTP or gRPC (``featurestore.client``)
and print a table."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from datetime import datetime
from typing import Any

from featurestore.cli.base import Subcommands
from featurestore.errors import InvalidArgument


def register(sub: Subcommands) -> None:
    j = sub.add_parser("join", help="join features for some entity keys and print a table")
    j.add_argument(
        "--entity",
        action="append",
        required=True,
        metavar="NAME=K1[,K2...]",
        help="an entity's keys, one per row: integers when every key is one, else text; each entity "
        "once (repeat for the other entities of a composite key)",
    )
    group = j.add_mutually_exclusive_group(required=True)
    group.add_argument("--features", help="comma-separated view:feature references")
    group.add_argument("--service", help="a feature service name")
    j.add_argument(
        "--request",
        action="append",
        default=[],
        metavar="NAME=V1[,V2...]",
        help="a request_data field for derived features, one value per entity row: numbers, true/false or "
        "text; a value in double quotes is text as it stands (zip='\"01234\"': the string 01234, not a number)",
    )
    j.add_argument(
        "--url", default="http://127.0.0.1:8080", help="HTTP endpoint of the server (https://: TLS)"
    )
    j.add_argument("--grpc", metavar="HOST:PORT", help="use gRPC at this address instead of HTTP")
    j.add_argument(
        "--tls", "--grpc-tls", action="store_true", help="gRPC over TLS (implied by --ca or --cert)"
    )
    j.add_argument(
        "--ca",
        "--ca-file",
        metavar="FILE",
        help="CA certificate (PEM) the server's certificate is checked against",
    )
    j.add_argument(
        "--cert", "--cert-file", metavar="FILE", help="client certificate (PEM) for mutual TLS, with --key"
    )
    j.add_argument("--key", "--key-file", metavar="FILE", help="client private key (PEM) for mutual TLS")
    j.add_argument(
        "--token-file",
        metavar="FILE",
        default=os.environ.get("FEATURESTORE_TOKEN_FILE"),
        help="file holding the bearer token (default: $FEATURESTORE_TOKEN_FILE)",
    )
    j.add_argument("--full-names", action="store_true", help="name columns view__feature")
    j.add_argument("--string-keys", action="store_true", help="send keys as strings even if numeric")
    j.add_argument("--json", action="store_true", help="print the result as JSON")
    j.add_argument("--deadline", type=float, default=10.0, help="seconds for the join, retries included")
    j.set_defaults(func=cmd_join)


# An integer key: ASCII digits after at most one minus. Anything else (--5, ², +5, 1_000)
# is text, which an int64 entity refuses naming the entity, the row and the key.
_INTEGER = re.compile(r"-?[0-9]+")


def _entities(specs: list[str], string_keys: bool) -> dict[str, list[Any]]:
    """``--entity NAME=K1,K2`` each: a column of integers when every key is one (else of
    text, or with ``--string-keys``). A name given twice is refused: one would be lost."""
    out: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name:
            raise InvalidArgument(f"--entity expects NAME=K1[,K2...], got {spec!r}")
        if name in out:
            raise InvalidArgument(
                f"--entity {name} given twice: give all its keys in one, --entity {name}=K1,K2,..."
            )
        parts = values.split(",")
        numeric = not string_keys and all(_INTEGER.fullmatch(p) for p in parts)
        out[name] = [int(p) for p in parts] if numeric else parts
    return out


def _request_data(specs: list[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name:
            raise InvalidArgument(f"--request expects NAME=V1[,V2...], got {spec!r}")
        out[name] = [_scalar(v) for v in _split(values)]
    return out


def _split(values: str) -> list[str]:
    """``values`` split at the commas outside double quotes ("Paris, France" is one value);
    a quoted value keeps its quotes, for ``_scalar``."""
    parts, start, quoted = [], 0, False
    for i, ch in enumerate(values):
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append(values[start:i])
            start = i + 1
    parts.append(values[start:])
    return parts


def _scalar(text: str) -> Any:
    """A number, a bool, or text. A STRING request field that looks like a number (a zip
    code, 01234) is sent quoted: "01234" is the text between the quotes."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def token_from_args(args: argparse.Namespace) -> str | None:
    if not args.token_file:
        return None
    try:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise InvalidArgument(f"--token-file {args.token_file}: {e.strerror}") from None
    except UnicodeDecodeError as e:  # a DER key, say
        raise InvalidArgument(
            f"--token-file {args.token_file}: not UTF-8 text (at byte {e.start}: {e.reason})"
        ) from None
    if not token:
        raise InvalidArgument(f"--token-file {args.token_file}: empty")
    return token.split()[0]  # a server's tokens file line also fits: TOKEN [scopes]


def cmd_join(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.extras import require

    require("httpx", "featurestore join")
    require("tenacity", "featurestore join")
    # grpc core logs a failed TLS handshake on stderr itself (an I line, E lines for a bad
    # key pair): the error line says it. Read when grpc loads; the operator's value wins.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from featurestore.client import FeatureClient

    logging.getLogger("httpx").setLevel(logging.WARNING)  # an INFO line per request otherwise
    entities = _entities(args.entity, args.string_keys)
    request = _request_data(args.request)
    features = [f.strip() for f in args.features.split(",")] if args.features else None
    if bool(args.cert) != bool(args.key):
        raise InvalidArgument("--cert and --key go together")
    tls = args.tls or bool(args.ca or args.cert)
    address = f"grpc{'s' if tls else ''}://{args.grpc}" if args.grpc else args.url
    token = token_from_args(args)
    try:  # the client refuses bad arguments (an address without a scheme, a deadline of 0) with ValueError
        with FeatureClient(
            address, token=token, ca_file=args.ca, cert_file=args.cert, key_file=args.key
        ) as client:
            result = client.join(
                entities,
                features,
                feature_service=args.service,
                request_data=request or None,
                full_feature_names=args.full_names,
                deadline=args.deadline,
            )
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    columns = [
        {
            "values": c.values,
            "statuses": [s.value for s in c.statuses],
            "event_timestamps": [_iso(t) for t in c.event_timestamps],
        }
        for c in result.columns
    ]
    if args.json:
        meta = {"feature_names": result.feature_names, "registry_version": result.registry_version}
        meta |= {"trace_id": result.trace_id, "partial": result.partial}
        print(json.dumps({"metadata": meta, "results": columns}, indent=2))
        return 0
    print(render_table(result.feature_names, columns))
    print(f"\nregistry version {result.registry_version}, trace {result.trace_id}, partial={result.partial}")
    return 0


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


def _cell(value: Any, status: str) -> str:
    if status != "PRESENT":
        return f"- ({status})"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_table(names: list[str], columns: list[dict[str, Any]]) -> str:
    rows = len(columns[0]["values"]) if columns else 0
    if rows == 1:
        width = max(len(n) for n in names)
        lines = [f"{'feature'.ljust(width)}  {'value':<24} {'status':<16} event_timestamp"]
        for name, col in zip(names, columns, strict=True):
            v, st, ts = col["values"][0], col["statuses"][0], col["event_timestamps"][0]
            lines.append(
                f"{name.ljust(width)}  {_cell(v, 'PRESENT' if v is not None else st):<24} {st:<16} {ts or ''}"
            )
        return "\n".join(lines)
    cells = [[_cell(c["values"][i], c["statuses"][i]) for c in columns] for i in range(rows)]
    widths = [max(len(n), *(len(r[j]) for r in cells)) for j, n in enumerate(names)]
    head = "  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([head, sep, *body])
