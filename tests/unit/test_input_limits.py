"""The input boundary's limits and strictness, at the library level: YAML (duplicate keys, nesting,
aliases, size, non-regular files), numbers (NaN, inf, zero), booleans, the closed vocabularies, JSON
(gzip bombs, BOM) and staged outputs. The CLI side of each case is in tests/integration/test_hostile_input.py."""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

import chipsim.config.loader as loader
import chipsim.workload.io as wio
from chipsim import vocab
from chipsim.atomic import check_destination
from chipsim.config.loader import brief, load_yaml, parse_yaml, read_bounded
from chipsim.config.reader import Section
from chipsim.config.units import parse_quantity
from chipsim.errors import InputError
from chipsim.hardware.registry import builtin_chip_names, load_chip

# ---------------------------------------------------------------- YAML


def test_duplicate_key_names_the_key_path_and_both_lines() -> None:
    with pytest.raises(InputError, match="duplicate key") as info:
        parse_yaml("a: 1\nlist:\n  - {x: 1}\n  - x: 1\n    y: 2\n    x: 3\n", "f.yaml")
    assert info.value.key == "list[1].x" and info.value.file == "f.yaml"
    assert "first given on line 4" in info.value.message and "line 6" in info.value.message


def test_merge_keys_and_ordinary_aliases_are_still_fine() -> None:
    data = parse_yaml("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\nsame: *b\n")
    assert data["d"] == {"x": 3, "y": 2} and data["same"] == {"x": 1, "y": 2}


def test_keys_equal_as_text_but_of_other_types_are_not_duplicates() -> None:
    assert parse_yaml("1: a\n'1': b\n") == {1: "a", "1": "b"}


def test_alias_bomb_is_refused_while_composing() -> None:
    bomb = 'a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]\n' + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
    with pytest.raises(InputError, match="alias bomb"):
        parse_yaml(bomb + "z: *a9\n")
    parse_yaml(bomb.split("a4:")[0])  # about 10^4 expanded nodes: legal


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(InputError, match="recursive alias"):
        parse_yaml("a: &a [1, *a]\n")


def test_nesting_is_bounded() -> None:
    ok = "x: " + "[" * (loader.MAX_DEPTH - 2) + "]" * (loader.MAX_DEPTH - 2)
    parse_yaml(ok)
    with pytest.raises(InputError, match="nested more than"):
        parse_yaml("x: " + "[" * 5000 + "]" * 5000)


def test_brief_bounds_a_shared_tree() -> None:
    leaf = ["lol"] * 10
    tree: Any = leaf
    for _ in range(9):
        tree = [tree] * 10  # 10^10 leaves, shared
    text = brief(tree)
    assert len(text) < 300
    assert len(brief("x" * 10**6)) < 100


def test_read_bounded_refuses_large_and_special_files(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * 5000)
    with pytest.raises(InputError, match="MiB chipsim reads"):
        read_bounded(big, 4096)
    assert read_bounded(big, 5000) == b"#" * 5000
    with pytest.raises(InputError, match="a directory"):
        read_bounded(tmp_path, 4096)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="FIFO"):
        load_yaml(fifo)
    with pytest.raises(InputError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_yaml_with_a_bom_is_read(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert load_yaml(path) == {"a": 1}


def test_every_yaml_in_the_repository_passes_the_stricter_loader() -> None:
    root = Path(__file__).resolve().parents[2]
    files = [p for p in root.rglob("*.y*ml") if ".git" not in p.parts and p.suffix in (".yaml", ".yml")]
    assert files
    for path in files:
        load_yaml(path)


# ---------------------------------------------------------------- numbers, quantities, booleans


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_section_number_refuses_non_finite(value: object) -> None:
    with pytest.raises(InputError, match="finite") as info:
        Section({"n": value}, "f.yaml", "top").number("n", minimum=None)
    assert info.value.key == "top.n"


def test_section_integer_refuses_non_finite_without_a_traceback() -> None:
    for value in (math.inf, math.nan):
        with pytest.raises(InputError, match="finite"):
            Section({"n": value}, "f.yaml").integer("n")


def test_section_positive_refuses_zero_and_keeps_other_values() -> None:
    sec = Section({"z": 0, "p": 0.5}, "f.yaml")
    with pytest.raises(InputError, match="above zero"):
        sec.number("z", positive=True)
    assert sec.number("p", positive=True, maximum=1.0) == 0.5
    assert sec.number("z") == 0.0  # without positive, zero is still legal


@pytest.mark.parametrize("text", [".inf", "1e308 TB/s", "1e400 W", "inf W"])
def test_quantities_refuse_infinity(text: str) -> None:
    value: object = math.inf if text == ".inf" else text
    with pytest.raises(InputError, match="expected"):
        parse_quantity(value, "bandwidth" if "TB/s" in text or text == ".inf" else "power")


def test_quantity_positive_and_negative_messages() -> None:
    with pytest.raises(InputError, match="above zero"):
        parse_quantity("0 TB/s", "bandwidth", positive=True)
    assert parse_quantity("0 TB/s", "bandwidth") == 0.0
    with pytest.raises(InputError, match="non-negative value: a bandwidth"):
        parse_quantity("-1 TB/s", "bandwidth")
    with pytest.raises(InputError, match="finite"):
        parse_quantity(10**400, "bytes")


def test_quantity_message_bounds_the_value() -> None:
    with pytest.raises(InputError) as info:
        parse_quantity(["x" * 1000] * 1000, "power")
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("value", ["false", "no", "off", 0, 1, None, "true"])
def test_section_boolean_takes_real_booleans_only(value: object) -> None:
    with pytest.raises(InputError, match="true or false"):
        Section({"b": value}, "f.yaml", "x").boolean("b")


def test_section_boolean_defaults_and_values() -> None:
    sec = Section({"t": True, "f": False}, "f.yaml")
    assert sec.boolean("t") is True and sec.boolean("f") is False and sec.boolean("missing", False) is False
    assert yaml.safe_load("b: no")["b"] is False  # YAML 1.1 no is a real boolean, so it stays legal


def test_section_mapping_with_a_vocabulary() -> None:
    sec = Section({"m": {"bf16": 0.5, "bf61": 0.1}}, "f.yaml")
    with pytest.raises(InputError, match="unknown dtype") as info:
        sec.mapping("m", "number", keys=vocab.DTYPES, what="dtype")
    assert info.value.key == "m.bf61"


# ---------------------------------------------------------------- vocabularies and chips


def test_vocab_matches_the_workload_kinds_and_the_chip_module() -> None:
    from chipsim.hardware import chip
    from chipsim.workload.kinds import ELEMENTWISE_OPS

    assert sorted(vocab.ELEMENTWISE_OP_NAMES) == sorted(ELEMENTWISE_OPS)
    assert chip.DTYPES == vocab.DTYPES and chip.ATTENTION_BACKENDS == vocab.ATTENTION_BACKENDS
    assert chip.INT4_MODES == vocab.INT4_MODES
    assert len(set(vocab.KERNEL_CLASSES)) == len(vocab.KERNEL_CLASSES)


def test_every_built_in_chip_loads_under_the_stricter_schema() -> None:
    for name in builtin_chip_names():
        chip = load_chip(name)
        assert chip.power.min_clock_hz <= chip.clock_hz
        assert 0 < chip.calibration.memory_efficiency <= 1
        assert set(chip.calibration.kernel_bw_efficiency) <= set(vocab.KERNEL_CLASSES)
        assert set(chip.calibration.host_dispatch_s) <= set(vocab.HOST_CLASSES)


def test_split_kv_keeps_real_booleans() -> None:
    assert load_chip("h200_sxm").calibration.attention_split_kv == {"flash": True, "cudnn": True, "efficient": False}


# ---------------------------------------------------------------- JSON


def test_gunzip_bounded_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (4 * 2**20))
    with pytest.raises(OverflowError, match="inflates to more than"):
        wio.gunzip_bounded(bomb, 2**20)
    assert len(wio.gunzip_bounded(bomb, 4 * 2**20)) == 4 * 2**20


@pytest.mark.parametrize(("raw", "fragment"), [
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (b'{"a": ' + b"9" * 5000 + b"}", "invalid JSON"),
    (b'{"a": ', "invalid JSON at line 1"),
])
def test_parse_json_bytes_errors(raw: bytes, fragment: str) -> None:
    with pytest.raises(wio.JSONReadError, match=fragment):
        wio.parse_json_bytes(raw, gz=False)


def test_parse_json_bytes_accepts_a_bom_and_gzip() -> None:
    assert wio.parse_json_bytes(b"\xef\xbb\xbf{\"a\": 1}", gz=False) == {"a": 1}
    assert wio.parse_json_bytes(gzip.compress(b"\xef\xbb\xbf[1]"), gz=True) == [1]
    with pytest.raises(wio.JSONReadError, match="Error -3|Not a gzipped|CRC"):
        wio.parse_json_bytes(gzip.compress(b"[1]")[:10] + b"\xff" * 20, gz=True)


def test_check_destination(tmp_path: Path) -> None:
    assert check_destination(tmp_path / "new" / "deeper" / "w.json") == tmp_path / "new" / "deeper" / "w.json"
    assert not (tmp_path / "new").exists()  # nothing created
    with pytest.raises(InputError, match="existing directory"):
        check_destination(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        check_destination(tmp_path / "f" / "a" / "w.json")
