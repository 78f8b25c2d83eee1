"""Prometheus metrics of feature quality, all ``featurestore_*``: drift tests on served
values (``monitor.py``) and the scheduled online/offline consistency check
(``schedule.py``); docs/quality.md."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

# Drift detection (featurestore/quality/monitor.py, docs/quality.md): one test per full
# window of served values of a feature, per worker; the gauges show the latest window of
# any live worker (the largest statistic, the smallest p-value).
DRIFT_STATISTIC = Gauge(
    "featurestore_feature_drift_statistic",
    "Latest drift test statistic of a feature's served values against the reference of the data "
    "version served: KS distance (numeric), chi-square (categorical), or the window's null share "
    "(null_rate).",
    ["view", "feature", "test"],
    multiprocess_mode="livemax",
)
DRIFT_P_VALUE = Gauge(
    "featurestore_feature_drift_p_value",
    "p-value of the latest drift test of a feature (small: the served values do not look like the reference).",
    ["view", "feature", "test"],
    multiprocess_mode="livemin",
)
DRIFT_DRIFTED = Gauge(
    "featurestore_feature_drift_drifted",
    "1 when a test of the latest window of a feature (its values', or its null share's) rejected the "
    "reference at alpha, else 0.",
    ["view", "feature"],
    multiprocess_mode="livemax",
)
DRIFT_WINDOWS = Counter(
    "featurestore_feature_drift_windows_total",
    "Windows of served values tested for drift, by view and feature.",
    ["view", "feature"],
)
DRIFT_DETECTIONS = Counter(
    "featurestore_feature_drift_detections_total",
    "Windows a drift test rejected the reference of (values or null share; false alarms included: about "
    "alpha of the windows of an unchanged feature), by view and feature.",
    ["view", "feature"],
)
# every reason a full window goes untested: each view's series exist at 0 from its first
# feature watched (DriftMonitor.watch), so increase() counts the first of each
SKIP_REASONS = (
    "no_reference",
    "reference_unreadable",
    "not_profiled",
    "all_absent",
    "not_testable",
    "queue_full",
)
DRIFT_SKIPPED = Counter(
    "featurestore_feature_drift_windows_skipped_total",
    "Full windows not tested, by view and reason: no_reference (the served data version has no profile), "
    "reference_unreadable (the store could not be read for it), not_profiled (its profile left the feature "
    "out: profiling it failed), all_absent (every row of the window served without a value: NOT_FOUND, "
    "OUTSIDE_MAX_AGE or UNAVAILABLE), not_testable (a profile of no rows and no value to test), "
    "queue_full (the monitor fell behind).",
    ["view", "reason"],
)
DRIFT_RECORDS_DROPPED = Counter(
    "featurestore_feature_drift_records_dropped_total",
    "Drift detections not written to the lineage graph (still counted in the metrics), by view and reason: "
    "timeout (the graph did not answer in time: such a record may have been written after all), "
    "queue_full (too many waiting), error (the graph refused or failed the write), "
    "shutdown (waiting or being written when the server stopped).",
    ["view", "reason"],
)

# The scheduled online/offline consistency check (featurestore/quality/schedule.py).
CONSISTENCY_KEYS = Gauge(
    "featurestore_consistency_keys",
    "Keys of the latest scheduled consistency check of a view, by class (consistent, stale, online_newer, "
    "conflict, missing_online, missing_offline, pending, not_loaded).",
    ["view", "class"],
    multiprocess_mode="livemax",
)
CONSISTENCY_FAILED = Gauge(
    "featurestore_consistency_failed",
    "1 when the latest scheduled consistency check of a view found more stale + conflict + missing_online "
    "keys than quality.consistency.max_mismatch allows, else 0.",
    ["view"],
    multiprocess_mode="livemax",
)
CONSISTENCY_CHECKS = Counter(
    "featurestore_consistency_checks_total",
    "Scheduled consistency checks, by view and outcome: ok, mismatch, error.",
    ["view", "outcome"],
)
# When a view's check last completed (or, until one has, when the schedule started),
# against the schedule's pace: FeatureSkewCheckFailing. (Counting errors in a fixed window
# could not: rounds are an interval plus the checks' own time apart, so a window held 2 or
# 3 of them, and none at a daily interval.) Both keep a dead worker's value ("max", "min":
# folded into one archive file per mode, metrics_files.py), so restarting that worker
# neither forgets the last completion nor starts the clock again;
# a start is a series of its own, so no replica's start passes for a completion (review s53).
CONSISTENCY_COMPLETED = Gauge(
    "featurestore_consistency_last_completed_timestamp_seconds",
    "Unix time the latest scheduled consistency check of a view completed (ok or mismatch); no "
    "sample until one has.",
    ["view"],
    multiprocess_mode="max",
)
CONSISTENCY_STARTED = Gauge(
    "featurestore_consistency_schedule_started_timestamp_seconds",
    "Unix time the consistency-check schedule of a view first started in this server (its "
    "supervisor's life: a restarted worker keeps the first start).",
    ["view"],
    multiprocess_mode="min",
)
CONSISTENCY_INTERVAL = Gauge(
    "featurestore_consistency_interval_seconds",
    "quality.consistency.interval_seconds, per view checked: the pause between rounds of checks.",
    ["view"],
    multiprocess_mode="livemax",
)

# Reference profiles (featurestore/quality/profile.py): a feature left out of a profile
# because its values could not be profiled; the write it rode on went on.
PROFILE_FAILURES = Counter(
    "featurestore_feature_profile_failures_total",
    "Features left out of a reference profile because their values could not be profiled (the data "
    "version is written and served; the feature's drift windows are not tested), by view and feature.",
    ["view", "feature"],
)
