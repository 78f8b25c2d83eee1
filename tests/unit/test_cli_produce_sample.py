"""`featurestore stream produce-sample` refuses what it cannot produce, before any broker."""

from __future__ import annotations

import pytest

from featurestore.cli import main


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--rate", "0"], "--rate"),
        (["--rate", "-5"], "--rate"),
        (["--rate", "nan"], "--rate"),
        (["--users", "0"], "--users"),
        (["--partitions", "0"], "--partitions"),
        (["--malformed-every", "-1"], "--malformed-every"),
    ],
)
def test_a_sample_producer_with_an_impossible_setting_is_a_one_line_error(
    flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # (no broker runs here: the check comes before any connection)
    code = main(["stream", "produce-sample", "--seconds", "1", *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: INVALID_ARGUMENT: " + named) and "Traceback" not in err
