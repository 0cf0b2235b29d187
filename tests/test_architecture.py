"""Guards of the architecture: the algorithm knows no engine, and the dependencies point one way."""

import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dept"


def test_algorithm_imports_no_engine():
    code = ("import sys, dept.algorithm.worker, dept.algorithm.aggregator, dept.algorithm.coordinator, "
            "dept.algorithm.participants, dept.algorithm.step, dept.algorithm.tables; "
            "bad = [m for m in ('flwr', 'torch.distributed.run', 'dept.engines', 'dept.cli') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_nothing_imports_the_cli():
    for path in SRC.rglob("*.py"):
        if path.name not in ("cli.py", "__main__.py"):
            assert not re.search(r"^\s*(from|import)\s+dept\.cli", path.read_text(), flags=re.M), path


def test_algorithm_does_not_import_engines_or_training():
    for path in (SRC / "algorithm").rglob("*.py"):
        imports = re.findall(r"^\s*(?:from|import)\s+([\w.]+)", path.read_text(), flags=re.M)
        for forbidden in ("dept.engines", "dept.training", "torch.distributed", "flwr"):
            assert not any(m.startswith(forbidden) for m in imports), f"{path.name} imports {forbidden}"


def test_engines_decide_nothing_about_the_method():
    """What is sent, averaged or evaluated is the variant table's and the coordinator's: an engine never asks."""
    for path in (SRC / "engines").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"\bspec\.\w+", text), f"{path.name} reads the variant's rules"
        assert not re.search(r"Variant\.[A-Z]", text), f"{path.name} branches on a variant"


def test_only_the_variant_table_names_the_variants():
    allowed = {"variants.py", "config.py", "cli.py", "training.py", "comms.py"}  # definition, CLI, accounting
    for path in SRC.rglob("*.py"):
        if path.name not in allowed:
            assert not re.search(r"Variant\.(GLOB|TRIM|SPEC|SPEC_OPT|STD|ACT)\b", path.read_text()), path


def test_the_core_runs_without_the_flower_extra():
    """Training and the CLI import Flower only when train.engine=flower is asked for."""
    code = ("import sys, dept.cli, dept.training, dept.engines.select; "
            "print([m for m in sys.modules if m == 'flwr' or m.startswith(('flwr.', 'ray'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_only_the_flower_modules_import_flwr():
    for path in SRC.rglob("*.py"):
        if not path.name.startswith("flower_"):
            imports = re.findall(r"^\s*(?:from|import)\s+([\w.]+)", path.read_text(), flags=re.M)
            assert not any(m.split(".")[0] in ("flwr", "ray") for m in imports), path
