"""Run configs: parsing, defaults and located errors (chipsim.config.runconfig)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import RUN_CONFIGS

from chipsim.config.loader import load_yaml
from chipsim.config.runconfig import REPORTS, load_run_config, parse_run_config
from chipsim.errors import InputError


def test_quickstart_config() -> None:
    cfg = load_run_config(RUN_CONFIGS / "quickstart.yaml")
    assert cfg.name == "quickstart"
    assert cfg.chips == ("h200_sxm", "h100_sxm", "gh200", "mi300x")
    assert cfg.workload.generator == "transformer_train_step"
    assert cfg.workload.params["model"] == "llama-350m"
    assert cfg.workload.trace is None
    assert cfg.launch == "eager" and cfg.sustained is True


def test_defaults_and_single_chip_string(tmp_path: Path) -> None:
    cfg = parse_run_config({"chips": "h200_sxm", "workload": {"generator": "all_reduce"}}, tmp_path / "mine.yaml")
    assert cfg.name == "mine"  # from the file name
    assert cfg.chips == ("h200_sxm",)
    assert cfg.workload.params == {}
    assert cfg.report == REPORTS
    assert cfg.launch == "eager"


def test_trace_paths_are_relative_to_the_config(write) -> None:
    path = write("sub/run.yaml", "chips: [h200_sxm]\nworkload: {trace: ../w.json}\noptions: {launch: graph}\n")
    cfg = load_run_config(path)
    assert cfg.workload.trace == path.parent / "../w.json"
    assert cfg.launch == "graph"


@pytest.mark.parametrize(("text", "key", "fragment"), [
    ("chips: []\nworkload: {generator: all_reduce}\n", "chips", "list of chip names"),
    ("chips: [1]\nworkload: {generator: all_reduce}\n", "chips", "list of chip names"),
    ("workload: {generator: all_reduce}\n", "chips", "required key is missing"),
    ("chips: [h200_sxm]\n", "workload", "required key is missing"),
    ("chips: [h200_sxm]\nworkload: {}\n", "workload", "exactly one"),
    ("chips: [h200_sxm]\nworkload: {generator: all_reduce, trace: w.json}\n", "workload", "exactly one"),
    ("chips: [h200_sxm]\nworkload: {generator: all_reduce, params: [1]}\n", "workload.params", "mapping"),
    ("chips: [h200_sxm]\nworkload: {generator: all_reduce, parms: {}}\n", "workload.parms", "unknown key"),
    ("chips: [h200_sxm]\nworkload: {generator: all_reduce}\noptions: {launch: lazy}\n", "options.launch",
     "expected one of"),
    ("chips: [h200_sxm]\nworkload: {generator: all_reduce}\noptions: {sustained: maybe}\n", "options.sustained",
     "true or false"),
    ("chips: [h200_sxm]\nworkload: {generator: all_reduce}\nreport: [pdf]\n", "report", "drawn from"),
    ("chips: [h200_sxm]\nworkload: {generator: all_reduce}\nchip: [mi300x]\n", "chip", "unknown key"),
])
def test_bad_run_configs(write, text: str, key: str, fragment: str) -> None:
    path = write("run.yaml", text)
    with pytest.raises(InputError) as info:
        load_run_config(path)
    assert info.value.file == str(path)
    assert info.value.key == key
    assert fragment in info.value.message


def test_broken_yaml_reports_the_line(write) -> None:
    path = write("run.yaml", "name: x\nchips: [h200_sxm\nworkload: {generator: all_reduce}\n")
    with pytest.raises(InputError, match=r"invalid YAML at line \d+") as info:
        load_yaml(path)
    assert info.value.file == str(path)


def test_empty_file_is_an_empty_mapping_and_top_level_list_is_an_error(write) -> None:
    assert load_yaml(write("empty.yaml", "")) == {}
    with pytest.raises(InputError, match="mapping"):
        load_yaml(write("list.yaml", "- a\n"))


def test_a_chakra_trace_in_a_run_config_takes_its_world(write, cli) -> None:
    """A Chakra collective without a group size needs `world`, in a run config as on the command line."""
    import json

    trace = write("et.json", json.dumps({"nodes": [
        {"id": 0, "name": "ar", "type": "COMM_COLL_NODE",
         "attr": [{"name": "comm_type", "int64_val": 0}, {"name": "comm_size", "int64_val": 1048576}]}]}))
    without = write("a.yaml", f"chips: [h200_sxm]\nworkload: {{trace: {trace}}}\n")
    rc, _, err = cli(["run", without, "--no-files"])
    assert rc == 2 and "--world" in err
    with_world = write("b.yaml", f"chips: [h200_sxm]\nworkload: {{trace: {trace}, world: 8}}\n")
    rc, out, err = cli(["run", with_world, "--json", "--no-files"])
    assert rc == 0, err
    assert json.loads(out)["runs"][0]["ops"][0]["kind"] == "all_reduce"
    generator = write("c.yaml", "chips: [h200_sxm]\nworkload: {generator: transformer_train_step, world: 8}\n")
    rc, _, err = cli(["run", generator, "--no-files"])
    assert rc == 2 and "key 'workload.world'" in err
