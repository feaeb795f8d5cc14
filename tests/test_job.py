"""Directive parsing, durations, sizes and the record's JSON round trip."""

import pytest

from gpudispatch.job import (
    DirectiveError,
    Directives,
    JobRecord,
    parse_directives,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90), ("45s", 45), ("2h30m", 9000), ("1d", 86400), ("1.5h", 5400),
     ("01:30:00", 5400), ("05:00", 300), ("1-00:00:00", 86400)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "2x", "h", "1h 2", "-5"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "text, size", [("10G", 10 * 2**30), ("512M", 512 * 2**20), ("1.5GiB", int(1.5 * 2**30)),
                   ("2048", 2048), ("1k", 1024)]
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "header, expected",
    [
        ("#!/bin/sh\necho hi\n", Directives()),
        ("#!/bin/sh\n#GPUDISPATCH --gpus 2 --timeout 2h30m --retries 2 --priority 5 "
         "--after prep.sh\n", Directives(gpus=2, timeout=9000, retries=2, priority=5,
                                          after=("prep.sh",))),
        ("#!/bin/sh\n# comment\n\n#GPUDISPATCH --gpus 1\n#GPUDISPATCH --after a.sh b.sh\n",
         Directives(gpus=1, after=("a.sh", "b.sh"))),
        ("#!/bin/sh\n#GPUDISPATCH --gpu-mem 10G  # trailing comment\n",
         Directives(gpu_mem=10 * 2**30)),
        # directives after the first command are not read (like #SBATCH)
        ("#!/bin/sh\necho hi\n#GPUDISPATCH --gpus 2\n", Directives()),
    ],
)
def test_directives(header, expected):
    assert parse_directives(header) == expected


@pytest.mark.parametrize(
    "line",
    ["#GPUDISPATCH --gpus two", "#GPUDISPATCH --timeout soon", "#GPUDISPATCH --bogus 1",
     "#GPUDISPATCH --gpus -1", "#GPUDISPATCHER --gpus 1", "#GPUDISPATCH --after 'open"],
)
def test_malformed_directive_quotes_the_line(line):
    with pytest.raises(DirectiveError) as info:
        parse_directives(f"#!/bin/sh\n{line}\n")
    assert line in str(info.value)


def test_record_round_trip_ignores_unknown_fields():
    record = JobRecord(name="a.sh", gpus=[0, 1], exit_code=2, attempts=3, params={"lr": 0.1})
    again = JobRecord.from_json(record.to_json())
    assert again == record
    assert JobRecord.from_dict({"name": "b.sh", "future_field": 1}).name == "b.sh"


def test_an_interruption_never_outnumbers_the_recorded_attempts() -> None:
    """A run whose start record was never written (its dispatcher died at once) is not an
    interruption too: that would give the job's next failure a free retry (chaos seed
    3910707609 ran a failing job without --retries twice)."""
    record = JobRecord(name="a.sh")
    record.interrupted()
    assert record.interruptions == 0 and record.failed_attempts == 0
    record.attempts = 1
    record.interrupted()
    record.interrupted()
    assert record.interruptions == 1 and record.failed_attempts == 0
    record.attempts = 2
    assert record.failed_attempts == 1
