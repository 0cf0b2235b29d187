"""Read any model a user points at: a dept model folder, a run folder (with a source), or an exported
Hugging Face folder. Each comes back as a `ModelFolder`, so every command treats them alike."""

from __future__ import annotations

from pathlib import Path

from dept.errors import DeptError
from dept.posttrain.folder import ModelFolder, ModelFolderError, is_model_folder


def load_model(path: Path, source: str | None = None, state_dir: Path | None = None) -> ModelFolder:
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"{path}: no such folder (a model folder, a run folder, or an exported folder)")
    if is_model_folder(path):
        if source:
            raise DeptError(f"{path} is a model folder: --source is for run folders")
        return ModelFolder.load(path)
    if (path / "config.yaml").is_file():
        from dept.posttrain.from_run import RunModels

        return RunModels(path, state_dir).model(source)
    if (path / "config.json").is_file():
        if source:
            raise DeptError(f"{path} is an exported folder: --source is for run folders")
        from dept.posttrain.hf import import_exported

        return import_exported(path)
    raise ModelFolderError(f"{path}: not a dept model folder (dept_model.json), run folder (config.yaml) or "
                           "exported Hugging Face folder (config.json)")
