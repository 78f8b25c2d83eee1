"""Registry commands: validate, apply, registry history/show/diff/rollback/prune, canary."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from featurestore.cli.base import Subcommands

# The best-effort definitions write of apply, rollback and canary promote, after the change
# is published. The demo's 25 features write in well under 1 s here; a hung graph held the
# command 61 s (review s58 round 2b #5), in a rollback during an incident. A snapshot that
# takes longer (10,000 features: 2-10 minutes) is left to the servers, which write it in
# the background (featurestore/graph_writer.py).
GRAPH_WRITE_SECONDS = 10.0


def register(sub: Subcommands) -> None:
    # --config is accepted before or after the subcommand (SUPPRESS: the inner default
    # must not overwrite a value given before it).
    config_after = argparse.ArgumentParser(add_help=False)
    config_after.add_argument("--config", default=argparse.SUPPRESS, help="server config naming the registry")

    v = sub.add_parser(
        "validate",
        help="validate a definitions file (and build its derived kernels into the config's derived.cache_dir)",
        parents=[config_after],
    )
    v.add_argument("file")
    v.set_defaults(func=cmd_validate)

    a = sub.add_parser("apply", help="validate, diff and publish definitions as the next registry snapshot")
    a.add_argument("file")
    a.add_argument("--config", help="server config naming the registry")
    a.add_argument("--force", action="store_true", help="apply incompatible changes too")
    a.add_argument("--dry-run", action="store_true", help="print the diff only")
    a.add_argument("-m", "--message", default="")
    a.set_defaults(func=cmd_apply)

    _register_registry(sub, config_after)
    _register_canary(sub, config_after)


def _register_registry(sub: Subcommands, config_after: argparse.ArgumentParser) -> None:
    r = sub.add_parser("registry", help="registry history, snapshots, diffs, rollback and pruning")
    r.add_argument("--config", help="server config naming the registry")
    rsub = r.add_subparsers(dest="registry_command", required=True)
    history = rsub.add_parser("history", help="the newest snapshots, newest first", parents=[config_after])
    # (default None: RegistryAdmin's HISTORY_LIMIT; the CLI imports no registry code to parse)
    history.add_argument("--limit", type=int, help="how many (default: the newest 20; 0: every one)")
    history.set_defaults(func=cmd_registry_history)
    prune = rsub.add_parser(
        "prune",
        help="delete old snapshots (never current, a canary's candidate or base, or the newest N)",
        parents=[config_after],
    )
    prune.add_argument("--keep", type=int, required=True, help="the newest N snapshots to keep (at least 1)")
    prune.add_argument("--dry-run", action="store_true", help="list what would be deleted only")
    prune.set_defaults(func=cmd_registry_prune)
    show = rsub.add_parser(
        "show", help="one snapshot's definitions as JSON (default: the current one)", parents=[config_after]
    )
    show.add_argument("version", type=int, nargs="?")
    show.set_defaults(func=cmd_registry_show)
    rdiff = rsub.add_parser("diff", help="changes from snapshot A to snapshot B", parents=[config_after])
    rdiff.add_argument("a", type=int)
    rdiff.add_argument("b", type=int)
    rdiff.set_defaults(func=cmd_registry_diff)
    rb = rsub.add_parser(
        "rollback", help="publish an old snapshot's definitions as the new current", parents=[config_after]
    )
    rb.add_argument("version", type=int)
    rb.add_argument("--force", action="store_true")
    rb.set_defaults(func=cmd_registry_rollback)


def _register_canary(sub: Subcommands, config_after: argparse.ArgumentParser) -> None:
    c = sub.add_parser("canary", help="gray release of a feature service")
    c.add_argument("--config", help="server config naming the registry")
    csub = c.add_subparsers(dest="canary_command", required=True)
    start = csub.add_parser(
        "start", help="serve a share of entities from candidate definitions", parents=[config_after]
    )
    start.add_argument("service")
    start.add_argument("--file", required=True, help="the candidate definitions")
    start.add_argument("--share", type=float, required=True, help="fraction of entities, e.g. 0.1")
    start.add_argument("--force", action="store_true", help="start it with incompatible changes too")
    start.add_argument(
        "--entity",
        help="the entity whose key picks the side (default: the one keying most of the service's features)",
    )
    start.set_defaults(func=cmd_canary_start)
    csub.add_parser("status", help="active canaries", parents=[config_after]).set_defaults(
        func=cmd_canary_status
    )
    for name, helptext in (
        ("promote", "make the candidate the current snapshot"),
        ("abort", "stop the canary"),
    ):
        cp = csub.add_parser(name, help=helptext, parents=[config_after])
        cp.add_argument("service")
        cp.set_defaults(func=cmd_canary_promote if name == "promote" else cmd_canary_abort)


def cmd_validate(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.definitions.parser import load_definitions
    from featurestore.definitions.snapshot import fingerprint

    defs = load_definitions(args.file)
    _compile_derived(args, defs)
    stored = [v for v in defs.views.values() if v.stream is None]
    streams = [v for v in defs.views.values() if v.stream is not None]
    n_features = sum(len(v.features) for v in stored)
    derived = sum(len(v.features) for v in defs.derived_views.values())
    print(
        f"{args.file}: OK - project {defs.project}: {len(defs.entities)} entities, "
        f"{len(stored)} feature views ({n_features} features), "
        + (
            f"{len(streams)} stream views ({sum(len(v.features) for v in streams)} features), "
            if streams
            else ""
        )
        + (f"{len(defs.derived_views)} derived views ({derived} features), " if derived else "")
        + f"{len(defs.services)} feature services; fingerprint {fingerprint(defs)[:12]}"
    )
    return 0


def _compile_derived(args: argparse.Namespace, defs: Any) -> None:
    """Build the derived views' kernels (into the configured cache, which servers then
    load): a kernel that does not compile fails here, before any registry sees it."""
    if not defs.derived_views:
        return
    from featurestore.config import load_config
    from featurestore.derived.compiler import cache_dir, check_definitions

    config = load_config(getattr(args, "config", None))
    check_definitions(defs, cache_dir(config.derived.cache_dir))


def _admin(args: argparse.Namespace, fn: Any) -> Any:
    """Run ``fn(admin)`` against the registry the config names. Definitions refused as
    incompatible print their diff first (then the error line)."""
    from featurestore.config import load_config
    from featurestore.factories import make_registry
    from featurestore.registry.admin import Incompatible, RegistryAdmin

    config = load_config(getattr(args, "config", None))

    async def run() -> Any:
        registry = make_registry(config)
        try:
            return await fn(RegistryAdmin(registry))
        finally:
            await registry.close()

    try:
        return asyncio.run(run())
    except Incompatible as e:  # apply, rollback, canary start: show what was refused
        if e.changes:
            from featurestore.definitions.diff import render

            print(render(e.changes))
        raise


def cmd_apply(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.definitions.diff import render
    from featurestore.definitions.parser import load_definitions

    defs = load_definitions(args.file)
    _compile_derived(args, defs)
    result = _admin(
        args, lambda a: a.apply(defs, force=args.force, dry_run=args.dry_run, message=args.message)
    )
    if not result.changes:
        print(f"no changes: registry version {result.previous} already holds these definitions")
        return 0
    print(render(result.changes))
    if result.snapshot is None:
        # No number: versions come from the registry's counter, which canaries and
        # staged snapshots move past current + 1.
        print(
            f"dry run: nothing published; apply publishes this as the next registry version (current: {result.previous})"
        )
    else:
        print(f"published registry version {result.snapshot.version} (was {result.previous})")
        _definitions_to_lineage_graph(args, result.snapshot)
    return 0


def _definitions_to_lineage_graph(args: argparse.Namespace, snapshot: Any) -> None:
    """With a Neo4j lineage graph, publishing definitions writes views, services and
    DERIVED_FROM edges there at once, so lineage exists before the first read even
    when no server serves GraphQL (servers that do write what they swap to too).
    Best effort, after the change is published: within ``GRAPH_WRITE_SECONDS``."""
    from featurestore.config import load_config
    from featurestore.factories import make_graph
    from lineage.graph.base import definition_facts

    config = load_config(getattr(args, "config", None))
    if not config.lineage.enabled or config.lineage.graph != "bolt":
        return

    async def write() -> None:
        graph = make_graph(config)
        try:
            async with asyncio.timeout(GRAPH_WRITE_SECONDS):
                await graph.start()
                await graph.apply_definitions(definition_facts(snapshot))
        finally:
            await graph.close()

    try:
        asyncio.run(write())
    except Exception as e:  # the registry change stands; serving processes write it too
        why = str(e) or f"no answer within {GRAPH_WRITE_SECONDS:g} s"
        print(
            f"lineage graph: definitions of version {snapshot.version} not written ({why}); "
            "the change is published, and servers with the graph write them"
        )
        return
    print(f"lineage graph: definitions of version {snapshot.version} written to {config.lineage.bolt.uri}")


def cmd_registry_history(args: argparse.Namespace, _argv: list[str]) -> int:
    rows, older = _admin(args, lambda a: a.history() if args.limit is None else a.history(args.limit))
    if not rows:
        print("the registry is empty")
    for row in rows:
        mark = "*" if row.current else " "
        if row.snapshot is None:
            print(f"{mark} {row.version:>4}  UNREADABLE: {row.problem}")
            continue
        snap, d = row.snapshot, row.snapshot.definitions
        print(
            f"{mark} {snap.version:>4}  {snap.created_at}  {snap.fingerprint[:12]}  "
            f"{len(d.views)} views, {len(d.services)} services  {snap.message}"
        )
    if older:
        print(f"({older} older snapshots not shown: --limit 0 lists every one)")
    return 0


def cmd_registry_prune(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.config import load_config

    deleted = _admin(args, lambda a: a.prune(args.keep, dry_run=args.dry_run))
    listed = ", ".join(map(str, deleted))
    if not deleted:
        print("nothing to prune")
    elif args.dry_run:
        print(f"dry run: would delete {len(deleted)} snapshots: {listed}")
    else:  # only etcd keeps deleted keys' space until compacted (the file backend unlinks)
        etcd = load_config(getattr(args, "config", None)).registry.kind == "etcd"
        advice = " (etcd frees the space after a compaction and defrag)" if etcd else ""
        print(f"deleted {len(deleted)} snapshots: {listed}{advice}")
    return 0


def cmd_registry_show(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.definitions.snapshot import snapshot_to_json
    from featurestore.errors import FailedPrecondition

    async def read(admin: Any) -> Any:
        if args.version is not None:
            return await admin.registry.get(args.version)
        current = await admin.registry.current()
        if current is None:
            raise FailedPrecondition("the registry is empty: apply definitions first")
        return current

    snap = _admin(args, read)
    print(json.dumps(json.loads(snapshot_to_json(snap)), indent=2))
    return 0


def cmd_registry_diff(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.definitions.diff import render

    changes = _admin(args, lambda a: a.diff(args.a, args.b))
    print(render(changes) if changes else f"versions {args.a} and {args.b} hold the same definitions")
    return 0


def cmd_registry_rollback(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.definitions.diff import render

    # An old version's kernels may no longer build (a trusted function since removed
    # from the deployment): refuse it here, as apply would, before any server sees it.
    _compile_derived(args, _admin(args, lambda a: a.registry.get(args.version)).definitions)
    result = _admin(args, lambda a: a.rollback(args.version, force=args.force))
    if result.snapshot is not None:
        _definitions_to_lineage_graph(args, result.snapshot)
    if result.snapshot is None:
        print(f"no changes: the current snapshot already holds version {args.version}'s definitions")
        return 0
    print(render(result.changes))
    print(f"rolled back: version {result.snapshot.version} holds version {args.version}'s definitions")
    return 0


def cmd_canary_start(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.definitions.parser import load_definitions

    defs = load_definitions(args.file)
    _compile_derived(args, defs)
    c = _admin(
        args, lambda a: a.canary_start(args.service, defs, args.share, entity=args.entity, force=args.force)
    )
    print(
        f"canary started: {args.service} serves {c.share:.1%} of {c.entity or 'entities'} "
        f"from version {c.candidate_version} (current: {c.base_version})"
    )
    return 0


def cmd_canary_status(args: argparse.Namespace, _argv: list[str]) -> int:
    canaries = _admin(args, lambda a: a.registry.canaries())
    if not canaries and not canaries.malformed:
        print("no canaries")
    for service, c in sorted(canaries.items()):
        print(
            f"{service}: {c.share:.1%} of {c.entity or 'entities'} on version {c.candidate_version} "
            f"(base {c.base_version})"
        )
    for service, bad in sorted(canaries.malformed.items()):
        print(f"{service}: MALFORMED: {bad}")
    return 1 if canaries.malformed else 0


def cmd_canary_promote(args: argparse.Namespace, _argv: list[str]) -> int:
    async def promote(admin: Any) -> Any:
        canary = await admin.canary_promote(args.service)
        return canary, await admin.registry.get(canary.candidate_version)

    c, snapshot = _admin(args, promote)
    print(
        f"promoted: version {c.candidate_version} is current (was {c.base_version}); canary of {args.service} ended"
    )
    _definitions_to_lineage_graph(args, snapshot)
    return 0


def cmd_canary_abort(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.registry.base import MalformedCanary

    c = _admin(args, lambda a: a.canary_abort(args.service))
    if isinstance(c, MalformedCanary):
        print(f"aborted: the malformed canary record of {args.service} is deleted ({c.problem})")
        return 0
    print(
        f"aborted: {args.service} is served from current again (candidate version {c.candidate_version} unused)"
    )
    return 0
