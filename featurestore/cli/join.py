"""``featurestore join``: call a running server over HTTP or gRPC and print a table."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any

from featurestore.cli.base import Subcommands


def register(sub: Subcommands) -> None:
    j = sub.add_parser("join", help="join features for some entity keys and print a table")
    j.add_argument("--entity", action="append", required=True, metavar="NAME=K1[,K2...]")
    group = j.add_mutually_exclusive_group(required=True)
    group.add_argument("--features", help="comma-separated view:feature references")
    group.add_argument("--service", help="a feature service name")
    j.add_argument(
        "--request",
        action="append",
        default=[],
        metavar="NAME=V1[,V2...]",
        help="a request_data field for derived features, one value per entity row (numbers, true/false or text)",
    )
    j.add_argument(
        "--url", default="http://127.0.0.1:8080", help="HTTP endpoint of the server (https://: TLS)"
    )
    j.add_argument("--grpc", metavar="HOST:PORT", help="use gRPC at this address instead of HTTP")
    j.add_argument("--tls", action="store_true", help="gRPC over TLS (implied by --ca or --cert)")
    j.add_argument(
        "--ca", metavar="FILE", help="CA certificate (PEM) the server's certificate is checked against"
    )
    j.add_argument("--cert", metavar="FILE", help="client certificate (PEM) for mutual TLS, with --key")
    j.add_argument("--key", metavar="FILE", help="client private key (PEM) for mutual TLS")
    j.add_argument(
        "--token-file",
        metavar="FILE",
        default=os.environ.get("FEATURESTORE_TOKEN_FILE"),
        help="file holding the bearer token (default: $FEATURESTORE_TOKEN_FILE)",
    )
    j.add_argument("--full-names", action="store_true", help="name columns view__feature")
    j.add_argument("--string-keys", action="store_true", help="send keys as strings even if numeric")
    j.add_argument("--json", action="store_true", help="print the raw JSON response")
    j.set_defaults(func=cmd_join)


def _entities(specs: list[str], string_keys: bool) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name:
            raise SystemExit(f"--entity expects NAME=K1[,K2...], got {spec!r}")
        parts = values.split(",")
        numeric = not string_keys and all(p.lstrip("-").isdigit() for p in parts)
        out[name] = [int(p) for p in parts] if numeric else parts
    return out


def _request_data(specs: list[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name:
            raise SystemExit(f"--request expects NAME=V1[,V2...], got {spec!r}")
        out[name] = [_scalar(v) for v in values.split(",")]
    return out


def _scalar(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _token(args: argparse.Namespace) -> str | None:
    if not args.token_file:
        return None
    try:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise SystemExit(f"--token-file {args.token_file}: {e.strerror}") from None
    if not token:
        raise SystemExit(f"--token-file {args.token_file}: empty")
    return token.split()[0]  # a server's tokens file line also fits: TOKEN [scopes]


def _read(path: str | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise SystemExit(f"{flag} {path}: {e.strerror}") from None


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.url.startswith("https://"):
        if args.ca or args.cert:
            raise SystemExit("--ca and --cert need an https:// --url")
        return None
    try:
        context = ssl.create_default_context(cafile=args.ca)
        if args.cert:
            context.load_cert_chain(args.cert, args.key)
    except (OSError, ssl.SSLError) as e:
        raise SystemExit(f"TLS files: {e}") from None
    return context


def cmd_join(args: argparse.Namespace, _argv: list[str]) -> int:
    entities = _entities(args.entity, args.string_keys)
    request = _request_data(args.request)
    features = [f.strip() for f in args.features.split(",")] if args.features else []
    if bool(args.cert) != bool(args.key):
        raise SystemExit("--cert and --key go together")
    token = _token(args)
    if args.grpc:
        names, columns, meta = _join_grpc(args, entities, features, request, token)
    else:
        body: dict[str, Any] = {"entities": entities, "full_feature_names": args.full_names}
        if request:
            body["request_data"] = request
        if features:
            body["features"] = features
        else:
            body["feature_service"] = args.service
        headers = {"content-type": "application/json"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        req = urllib.request.Request(
            args.url.rstrip("/") + "/v1/feature/join", data=json.dumps(body).encode(), headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=10, context=_ssl_context(args)) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as e:
            err = json.loads(e.read() or b"{}").get("error", {})
            print(f"error {e.code} {err.get('code', '')}: {err.get('message', '')}", file=sys.stderr)
            return 1
        except urllib.error.URLError as e:  # refused, TLS verification, name resolution
            raise SystemExit(f"error: {args.url}: {e.reason}") from None
        if args.json:
            print(json.dumps(doc, indent=2))
            return 0
        names = doc["metadata"]["feature_names"]
        columns = doc["results"]
        meta = doc["metadata"]
    print(render_table(names, columns))
    print(
        f"\nregistry version {meta['registry_version']}, trace {meta['trace_id']}, partial={meta['partial']}"
    )
    return 0


def _join_grpc(
    args: argparse.Namespace,
    entities: dict[str, list[Any]],
    features: list[str],
    request: dict[str, list[Any]],
    token: str | None,
) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
    import grpc

    from featurestore.api.proto_codec import column_values
    from featurestore.v1 import featurestore_pb2 as pb
    from featurestore.v1 import featurestore_pb2_grpc as pbg

    service, full = args.service, args.full_names
    req = pb.JoinRequest(features=features, feature_service=service or "", full_feature_names=full)
    for name, values in entities.items():
        col = req.entities.add(name=name)
        if values and isinstance(values[0], int):
            col.int64_values.values.extend(values)
        else:
            col.string_values.values.extend(values)
    for name, values in request.items():
        rc = req.request_data.add(name=name)
        if all(isinstance(v, bool) for v in values):
            rc.bool_values.values.extend(values)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            rc.int64_values.values.extend(values)
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            rc.double_values.values.extend(values)
        else:
            rc.string_values.values.extend(str(v) for v in values)
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    if args.tls or args.ca or args.cert:
        credentials = grpc.ssl_channel_credentials(
            _read(args.ca, "--ca"), _read(args.key, "--key"), _read(args.cert, "--cert")
        )
        channel = grpc.secure_channel(args.grpc, credentials)
    else:
        channel = grpc.insecure_channel(args.grpc)
    with channel:
        try:
            resp = pbg.FeatureServiceStub(channel).Join(req, timeout=10, metadata=metadata)  # type: ignore[no-untyped-call]
        except grpc.RpcError as e:
            raise SystemExit(f"error {e.code().name}: {e.details()}") from None
    columns = [
        {
            "values": column_values(c),
            "statuses": [pb.Status.Name(s) for s in c.statuses],
            "event_timestamps": [_iso(t) if t else None for t in c.event_timestamps],
        }
        for c in resp.results
    ]
    meta = {
        "registry_version": resp.metadata.registry_version,
        "trace_id": resp.metadata.trace_id,
        "partial": resp.metadata.partial,
    }
    return list(resp.metadata.feature_names), columns, meta


def _iso(us: int) -> str:
    from featurestore.api.json_codec import iso_utc

    return iso_utc(us)


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
