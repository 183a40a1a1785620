"""The run state of a ``hil run`` folder: ``state.json`` and ``config.yaml``.

``state.json`` holds ``finished`` (the steps done, in order), ``seconds`` (each step's duration),
``outputs`` (per finished step, every file it produced: ``{path: {"bytes": n, "sha256": hex}}``, the
checksum for files up to :data:`HASHED_BYTES`; paths relative to the run folder, absolute outside it)
and ``identity`` (:func:`hil.job.config.job_identity` of the config that made them). ``config.yaml``
beside it is the resolved config, for people.

A rerun checks both: a changed identity field is accepted while the step it affects
(:data:`hil.job.config.FIRST_STEP`) has not run, and refused (:class:`JobConfigChanged`, naming the
fields) once it has; a finished step whose outputs are missing or differ from the record is run again,
after its outputs and those of every later step are moved aside into ``stale/``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from onn_core.config import load_yaml, save_yaml
from onn_core.errors import HilError, InputError
from onn_core.files import atomic_write

from ..config import config_changes
from .config import FIRST_STEP

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
HASHED_BYTES = 64 * 2**20  # files up to 64 MiB are recorded with their sha256, larger ones by size


class JobConfigChanged(HilError):
    """A run folder is resumed with a config that changes what one of its finished steps did."""


def read_state(run_dir) -> dict:
    """The run folder's state (an empty one for a new folder)."""
    file = Path(run_dir) / STATE_FILE
    state = json.loads(file.read_text()) if file.is_file() else {}
    return {"finished": [], "seconds": {}, "outputs": {}, "identity": None, **state}


def write_json(path, value) -> None:
    """Write ``value`` as indented JSON, atomically (numpy and torch values as plain ones)."""
    with atomic_write(path, "w") as fh:
        json.dump(value, fh, indent=2, default=_plain)


def _plain(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    return str(value)


def file_record(path: Path) -> dict:
    """``{"bytes": size}``, with ``"sha256"`` for a file of at most :data:`HASHED_BYTES`."""
    size = path.stat().st_size
    if size > HASHED_BYTES:
        return {"bytes": size}
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


def describe_outputs(run_dir, paths) -> dict[str, dict]:
    """:func:`file_record` of every file of ``paths`` (files or folders; absent ones are skipped), keyed
    by the path relative to ``run_dir`` (absolute outside it)."""
    run_dir = Path(run_dir).resolve()
    out = {}
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
        for file in files:
            file = file.resolve()
            key = str(file.relative_to(run_dir)) if file.is_relative_to(run_dir) else str(file)
            out[key] = file_record(file)
    return out


def mark_finished(run_dir, step: str, seconds: float, outputs: dict[str, dict] | None = None) -> None:
    """Record ``step`` as finished after ``seconds``, with the :func:`describe_outputs` it produced."""
    state = read_state(run_dir)
    if step not in state["finished"]:
        state["finished"].append(step)
    state["seconds"][step] = round(seconds, 2)
    state["outputs"][step] = outputs or {}
    write_json(Path(run_dir) / STATE_FILE, state)


def output_problems(run_dir, recorded: dict[str, dict]) -> dict[Path, str]:
    """``{file: what is wrong}`` for the files of a step's record that are missing or differ on disk
    (empty: all there, unchanged)."""
    problems = {}
    for key, record in recorded.items():
        file = Path(key) if Path(key).is_absolute() else Path(run_dir) / key
        if not file.is_file():
            problems[file] = f"{file} is missing"
            continue
        now = file_record(file) if "sha256" in record else {"bytes": file.stat().st_size}
        if now["bytes"] != record["bytes"]:
            problems[file] = f"{file} has {now['bytes']} bytes, {record['bytes']} when written"
        elif now != record:
            problems[file] = f"{file} has changed (sha256 {now['sha256'][:12]}, {record['sha256'][:12]} when written)"
    return problems


def first_damaged_step(run_dir, steps) -> tuple[str | None, list[str]]:
    """The first finished step of ``steps`` (names, in order) whose recorded outputs are missing or
    changed, with what is wrong; ``(None, [])`` if there is none. A changed file outside the run folder
    (a given student run or teacher checkpoint) cannot be made again here: refused (:class:`InputError`)."""
    run_dir = Path(run_dir).resolve()
    state = read_state(run_dir)
    for step in steps:
        if step not in state["finished"]:
            continue
        problems = output_problems(run_dir, state["outputs"].get(step, {}))
        outside = [text for file, text in problems.items() if not file.resolve().is_relative_to(run_dir)]
        if outside:
            raise InputError(f"step {step} of {run_dir} used files that changed since: {'; '.join(outside)}. "
                             "Restore them, or start another run folder (--out-dir)")
        if problems:
            return step, list(problems.values())
    return None, []


def unfinish(run_dir, steps, aside: list[Path]) -> Path | None:
    """Mark ``steps`` as not finished and move the files and folders of ``aside`` that exist into
    ``stale/<UTC time>/`` of the run folder (same relative paths); returns that folder (None: nothing
    moved)."""
    run_dir = Path(run_dir)
    state = read_state(run_dir)
    for step in steps:
        if step in state["finished"]:
            state["finished"].remove(step)
        state["seconds"].pop(step, None)
        state["outputs"].pop(step, None)
    write_json(run_dir / STATE_FILE, state)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    stale, moved = run_dir / "stale" / stamp, False
    for path in aside:
        if path.exists() and path.resolve().is_relative_to(run_dir.resolve()):
            target = stale / path.resolve().relative_to(run_dir.resolve())
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
            moved = True
    if moved:
        log.warning("moved the outputs of steps %s aside into %s (delete it when not needed)", ", ".join(steps), stale)
    return stale if moved else None


def check_identity(run_dir, identity: dict, finished) -> dict[str, tuple]:
    """Compare ``identity`` with the one the run folder recorded: refuse (:class:`JobConfigChanged`) a
    change of a field whose first step (:data:`FIRST_STEP`) is in ``finished``; return the accepted
    changes ``{dotted path: (old, new)}``. A folder without a recorded identity (older runs) is compared
    on its ``config.yaml``, on the fields it has."""
    run_dir = Path(run_dir)
    recorded = read_state(run_dir)["identity"]
    if recorded is None:
        if not (run_dir / "config.yaml").is_file():
            return {}
        recorded = load_yaml(run_dir / "config.yaml")
        identity = {key: value for key, value in identity.items() if key in recorded}
    changes = config_changes(recorded, identity)
    refused = {path: values for path, values in changes.items()
               if FIRST_STEP.get(path.split(".")[0], "train") in finished}
    if refused:
        listed = ", ".join(f"{path} = {new!r} (was {old!r})" for path, (old, new) in refused.items())
        steps = sorted({FIRST_STEP.get(path.split(".")[0], "train") for path in refused})
        raise JobConfigChanged(f"{run_dir} was started with another config: {listed}; step {', '.join(steps)} "
                               f"already ran with the old value. Resume it with its own config "
                               f"({run_dir / 'config.yaml'}), redo it with --from {steps[0]}, or choose another "
                               "--out-dir")
    return changes


def record_identity(run_dir, identity: dict, config: dict) -> None:
    """Store ``identity`` in ``state.json`` and the resolved ``config`` in ``config.yaml``."""
    state = read_state(run_dir)
    state["identity"] = identity
    write_json(Path(run_dir) / STATE_FILE, state)
    save_yaml(config, Path(run_dir) / "config.yaml")


__all__ = ["HASHED_BYTES", "STATE_FILE", "JobConfigChanged", "check_identity", "describe_outputs", "file_record",
           "first_damaged_step", "mark_finished", "output_problems", "read_state", "record_identity", "unfinish",
           "write_json"]
