"""The examples chipsim ships as package data, so they work from any install, not only a checkout:

- `runs/`: run configs, one question each (`chipsim run quickstart` runs `runs/quickstart.yaml`);
- `sweeps/`: design-space sweeps over those run configs;
- `workloads/`: op-graph JSON files the run configs replay;
- `whatif/`: chip and system YAMLs of hypothetical hardware (notebook 06);
- `measurements/h200/`: the H200 measurements the cost model was fitted to (a copy of the
  reference set's `h200/calibration.csv` and `power.json`; `chipsim validate` reads both), and
  `parallel_calibration.csv` (grouped expert GEMMs, MLA attention, TP / pipeline / MoE training steps).

`chipsim examples copy DIR` copies them out to edit; relative paths between them keep working.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from chipsim.errors import InputError

FOLDERS = ("runs", "sweeps", "workloads", "whatif", "measurements")


def root() -> Path:
    return Path(str(resources.files(__name__)))


def path(*parts: str) -> Path:
    """A shipped example file, e.g. `path("runs", "quickstart.yaml")`."""
    return root().joinpath(*parts)


def run_names() -> list[str]:
    return sorted(p.stem for p in path("runs").glob("*.yaml"))


def files() -> list[Path]:
    """Every shipped example file, relative to the examples folder, in a fixed order."""
    top = root()
    return sorted(p.relative_to(top) for folder in FOLDERS for p in (top / folder).rglob("*") if p.is_file())


def copy(dest: Path) -> list[Path]:
    """Copy every example into `dest` (created if needed), keeping the folder layout. Refuses to
    overwrite a file that is already there, before copying anything."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise InputError("expected a folder to copy the examples into, but this is a file", file=str(dest))
    clashes = [rel for rel in files() if (dest / rel).exists()]
    if clashes:
        raise InputError(f"{len(clashes)} example files are already there (e.g. {clashes[0]}); "
                         "copy into a new or empty folder", file=str(dest))
    written = []
    try:
        for rel in files():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root() / rel, target)
            written.append(target)
    except OSError as exc:
        for target in written:
            target.unlink(missing_ok=True)
        raise InputError(f"cannot copy the examples here ({exc.__class__.__name__}: {exc.strerror or exc})",
                         file=str(dest)) from None
    return written
