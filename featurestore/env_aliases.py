"""Short environment names kept from before the nested ones (FEATURESTORE_<SECTION>__<KEY>),
which win when both are set (docs/configuration.md), and the Kubernetes service links
that share two of them.

Kubernetes sets ``<SERVICE>_PORT=tcp://<ip>:<port>`` in every pod for each Service of
the namespace (unless the pod spec says ``enableServiceLinks: false``): a Service named
``featurestore-http`` or ``featurestore-grpc`` sets ``FEATURESTORE_HTTP_PORT`` or
``FEATURESTORE_GRPC_PORT``, and every pod would fail to start on "expected an integer".
No setting is a ``tcp://`` URL, so such a value is that link, not a setting: it is
skipped, with one warning per variable and process.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

log = logging.getLogger(__name__)

ENV_ALIASES = {
    "FEATURESTORE_HTTP_HOST": ("http", "host"),
    "FEATURESTORE_HTTP_PORT": ("http", "port"),
    "FEATURESTORE_GRPC_HOST": ("grpc", "host"),
    "FEATURESTORE_GRPC_PORT": ("grpc", "port"),
    "FEATURESTORE_REGISTRY_PATH": ("registry", "path"),
    "FEATURESTORE_DEFINITIONS": ("registry", "definitions"),
    "FEATURESTORE_DEADLINE_MS": ("limits", "deadline_ms"),
    "FEATURESTORE_DERIVED_CACHE_DIR": ("derived", "cache_dir"),
}

# The value of a service link's <SERVICE>_PORT: the Service's first port, by protocol.
SERVICE_LINK = re.compile(r"(?i)(tcp|udp|sctp)://\S+:\d+")

_warned: set[str] = set()


def aliases_in_force(environ: Mapping[str, str] | None = None) -> dict[str, tuple[str, ...]]:
    """``ENV_ALIASES`` without the variables whose value is a Kubernetes service link."""
    env = os.environ if environ is None else environ
    kept: dict[str, tuple[str, ...]] = {}
    for var, keys in ENV_ALIASES.items():
        value = env.get(var)
        if value is not None and SERVICE_LINK.fullmatch(value.strip()):
            if var not in _warned:
                _warned.add(var)
                log.warning(
                    "%s=%s is a Kubernetes service link (of a Service named %s), not %s: ignored "
                    "(set %s for that; enableServiceLinks: false in the pod spec stops the links)",
                    var,
                    value,
                    var.removesuffix("_PORT").lower().replace("_", "-"),
                    ".".join(keys),
                    "FEATURESTORE_" + "__".join(keys).upper(),
                )
            continue
        kept[var] = keys
    return kept
