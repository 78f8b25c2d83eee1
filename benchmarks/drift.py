"""Drift detection benchmarks (issue 13, requirements 3 and 4; docs/quality.md).

A. Quality of the test itself (numpy, seeded, no server): reference profiles of 5,000
   values drawn uniformly from a population, windows of 1,000 served values, alpha 0.05.
   * False alarms: windows drawn from the reference's own population, over many
     reference samples (the reference is fixed per data version, so windows tested
     against one reference are not independent: several references average that out).
     Target: at most 2 x alpha.
   * Power: a mean shift of 0.25 standard deviations from the first served window on;
     a trial succeeds when one of its first 3 windows is flagged. Target: >= 95%.
   Populations: normal, log-normal (skewed), integers 0..20 (ties), and a categorical
   feature (chi-square) whose top category loses 0.25 sd-equivalent mass.
B. Cost on the serving path: the embedded demo (memory stores, 1 process) with drift
   sampling on (the default: one join in 10, 10 values per feature) and off; wrk with
   the peer's request generator at batch 1 and 100, concurrency 32, interleaved rounds,
   medians. Target: at most 3% fewer QPS and 3% more CPU per request (COST_TARGET_PCT).

    python -m benchmarks.drift [--windows 2000] [--trials 500] [--rounds 3] [--duration 10] [--skip-cost]

Writes benchmarks/results/drift.md (stitched into RESULTS.md).
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.on_off import measure
from benchmarks.provenance import run_line, started
from benchmarks.report import stitch
from featurestore.quality.stats import chi_square, ks_2samp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ALPHA, REF, WINDOW = 0.05, 5000, 1000
COST_TARGET_PCT = 3.0  # at most 3% fewer QPS (and CPU per request) with drift sampling on
Draw = Callable[[np.random.Generator, int, float], np.ndarray]


def _normal(rng: np.random.Generator, n: int, shift: float) -> np.ndarray:
    return rng.normal(shift, 1.0, n)


def _lognormal(rng: np.random.Generator, n: int, shift: float) -> np.ndarray:
    sd = float(np.sqrt((np.exp(1.0) - 1) * np.exp(1.0)))  # of lognormal(0, 1)
    return rng.lognormal(0.0, 1.0, n) + shift * sd


def _integers(rng: np.random.Generator, n: int, shift: float) -> np.ndarray:
    # binomial(20, 0.5) has sd sqrt(5); a shift is a move of its mean, values stay integers
    return rng.binomial(20, 0.5 + shift * np.sqrt(5) / 20, n).astype(np.float64)


POPULATIONS: dict[str, Draw] = {"normal": _normal, "lognormal": _lognormal, "integers 0..20": _integers}
CATEGORIES = ["free", "basic", "plus", "premium"]
BASE_P = np.array([0.55, 0.25, 0.15, 0.05])


def _categorical(rng: np.random.Generator, n: int, shift: float) -> dict[str, int]:
    # "shift" moves shift * sd(Bernoulli(0.55)) of mass from the top category to the rarest
    p = BASE_P.copy()
    moved = shift * np.sqrt(0.55 * 0.45)
    p[0] -= moved
    p[3] += moved
    return dict(Counter(rng.choice(CATEGORIES, n, p=p).tolist()))


def false_alarms(draw: Draw | None, windows: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    per_ref = 50
    flagged = 0
    for _ in range(windows // per_ref):
        ref_num = draw(rng, REF, 0.0) if draw else None
        ref_cat = _categorical(rng, 100_000, 0.0) if draw is None else None  # counts over all rows
        for _ in range(per_ref):
            if draw is not None:
                assert ref_num is not None
                p = ks_2samp(draw(rng, WINDOW, 0.0), ref_num).pvalue
            else:
                assert ref_cat is not None
                p = chi_square(_categorical(rng, WINDOW, 0.0), ref_cat).pvalue
            flagged += p < ALPHA
    return flagged / (windows // per_ref * per_ref)


def power(draw: Draw | None, trials: int, seed: int, shift: float = 0.25) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        ref_num = draw(rng, REF, 0.0) if draw else None
        ref_cat = _categorical(rng, 100_000, 0.0) if draw is None else None
        for _ in range(3):
            if draw is not None:
                assert ref_num is not None
                p = ks_2samp(draw(rng, WINDOW, shift), ref_num).pvalue
            else:
                assert ref_cat is not None
                p = chi_square(_categorical(rng, WINDOW, shift), ref_cat).pvalue
            if p < ALPHA:
                hits += 1
                break
    return hits / trials


def quality(windows: int, trials: int) -> list[str]:
    lines = [
        "### Quality of the drift test",
        "",
        f"`python -m benchmarks.drift --windows {windows} --trials {trials}`: seeded, numpy only. Reference: "
        f"{REF:,} values drawn uniformly (categorical: counts over 100,000 rows), windows of {WINDOW:,}, alpha "
        f"{ALPHA}. False alarms: {windows:,} windows from the reference's population (50 per reference sample). "
        f"Power: {trials:,} trials of a 0.25 sd mean shift, detected within 3 windows. Targets: false alarms <= "
        f"{2 * ALPHA:.2f}, power >= 95%.",
        "",
        "| feature | test | false-alarm rate | target | detected within 3 windows | target |",
        "|---|---|---:|---|---:|---|",
    ]
    cases: list[tuple[str, str, Draw | None]] = [(name, "KS", d) for name, d in POPULATIONS.items()]
    cases.append(("categorical (4 categories)", "chi-square", None))
    for i, (name, test, draw) in enumerate(cases):
        fa = false_alarms(draw, windows, seed=100 + i)
        pw = power(draw, trials, seed=200 + i)
        lines.append(
            f"| {name} | {test} | {fa:.3f} | {'met' if fa <= 2 * ALPHA else 'MISSED'} | {pw:.1%} | "
            f"{'met' if pw >= 0.95 else 'MISSED'} |"
        )
    return lines


def cost(rounds: int, duration: float) -> list[str]:
    from featurestore.demo.data import ensure_demo_data

    data = Path(tempfile.mkdtemp(prefix="fs-drift-data-"))
    ensure_demo_data(data)
    work = Path(tempfile.mkdtemp(prefix="fs-drift-"))
    configs = {}
    for label, enabled in (("on", "true"), ("off", "false")):
        cfg = work / f"{label}.yaml"
        cfg.write_text(
            "stores: {default: {kind: memory}, analytics: {kind: memory}}\n"
            f"quality: {{drift: {{enabled: {enabled}}}}}\n"
        )
        configs[label] = cfg
    lines = [
        "### Cost of drift sampling on the serving path",
        "",
        f"`python -m benchmarks.drift --rounds {rounds} --duration {duration:g}`: the embedded demo (memory stores, "
        "1 process), `quality.drift` on (the default: one join in 10, up to 10 values per feature) vs "
        "`enabled: false`, wrk with the peer's request generator (16 features), concurrency 32, "
        f"{rounds} interleaved rounds, medians. Target: <= {COST_TARGET_PCT:g}% cost, by the QPS and the CPU per "
        "request of the medians (the last column). Server CPU per request is the steadier measure on a shared "
        "VM; QPS moves with other tenants' load.",
        "",
    ]
    return lines + measure(data, configs, (1, 100), rounds, duration, COST_TARGET_PCT)


def observe_cost() -> list[str]:
    """``DriftSampler.observe`` timed directly, per join (sampled and not, amortized),
    for the demo's 16 features: what a QPS comparison cannot resolve under VM noise."""
    import time

    from featurestore.definitions.parser import load_definitions
    from featurestore.definitions.snapshot import new_snapshot
    from featurestore.plan import ServingState
    from featurestore.quality.sampler import DriftSampler

    defs = load_definitions(ROOT / "featurestore" / "demo" / "features.yaml")
    state = ServingState(new_snapshot(defs, 1), {})
    plan = state.plan((), "ranker_v1", False)
    rng = np.random.default_rng(0)
    lines = [
        "",
        "Direct timing of the hot-path part, `DriftSampler.observe`, for the demo's `ranker_v1` plan (what the "
        "QPS comparison cannot resolve under this VM's noise; compare with the server CPU per request above):",
        "",
        "| batch | `observe` per join (one in 10 sampled, 10 values) | per sampled join |",
        "|---:|---:|---:|",
    ]
    for batch in (1, 100):
        gathered = []
        for vp in plan.views:
            cols = []
            for fi in vp.features:
                dtype = vp.view.features[fi].dtype.value
                cols.append(["DE"] * batch if dtype == "string" else rng.normal(0, 1, batch).tolist())
            gathered.append(cols)
        sampler = DriftSampler(lambda w: None)
        n = 200_000
        t0 = time.perf_counter()
        for _ in range(n):
            sampler.observe(state, plan, gathered)
        per_join = (time.perf_counter() - t0) / n * 1e9
        every1 = DriftSampler(lambda w: None, every=1)
        t0 = time.perf_counter()
        for _ in range(n // 10):
            every1.observe(state, plan, gathered)
        per_sampled = (time.perf_counter() - t0) / (n // 10) * 1e6
        lines.append(f"| {batch} | {per_join:,.0f} ns | {per_sampled:.1f} µs |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--windows", type=int, default=2000)
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--skip-cost", action="store_true")
    a = ap.parse_args()
    start = started()  # before any server loads the code
    parts = HERE / "results"
    parts.mkdir(exist_ok=True)
    sections = ["## Drift detection", "", *quality(a.windows, a.trials), ""]
    if not a.skip_cost:
        sections += [*cost(a.rounds, a.duration), *observe_cost(), ""]
    text = "\n".join([*sections[:2], run_line(start), "", *sections[2:]])
    (parts / "drift.md").write_text(text)
    print(text)
    stitch()


if __name__ == "__main__":
    main()
