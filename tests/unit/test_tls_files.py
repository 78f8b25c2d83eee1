"""featurestore/tls_files.py: what the start checks of a backend's TLS files say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from featurestore.errors import FailedPrecondition
from featurestore.registry.etcd_client import EtcdAccess
from tests.security import make_certs


def test_the_etcd_registry_tls_files_are_named_with_their_path_at_start(tmp_path: Path) -> None:
    """grpc read them at the first connect: `NOT_FOUND: No such file or directory: <path>`
    without the setting, and an encrypted key failed the handshake."""
    with pytest.raises(
        FailedPrecondition, match=re.escape("registry.ca_file /nonexistent/ca.pem: no such file")
    ):
        EtcdAccess(ca_file="/nonexistent/ca.pem").check()
    certs = make_certs(tmp_path)
    with pytest.raises(
        FailedPrecondition, match=re.escape(f"registry.key_file {certs.key}: the key is not the key of")
    ):
        EtcdAccess(cert_file=str(certs.client_cert), key_file=str(certs.key)).check()
    EtcdAccess(
        ca_file=str(certs.ca), cert_file=str(certs.client_cert), key_file=str(certs.client_key)
    ).check()
