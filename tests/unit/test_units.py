"""Unit strings -> SI floats (chipsim.config.units.parse_quantity)."""

from __future__ import annotations

import math

import pytest

from chipsim.config.units import format_si, parse_quantity
from chipsim.errors import InputError


@pytest.mark.parametrize(("text", "kind", "expected"), [
    ("3.35 TB/s", "bandwidth", 3.35e12),
    ("4.8 TB/s", "bandwidth", 4.8e12),
    ("450 GB/s", "bandwidth", 450e9),
    ("50 MiB", "bytes", 52428800),
    ("80 GB", "bytes", 80e9),
    ("1 GiB", "bytes", 2**30),
    ("700 W", "power", 700.0),
    ("989.4 TFLOP/s", "flops", 989.4e12),
    ("1978.9 TOP/s", "flops", 1978.9e12),
    ("989.4 TFLOPS", "flops", 989.4e12),
    ("1.98 GHz", "frequency", 1.98e9),
    ("300 ns", "time", 300e-9),
    ("10 us", "time", 10e-6),
    ("10 µs", "time", 10e-6),
    ("100 ms", "time", 0.1),
    ("0.5 pJ/FLOP", "energy_per_flop", 0.5e-12),
    ("814 mm^2", "area", 814.0),
])
def test_unit_strings_convert_to_si(text: str, kind: str, expected: float) -> None:
    assert parse_quantity(text, kind) == pytest.approx(expected, rel=1e-12)


def test_energy_per_bit_becomes_joules_per_byte() -> None:
    # 8 bits per byte: 3.9 pJ/bit == 31.2 pJ/B
    assert parse_quantity("3.9 pJ/bit", "energy_per_byte") == pytest.approx(3.9e-12 * 8, rel=1e-12)
    assert parse_quantity("3.9 pJ/B", "energy_per_byte") == pytest.approx(3.9e-12, rel=1e-12)


def test_plain_numbers_are_taken_as_si() -> None:
    assert parse_quantity(700, "power") == 700.0
    assert parse_quantity(1.5e12, "bandwidth") == 1.5e12
    assert parse_quantity(0, "bytes") == 0.0


@pytest.mark.parametrize(("text", "kind"), [
    ("700 W", "bandwidth"),  # the task's example: a power is not a bandwidth
    ("3.35 TB/s", "bytes"),
    ("50 MiB", "bandwidth"),
    ("989.4 TFLOP/s", "frequency"),
    ("1 TB/s", "flops"),
    ("300 ns", "power"),
    ("0.5 pJ/FLOP", "energy_per_byte"),
    # pint makes bits dimensionless; these must still be rejected
    ("3.35 TB/s", "frequency"),
    ("1.98 GHz", "bandwidth"),
    ("3.9 pJ", "energy_per_byte"),
    ("5", "bytes"),
])
def test_wrong_dimension_raises_input_error(text: str, kind: str) -> None:
    with pytest.raises(InputError) as info:
        parse_quantity(text, kind, key="memory.hbm.bandwidth", file="chip.yaml")
    err = info.value
    assert err.key == "memory.hbm.bandwidth"
    assert err.file == "chip.yaml"
    assert repr(text) in str(err)


@pytest.mark.parametrize("value", ["banana", "", "TB/s", "3.35 TB/ss", "3..5 W", "-5 W", "nan W", True, None,
                                   [700], {"W": 700}])
def test_garbage_raises_input_error(value: object) -> None:
    with pytest.raises(InputError, match="expected"):
        parse_quantity(value, "power")


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        parse_quantity("1 W", "voltage")


def test_format_si_round_trips_through_parse() -> None:
    assert format_si(3.35e12, "B/s") == "3.35 TB/s"
    assert parse_quantity(format_si(3.35e12, "B/s"), "bandwidth") == pytest.approx(3.35e12)
    assert format_si(0, "W") == "0 W"
    assert math.isclose(parse_quantity(format_si(2.5e-6, "s"), "time"), 2.5e-6)
