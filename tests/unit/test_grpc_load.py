"""The request files the Feast gRPC peer's messages travel in (benchmarks/feast_grpc_requests.py
writes them in the peer's venv, benchmarks/grpc_load.py reads them in ours)."""

from pathlib import Path

from benchmarks.feast_grpc_requests import write_messages
from benchmarks.grpc_load import load_bodies


def test_load_bodies_reads_back_every_message_the_peer_script_writes(tmp_path: Path) -> None:
    messages = [b"", b"\x0a\x03abc", bytes(range(256)) * 300, b"\x00"]
    path = tmp_path / "feast-b1-s1000.bin"
    write_messages(str(path), messages)
    assert load_bodies(str(path)) == messages


def test_load_bodies_of_an_empty_file_is_no_message(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    assert load_bodies(str(path)) == []


def test_a_truncated_request_file_is_refused_naming_it(tmp_path: Path) -> None:
    import pytest

    path = tmp_path / "feast-b1-s1000.bin"
    write_messages(str(path), [b"\x0a\x03abc", b"0123456789"])
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"feast-b1-s1000\.bin.*truncated"):
        load_bodies(str(path))
    path.write_bytes(b"\x05\x00")  # not even a whole length prefix
    with pytest.raises(ValueError, match="truncated"):
        load_bodies(str(path))
