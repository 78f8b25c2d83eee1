"""``featurestore healthcheck``: the image's health check (Dockerfile ``HEALTHCHECK``).
It asks the local server's ``/readyz`` where the server's configuration puts it: the
plain admin port when ``http.admin_port`` is set, else the serving port, over HTTPS when
``tls.cert_file`` is set; or ``--url`` (the lineage consumer's and the stream processor's
``/metrics``: compose's checks). Exit 0: ready; 1: not (Docker reserves 2), with the
reason on stderr. Never through a proxy: Docker hands containers the client's
``HTTP_PROXY``, which urllib would otherwise use for 127.0.0.1 too.

The image runs it as ``python -m featurestore.cli.health`` (the same arguments), every
10 s: that imports this module alone, which imports nothing heavy (the config's pydantic
models; no numpy, no pyarrow, no other command module:
tests/integration/test_cli_health_module.py), where ``featurestore healthcheck`` builds the
whole CLI first.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any

from featurestore.cli.base import Subcommands
from featurestore.errors import FailedPrecondition

HELP = "exit 0 when the local server is ready (its /readyz)"


def register(sub: Subcommands) -> None:
    h = sub.add_parser("healthcheck", help=HELP)
    _arguments(h)
    # an error main reports (FEATURESTORE_LOG_LEVEL unknown) exits 1 too: Docker reserves 2
    h.set_defaults(func=cmd_healthcheck, failure_exit=1)


def _arguments(h: argparse.ArgumentParser) -> None:
    h.add_argument(
        "--config",
        default=os.environ.get("FEATURESTORE_CONFIG"),
        help="the server's config file (default: $FEATURESTORE_CONFIG); FEATURESTORE_* variables apply as for serve",
    )
    h.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    h.add_argument("--url", help="ask this URL for a 200 instead (no config is read)")


def readyz(config: Any) -> tuple[str, ssl.SSLContext | None]:
    """The URL of the server's /readyz on this host, and the TLS context to ask it with."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(config.http.host, config.http.host)
    host = f"[{host}]" if ":" in host else host
    if config.http.admin_port is not None:
        return f"http://{host}:{config.http.admin_port}/readyz", None
    if not config.tls.enabled:
        return f"http://{host}:{config.http.port}/readyz", None
    if config.tls.client_ca_file:
        raise FailedPrecondition(
            "the serving port requires client certificates (tls.client_ca_file): set http.admin_port"
        )
    # The server's own certificate is the trust anchor: it is this server that answers,
    # whatever name its certificate gives (the host dialled is a loopback address).
    context = ssl.create_default_context(cafile=config.tls.cert_file)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = False
    return f"https://{host}:{config.http.port}/readyz", context


def local_opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    """urllib without proxies (it honours ``http_proxy`` for every host not in
    ``no_proxy``, loopback included), with ``context`` for HTTPS."""
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )


def cmd_healthcheck(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.config import load_config

    url = args.url or "/readyz"
    try:
        url, context = (url, None) if args.url else readyz(load_config(args.config))
        with local_opener(context).open(url, timeout=args.timeout) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except Exception as e:  # a config error too: Docker reads any exit code but 0 and 1 as reserved
        print(f"not ready: {url}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"not ready: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m featurestore.cli.health [--config FILE] [--timeout S]``."""
    p = argparse.ArgumentParser(prog="python -m featurestore.cli.health", description=HELP)
    _arguments(p)
    return cmd_healthcheck(p.parse_args(argv), [])


if __name__ == "__main__":
    sys.exit(main())
