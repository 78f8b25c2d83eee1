"""The deterministic 100k-user demo data, value for value the Feast peer's data.

Same schema, seed and numpy draw order as ``../shared/peers/feast/gen_data.py``
(its SCHEMA.md is the spec), built with numpy + pyarrow only. ``canonical_sha256``
reproduces the peer's canonical JSONL hash so a test can prove the two match.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

COUNTRIES = ["US", "GB", "DE", "FR", "IN", "BR", "JP", "CA", "AU", "ES",
             "IT", "MX", "NL", "SE", "PL", "KR", "TR", "AR", "ZA", "NG"]  # fmt: skip
PLAN_TIERS = ["free", "basic", "plus", "premium"]
LANGUAGES = ["en", "de", "fr", "es", "pt", "ja", "hi", "it", "nl", "ko"]
PROFILE_FEATURES = ["age", "tenure_days", "num_devices", "country", "plan_tier",
                    "preferred_language", "lifetime_value", "credit_score"]  # fmt: skip
ACTIVITY_FEATURES = ["sessions_7d", "sessions_30d", "avg_session_minutes", "clicks_7d",
                     "purchases_30d", "spend_30d", "days_since_last_login", "ctr_30d"]  # fmt: skip
FEATURE_REFS = [f"user_profile:{f}" for f in PROFILE_FEATURES] + [
    f"user_activity:{f}" for f in ACTIVITY_FEATURES
]
BASE_EPOCH_S = 1_704_067_200  # 2024-01-01T00:00:00Z
PEER_SHA256 = "29c4bc3ebc7ff61d0a40ff27fd32456eb893726bcb5b00ee828f7545161f2555"
FILE_NAME = "users.parquet"


def generate(n: int = 100_000, seed: int = 42) -> pa.Table:
    """Draw order is part of the contract: it must stay the peer's order."""
    rng = np.random.default_rng(seed)
    user_id = np.arange(1, n + 1, dtype=np.int64)
    ts_offset = rng.integers(0, 86_400, size=n)
    age = rng.integers(18, 80, size=n).astype(np.int64)
    tenure_days = rng.integers(0, 3650, size=n).astype(np.int64)
    num_devices = rng.integers(1, 6, size=n).astype(np.int32)
    country = rng.integers(0, len(COUNTRIES), size=n)
    plan_tier = rng.integers(0, len(PLAN_TIERS), size=n)
    language = rng.integers(0, len(LANGUAGES), size=n)
    lifetime_value = np.round(rng.lognormal(4.0, 1.0, size=n), 4)
    credit_score = np.round(rng.uniform(300.0, 850.0, size=n), 2)
    sessions_7d = rng.poisson(5.0, size=n).astype(np.float64)
    sessions_30d = sessions_7d * 4.0 + rng.poisson(3.0, size=n)
    avg_session_minutes = np.round(rng.gamma(2.0, 6.0, size=n), 4)
    clicks_7d = np.round(sessions_7d * rng.uniform(1.0, 12.0, size=n), 4)
    purchases_30d = rng.poisson(1.2, size=n).astype(np.float64)
    spend_30d = np.round(purchases_30d * rng.lognormal(3.0, 0.8, size=n), 4)
    days_since_last_login = np.round(rng.exponential(3.0, size=n), 4)
    ctr_30d = np.round(rng.beta(2.0, 30.0, size=n), 4)

    ts = pa.array((BASE_EPOCH_S + ts_offset.astype(np.int64)) * 1_000_000, pa.timestamp("us", tz="UTC"))

    def pick(values: list[str], idx: np.ndarray) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(idx.astype(np.int32)), pa.array(values)).cast(
            pa.string()
        )

    return pa.table(
        {
            "user_id": user_id,
            "event_timestamp": ts,
            "created_timestamp": ts,
            "age": age,
            "tenure_days": tenure_days,
            "num_devices": num_devices,
            "country": pick(COUNTRIES, country),
            "plan_tier": pick(PLAN_TIERS, plan_tier),
            "preferred_language": pick(LANGUAGES, language),
            "lifetime_value": lifetime_value,
            "credit_score": credit_score,
            "sessions_7d": sessions_7d,
            "sessions_30d": sessions_30d.astype(np.float64),
            "avg_session_minutes": avg_session_minutes,
            "clicks_7d": clicks_7d,
            "purchases_30d": purchases_30d,
            "spend_30d": spend_30d,
            "days_since_last_login": days_since_last_login,
            "ctr_30d": ctr_30d,
        }
    )


TRANSACTIONS_FILE = "user_transactions.parquet"
CATEGORIES = ["grocery", "electronics", "fashion", "home", "travel", "games", "books", "beauty"]


def generate_transactions(n: int = 100_000, seed: int = 7) -> pa.Table:
    """Long-tail purchase aggregates per user (the demo's ClickHouse view); 5% of users
    have never bought anything and have no row."""
    rng = np.random.default_rng(seed)
    user_id = np.arange(1, n + 1, dtype=np.int64)
    keep = rng.random(n) >= 0.05
    txn_count = rng.poisson(6.0, size=n).astype(np.int64)
    avg_basket = np.round(rng.lognormal(3.2, 0.6, size=n), 2)
    chargeback = np.round(rng.beta(1.0, 80.0, size=n), 4)
    last_purchase_s = BASE_EPOCH_S - rng.integers(0, 90 * 86_400, size=n)
    top = rng.integers(0, len(CATEGORIES), size=n)
    ts = pa.array((BASE_EPOCH_S + rng.integers(0, 86_400, size=n)) * 1_000_000, pa.timestamp("us", tz="UTC"))
    table = pa.table(
        {
            "user_id": user_id,
            "event_timestamp": ts,
            "txn_count_90d": txn_count,
            "avg_basket_90d": avg_basket,
            "chargeback_rate_365d": chargeback,
            "last_purchase_at": pa.array(last_purchase_s * 1_000_000, pa.timestamp("us", tz="UTC")),
            "top_category": pa.DictionaryArray.from_arrays(
                pa.array(top.astype(np.int32)), pa.array(CATEGORIES)
            ).cast(pa.string()),
        }
    )
    return table.filter(pa.array(keep))


def canonical_sha256(table: pa.Table) -> str:
    """sha256 of the peer's canonical JSONL rendering of ``table``."""
    h = hashlib.sha256()
    names = table.column_names
    cols = []
    for name in names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            secs = col.cast(pa.int64()).to_numpy() // 1_000_000
            cols.append(np.datetime_as_string(secs.astype("datetime64[s]"), unit="s").astype(object) + "Z")
        else:
            cols.append(col.to_pylist())
    for row in zip(*cols, strict=True):
        h.update(json.dumps(dict(zip(names, row, strict=True)), separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()


def ensure_demo_data(data_dir: str | Path, n: int = 100_000, seed: int = 42, *, resize: bool = False) -> Path:
    """Write the demo's Parquet files into ``data_dir`` unless they are there already;
    returns the users file. ``resize``: files of another number of users than ``n`` (or
    unreadable ones) are written again (``featurestore demo-data --rows``)."""
    out = Path(data_dir)
    users = out / FILE_NAME
    # the users file decides for both: the transactions file leaves out 5% of users, and is
    # written first, so a run cut short between the two leaves the users file to redo both
    redo = resize and users.exists() and _rows(users) != n
    _write_once(out / TRANSACTIONS_FILE, lambda: generate_transactions(n), redo)
    return _write_once(users, lambda: generate(n, seed), redo)


def _rows(path: Path) -> int | None:
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (OSError, pa.ArrowInvalid):
        return None


def _write_once(path: Path, make: Any, redo: bool = False) -> Path:
    if path.exists() and not redo:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(make(), tmp)
    os.replace(tmp, path)
    return path
