"""``featurestore check consistency``: online values against the view's batch source
(featurestore/quality/consistency.py, docs/quality.md). Exit 0: mismatches (stale +
conflict + missing_online, less keys neither side has) within ``--max-mismatch``; 1:
more; 2: usage, network or store errors. With ``--config`` the served data version's
watermark classifies keys as the scheduled check does (``pending``, ``not_loaded``);
through ``--url`` no watermark is known."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from featurestore.cli.base import Subcommands
from featurestore.cli.join import token_from_args
from featurestore.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable
from featurestore.model import Definitions, DType, FeatureView
from featurestore.sources.base import EntityKey

if TYPE_CHECKING:  # the check's module reads batch sources (pyarrow.dataset, pandas: ~0.6 s of
    # import): every other command, `serve` included, would pay it at start
    from featurestore.quality.consistency import OnlineReader, Report, Side

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
log = logging.getLogger(__name__)
_US = timedelta(microseconds=1)


def register(sub: Subcommands) -> None:
    c = sub.add_parser("check", help="data quality checks")
    checks = c.add_subparsers(dest="check", required=True)
    k = checks.add_parser(
        "consistency", help="compare online values of sampled keys with the latest offline row per key"
    )
    k.add_argument("--view", required=True, help="the feature view to check")
    where = k.add_mutually_exclusive_group()
    where.add_argument(
        "--url", default="http://127.0.0.1:8080", help="read online values through this server's join API"
    )
    where.add_argument("--config", help="read online values straight from the view's store (server config)")
    k.add_argument("--sample", type=int, default=10_000, help="keys sampled from the batch source")
    k.add_argument(
        "--key", action="append", default=[], help="also check this key (repeat; single-entity views)"
    )
    k.add_argument(
        "--max-mismatch",
        type=float,
        default=0.0,
        help="allowed (stale + conflict + missing_online, less keys neither side has) / checked",
    )
    k.add_argument("--seed", type=int, default=0, help="the key sample's seed")
    k.add_argument(
        "--clickhouse-dsn", help="where a batch_source table lives (default: the config's clickhouse store)"
    )
    k.add_argument(
        "--token-file",
        default=os.environ.get("FEATURESTORE_TOKEN_FILE"),
        help="--url: file holding a bearer token with scopes read and admin (default: $FEATURESTORE_TOKEN_FILE)",
    )
    k.add_argument(
        "--ca", "--ca-file", metavar="FILE", help="--url https://: the CA (PEM) of the server's certificate"
    )
    k.add_argument(
        "--cert", "--cert-file", metavar="FILE", help="--url https://: client certificate (mutual TLS)"
    )
    k.add_argument(  # not --key: that names a key to check
        "--key-file", dest="key_file", metavar="FILE", help="--url https://: client private key, with --cert"
    )
    k.add_argument("--json", action="store_true", help="print one JSON object")
    k.set_defaults(func=cmd_consistency)


def cmd_consistency(args: argparse.Namespace, _argv: list[str]) -> int:
    if args.sample < 1:
        raise InvalidArgument(f"--sample: expected an integer >= 1, got {args.sample}")
    if not 0.0 <= args.max_mismatch <= 1.0:
        raise InvalidArgument(f"--max-mismatch: expected a fraction in [0, 1], got {args.max_mismatch}")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    via_config = args.config is not None
    if via_config and (args.ca or args.cert or args.key_file):
        raise InvalidArgument("--ca, --cert and --key-file are for --url https://, not --config")
    report = asyncio.run(_run_config(args) if via_config else _run_url(args))
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(render(report))
    return 0 if report.passed(args.max_mismatch) else 1


def render(report: Report) -> str:
    from featurestore.quality.consistency import CLASSES

    lines = [f"view {report.view}: {report.checked} keys checked"]
    lines += [f"  {cls:<16}{report.counts[cls]:>10}" for cls in CLASSES]
    for ex in report.examples:
        lines.append("  e.g. " + " ".join(f"{k}={v}" for k, v in ex.items()))
    return "\n".join(lines)


def _view(definitions: Definitions, name: str) -> FeatureView:
    view = definitions.views.get(name)
    if view is None:
        raise NotFound(f"unknown feature view {name!r}")
    return view


def _keys(view: FeatureView, given: Sequence[str]) -> list[EntityKey]:
    if given and len(view.entities) != 1:
        raise InvalidArgument("--key: only for views with one entity")
    if not given:
        return []
    dtype = view.entities[0].dtype
    try:
        return [int(k) if dtype is DType.INT64 else k for k in given]
    except ValueError as e:
        raise InvalidArgument(f"--key: {e}") from None


async def _check(
    view: FeatureView,
    args: argparse.Namespace,
    read: OnlineReader,
    config: Any,
    loaded: tuple[int | None, int | None] = (None, None),
) -> Report:
    """``loaded``: the served data version's watermark and start (``check``'s
    ``watermark_us``, ``start_us``); unknown (None) through --url."""
    from featurestore.jobs import default_source
    from featurestore.quality.consistency import check, offline_rows, offline_sides, sample_keys

    source = default_source(view, config, args.clickhouse_dsn, remedy="no offline rows to check it against")
    offline = offline_sides(view, await offline_rows(view, source))
    keys = sample_keys(offline, args.sample, _keys(view, args.key), args.seed)
    return await check(view, offline, keys, read, *loaded)


async def _run_config(args: argparse.Namespace) -> Report:
    from featurestore.config import load_config
    from featurestore.factories import make_registry, make_store
    from featurestore.quality.consistency import store_reader
    from featurestore.registry.base import load_state

    config = load_config(args.config)
    registry = make_registry(config)
    try:
        state = await load_state(registry)
        if state.snapshot is None:
            raise InvalidArgument("the registry has no snapshot: apply definitions first")
        view = _view(state.snapshot.definitions, args.view)
        version = state.data_versions.get(view.name, 0)
        # As the scheduled check (quality/schedule.py): rows after the served version's
        # watermark are pending, keys before its --start were not loaded. A watermark of
        # another version (a run between its pointer swap and its watermark) is not used.
        mark = await registry.watermark(view.name) if version else None
    finally:
        await registry.close()
    if mark is not None and mark.data_version != version:
        log.warning(
            "the watermark of %s (%s) is not data version %d's, the one served: no row is taken as "
            "pending or not loaded",
            view.name,
            mark,
            version,
        )
        mark = None
    loaded = (mark.event_time_us, mark.start_us) if mark is not None else (None, None)
    sc = config.stores.get(view.online_store)
    if sc is None:
        raise InvalidArgument(f"view {view.name!r} uses store {view.online_store!r}, which the config lacks")
    store = make_store(view.online_store, sc, config)
    await store.start()
    try:
        await store.prepare([view])
        reader = store_reader(store, view, version)
        return await _check(view, args, reader, config, loaded)
    finally:
        await store.close()


async def _run_url(args: argparse.Namespace) -> Report:
    import httpx

    from featurestore.client import AsyncFeatureClient
    from featurestore.config import Config
    from featurestore.definitions.snapshot import definitions_from_dict

    token = token_from_args(args)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if bool(args.cert) != bool(args.key_file):
        raise InvalidArgument("--cert and --key-file go together")
    try:  # the client refuses TLS files with an http:// url, a url without a scheme
        client = AsyncFeatureClient(
            args.url, deadline=10.0, token=token, ca_file=args.ca, cert_file=args.cert, key_file=args.key_file
        )
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    async with client:
        tls = client.options.ssl_context() if client.options.address.tls else True
        async with httpx.AsyncClient(base_url=args.url, timeout=10.0, headers=headers, verify=tls) as http:
            r = await http.get("/v1/registry")
            if r.status_code != 200:
                error = {401: Unauthenticated, 403: PermissionDenied}.get(r.status_code, Unavailable)
                raise error(f"{args.url}/v1/registry answered {r.status_code}: {r.text[:200]}")
            definitions = definitions_from_dict(r.json()["definitions"])
        view = _view(definitions, args.view)
        return await _check(view, args, http_reader(client, view), Config())


def http_reader(client: Any, view: FeatureView) -> OnlineReader:
    """Read the online side through a server's join API: exactly what callers get, in
    joins the server takes. ``limits.max_rows`` is the server's own (not exposed): a
    join it refuses as too many rows (RESOURCE_EXHAUSTED, HTTP 413; not a shed join,
    which says when to come back) is read again in parts of the limit its answer names
    (``details``), or of half the rows when it names none (gRPC), and later joins keep
    that size. A fixed 1,000 keys ended the check (exit 2) on every server whose
    ``max_rows`` is lower (review s57)."""
    from featurestore.client.errors import ResourceExhaustedError

    refs = [f"{view.name}:{f.name}" for f in view.features]
    names = [f"{view.name}__{f.name}" for f in view.features]
    composite = len(view.join_keys) > 1
    fit: int | None = None  # the rows a join may hold, once the server refused more

    async def join(keys: Sequence[EntityKey]) -> list[Side | None]:
        entities = {
            name: [k[i] if composite else k for k in keys]  # type: ignore[index]
            for i, name in enumerate(view.join_keys)
        }
        result = await client.join(entities, refs, full_feature_names=True)
        return _sides(view, keys, [result[n] for n in names])

    async def read(keys: Sequence[EntityKey]) -> list[Side | None]:
        nonlocal fit
        out: list[Side | None] = []
        while len(out) < len(keys):
            size = min(fit or len(keys), len(keys) - len(out))
            try:
                out += await join(keys[len(out) : len(out) + size])
            except ResourceExhaustedError as e:
                if e.retry_after is not None or size <= 1:
                    raise
                fit = _row_limit(e.details, size)
        return out

    return read


def _row_limit(details: list[dict[str, Any]], refused: int) -> int:
    """The rows a join may hold, from a refusal of ``refused`` rows: the limit it names
    (the HTTP API's ``{"rows": n, "limit": max_rows}``), else half."""
    named = [d.get("limit") for d in details if isinstance(d, dict) and "rows" in d]
    limit = named[0] if named and isinstance(named[0], int) else 0
    return limit if 1 <= limit < refused else max(1, refused // 2)


def _sides(view: FeatureView, keys: Sequence[EntityKey], cols: list[Any]) -> list[Side | None]:
    """One join's columns of ``view`` as each key's online side (None: not served)."""
    from featurestore.quality.consistency import Side

    out: list[Side | None] = []
    for i in range(len(keys)):
        status = cols[0].statuses[i].name
        if status == "UNAVAILABLE":
            raise Unavailable(f"view {view.name!r} answered UNAVAILABLE for key {keys[i]!r}")
        ts = cols[0].event_timestamps[i]
        if status == "NOT_FOUND" or ts is None:
            out.append(None)
            continue
        ts_us = (ts - EPOCH) // _US
        values = (
            None
            if status != "PRESENT"
            else tuple(_value(c.values[i], f.dtype) for c, f in zip(cols, view.features, strict=True))
        )
        out.append(Side(ts_us, values))
    return out


def _value(v: Any, dtype: DType) -> Any:
    if dtype is DType.TIMESTAMP and isinstance(v, str):
        return (datetime.fromisoformat(v.replace("Z", "+00:00")) - EPOCH) // _US
    return v
