"""RELIABILITY.md cases of the op-graph contract, systems and regress: each one line and exit 2 naming
the file the user wrote and the key at fault (or, where the input is legal, a correct answer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chipsim import examples

EXAMPLE = json.loads(examples.path("workloads", "example_mlp.json").read_text(encoding="utf-8"))


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(("case", "op", "key", "fragment"), [
    ("W30", {"kind": "memcpy", "shape": {"bytes": 1024}, "attrs": {"src": "host", "dts": "hbm"}},
     "ops[0].attrs.dts", "unknown attribute for memcpy"),
    ("W33", {"kind": "norm", "shape": {"rows": 65536, "cols": 8192}, "attrs": {"type": "rms_nrom"}},
     "ops[0].attrs.type", "unknown norm type 'rms_nrom'"),
    ("W34", {"kind": "attention", "shape": {"batch": 1, "heads": 7.5, "kv_heads": 2.5, "seq_q": 128, "seq_kv": 128,
                                            "head_dim": 64}}, "ops[0].shape.heads", "whole number"),
    ("attrs.backend", {"kind": "attention", "shape": {"batch": 1, "heads": 8, "kv_heads": 8, "seq_q": 128,
                                                      "seq_kv": 128, "head_dim": 64}, "attrs": {"backend": "flsh"}},
     "ops[0].attrs.backend", "unknown attention backend 'flsh'"),
    ("comm", {"kind": "all_reduce", "shape": {"bytes": 1024, "group": 4}, "attrs": {"ranks": [0, 1]}},
     "ops[0].attrs.ranks", "lists 2 ranks"),
])
def test_op_graph_typos_are_errors(cli, write_json, case: str, op: dict, key: str, fragment: str) -> None:
    path = write_json("w.json", {"format": "chipsim.workload", "version": 1, "ops": [{"id": 0, "name": "x",
                                                                                      "dtype": "bf16", **op}]})
    rc, out, err = cli(["run", "--workload", path, "--chip", "h200_sxm", "--no-files"])
    assert rc == 2 and out == "", case
    line = _one_line(err)
    assert f"{path}: key '{key}'" in line and fragment in line, line


@pytest.mark.parametrize(("case", "override", "key", "fragment"), [
    ("R11", {"gpus_per_node": 0}, "systems[0].set.gpus_per_node", ">= 1"),
    ("R13", {"background_load": 1.5}, "systems[0].set.background_load", "0.95"),
    ("R14", {"background_load": -0.1}, "systems[0].set.background_load", ""),
    ("R16", {"routing": "adaptiv"}, "systems[0].set.routing", "adaptive"),
    ("R44", {"routng": "adaptive"}, "systems[0].set.routng", "unknown key"),
    ("R12", {"nodes": 1_000_000_000}, "systems[0].set.nodes", "1,048,576 GPUs"),
    ("Y07", {"scale_out": {"nic_bandwidth": "0 Gb/s"}}, "systems[0].set.scale_out.nic_bandwidth", ""),
    ("2-tier", {"nodes": 512}, "systems[0].set.nodes", "tiers: 3"),
])
def test_system_what_if_errors_blame_the_run_config(cli, write, case: str, override: dict, key: str,
                                                     fragment: str) -> None:
    """A typo in a run config's `set:` was reported in the built-in system YAML the user never wrote."""
    config = write("r.yaml", f"""
        systems: [{{system: cluster_256x_dgx_h100_ndr, set: {json.dumps(override)}}}]
        workload: {{generator: collective, params: {{ranks: 16, size: 1 MiB}}}}
        """)
    rc, out, err = cli(["run", config, "--no-files"])
    assert rc == 2 and out == "", case
    line = _one_line(err)
    assert f"{config}: key '{key}" in line and fragment in line, line


def test_regress_errors_name_the_config(cli, write, tmp_path: Path) -> None:
    """RELIABILITY M06: a bad parameter in a regress config named no file."""
    config = write("configs/bad.yaml", "chips: [h200_sxm]\nworkload: {generator: transformer_train_step, "
                                       "params: {presicion: bf16}}\n")
    rc, _, err = cli(["regress", "--configs", config.parent, "--baselines", tmp_path / "b.csv", "--update"])
    assert rc == 2
    assert f"{config}: key 'workload.params.presicion'" in err.strip().splitlines()[-1]
