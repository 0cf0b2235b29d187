"""`dept doctor FOLDER`: verify a run folder or a prepared-data folder whole, and say what is wrong.

It reads and never writes. A run folder: its config; every checkpoint (checksums, the config it was made with);
`metrics.jsonl` (every line, and its lines up to the newest checkpoint against the copy kept there); every
version of every source's state (checksums, and the versions the newest checkpoint needs); `results.json`; the
prepared data it trained on (as for a data folder, and that it is the data the run recorded). A data folder: its
manifest, the global tokenizer, each source's meta and files against their checksums. In both: a lock and what
it says of its holder, and files left by a stopped write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dept.errors import DeptError

OK, NOTE, PROBLEM = "ok", "note", "PROBLEM"
PREPARE_PROGRESS = "prepare_progress.json"  # dept.data.prepare.PROGRESS (not imported: doctor starts fast)


@dataclass(frozen=True)
class Finding:
    level: str  # OK, NOTE (nothing lost; said for the record) or PROBLEM (needs the user)
    path: Path
    text: str

    def line(self) -> str:
        return f"{self.level:<7} {self.path}: {self.text}"


def doctor(folder: Path) -> list[Finding]:
    folder = Path(folder)
    if (folder / "config.yaml").is_file():
        return _run_folder(folder)
    if (folder / "manifest.json").is_file() or (folder / PREPARE_PROGRESS).is_file():
        return _data_folder(folder)
    return [Finding(PROBLEM, folder, "neither a run folder (no config.yaml) nor a prepared-data folder "
                                     "(no manifest.json)")]


# ---- shared -------------------------------------------------------------------------------------------------------

def _lock_and_leftovers(folder: Path) -> list[Finding]:
    from dept.atomic_io import is_leftover
    from dept.folder_lock import LOCK_NAME, FolderLock

    found = []
    lock = folder / LOCK_NAME
    if lock.exists():
        holder = FolderLock(folder, "dept doctor")._holder()
        if holder is not None and FolderLock._live(holder):
            found.append(Finding(NOTE, lock, f"in use by {holder.get('what', 'dept')} (pid {holder['pid']} on "
                                             f"{holder.get('host', '?')}): what it is writing may change under "
                                             "this check"))
        else:
            found.append(Finding(NOTE, lock, "left by a process that is gone: the next dept command takes it over"))
    for path in sorted(folder.rglob("*")):
        if is_leftover(path):
            found.append(Finding(NOTE, path, "left by a stopped write: the next `dept train --resume` or "
                                             "`dept prepare` cleans it up"))
    return found


def _json(path: Path) -> tuple[object, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return None, f"damaged ({err.__class__.__name__}: {str(err).splitlines()[0][:80]})"


# ---- prepared data ------------------------------------------------------------------------------------------------

def _data_folder(folder: Path) -> list[Finding]:
    from dept.data.integrity import damaged

    found = _lock_and_leftovers(folder)
    partial = folder / "partial"  # dept.data.shards.PARTIAL
    for path in sorted(partial.iterdir()) if partial.is_dir() else []:
        found.append(Finding(NOTE, path, "a source a stopped `dept prepare` was writing: running it again resumes "
                                         "from its last complete shard"))
    if not (folder / "manifest.json").is_file():
        return found + [Finding(PROBLEM, folder / "manifest.json", "missing: a `dept prepare` stopped before it "
                                                                   "finished: run it again (it resumes)")]
    if (folder / PREPARE_PROGRESS).is_file():
        found.append(Finding(NOTE, folder / PREPARE_PROGRESS, "a `dept prepare` stopped part-way: its sources "
                                                              "are checked below as they stand; run it again"))
    manifest, err = _json(folder / "manifest.json")
    if err or not isinstance(manifest, dict) or not isinstance(manifest.get("sources"), list):
        return found + [Finding(PROBLEM, folder / "manifest.json", (err or "not a data manifest")
                                + ": run `dept prepare` again")]
    files = manifest.get("files")
    if files is None:
        found.append(Finding(NOTE, folder / "manifest.json", "prepared by an older dept: no checksums to verify "
                                                             "(`dept prepare --force` records them)"))
        files = {}
    bad = set(damaged(folder, files))
    if "global_tokenizer.json" in bad:
        found.append(Finding(PROBLEM, folder / "global_tokenizer.json", "missing or damaged: run `dept prepare` "
                                                                        "again"))
    for name in manifest["sources"]:
        root = folder / "sources" / str(name)
        meta, err = _json(root / "meta.json")
        if err or f"sources/{name}/meta.json" in bad or not isinstance(meta, dict):
            found.append(Finding(PROBLEM, root / "meta.json", (err or "missing or damaged")
                                 + ": run `dept prepare` again"))
            continue
        broken = damaged(root, meta.get("files", {}))
        if broken:
            found.append(Finding(PROBLEM, root, f"missing or damaged: {', '.join(broken)}: run `dept prepare` "
                                                "again (it rewrites this source)"))
        else:
            found.append(Finding(OK, root, f"{len(meta.get('files', {}))} files verified"))
    return found


# ---- run folder ---------------------------------------------------------------------------------------------------

def _run_folder(folder: Path) -> list[Finding]:
    from dept.run_folder import RunFolder

    run = RunFolder(folder)
    found = _lock_and_leftovers(folder)
    try:
        cfg = run.saved_config()
    except DeptError as err:
        return found + [Finding(PROBLEM, run.config_path, str(err))]
    found.append(Finding(OK, run.config_path, f"{cfg.train.variant.value}, {cfg.train.rounds} rounds"))
    newest = _checkpoints(run, cfg, found)
    _metrics(run, newest, found)
    _source_states(run, cfg, newest, found)
    if run.results_path.exists():
        _, err = _json(run.results_path)
        found.append(Finding(PROBLEM, run.results_path, err + ": `dept train --resume` writes it again") if err
                     else Finding(OK, run.results_path, "readable"))
    _prepared_data(run, cfg, found)
    return found


def _checkpoints(run, cfg, found: list[Finding]):
    """Verify every checkpoint; the newest whole one, as (path, TrainerState), or None."""
    from dept.checkpoint import list_checkpoints, load_checkpoint

    newest = None
    checkpoints = list_checkpoints(run.path)
    if not checkpoints:
        found.append(Finding(NOTE, run.path / "checkpoints", "no checkpoint yet: a resume starts at round 0"))
    for path in checkpoints:
        try:
            _, state = load_checkpoint(path, cfg.training_fingerprint())
        except (DeptError, OSError, ValueError, TypeError) as err:
            found.append(Finding(PROBLEM, path, f"{err}: resume from an older one with `dept train --resume "
                                                f"{run.path} --from-checkpoint N`" if path == checkpoints[-1]
                                 else str(err)))
            continue
        newest = (path, state)
        found.append(Finding(OK, path, "checksums verified"))
    return newest


def _metrics(run, newest, found: list[Finding]) -> None:
    from dept.checkpoint import METRICS

    if not run.metrics_path.exists():
        if newest is not None:
            found.append(Finding(NOTE, run.metrics_path, "missing: the resume restores it from the checkpoint"))
        return
    data = run.metrics_path.read_bytes()
    lines = data.splitlines()
    unreadable = 0
    for line in lines:
        try:
            json.loads(line)
        except (ValueError, UnicodeDecodeError):
            unreadable += 1
    saved = newest[0] / METRICS if newest else None
    if saved is not None and saved.is_file() and not data.startswith(saved.read_bytes()):
        found.append(Finding(NOTE, run.metrics_path, f"its lines up to round {newest[1].next_round} differ from "
                                                     f"the copy in {newest[0].name}: the resume restores them"))
    elif unreadable:
        found.append(Finding(NOTE, run.metrics_path, f"{unreadable} line(s) cut short after the newest checkpoint: "
                                                     "the resume drops them"))
    else:
        found.append(Finding(OK, run.metrics_path, f"{len(lines)} lines readable"))


def _source_states(run, cfg, newest, found: list[Finding]) -> None:
    from dept.algorithm.source_store import SourceStore

    root = run.path / "sources"
    if not root.is_dir():
        return
    store = SourceStore(root)
    needed = newest[1].last_round if newest else {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        name = folder.name
        versions = store._versions(name)
        bad = []
        for v in versions:
            try:
                store.load(name, v + 1, expect=v)
            except DeptError as err:
                bad.append(str(err))
        if name in needed and needed[name] not in versions:
            bad.append(f"the version after round {needed[name] + 1}, which the newest checkpoint needs, is missing")
        if bad:
            found.append(Finding(PROBLEM, folder, "; ".join(bad[:2]) + (f" and {len(bad) - 2} more" if len(bad) > 2
                                                                         else "")))
        else:
            found.append(Finding(OK, folder, f"{len(versions)} state version(s) verified"))


def _prepared_data(run, cfg, found: list[Finding]) -> None:
    from dept.training import prepared_fingerprints

    if not cfg.data_dir.is_dir():
        found.append(Finding(NOTE, cfg.data_dir, "the prepared data the run trained on is not here (needed to "
                                                 "resume or evaluate it)"))
        return
    found.extend(_data_folder(cfg.data_dir))
    try:
        recorded = run.data_fingerprints()
        current = prepared_fingerprints(cfg.data_dir)
    except (DeptError, ValueError):
        return  # said by the data checks (data.json is written once, at the start, and read by nothing else)
    if recorded is not None and current is not None and current != recorded:
        found.append(Finding(PROBLEM, cfg.data_dir, f"prepared again with other settings or files since {run.path} "
                                                    "trained on it"))
