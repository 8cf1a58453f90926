"""Chip YAMLs: built-ins, `extends:` inheritance, schema errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import BUILTIN_CHIPS

import chipsim
from chipsim.config.loader import deep_merge
from chipsim.errors import InputError
from chipsim.hardware import builtin_chip_names, load_chip


def test_the_known_chips_are_shipped() -> None:
    assert set(BUILTIN_CHIPS) <= set(builtin_chip_names())


@pytest.mark.parametrize("name", builtin_chip_names())
def test_every_builtin_chip_loads_with_sane_si_numbers(name: str) -> None:
    chip = load_chip(name)
    assert chip.name == name
    assert chip.peak("bf16") > 1e14  # every built-in runs bf16 at > 100 TFLOP/s
    assert 1e11 < chip.hbm.bandwidth_bytes_per_s < 1e14
    assert chip.hbm.capacity_bytes > 1e10
    assert 0 < chip.power.idle_w < chip.power.limit_w
    assert 1e9 < chip.clock_hz < 5e9
    assert chip.link.bandwidth_bytes_per_s > 0
    assert all(0 < e <= 1 for e in chip.calibration.gemm_efficiency.values())
    assert 0 < chip.calibration.memory_efficiency <= 1
    # every dtype the chip runs has a dynamic energy
    assert set(chip.peak_flops_per_s) <= set(chip.power.energy_j_per_flop)
    assert chip.hbm in chip.memory_levels()


def test_datasheet_numbers_of_h200_and_h100() -> None:
    h200, h100 = load_chip("h200_sxm"), load_chip("h100_sxm")
    assert h200.hbm.bandwidth_bytes_per_s == pytest.approx(4.8e12)
    assert h200.hbm.capacity_bytes == pytest.approx(150109880320)
    assert h200.peak("bf16") == pytest.approx(989.4e12)
    assert h200.peak("fp8") == pytest.approx(2 * h200.peak("bf16"), rel=1e-3)
    assert h200.power.limit_w == 700.0
    assert h200.clock_hz == pytest.approx(1.98e9)
    assert h100.hbm.bandwidth_bytes_per_s == pytest.approx(3.35e12)
    assert h100.hbm.capacity_bytes == 81559 * 2**20  # what nvidia-smi reports of the "80 GB"
    # same GH100 compute
    assert h100.peak_flops_per_s == h200.peak_flops_per_s


def test_h100_dwb_has_a_weight_buffer_costing_five_percent_of_the_die() -> None:
    dwb, base = load_chip("h100_dwb"), load_chip("h100_sxm")
    wb = dwb.weight_buffer
    assert wb is not None
    assert wb.area_fraction == pytest.approx(0.05)
    assert wb.name == "weight_buffer"
    assert wb.capacity_bytes > 0
    assert wb.latency_s < dwb.hbm.latency_s  # the point of the design
    assert wb in dwb.memory_levels()
    assert base.weight_buffer is None
    # everything else comes from h100_sxm
    assert dwb.hbm == base.hbm
    assert dwb.peak_flops_per_s == base.peak_flops_per_s


@pytest.mark.parametrize("name", builtin_chip_names())
def test_int4_mode(name: str) -> None:
    chip = load_chip(name)
    if name == "dojo_int4":
        assert chip.int4_mode == "native"
        assert chip.peak("int4") > chip.peak("bf16")
    else:
        assert chip.int4_mode == "weight_only"


def test_chip_without_a_dtype_rate_raises_input_error() -> None:
    dojo = load_chip("dojo_int4")
    with pytest.raises(InputError, match="tf32"):
        dojo.peak("tf32")  # listed with 0 TFLOP/s: not a D1 format
    with pytest.raises(InputError, match="int4"):
        load_chip("h200_sxm").peak("int4")


# datasheet values cited in docs/hardware_sources.md (and ../shared/reference/hardware_specs.md §1 for
# the H100 PCIe): name -> (bf16 dense FLOP/s, HBM bytes/s, HBM bytes, power limit W, link B/s per direction)
NEW_CHIPS = {
    "a100_sxm": (312e12, 2.039e12, 80e9, 400.0, 300e9),
    "h800": (989.4e12, 3.35e12, 81559 * 2**20, 700.0, 200e9),  # inherits the H100 SXM's 80 GB as reported
    "b200": (2250e12, 7.7e12, 180e9, 1000.0, 900e9),
    "mi325x": (1307.4e12, 6.0e12, 256e9, 1000.0, 448e9),
    "h100_pcie": (756e12, 2.0e12, 80e9, 350.0, 64e9),
}


@pytest.mark.parametrize("name", sorted(NEW_CHIPS))
def test_new_chips_carry_their_datasheet_figures(name: str) -> None:
    bf16, hbm_bw, hbm_cap, limit, link = NEW_CHIPS[name]
    chip = load_chip(name)
    assert chip.name == name
    assert chip.peak("bf16") == pytest.approx(bf16)
    assert chip.hbm.bandwidth_bytes_per_s == pytest.approx(hbm_bw)
    assert chip.hbm.capacity_bytes == pytest.approx(hbm_cap)
    assert chip.power.limit_w == pytest.approx(limit)
    assert chip.link.bandwidth_bytes_per_s == pytest.approx(link)
    assert "docs/hardware_sources.md" in Path(chip.source_file).read_text(encoding="utf-8")  # cites its sources


def test_new_chips_differ_from_their_parents_only_where_the_hardware_does() -> None:
    h100, h800 = load_chip("h100_sxm"), load_chip("h800")
    assert h800.peak_flops_per_s == h100.peak_flops_per_s and h800.hbm == h100.hbm
    assert h800.link.bandwidth_bytes_per_s < h100.link.bandwidth_bytes_per_s
    mi300x, mi325x = load_chip("mi300x"), load_chip("mi325x")
    assert mi325x.peak_flops_per_s == mi300x.peak_flops_per_s
    assert mi325x.compute_units == mi300x.compute_units == 304
    assert replace(mi325x.calibration, source="") == replace(mi300x.calibration, source="")
    assert mi325x.hbm.capacity_bytes > mi300x.hbm.capacity_bytes
    assert load_chip("a100_sxm").compute_units == 108
    assert load_chip("h100_pcie").compute_units == 114
    assert load_chip("b200").compute_units == 148


def test_b200_runs_fp4_and_fp6_and_a100_has_no_fp8() -> None:
    b200 = load_chip("b200")
    assert b200.peak("fp4") == pytest.approx(9000e12)
    assert b200.peak("fp4") > b200.peak("fp8")
    # NVIDIA's table gives one "FP8/FP6" rate: FP6 runs at the FP8 rate, not above it
    assert b200.peak("fp6") == pytest.approx(b200.peak("fp8")) == pytest.approx(4500e12)
    assert b200.peak("fp6") > b200.peak("bf16")
    for dtype in ("fp6", "fp4"):
        assert 0 < b200.power.energy_j_per_flop[dtype] < b200.power.energy_j_per_flop["fp8"]
        assert 0 < b200.calibration.gemm_efficiency[dtype] <= 1
    with pytest.raises(InputError, match="fp8"):
        load_chip("a100_sxm").peak("fp8")
    with pytest.raises(InputError, match="fp4"):
        load_chip("h200_sxm").peak("fp4")


def test_new_dtypes_have_sizes() -> None:
    from chipsim.vocab import DTYPES
    from chipsim.workload.kinds import DTYPE_BYTES

    assert DTYPE_BYTES["fp6"] == 0.75 and DTYPE_BYTES["fp4"] == 0.5
    assert set(DTYPES) <= set(DTYPE_BYTES)


@pytest.mark.parametrize(("device", "chip"), [
    ("A100_SXM", "a100_sxm"), ("A100", "a100_sxm"), ("NVIDIA A100-SXM4-80GB", "a100_sxm"),
    ("H800", "h800"), ("NVIDIA H800", "h800"),
    ("B200", "b200"), ("NVIDIA B200", "b200"), ("NVIDIA B200-SXM-180GB", "b200"),
    ("MI325X", "mi325x"), ("AMD Instinct MI325X", "mi325x"),
    ("H100_PCIE", "h100_pcie"), ("NVIDIA H100 PCIe", "h100_pcie"),
])
def test_device_aliases_of_the_new_chips_resolve(device: str, chip: str) -> None:
    from chipsim.hardware.registry import DEVICE_ALIASES, chip_for_device_name

    assert chip_for_device_name(device) == chip
    assert chip in builtin_chip_names()
    assert set(DEVICE_ALIASES.values()) <= set(builtin_chip_names())


@pytest.mark.parametrize(("device", "chip"), [
    ("H100 SXM", "h100_sxm"), ("H100-SXM-80GB", "h100_sxm"), ("NVIDIA H100-SXM5-80GB", "h100_sxm"),
    ("H200-141GB SXM", "h200_sxm"), ("8x H200 (Nebius)", "h200_sxm"), ("A100-SXM4-80GB", "a100_sxm"),
    ("A100-80GB", "a100_sxm"), ("H100 80GB PCIe", "h100_pcie"), ("GB200 NVL72", "gb200"),
    ("AMD Instinct MI300X OAM", "mi300x"), ("NVIDIA B200 (HGX)", "b200"),
    ("NVIDIA A100-SXM4-40GB", None), ("A100 80GB PCIe", None), ("H100 NVL", None), ("L40S", None),
    ("H1000", None),
])
def test_device_names_as_tables_write_them_resolve_to_the_chip_they_name(device: str, chip: str | None) -> None:
    from chipsim.hardware.registry import chip_for_device_name

    assert chip_for_device_name(device) == chip


def test_to_dict_is_json_serializable_si() -> None:
    data = json.loads(json.dumps(load_chip("h200_sxm").to_dict(), default=str))
    assert data["hbm"]["bandwidth_bytes_per_s"] == pytest.approx(4.8e12)
    assert data["power"]["limit_w"] == 700.0


# ---------------------------------------------------------------- extends


def test_child_overrides_only_the_keys_it_sets(write) -> None:
    path = write("fast_h100.yaml", """
        extends: h100_sxm
        name: fast_h100
        memory:
          hbm:
            bandwidth: 6.7 TB/s
        """)
    child, parent = load_chip(path), load_chip("h100_sxm")
    assert child.name == "fast_h100"
    assert child.hbm.bandwidth_bytes_per_s == pytest.approx(6.7e12)
    # the rest of memory.hbm is inherited key by key (deep merge), not replaced
    assert child.hbm.capacity_bytes == parent.hbm.capacity_bytes
    assert child.hbm.latency_s == parent.hbm.latency_s
    assert child.hbm.energy_j_per_byte == parent.hbm.energy_j_per_byte
    assert child.onchip == parent.onchip
    assert child.host_memory == parent.host_memory
    assert child.peak_flops_per_s == parent.peak_flops_per_s
    assert child.power == parent.power
    assert child.calibration == parent.calibration
    assert child.link == parent.link
    assert child.description == parent.description
    assert child.source_file == str(path.resolve())


def test_multi_level_extends_through_relative_paths(write) -> None:
    write("a/base.yaml", """
        extends: h200_sxm
        name: base
        power:
          limit: 1000 W
        """)
    path = write("b/child.yaml", """
        extends: ../a/base.yaml
        name: child
        compute:
          clock: 2.0 GHz
        """)
    chip = load_chip(path)
    assert chip.name == "child"
    assert chip.power.limit_w == 1000.0
    assert chip.clock_hz == pytest.approx(2.0e9)
    assert chip.hbm.bandwidth_bytes_per_s == pytest.approx(4.8e12)  # from h200_sxm


def test_circular_extends_is_an_input_error(write) -> None:
    write("a.yaml", "extends: b.yaml\nname: a\n")
    write("b.yaml", "extends: a.yaml\nname: b\n")
    with pytest.raises(InputError, match="circular") as info:
        load_chip(str(write("c.yaml", "extends: a.yaml\nname: c\n")))
    assert info.value.key == "extends"
    assert "a.yaml -> b.yaml -> a.yaml" in str(info.value)


def test_self_extends_is_an_input_error(write) -> None:
    path = write("me.yaml", "extends: me.yaml\nname: me\n")
    with pytest.raises(InputError, match="circular"):
        load_chip(path)


def test_extends_a_missing_parent_names_the_child_and_the_key(write) -> None:
    path = write("orphan.yaml", "extends: nowhere/parent.yaml\nname: orphan\n")
    with pytest.raises(InputError) as info:
        load_chip(path)
    err = info.value
    assert err.file == str(path.resolve())
    assert err.key == "extends"
    assert "parent.yaml" in str(err)


def test_extends_an_unknown_builtin_names_the_child(write) -> None:
    path = write("orphan.yaml", "extends: h300_sxm\nname: orphan\n")
    with pytest.raises(InputError, match="unknown chip 'h300_sxm'") as info:
        load_chip(path)
    assert info.value.file == str(path.resolve())
    assert info.value.key == "extends"


@pytest.mark.parametrize(("body", "key", "fragment"), [
    ("memory:\n  hbm:\n    bandwith: 4 TB/s\n", "memory.hbm.bandwith", "unknown key"),
    ("memory:\n  hbm:\n    bandwidth: 700 W\n", "memory.hbm.bandwidth", "bandwidth"),
    ("compute:\n  peak:\n    bf17: 1 TFLOP/s\n", "compute.peak.bf17", "unknown dtype"),
    ("compute:\n  units: -3\n", "compute.units", ">= 1"),
    ("compute:\n  int4: native\n", "compute.int4", "peak.int4"),
    ("power:\n  idle: 900 W\n", "power.idle", "below the limit"),
    ("schema_version: 2\n", "schema_version", "version 1"),
    ("calibration:\n  gemm:\n    tiles: [[128]]\n", "calibration.gemm.tiles", "tile"),
    ("calibration:\n  gemm:\n    kernels:\n      default: {tiles: [[128, 128]], gemv_max: 0}\n",
     "calibration.gemm.kernels.default.gemv_max", ">= 1"),
    ("calibration:\n  gemm:\n    kernels:\n      default: {tiles: [[128, 128]], stream_efficiency: 1.5}\n",
     "calibration.gemm.kernels.default.stream_efficiency", "<= 1"),
    ("memory:\n  weight_buffer:\n    capacity: 1 MiB\n    bandwidth: 1 TB/s\n    area_fraction: 2\n",
     "memory.weight_buffer.area_fraction", "<= 1"),
    ("frobnicate: 1\n", "frobnicate", "unknown key"),
])
def test_schema_errors_name_file_and_key_path(write, body: str, key: str, fragment: str) -> None:
    path = write("bad.yaml", "extends: h200_sxm\nname: bad\n" + body)
    with pytest.raises(InputError) as info:
        load_chip(path)
    err = info.value
    assert err.key == key
    assert err.file == str(path.resolve())
    assert fragment in str(err)


def test_a_chip_yaml_that_is_not_a_mapping(write) -> None:
    with pytest.raises(InputError, match="mapping"):
        load_chip(write("list.yaml", "- 1\n- 2\n"))


def test_missing_chip_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_chip(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="unknown chip"):
        chipsim.load_chip("h999")


def test_deep_merge_merges_mappings_and_replaces_the_rest() -> None:
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    out = deep_merge(base, {"a": {"y": [3]}, "c": 3})
    assert out == {"a": {"x": 1, "y": [3]}, "b": 2, "c": 3}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 2}  # inputs untouched
