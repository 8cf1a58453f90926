"""Systems end to end: `chipsim systems`, run configs with `systems:` (what-ifs, several workloads),
data-parallel training over a 2-node fat tree, and system errors through the CLI (exit 2, file and key)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import chipsim
from chipsim.api import load_targets
from chipsim.config.runconfig import load_run_config
from chipsim.network import builtin_system_names, collective, load_system
from chipsim.network.fabric import Fabric
from chipsim.workload.generators import build_workload

BUILTIN_SYSTEMS = ("cluster_128x_mi300x_roce", "cluster_128x_mi325x", "cluster_2048x_dgx_h100_ndr",
                   "cluster_256x_dgx_h100_ndr", "cluster_256x_hgx_h200_ndr", "cluster_256x_hgx_h800_ib", "cluster_64x_dgx_a100_hdr",
                   "cluster_64x_hgx_b200_ndr", "cluster_8x_gb200_nvl72_ndr", "dgx_a100", "dgx_h100", "gb200_nvl72",
                   "gh200_nvl", "hgx_b200", "hgx_h200", "hgx_h800", "mi300x_8gpu", "mi325x_8gpu")

COLLECTIVE_8 = "{generator: collective, params: {kind: all_reduce, ranks: 8, size: 256 MiB}}"

TWO_NODE_SYSTEM = """
    extends: hgx_h200
    name: two_node
    description: 2x HGX H200 on one NDR leaf
    nodes: 2
    scale_out:
      nics_per_node: 8
      nic_bandwidth: 400 Gb/s
      nic_latency: 2 us
      switch_radix: 64
      port_bandwidth: 400 Gb/s
      switch_latency: 330 ns
    """


def _runs(out: str) -> list[dict]:
    data = json.loads(out)
    assert list(data) == ["runs"]
    return data["runs"]


# ---------------------------------------------------------------- chipsim systems


def test_systems_lists_every_builtin(cli: Callable) -> None:
    rc, out, err = cli(["systems"])
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(BUILTIN_SYSTEMS)
    assert tuple(builtin_system_names()) == BUILTIN_SYSTEMS
    by_name = {line.split()[0]: line for line in lines}
    assert by_name["cluster_256x_dgx_h100_ndr"].split()[1] == "2048"  # 256 nodes x 8 GPUs
    assert "fat tree (ecmp)" in by_name["cluster_256x_dgx_h100_ndr"]
    assert "all_to_all" in by_name["mi300x_8gpu"]


def test_systems_show_prints_the_resolved_system_as_json(cli: Callable) -> None:
    rc, out, err = cli(["systems", "show", "dgx_h100"])
    assert rc == 0, err
    data = json.loads(out)
    assert data["name"] == "dgx_h100"
    assert data["nodes"] == 1
    assert data["gpus_per_node"] == 8
    assert data["chip"] == "h100_sxm"
    assert data["fabric"]["kind"] == "nvswitch"
    assert data["fabric"]["bandwidth_bytes_per_s"] == pytest.approx(450e9)
    assert data["scale_out"] is None


def test_systems_show_without_a_name_is_a_usage_error(cli: Callable) -> None:
    rc, out, err = cli(["systems", "show"])
    assert rc == 2
    assert out == ""
    assert "usage: chipsim systems show NAME" in err


def test_systems_show_unknown_name(cli: Callable) -> None:
    rc, out, err = cli(["systems", "show", "nope"])
    assert rc == 2
    assert out == ""
    assert "unknown system 'nope'" in err


# ---------------------------------------------------------------- run configs with systems


def test_what_if_variant_of_a_system_runs_faster(cli: Callable, write, tmp_path: Path) -> None:
    config = write("what_if.yaml", f"""
        name: what_if
        systems:
          - hgx_h200
          - {{system: hgx_h200, name: fast, set: {{node_fabric: {{bandwidth: 900 GB/s}}}}}}
        workload: {COLLECTIVE_8}
        report: [table]
        """)
    rc, out, err = cli(["run", config, "--json", "--out", tmp_path / "out"])
    assert rc == 0, err
    runs = _runs(out)
    assert [r["system"] for r in runs] == ["hgx_h200", "fast"]
    assert [r["chip"] for r in runs] == ["h200_sxm", "h200_sxm"]
    base, fast = runs
    assert fast["latency_s"] < base["latency_s"]
    for run in runs:
        (op,) = run["ops"]
        assert op["kind"] == "all_reduce" and op["stream"] == "comm"
        assert op["bytes"] == 256 * 2**20
    # the variant really is a different system: its override reached the network model
    targets = load_targets(load_run_config(config))
    assert [t.label for t in targets] == ["hgx_h200", "fast"]
    assert isinstance(targets[1].network, Fabric) and targets[1].network.system.fabric.bandwidth_bytes_per_s == 900e9
    assert isinstance(targets[0].network, Fabric) and targets[0].network.system.fabric.bandwidth_bytes_per_s == 450e9


def test_the_all_reduce_op_takes_the_network_model_time(write) -> None:
    """On the stock HGX H200 the simulated op lasts exactly the system collective's cost."""
    config = load_run_config(write("one.yaml", f"systems: [hgx_h200]\nworkload: {COLLECTIVE_8}\n"))
    (target,) = load_targets(config)
    (result,) = chipsim.run(config)
    (record,) = result.records
    workload = build_workload("collective", {"kind": "all_reduce", "ranks": 8, "size": "256 MiB"})
    assert isinstance(target.network, Fabric)
    cost = target.network.collective_cost(workload.ops[0], target.chip)
    assert record.duration_s == pytest.approx(cost.seconds, rel=1e-9)
    # and that cost is the flow simulation's time over the calibrated efficiency, plus its latency: at
    # 8 GPUs and 256 MiB the fastest algorithm is NVLink SHARP, at the fabric's calibrated efficiency
    assert isinstance(target.network, Fabric)
    report = collective(target.network.system, "all_reduce", 256 * 2**20, 8, "in_switch")
    assert "in_switch" in record.mode
    efficiency = target.network.system.fabric.in_switch_efficiency
    transfer = report.seconds - report.latency_s  # the efficiency stretches transfers, not path latencies
    # (a large collective runs on the bulk protocol: a step latency per step of the algorithm)
    cal = target.chip.calibration
    assert cost.seconds == pytest.approx(cal.collective_latency_s + report.latency_s + transfer / efficiency
                                         + report.steps * cal.collective_step_latency_s, rel=1e-9)


@pytest.mark.parametrize("bandwidth", ["900 GB/s", "1800 GB/s"])
def test_a_faster_node_fabric_is_not_capped_by_the_chip_link(write, bandwidth: str) -> None:
    """Regression: a system's collective cost (then chipsim/cost/model.py) returns link_bytes = bytes sent per
    rank, and the engine used to push them through the chip's own link (FluidShare at
    chip.link.bandwidth, 450 GB/s on h200_sxm) as well: with node_fabric 900 GB/s the network model
    said 0.805 ms and the simulated op took 1.075 ms; at 1800 GB/s, the same 1.075 ms."""
    config = load_run_config(write("fast.yaml", f"""
        systems: [{{system: hgx_h200, name: fast, set: {{node_fabric: {{bandwidth: {bandwidth}}}}}}}]
        workload: {COLLECTIVE_8}
        """))
    (target,) = load_targets(config)
    (result,) = chipsim.run(config)
    workload = build_workload("collective", {"kind": "all_reduce", "ranks": 8, "size": "256 MiB"})
    assert isinstance(target.network, Fabric)
    cost = target.network.collective_cost(workload.ops[0], target.chip)
    assert result.records[0].duration_s == pytest.approx(cost.seconds, rel=1e-9)


def test_node_fabric_bandwidth_keeps_paying_off() -> None:
    latencies = []
    for bandwidth in ("450 GB/s", "900 GB/s", "1800 GB/s"):
        system = load_system("hgx_h200", overrides={"node_fabric": {"bandwidth": bandwidth}}, rename=bandwidth)
        workload = build_workload("collective", {"kind": "all_reduce", "ranks": 8, "size": "256 MiB"})
        latencies.append(chipsim.simulate(workload, system.chip, network=Fabric(system)).latency_s)
    assert latencies[0] > latencies[1] > latencies[2]


def test_two_workloads_on_two_systems_give_four_runs(cli: Callable, write, tmp_path: Path) -> None:
    config = write("grid.yaml", """
        name: grid
        systems: [hgx_h200, dgx_h100]
        workload:
          - {name: small, generator: collective, params: {kind: all_reduce, ranks: 8, size: 16 MiB}}
          - {name: large, generator: collective, params: {kind: all_gather, ranks: 8, size: 64 MiB}}
        report: [table]
        """)
    rc, out, err = cli(["run", config, "--json", "--out", tmp_path / "out"])
    assert rc == 0, err
    runs = _runs(out)
    assert len(runs) == 2 * 2
    assert [(r["workload"], r["system"]) for r in runs] == [
        ("small", "hgx_h200"), ("small", "dgx_h100"), ("large", "hgx_h200"), ("large", "dgx_h100")]
    assert [r["ops"][0]["kind"] for r in runs] == ["all_reduce", "all_reduce", "all_gather", "all_gather"]
    assert all(r["latency_s"] > 0 for r in runs)


def test_data_parallel_training_on_two_nodes(write) -> None:
    write("two_node.yaml", TWO_NODE_SYSTEM)
    config = load_run_config(write("dp.yaml", """
        name: dp
        systems: [two_node.yaml]
        workload:
          generator: data_parallel_train_step
          params: {model: llama-350m, layers: 2, batch: 1, seq: 512, ranks: 16}
        report: [table]
        """))
    (target,) = load_targets(config)
    assert isinstance(target.network, Fabric) and target.network.system.world == 16 and target.network.system.nodes == 2
    (result,) = chipsim.run(config)
    assert result.system == "two_node"
    summary = result.summary()
    assert 0 <= summary["exposed_comm_s"] < summary["latency_s"]
    syncs = [r for r in result.records if r.kind == "all_reduce"]
    assert len(syncs) >= 2  # bucketed: several all-reduces during the backward
    assert all(r.stream == "comm" for r in syncs)
    assert all("over 16 ranks of two_node" in r.mode for r in syncs)  # across both nodes
    assert all(r.mode.startswith(("all_reduce ring", "all_reduce hierarchical")) for r in syncs)
    (adamw,) = [r for r in result.records if r.kind == "optimizer"]
    assert adamw.start_s >= max(r.end_s for r in syncs)
    # gradient sync overlaps the backward: the first bucket starts before the backward's last compute op
    # ends, so part of the communication is hidden
    backward_end = max(r.end_s for r in result.records if r.stream != "comm" and r.kind != "optimizer")
    assert min(r.start_s for r in syncs) < backward_end
    assert summary["exposed_comm_s"] < sum(r.duration_s for r in syncs)


def test_data_parallel_all_reduces_every_gradient() -> None:
    """Regression: GradientBuckets used to get only the linears' weight gradients (block_backward) plus
    the LM head and the embedding; the 2 RMSNorm weights per layer and the final norm's were never
    synchronized (llama-350m, 2 layers: 5,120 gradients, 20,480 fp32 bytes short of
    meta['gradient_bytes'] = params x 4)."""
    workload = build_workload("data_parallel_train_step",
                              {"model": "llama-350m", "layers": 2, "batch": 1, "seq": 512, "ranks": 16})
    synced = sum(op.shape["bytes"] for op in workload.ops if op.kind == "all_reduce")
    assert synced == workload.meta["gradient_bytes"]
    assert workload.meta["gradient_bytes"] == workload.meta["params"] * 4


# ---------------------------------------------------------------- errors through the CLI


def test_unknown_system_in_a_run_config(cli: Callable, write, tmp_path: Path) -> None:
    config = write("run.yaml", f"name: bad\nsystems: [nope]\nworkload: {COLLECTIVE_8}\n")
    out_dir = tmp_path / "out"
    rc, out, err = cli(["run", config, "--json", "--out", out_dir])
    assert rc == 2
    assert out == ""
    assert not out_dir.exists()
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line
    assert str(config) in line
    assert "key 'systems[0]'" in line
    assert "unknown system 'nope'" in line


def test_typo_in_a_system_yaml_names_that_yaml_and_key(cli: Callable, write, tmp_path: Path) -> None:
    system = write("typo.yaml", """
        extends: dgx_h100
        name: typo
        node_fabric:
          bandwith: 900 GB/s
        """)
    config = write("run.yaml", f"name: bad\nsystems: [typo.yaml]\nworkload: {COLLECTIVE_8}\n")
    rc, out, err = cli(["run", config, "--json", "--out", tmp_path / "out"])
    assert rc == 2
    assert out == ""
    line = err.strip()
    assert "\n" not in line
    assert str(system) in line
    assert str(config) not in line  # the error is in the system's file, not the run config
    assert "key 'node_fabric.bandwith'" in line
    assert "unknown key" in line


def test_multi_node_system_yaml_without_scale_out(cli: Callable, write, tmp_path: Path) -> None:
    system = write("lonely.yaml", "extends: hgx_h200\nname: lonely\nnodes: 4\n")
    config = write("run.yaml", f"systems: [lonely.yaml]\nworkload: {COLLECTIVE_8}\n")
    rc, out, err = cli(["run", config, "--json", "--out", tmp_path / "out"])
    assert rc == 2
    assert out == ""
    assert str(system) in err and "key 'scale_out'" in err and "4 nodes are not connected" in err


def test_a_collective_larger_than_the_system(cli: Callable, write, tmp_path: Path) -> None:
    config = write("run.yaml", "systems: [hgx_h200]\n"
                               "workload: {generator: collective, params: {kind: all_reduce, ranks: 16, size: 1 MiB}}\n")
    rc, out, err = cli(["run", config, "--json", "--out", tmp_path / "out"])
    assert rc == 2
    assert out == ""
    assert str(config) in err
    assert "hgx_h200 cannot run this workload" in err
    assert "over 16 ranks does not fit system 'hgx_h200' (8 GPUs)" in err


def test_system_error_in_a_what_if_override(cli: Callable, write, tmp_path: Path) -> None:
    config = write("run.yaml", "systems: [{system: hgx_h200, name: odd, set: {node_fabric: {type: torus}}}]\n"
                               f"workload: {COLLECTIVE_8}\n")
    rc, out, err = cli(["run", config, "--json", "--out", tmp_path / "out"])
    assert rc == 2
    assert out == ""
    # the typo is in the run config's what-if, not in the built-in system YAML the user never wrote
    assert f"{config}: key 'systems[0].set.node_fabric.type'" in err
    assert "got 'torus'" in err


def test_every_builtin_system_loads_and_runs_an_all_reduce() -> None:
    for name in BUILTIN_SYSTEMS:
        system = load_system(name)
        report = collective(system, "all_reduce", 64 * 2**20, system.gpus_per_node)
        assert report.seconds > 0, name
        assert report.bytes_sent == pytest.approx(2 * (system.gpus_per_node - 1) * 64 * 2**20, rel=1e-12), name
