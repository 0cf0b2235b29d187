"""`dept compare`: one config trained as several variants, each in its own run folder.

```
RUN_DIR-compare/VARIANT/          a run folder per variant (see `dept.run_folder`)
RUN_DIR-compare/comparison.json   every variant's results.json
RUN_DIR-compare/comparison.md     the bits-per-byte table
```

The folders sit beside the config's `run.dir`, never inside it: RUN_DIR stays the folder `dept train CONFIG` starts
or refuses, and a comparison never reuses, resumes or writes into it. A variant's folder that holds a finished run
of the same training settings (and prepared data) is reused as it is; an unfinished one is resumed; one of other
settings is refused, never overwritten.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dept.config import Config, load_config
from dept.errors import CheckpointError
from dept.run_folder import RunFolder


def comparison_dir(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + "-compare")


def variant_config(config: Path, overrides: list[str], variant: str) -> Config:
    """The config as `dept train CONFIG OVERRIDES train.variant=VARIANT` reads it, with its run in the
    comparison's folder."""
    base = load_config(config, overrides)
    return load_config(config, [*overrides, f"train.variant={variant}",
                                f"run.dir={comparison_dir(base.run_dir) / variant}"])


def train_or_reuse(cfg: Config, log: Callable[[str], None]) -> str:
    """Bring the variant's run to its end: 'reused' (finished, nothing trained), 'resumed' or 'trained'."""
    from dept.training import prepared_fingerprints, run_training

    run = RunFolder(cfg.run_dir)
    if not run.config_path.is_file():
        run_training(cfg, resume=False, log=log)
        return "trained"
    saved = run.saved_config()
    finished = run.results_path.is_file()
    if saved.training_fingerprint() != cfg.training_fingerprint():
        differ = saved.settings_differing_from(cfg)
        shown = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise CheckpointError(f"{cfg.run_dir} holds {'a finished' if finished else 'an unfinished'} run of another "
                              f"config (other values of {shown or 'its settings'}): delete it, or set run.dir")
    if finished:
        recorded = run.data_fingerprints()
        if recorded is not None and prepared_fingerprints(cfg.data_dir) not in (None, recorded):
            raise CheckpointError(f"{cfg.run_dir} holds a finished run of data that has been prepared again since: "
                                  "delete it to train it again")
        log(f"finished run found in {cfg.run_dir}: reused, nothing trained")
        return "reused"
    run_training(cfg, resume=True, log=log)
    return "resumed"
