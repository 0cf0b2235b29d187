"""Fuzzed bad input for the `dept` command line: the case generators (hypothesis strategies), an in-process runner
and the one check every case must pass. Shared by `campaigns/fuzz.py` (the campaign) and `tests/test_fuzz.py`
(its quick subset in CI).

The property: every case ends in correct handling (exit 0 and a result that checks out) or in a one-line error
(non-zero exit, exactly one line on stderr, no traceback), and never leaves a half-written folder behind (no
temporary files, no lock, prepared data and checkpoints either complete or untouched).

Five families, each a strategy producing a JSON-able case dict (its reproducing input):

    config      YAML configs mutated from a tiny valid one   -> dept comms --config / prepare / train
    overrides   key.path=value strings                        -> dept train --resume RUN / dept prepare CONFIG
    data        source files (jsonl, txt/md, parquet, others) -> dept prepare
    cli         option values of every command                -> dept comms/eval/generate/export/compare/...
    run_folder  a trained run with a file damaged             -> dept eval RUN / dept train --resume RUN

Cases run in-process (`dept.cli.main` with sys.argv set, stdout and stderr captured): an exception escaping
`main` is what a user would see as a traceback. Inputs that are valid but would legitimately run for long (a
million steps, a huge model) are not generated for commands that train; such configs go to `dept comms`, which
only computes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

FAMILIES = ("config", "overrides", "data", "cli", "run_folder")

# ---- the tiny world every case starts from ------------------------------------------------------------------------

def write_corpus(root: Path) -> None:
    """The test suite's tiny corpus (tests/conftest.py), smaller: four sources of random common words."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import write_corpus as write_test_corpus

    write_test_corpus(root, docs_per_source=20, words_per_doc=60)


def tiny_tree(corpus: Path, data_dir: str, run_dir: str) -> dict:
    """A config that prepares in a fraction of a second and trains 2 rounds of 1 step."""
    return {
        "run": {"dir": run_dir, "seed": 0},
        "data": {
            "dir": data_dir, "val_fraction": 0.1, "workers": 1,
            "sources": [
                {"name": "en", "files": [str(corpus / "en.jsonl")]},
                {"name": "fr", "files": [str(corpus / "fr.jsonl")]},
                {"name": "code", "files": [str(corpus / "code.jsonl")]},
                {"name": "ru", "files": [str(corpus / "ru.jsonl")], "unseen": True},
            ],
            "tokenizer": {"global": {"vocab_size": 300, "sample_chars": 20000},
                          "per_source": {"vocab_size": 300, "sample_chars": 20000}},
        },
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 32},
        "train": {"variant": "spec_opt", "rounds": 2, "local_steps": 1, "batch_size": 2, "seq_len": 16,
                  "sources_per_round": 2, "threads": 1, "speed": "eager", "inner": {"warmup_steps": 1}},
        "eval": {"max_bytes": 512, "batch_size": 8},
    }


def dump_yaml(tree: Any) -> str:
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


@dataclass
class Env:
    """The shared, read-only world: a corpus, its prepared data, a finished run, a base config."""

    root: Path
    corpus: Path
    prepared: Path
    run: Path
    base_yaml: Path
    base_tree: dict
    run_files: list[str] = field(default_factory=list)  # the finished run's files, relative, sorted

    @classmethod
    def build(cls, root: Path) -> Env:
        from dept.config import load_config
        from dept.data.prepare import prepare
        from dept.training import run_training

        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        write_corpus(root / "corpus")
        tree = tiny_tree(root / "corpus", str(root / "prepared"), str(root / "run"))
        (root / "base.yaml").write_text(dump_yaml(tree), encoding="utf-8")
        cfg = load_config(root / "base.yaml")
        with _quiet_threads():
            prepare(cfg, log=lambda *_: None)
            run_training(cfg, log=lambda *_: None)
        env = cls(root, root / "corpus", root / "prepared", root / "run", root / "base.yaml", tree)
        env.run_files = sorted(str(p.relative_to(env.run)) for p in env.run.rglob("*") if p.is_file())
        (root / "cases").mkdir(exist_ok=True)
        return env

    def case_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="case_", dir=self.root / "cases"))


@contextlib.contextmanager
def _quiet_threads():
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ---- running the command line in this process --------------------------------------------------------------------


@dataclass
class Outcome:
    argv: list[str]
    code: int
    stdout: str
    stderr: str
    escaped: str | None = None  # the traceback of an exception that escaped main()


def run_dept(args: list[str], cwd: Path | None = None) -> Outcome:
    """`dept ARGS` in this process, as a user would run it: exit code, stdout, stderr (warnings included, as a
    fresh process would show them)."""
    import torch

    from dept import cli

    argv = ["dept", *(str(a).replace("\x00", "") for a in args)]  # a process's arguments cannot hold NUL
    saved_argv, saved_cwd, threads = sys.argv, os.getcwd(), torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    code, escaped = 0, None
    sys.argv = list(argv)
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings(record=True) as caught:
            try:
                cli.main()
            except SystemExit as exit_:
                if exit_.code is None:
                    code = 0
                elif isinstance(exit_.code, int):
                    code = exit_.code
                else:  # sys.exit("message"): Python prints it and exits 1
                    print(exit_.code, file=sys.stderr)
                    code = 1
            except KeyboardInterrupt:
                raise
            except BaseException:  # noqa: BLE001 - what escapes main() is a traceback for the user
                escaped = traceback.format_exc()
                code = 1
        for w in caught:  # a fresh process shows each warning once, on stderr
            err.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        torch.set_num_threads(threads)
    return Outcome(argv, code, out.getvalue(), err.getvalue(), escaped)


# ---- the verdict ---------------------------------------------------------------------------------------------------

HANDLED, ERROR, FAILURE = "handled", "error", "failure"


@dataclass
class Verdict:
    family: str
    kind: str  # handled | error | failure
    reason: str  # for a failure: what went wrong; else a short note
    argv: list[str]
    case: dict
    stderr: str = ""
    stdout_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.kind != FAILURE

    def describe(self) -> str:
        return (f"[{self.family}] {self.reason}\n  argv: {self.argv}\n  case: {json.dumps(jsonable(self.case))[:2000]}"
                f"\n  stderr: {self.stderr[-3000:]}\n  stdout: {self.stdout_tail}")

    def to_json(self) -> dict:
        return jsonable(asdict(self))


def jsonable(obj: Any) -> Any:
    """The case as JSON: bytes as base64 (with a preview), non-finite floats as strings."""
    if isinstance(obj, bytes):
        return {"base64": base64.b64encode(obj).decode(), "preview": repr(obj[:80])}
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def judge(family: str, case: dict, outcome: Outcome, *, expect: str | None = None, check_ok=None,
          check_after=None) -> Verdict:
    """`expect`: "ok" when the input is certainly good, "error" when certainly bad, None when either is right.
    `check_ok()`: a problem with the result of an exit 0 (None when it checks out). `check_after(code)`: a problem
    with the folders the command left (half-written, changed by a failed command), or None."""

    def verdict(kind: str, reason: str) -> Verdict:
        return Verdict(family, kind, reason, outcome.argv, case, outcome.stderr[-4000:], outcome.stdout[-600:])

    if outcome.escaped:
        last = outcome.escaped.strip().splitlines()[-1]
        return verdict(FAILURE, f"traceback: {last}")
    if "Traceback (most recent call last)" in outcome.stderr + outcome.stdout:
        return verdict(FAILURE, "traceback printed")
    problem = check_after(outcome.code) if check_after else None
    if outcome.code == 0:
        if problem:
            return verdict(FAILURE, f"exit 0 but {problem}")
        if expect == "error":
            return verdict(FAILURE, f"exit 0 on bad input ({case.get('bad') or 'expected an error'})")
        bad = check_ok() if check_ok else None
        if bad:
            return verdict(FAILURE, f"exit 0 with a bad result: {bad}")
        return verdict(HANDLED, "exit 0")
    lines = outcome.stderr.strip().splitlines()
    if not lines and outcome.stdout.lstrip().startswith("Usage:"):
        lines = ["(usage shown)"]  # `dept GROUP` without a command: the group's help, exit 2
    if len(lines) != 1:
        return verdict(FAILURE, f"exit {outcome.code} with {len(lines)} lines on stderr")
    if problem:
        return verdict(FAILURE, f"one-line error but {problem}")
    if expect == "ok":
        return verdict(FAILURE, f"good input refused: {lines[0]}")
    return verdict(ERROR, lines[0])


# ---- folder checks ---------------------------------------------------------------------------------------------------

def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders, `.old` folders and lock files under `folder`: signs of a half-done write."""
    if not folder.exists():
        return []
    found = []
    for p in folder.rglob("*"):
        if p.name.endswith(".tmp") or p.name == ".dept.lock" or (p.is_dir() and p.name.endswith(".old")):
            found.append(str(p.relative_to(folder)))
    return sorted(found)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its SHA-256 (folders as "dir")."""
    if not folder.exists():
        return {}
    snap = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        snap[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "other"
    return snap


def snapshot_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    changed = [f"{k} {'removed' if k not in after else 'added' if k not in before else 'changed'}"
               for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)]
    return changed


def checkpoint_problems(run: Path) -> list[str]:
    """Checkpoints (complete folders by name) whose files do not match their manifest."""
    problems = []
    root = run / "checkpoints"
    if not root.is_dir():
        return problems
    for ckpt in sorted(root.glob("round_*")):
        try:
            manifest = json.loads((ckpt / "manifest.json").read_text())
            for name, digest in manifest["files"].items():
                if hashlib.sha256((ckpt / name).read_bytes()).hexdigest() != digest:
                    problems.append(f"{ckpt.name}/{name} does not match its manifest")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            problems.append(f"{ckpt.name}: unreadable ({type(err).__name__})")
    return problems


def prepared_problems(data_dir: Path, sources: list[str] | None = None) -> str | None:
    """A prepared folder is complete: its manifest names sources whose meta.json and token files exist."""
    manifest = data_dir / "manifest.json"
    if not manifest.is_file():
        return f"no manifest.json in {data_dir.name}"
    listed = json.loads(manifest.read_text())["sources"]
    for name in sources or listed:
        if name not in listed:
            return f"manifest lacks source {name}"
        src = data_dir / "sources" / name
        if not (src / "meta.json").is_file():
            return f"source {name} has no meta.json"
        meta = json.loads((src / "meta.json").read_text())
        for vocab in ("global", "own"):
            for split in ("train", "val"):
                if not (src / vocab / f"{split}.bin").is_file():
                    return f"source {name} lacks {vocab}/{split}.bin"
        if meta["splits"]["val"]["documents"] < 1:
            return f"source {name} has no validation document"
    return None


def results_problem(path: Path) -> str | None:
    """A results/eval JSON with a finite loss and bits per byte for every source."""
    if not path.is_file():
        return f"no {path.name}"
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return f"{path.name} is not JSON"
    for row in data.get("results", []):
        for key in ("bpb", "loss"):
            value = row.get(key)
            if not isinstance(value, int | float) or not math.isfinite(value):
                return f"{path.name}: {row.get('source')}: {key} = {value!r}"
    if not data.get("results"):
        return f"{path.name} holds no results"
    return None


NON_FINITE = re.compile(r"(?<![A-Za-z])(nan|-?inf)(?![A-Za-z])", re.IGNORECASE)


def non_finite_in(text: str) -> str | None:
    m = NON_FINITE.search(text)
    return f"'{m.group(0)}' in the output" if m else None


# ---- the config schema, for generating keys and knowing what is certainly bad --------------------------------------

PATH_KEYS = ("run.dir", "data.dir", "files", "hf_dataset", "data.tokenizer.global.path")


def schema_leaves() -> dict[str, Any]:
    """Every settable key of a config ("data.sources.0.name" for the sources) -> its pydantic FieldInfo."""
    from dept.config import setting_fields

    return dict(setting_fields(entries=(".0", ".1", ".2", ".3")))


LEAVES = schema_leaves()
SECTIONS = sorted({k.rsplit(".", 1)[0] for k in LEAVES if "." in k} | {""})


def is_path_key(key: str) -> bool:
    return key in PATH_KEYS or key.rsplit(".", 1)[-1] in ("files", "hf_dataset")


def _base_type(fld) -> tuple[type | None, bool]:
    """The scalar type of a field (int, float, str, bool, an enum, tuple, list) and whether None is allowed."""
    import types
    import typing

    ann = fld.annotation
    optional = False
    if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union:
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        optional = len(args) < len(typing.get_args(ann))
        ann = args[0] if len(args) == 1 else None
    origin = typing.get_origin(ann)
    return (origin or ann), optional


def certainly_bad(key: str, value: Any) -> str | None:
    """Why `value` at `key` is refused for sure by the config's rules (None when it may be accepted)."""
    import enum

    import annotated_types as at

    fld = LEAVES.get(key)
    if fld is None:
        return f"{key}: unknown key"
    typ, optional = _base_type(fld)
    if value is None:
        return None if optional else f"{key}: null"
    if typ in (int, float):
        if isinstance(value, dict | list):
            return f"{key}: a {type(value).__name__} for a number"
        if isinstance(value, str) and not re.search(r"\d", value):
            return f"{key}: '{value}' for a number"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if not math.isfinite(value):
            return f"{key}: {value} (not finite)"
        if typ is int and isinstance(value, float) and not value.is_integer():
            return f"{key}: {value} for an integer"
        for m in fld.metadata:
            if isinstance(m, at.Ge) and value < m.ge or isinstance(m, at.Gt) and value <= m.gt or \
                    isinstance(m, at.Le) and value > m.le or isinstance(m, at.Lt) and value >= m.lt:
                return f"{key}: {value} out of range ({m})"
        return None
    if typ is str or (isinstance(typ, type) and issubclass(typ, enum.Enum)):
        if isinstance(value, dict | list):
            return f"{key}: a {type(value).__name__} for a string"
        if isinstance(typ, type) and issubclass(typ, enum.Enum) and isinstance(value, str) \
                and value not in {e.value for e in typ}:
            return f"{key}: '{value}' is no {typ.__name__}"
        pattern = next((m.pattern for m in fld.metadata if hasattr(m, "pattern")), None)
        if pattern and isinstance(value, str) and "\n" not in value and pattern.startswith("^") \
                and not re.search(pattern, value):
            return f"{key}: '{value}' does not match {pattern}"
        return None
    if typ is bool and isinstance(value, dict | list):
        return f"{key}: a {type(value).__name__} for a boolean"
    return None


# ---- value strategies --------------------------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(-5, 70),
    st.sampled_from([0, -1, 1, 2, 299, 300, 2**31, 2**63, 2**64, 10**30, -10**30, 2**63 - 1]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.5, 1e-300, 1e300, -0.0, 1.0, 0.999999]),
)
JUNK_TEXT = st.one_of(
    st.text(max_size=24),
    st.sampled_from(["", " ", "☃", "\x00", "nan", ".inf", "3", "yes", "no", "null", "~", "auto", "cpu", "cuda",
                     "spec", "fedavg", "rope", "learned", "bpe", "unigram", "tokens", "int8", "row", "\t", "a\nb",
                     "x" * 300, "日本語", "\u202e", "١٢٣"]),
)
SCALARS = st.one_of(NUMBERS, JUNK_TEXT, st.booleans(), st.none())


def _nest(depth: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


VALUES = st.one_of(
    SCALARS, SCALARS, SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=6), SCALARS, max_size=2),
    st.builds(_nest, st.integers(2, 120), SCALARS),
)
SAFE_NAMES = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_]{0,7}(/[a-z0-9_]{1,5})?", fullmatch=True),
    st.sampled_from(["", ".", "*.jsonl", "**/*.txt", "x*", "config.yaml", "run", "corpus", "src"]),
)
PATH_VALUES = st.one_of(SAFE_NAMES, SAFE_NAMES, st.lists(SAFE_NAMES, max_size=2), st.integers(-3, 3), st.none(),
                        st.dictionaries(st.text(max_size=4), SCALARS, max_size=1))


def values_for(key: str):
    return PATH_VALUES if is_path_key(key) else VALUES


# ---- how expensive a valid config is -----------------------------------------------------------------------------


def too_costly(cfg) -> str | None:
    """Why a valid config must not train or prepare in a fuzz case (None: it finishes in a second or two)."""
    t, m, e, tok = cfg.train, cfg.model, cfg.eval, cfg.data.tokenizer
    limits = [
        (t.rounds * t.local_steps > 4, "many steps"), (m.d_model > 64, "wide"), (m.n_layers > 2, "deep"),
        (m.d_mlp > 256, "wide mlp"), (m.max_seq_len > 256, "long positions"), (t.batch_size > 8, "batch"),
        (t.seq_len > 64, "seq_len"), (t.std_batch_size > 16, "std batch"), (t.threads > 2, "threads"),
        (t.engine == "flower", "a Flower simulation"),
        (t.speed not in ("auto", "eager"), "compile"), (e.max_bytes > 8192, "eval bytes"),
        (e.batch_size > 64, "eval batch"), (e.unseen_adapt_steps > 4, "adapt steps"),
        (tok.global_.sample_chars > 50_000, "global sample"), (tok.per_source.sample_chars > 50_000, "source sample"),
        (tok.global_.vocab_size > 2048 or tok.per_source.vocab_size > 2048, "vocabulary"),
        (any((s.vocab_size or 0) > 2048 for s in cfg.data.sources), "vocabulary"),
        (cfg.data.workers != 1, "worker processes"), (any(s.hf_dataset for s in cfg.data.sources), "datasets"),
        (len(cfg.data.sources) > 6, "sources"), (t.round_retries > 3, "retries"),
    ]
    return next((why for cond, why in limits if cond), None)


# ---- family: config -----------------------------------------------------------------------------------------------

RAW_YAML = st.one_of(
    st.sampled_from([
        "", "   \n", "- 1\n- 2\n", "42\n", "just a string\n", "null\n", "true\n", "[]\n", "{}\n", "run: [\n",
        "a: b: c\n", "\t- x\n", "{\n", "key: 'unterminated\n", "!!python/object/apply:os.system ['echo hi']\n",
        "data: !!binary aGVsbG8=\n", "&a [*a]\n", "data:\n  sources: *nope\n", "%YAML 9.9\n---\nrun: {}\n",
        "---\nrun: {}\n---\ndata: {}\n", "run: {seed: 1}\nrun: {seed: 2}\n", "? [a, b]\n: c\n",
        "data: {sources: [{name: en, files: [x.jsonl]}]}\nrun: {dir: r}\n",
    ]),
    st.builds(lambda n: "[" * n + "]" * n, st.integers(50, 3000)),
    st.builds(lambda n: "{a: " * n + "1" + "}" * n, st.integers(50, 3000)),
    st.builds(lambda n: "".join(f"{'  ' * i}k{i}:\n" for i in range(n)) + "  " * n + "v\n", st.integers(20, 400)),
    st.builds(lambda b: b"\xff" + b, st.binary(max_size=64)),
    st.binary(min_size=1, max_size=64),
    st.text(min_size=1, max_size=80),
)

# a billion laughs in one flow list: each anchor holds eight of the one before
BOMB = "[&a0 [x, x, x, x, x, x, x, x], " + ", ".join(
    f"&a{i} [{', '.join([f'*a{i - 1}'] * 8)}]" for i in range(1, 9)) + "]"


def _overlap(a: str, b: str) -> bool:
    """One dotted key is the other or inside it."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".") or a == "" or b == ""


@st.composite
def config_cases(draw) -> dict:
    """A tiny valid config with 1-3 mutations, or raw text that is no config at all."""
    command = draw(st.sampled_from(["comms"] * 6 + ["prepare", "train"]))
    if draw(st.integers(0, 9)) == 0:
        raw = draw(RAW_YAML)
        if isinstance(raw, str) and draw(st.booleans()):
            raw = raw.encode("utf-8")
        return {"command": command, "raw": raw, "ops": [], "bad": None}
    ops: list[list] = []
    reasons: list[tuple[int, str, str]] = []  # (op index, key, why the op makes the config certainly bad)
    keys = sorted(LEAVES)
    for i in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set"] * 6 + ["unknown", "delete", "section", "text", "bom", "bomb"]))
        if kind == "set":
            key = draw(st.sampled_from(keys))
            value = draw(values_for(key))
            ops.append(["set", key, value])
            if why := certainly_bad(key, value):
                reasons.append((i, key, why))
        elif kind == "unknown":
            section = draw(st.sampled_from(SECTIONS + ["data.sources.0", "data.sources.3"]))
            name = draw(st.one_of(st.text(min_size=1, max_size=8), st.sampled_from(["roundz", "max_tokens", "base_dir",
                                                                                  "dir ", "Rounds", "0"])))
            full = f"{section}.{name}" if section else name
            ops.append(["set", full, draw(SCALARS)])
            if full not in LEAVES and "." not in name and not name.startswith("<<") and name != "global_":
                reasons.append((i, full, f"{full}: unknown key"))
        elif kind == "delete":
            key = draw(st.sampled_from(keys + SECTIONS[1:]))
            ops.append(["delete", key])
            if key in ("data", "data.sources") or re.fullmatch(r"data\.sources\.\d\.name", key):
                reasons.append((i, key, f"{key}: required key deleted"))
        elif kind == "section":
            section = draw(st.sampled_from(SECTIONS[1:]))
            value = draw(st.one_of(SCALARS.filter(lambda v: v is not None), st.lists(SCALARS, max_size=2)))
            ops.append(["set", section, value])
            reasons.append((i, section, f"{section}: a {type(value).__name__} for a section"))
        elif kind == "text":  # a character inserted, dropped or replaced somewhere in the YAML text
            ops.append(["text", draw(st.integers(0, 10_000)), draw(st.sampled_from(["insert", "drop", "replace"])),
                        draw(st.characters())])
        elif kind == "bom":
            ops.append(["bom"])
        else:
            key = draw(st.sampled_from(["data.sources.0.files", "run.dir", "train"]))
            ops.append(["bomb", key])
            reasons.append((i, key, f"{key}: an alias bomb"))
    # a reason holds when no later op touches its key, and no edit of the text can have undone it
    later = [(j, op[1]) for j, op in enumerate(ops) if op[0] in ("set", "delete", "bomb")]
    kept = [why for i, key, why in reasons if not any(j > i and _overlap(key, k) for j, k in later)]
    bad = None if any(op[0] == "text" for op in ops) else (kept[0] if kept else None)
    return {"command": command, "raw": None, "ops": ops, "bad": bad}


def _set(tree: Any, keys: list[str], value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        if isinstance(node, list) and k.isdigit() and int(k) < len(node):
            node = node[int(k)]
        elif isinstance(node, dict):
            if not isinstance(node.get(k), dict | list):
                node[k] = {}
            node = node[k]
        else:
            return
    last = keys[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value


def _delete(tree: Any, keys: list[str]) -> None:
    node = tree
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) and k.isdigit() and int(k) < len(node) else \
            node.get(k) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(keys[-1], None)
    elif isinstance(node, list) and keys[-1].isdigit() and int(keys[-1]) < len(node):
        node.pop(int(keys[-1]))


def render_config(case: dict, base: dict) -> bytes:
    """The config file's bytes for a config case."""
    if case["raw"] is not None:
        raw = case["raw"]
        return raw if isinstance(raw, bytes) else raw.encode("utf-8")
    tree = json.loads(json.dumps(base))
    text_ops, bom = [], False
    for op in case["ops"]:
        if op[0] == "set":
            _set(tree, op[1].split("."), op[2])
        elif op[0] == "delete":
            _delete(tree, op[1].split("."))
        elif op[0] == "text":
            text_ops.append(op)
        elif op[0] == "bom":
            bom = True
        elif op[0] == "bomb":
            _set(tree, op[1].split("."), "__BOMB__")
    try:
        text = dump_yaml(tree)
    except (yaml.YAMLError, RecursionError):
        text = json.dumps(tree)
    text = text.replace("__BOMB__", BOMB)
    for _, pos, how, ch in text_ops:
        pos %= max(1, len(text))
        text = text[:pos] + (ch if how != "drop" else "") + text[pos + (how != "insert"):]
    return (("\ufeff" if bom else "") + text).encode("utf-8", "surrogatepass")


def _load_library(path: Path, overrides: list[str] | None = None):
    """The config as the library loads it: (Config or None, the ConfigError's message or None)."""
    from dept.config import load_config
    from dept.errors import DeptError

    try:
        return load_config(path, overrides), None
    except DeptError as err:
        return None, str(err)
    except Exception:  # noqa: BLE001 - the command will show it as the traceback it is
        return None, "library raised"


def run_config_case(env: Env, case: dict) -> Verdict:
    work = env.case_dir()
    try:
        base = tiny_tree(env.corpus, "prepared" if case["command"] == "prepare" else str(env.prepared), "run")
        path = work / "config.yaml"
        path.write_bytes(render_config(case, base))
        cfg, problem = _load_library(path)
        command = case["command"]
        if command != "comms" and cfg is not None and too_costly(cfg):
            command = "comms"  # valid but long to run: checked by the command that only computes
        if command == "comms":
            out = run_dept(["comms", "--config", path], cwd=work)
            expect = "error" if case["bad"] else ("ok" if cfg is not None else None)
            return judge("config", case, out, expect=expect, check_ok=lambda: _comms_output_problem(out),
                         check_after=lambda code: _no_leftovers(work))
        before = snapshot(env.prepared)
        out = run_dept([command, path], cwd=work)

        def after(code: int) -> str | None:
            if snapshot(env.prepared) != before:
                return "the shared prepared data changed"
            if left := leftovers(work):
                return f"left behind {left[:3]}"
            if command == "prepare" and code != 0 and (work / "prepared" / "manifest.json").exists():
                return "a failed prepare wrote a manifest"
            return None

        def ok() -> str | None:
            if command == "prepare":
                return prepared_problems(cfg.data_dir) if cfg is not None else None
            return results_problem(cfg.run_dir / "results.json") if cfg is not None else None

        return judge("config", case, out, expect="error" if case["bad"] else None, check_ok=ok, check_after=after)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _comms_output_problem(out: Outcome) -> str | None:
    if "per sampled source per round" not in out.stdout:
        return "no communication table"
    return non_finite_in(out.stdout)


def _no_leftovers(folder: Path) -> str | None:
    left = leftovers(folder)
    return f"left behind {left[:3]}" if left else None


# ---- family: overrides ---------------------------------------------------------------------------------------------

WEIRD_KEYS = ["train.", ".", "", " ", "a.b.c.d", "train..rounds", ".train.rounds", "train.rounds.x", "data.sources.0",
              "data.sources.9.name", "data.sources.x.name", "data.sources.-1.name", "data.sources.0.files.0",
              "data.sources.0.files.7", "eval.max_tokens", "base_dir", "train.inner", "model", "TRAIN.ROUNDS",
              " train.rounds ", "train.rounds\n", "日本.語", "data.tokenizer.global_.vocab_size"]
RAW_VALUES = st.one_of(
    st.sampled_from(["", " ", "~", "null", "nan", ".nan", ".inf", "-.inf", "1e400", "1e3", "0", "-1", "3", "3.5",
                     "true", "yes", "[1, 2", "[1, 2]", "{a: 1}", "{", "'x", "\"x", "!!python/object:os.system",
                     "*alias", "&a x", "=x", "a=b", "0x10", "0o7", "1_000", "2", "cpu", "cuda", "eager", "spec",
                     "glob", "std", "int8", "nesterov", "learned", "unigram", "9" * 40, "- a\n- b", "x: [", "%"]),
    st.text(max_size=16),
    NUMBERS.map(str),
)


@st.composite
def override_cases(draw) -> dict:
    overrides: list[str] = []
    reasons: list[tuple[int, str, str]] = []
    for i in range(draw(st.sampled_from([1, 1, 2, 3]))):
        shape = draw(st.sampled_from(["valid"] * 4 + ["resumable"] * 4 + ["weird", "random", "no_equals", "path"]))
        if shape == "resumable":  # settings a finished run may change on resume, with plausible values
            key = draw(st.sampled_from(sorted(RESUMABLE_VALUES)))
            raw = draw(st.one_of(RESUMABLE_VALUES[key], RAW_VALUES))
            overrides.append(f"{key}={raw}")
            if why := _override_certainly_bad(key, raw):
                reasons.append((i, key, why))
            continue
        if shape == "no_equals":
            text = draw(st.text(max_size=12).filter(lambda s: "=" not in s))
            overrides.append(text)
            reasons.append((i, "\0", f"'{text}' has no '='"))
            continue
        if shape == "path":
            key = draw(st.sampled_from(["run.dir", "data.dir", "data.sources.0.files", "data.sources.1.hf_dataset",
                                        "data.tokenizer.global.path"]))
            overrides.append(f"{key}={draw(SAFE_NAMES)}")
            continue
        if shape == "valid":
            key = draw(st.sampled_from(sorted(k for k in LEAVES if not is_path_key(k))))
        elif shape == "weird":
            key = draw(st.sampled_from(WEIRD_KEYS))
        else:
            key = draw(st.text(max_size=10).filter(lambda s: "=" not in s))
        raw = draw(RAW_VALUES)
        overrides.append(f"{key}={raw}")
        if why := _override_certainly_bad(key, raw):
            reasons.append((i, key.strip(), why))
    later = [(j, o.split("=", 1)[0].strip()) for j, o in enumerate(overrides) if "=" in o]
    kept = [why for i, key, why in reasons if key in ("\0", "") or not any(j > i and _overlap(key, k)
                                                                           for j, k in later)]
    return {"overrides": overrides, "target": draw(st.sampled_from(["resume", "resume", "prepare"])),
            "bad": kept[0] if kept else None}


SMALL = st.sampled_from(["0", "1", "2", "3"])
RESUMABLE_VALUES = {
    "train.checkpoint_every": SMALL, "train.keep_checkpoints": SMALL, "train.threads": SMALL,
    "train.device": st.sampled_from(["cpu", "auto", "cuda", "cuda:1", "mps", "xpu", "tpu", "cpu:0"]),
    "train.speed": st.sampled_from(["eager", "auto", "chunked-head"]),
    "train.engine": st.sampled_from(["local", "auto", "torchrun"]), "train.min_sources": SMALL,
    "train.round_retries": SMALL, "eval.every": SMALL, "eval.max_documents": SMALL, "eval.batch_size": SMALL,
    "eval.max_bytes": st.sampled_from(["1", "64", "512", "4096"]), "eval.unseen_adapt_steps": SMALL,
    "eval.escape_probability": st.sampled_from(["0.5", "1e-4", "1e-12", "0.999"]),
    "flower.client_cpus": st.sampled_from(["1", "0.5"]), "data.workers": st.sampled_from(["1"]),
}


def _parsed(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _override_certainly_bad(key: str, raw: str) -> str | None:
    if not key.strip():
        return "empty key"
    key = key.strip()
    top = key.split(".")[0]
    if top not in {k.split(".")[0] for k in LEAVES}:
        return f"{top}: unknown key"
    if key in LEAVES:
        return certainly_bad(key, _parsed(raw))
    return None


def run_override_case(env: Env, case: dict) -> Verdict:
    from dept.config import apply_overrides, config_from_dict
    from dept.errors import DeptError
    from dept.training import resume_config

    work = env.case_dir()
    ovr = list(case["overrides"])
    try:
        if case["target"] == "resume":
            run = work / "run"
            shutil.copytree(env.run, run)
            try:
                cfg = config_from_dict(apply_overrides(resume_config(run).to_dict(), list(ovr)), "run", base_dir=run)
            except DeptError:
                cfg = None
            except Exception:  # noqa: BLE001 - the command shows it
                cfg = None
            if cfg is not None and too_costly(cfg):
                return _library_only(case, cfg, env)
            before = snapshot(run)
            out = run_dept(["train", "--resume", run, *ovr], cwd=work)

            def after(code: int) -> str | None:
                if left := leftovers(work):
                    return f"left behind {left[:3]}"
                if code != 0:
                    changes = [c for c in snapshot_changes(before, snapshot(run))]
                    if changes:
                        return f"a refused resume changed the run: {changes[:4]}"
                return None

            return judge("overrides", case, out, expect="error" if case["bad"] else None,
                         check_ok=lambda: results_problem(cfg.run_dir / "results.json") if cfg else None,
                         check_after=after)
        data = work / "prepared"
        shutil.copytree(env.prepared, data)
        tree = tiny_tree(env.corpus, "prepared", "run")
        (work / "config.yaml").write_text(dump_yaml(tree), encoding="utf-8")
        cfg, _ = _load_library(work / "config.yaml", ovr)
        if cfg is not None and too_costly(cfg):
            return _library_only(case, cfg, env)
        out = run_dept(["prepare", work / "config.yaml", *ovr], cwd=work)

        def ok() -> str | None:
            if cfg is None:
                return None
            return prepared_problems(cfg.data_dir) or _overrides_applied(cfg, ovr)

        return judge("overrides", case, out, expect="error" if case["bad"] else None, check_ok=ok,
                     check_after=lambda code: _no_leftovers(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _overrides_applied(cfg, overrides: list[str]) -> str | None:
    """Each `key=value` shows in the loaded config (the last one of a key wins)."""
    d = cfg.to_dict()
    keys = [o.split("=", 1)[0].strip() for o in overrides]
    for i, text in enumerate(overrides):
        key, raw = keys[i], text.split("=", 1)[1]
        if key not in LEAVES or is_path_key(key) or any(_overlap(key, k) for k in keys[i + 1:]):
            continue
        node: Any = d
        for k in key.split("."):
            node = node[int(k)] if isinstance(node, list) else node[k]
        want = _parsed(raw)
        if isinstance(want, bool | int | float | str) and not isinstance(node, bool) and isinstance(want, type(node)):
            if node != want:
                return f"{key}={raw!r} loaded as {node!r}"
    return None


def _library_only(case: dict, cfg, env: Env) -> Verdict:
    """A valid override set too long to run: the loaded config must show the overrides."""
    problem = _overrides_applied(cfg, case["overrides"])
    argv = ["(library)", "load_config", *case["overrides"]]
    if problem:
        return Verdict("overrides", FAILURE, f"override lost: {problem}", argv, case)
    return Verdict("overrides", HANDLED, f"valid, too long to run ({too_costly(cfg)}): checked in the library",
                   argv, case)


# ---- family: data files ----------------------------------------------------------------------------------------------

DOC_TEXT = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["", " ", "\n", "\n\nx\n\n", "\x00", "a", "\u2028line\u2029", "\r\n", "日本語のテキスト",
                     "ok " * 40, "🙂" * 20, "\ufeffbom inside"]),
)


@st.composite
def jsonl_file(draw, text_field: str) -> tuple[bytes, list[str] | None, str | None]:
    """(bytes, the documents it holds when every line is good, why it is certainly bad)."""
    lines: list[bytes] = []
    docs: list[str] | None = []
    bad = None
    for i in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["valid"] * 8 + ["blank", "wrong_field", "not_string", "not_object",
                                                     "invalid", "binary", "latin1", "surrogate", "bom"]))
        if kind == "valid":
            text = draw(DOC_TEXT)
            lines.append(json.dumps({text_field: text, "id": i}, ensure_ascii=draw(st.booleans())).encode())
            if docs is not None:
                docs.append(text)
        elif kind == "blank":
            lines.append(draw(st.sampled_from([b"", b"  ", b"\t", b"\r"])))
        elif kind == "wrong_field":
            lines.append(json.dumps({text_field + "_x": "t"}).encode())
            bad = bad or "a line without the text field"
        elif kind == "not_string":
            lines.append(json.dumps({text_field: draw(st.sampled_from([5, None, [1], {"a": 1}, True, 1.5]))}).encode())
            bad = bad or "a non-string text"
        elif kind == "not_object":
            lines.append(draw(st.sampled_from([b"[1, 2]", b'"text"', b"3", b"null", b"true", b"NaN", b"[]"])))
            bad = bad or "a line that is no object"
        elif kind == "invalid":
            lines.append(draw(st.sampled_from([b'{"text": "x"', b"{text: x}", b"{'text': 'x'}", b"}",
                                               b'{"text": "x"} extra', b'{"text": "\\x"}', b",", b"text"])))
            bad = bad or "invalid JSON"
        elif kind == "binary":
            lines.append(b"\xff" + draw(st.binary(max_size=20)).replace(b"\n", b"").replace(b"\r", b""))
            bad = bad or "not UTF-8"
        elif kind == "latin1":
            lines.append(b"{" + json.dumps(text_field).encode() + b': "caf\xe9"}')  # Latin-1, not UTF-8
            bad = bad or "not UTF-8"
        elif kind == "surrogate":
            lines.append(b'{"%s": "a\\ud800b"}' % text_field.encode("utf-8", "surrogatepass"))
            bad = bad or "a lone surrogate (no UTF-8 text)"
        else:
            lines.append(b"\xef\xbb\xbf" + json.dumps({text_field: "bom"}).encode())
            if i > 0 and lines[:-1] and any(x.strip() for x in lines[:-1]):
                bad = bad or "a byte order mark inside the file"
            elif docs is not None:
                docs.append("bom")
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    content = eol.join(lines) + (eol if lines and draw(st.booleans()) else b"")
    if bad:
        docs = None
    # a BOM line after blank lines is line > 1: the reader strips a BOM only on line 1
    first = next((n for n, x in enumerate(content.split(b"\n")) if x.strip()), None)
    if first is not None and first > 0 and content.split(b"\n")[first].startswith(b"\xef\xbb\xbf"):
        bad, docs = bad or "a byte order mark after the first line", None
    return content, docs, bad


@st.composite
def text_file(draw, delimiter: str | None) -> tuple[bytes, list[str] | None, str | None]:
    words = draw(st.lists(st.one_of(DOC_TEXT, st.sampled_from(["\n\n", "---", "\r\n", "\r", "☃"])), max_size=10))
    text = " ".join(words)
    encoding = draw(st.sampled_from(["utf-8"] * 4 + ["utf-8-sig", "utf-16", "latin-1", "cp1252"]))
    try:
        content = text.encode(encoding)
    except UnicodeEncodeError:
        content = text.encode("utf-8")
    try:
        decoded = content.decode("utf-8")
    except UnicodeDecodeError:
        return content, None, "not UTF-8"
    if decoded.startswith("\ufeff"):
        decoded = decoded[1:]
    decoded = decoded.replace("\r\n", "\n").replace("\r", "\n")
    if delimiter == "":
        return content, None, None  # an empty delimiter: refused or read whole; either is fine
    return content, [decoded] if delimiter is None else decoded.split(delimiter), None


@st.composite
def parquet_file(draw, text_field: str) -> tuple[bytes, list[str] | None, str | None]:
    kind = draw(st.sampled_from(["valid"] * 3 + ["garbage", "empty", "truncated", "nulls", "ints", "column"]))
    if kind == "garbage":
        return b"PAR1" + draw(st.binary(max_size=80)), None, "garbage parquet"
    if kind == "empty":
        return b"", None, "empty parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = draw(st.lists(DOC_TEXT, min_size=1, max_size=8))
    column: list[Any] = list(texts)
    name = text_field
    bad = None
    if kind == "nulls":
        column[draw(st.integers(0, len(column) - 1))] = None
        bad = "a null text"
    elif kind == "ints":
        column = list(range(len(texts)))
        bad = "an integer column"
    elif kind == "column":
        name = text_field + "_other"
        bad = "no text column"
    buf = io.BytesIO()
    pq.write_table(pa.table({name: column}), buf)
    data = buf.getvalue()
    if kind == "truncated":
        return data[: draw(st.integers(0, len(data) - 1))], None, "truncated parquet"
    return data, (None if bad else texts), bad


@st.composite
def data_cases(draw) -> dict:
    fmt = draw(st.sampled_from(["jsonl"] * 3 + ["txt", "txt", "md", "parquet", "parquet", "other", "mixed"]))
    text_field = draw(st.sampled_from(["text"] * 4 + ["content", "", "日本", "a.b"]))
    delimiter = draw(st.sampled_from([None, None, "\n\n", "\n", "", " ", "---", "\x00", "☃", "\r\n"]))
    files, docs, bad = [], [], None
    for i in range(draw(st.integers(1, 3))):
        f = fmt if fmt != "mixed" else draw(st.sampled_from(["jsonl", "txt", "parquet"]))
        if f == "jsonl":
            content, d, b = draw(jsonl_file(text_field))
            name = f"f{i}.jsonl"
        elif f in ("txt", "md"):
            content, d, b = draw(text_file(delimiter))
            name = f"f{i}.{draw(st.sampled_from([f, f.upper()]))}"
        elif f == "parquet":
            content, d, b = draw(parquet_file(text_field))
            name = f"f{i}.parquet"
        else:
            content = draw(st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode)))
            name = f"f{i}{draw(st.sampled_from(['.csv', '.json', '', '.jsonl.gz', '.parquet.bak', '.TXT~']))}"
            d, b = None, f"unsupported file type {Path(name).suffix or '(none)'}"
        files.append({"name": name, "content": content})
        bad = bad or b
        docs = None if d is None or docs is None else docs + d
    min_doc_chars = draw(st.sampled_from([1, 1, 1, 2, 5, 50, 10**6]))
    return {"files": files, "text_field": text_field, "delimiter": delimiter, "min_doc_chars": min_doc_chars,
            "unseen": draw(st.booleans()), "glob": draw(st.sampled_from(["each", "each", "star"])),
            "expect_docs": None if docs is None else _kept(docs, min_doc_chars), "bad": bad}


def _kept(docs: list[str], min_doc_chars: int) -> int:
    """How many documents a source keeps, by the rule documents.read_source states (strip newlines, drop short)."""
    return sum(1 for d in docs if len(d.strip("\n") if d.strip() else "") >= min_doc_chars)


def run_data_case(env: Env, case: dict) -> Verdict:
    work = env.case_dir()
    try:
        src = work / "src"
        src.mkdir()
        for f in case["files"]:
            (src / f["name"]).write_bytes(f["content"])
        tree = tiny_tree(env.corpus, "prepared", "run")
        tree["data"]["min_doc_chars"] = case["min_doc_chars"]
        tree["data"]["sources"] = tree["data"]["sources"][:2] + [{
            "name": "fz", "files": [f"src/{f['name']}" for f in case["files"]] if case["glob"] == "each" else
            ["src/*"], "text_field": case["text_field"], "delimiter": case["delimiter"], "unseen": case["unseen"]}]
        (work / "config.yaml").write_text(dump_yaml(tree), encoding="utf-8")
        out = run_dept(["prepare", work / "config.yaml"], cwd=work)
        data = work / "prepared"

        def ok() -> str | None:
            if problem := prepared_problems(data, ["en", "fr", "fz"]):
                return problem
            meta = json.loads((data / "sources" / "fz" / "meta.json").read_text())
            n = meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"]
            if case["expect_docs"] is not None and case["glob"] == "each" and n != case["expect_docs"]:
                return f"source fz kept {n} documents, its files hold {case['expect_docs']}"
            return None

        def after(code: int) -> str | None:
            if left := leftovers(work):
                return f"left behind {left[:3]}"
            if code != 0 and data.exists() and any(p.is_file() for p in data.rglob("*")):
                return f"a failed prepare left files in a new data folder: {sorted(snapshot(data))[:4]}"
            return None

        return judge("data", case, out, expect="error" if case["bad"] else None, check_ok=ok, check_after=after)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---- family: CLI options --------------------------------------------------------------------------------------------

def _int_ok(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _float_ok(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# Option values: mostly ones that parse (small, zero, negative, huge, non-finite), so the command gets past the
# parser to the code that uses them; now and then one that does not parse at all.
INT_TEXT = st.one_of(
    st.integers(-3, 12).map(str), st.integers(-3, 12).map(str),
    st.sampled_from(["0", "-1", " 7", "1_0", "１２", "99999999999999999999999", "-99999999999999999999999",
                     "9223372036854775807", "9223372036854775808", "18446744073709551616", "-9223372036854775809"]),
    st.sampled_from(["1e3", "3.5", "abc", "", "0x10", "2**8", "nan", "inf"]))
FLOAT_TEXT = st.one_of(
    st.floats(-5, 5).map(repr), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e-320", "1e308", "-0.0", "0.5", "1", "2", "1e-300", "NaN",
                     "Infinity", "5e-324", "1e-3", "100"]),
    st.sampled_from(["1,5", "abc", "", "0x1p3", "1e", "--1"]))


def small_int(limit: int):
    """Integer option text that is either refused or at most `limit` (a valid huge count would just run long)."""
    return INT_TEXT.filter(lambda t: _int_ok(t) is None or _int_ok(t) <= limit)


def small_float(limit: float):
    return FLOAT_TEXT.filter(lambda t: _float_ok(t) is None or not math.isfinite(_float_ok(t))
                             or _float_ok(t) <= limit)


def _opts(draw, spec: dict) -> list[str]:
    """A random subset of the options in `spec` (name -> value strategy, or None for a flag)."""
    argv: list[str] = []
    for name in draw(st.lists(st.sampled_from(sorted(spec)), max_size=min(4, len(spec)), unique=True)):
        argv += [name] if spec[name] is None else [name, draw(spec[name])]
    return argv


RUN_REFS = st.sampled_from(["{RUN}"] * 16 + ["{MISSING}", "{FILE}", "{PREPARED}", "{CORPUS}", "{RUN}/checkpoints",
                                            "{RUN}/sources", "", "{EMPTY}"])
DEVICES = st.sampled_from(["cpu", "cpu", "auto", "cuda", "cuda:3", "mps", "xpu", "junk", "", "meta", "cpu:0"])
SOURCES = st.sampled_from(["en", "fr", "code", "ru", "xx", "", "EN", "en,fr"])


@st.composite
def cli_cases(draw) -> dict:
    command = draw(st.sampled_from(["comms"] * 3 + ["eval"] * 2 + ["generate"] * 3 + ["consolidate"] * 2 + ["adapt"] * 2
                                   + ["finetune"] * 2 + ["export", "compare", "train", "prepare", "report", "settings",
                                                         "random"]))
    argv: list[str]
    if command == "comms":
        argv = ["comms"] + _opts(draw, {
            "--preset": st.sampled_from(["paper-mc4-1.7b", "paper", "", "PAPER-MC4-1.7B"]),
            "--config": st.sampled_from(["{CFG}", "{MISSING}", "{RUN}", "{FILE}", "{RUN}/config.yaml"]),
            "--n-layers": INT_TEXT, "--d-model": INT_TEXT, "--d-mlp": INT_TEXT, "--vocab": INT_TEXT,
            "--own-vocab": INT_TEXT, "--local-steps": INT_TEXT, "--body-params": INT_TEXT,
            "--dtype-bytes": INT_TEXT, "--sources": INT_TEXT, "--sources-per-round": INT_TEXT,
            "--mlp": st.sampled_from(["gelu", "swiglu", "relu", ""]), "--trim-fraction": FLOAT_TEXT,
            "--compression": st.sampled_from(["none", "bf16", "int8", "fp8", ""]),
            "--compression-scale": st.sampled_from(["tensor", "row", "col", ""]),
            "--bandwidth": st.one_of(FLOAT_TEXT, st.sampled_from(["1,10", ",", "1,,2", "0,1", "1;2", " 1 , 2 "])),
            "--keep-optimizer": None})
    elif command == "eval":
        argv = ["eval", draw(RUN_REFS)] + _opts(draw, {"--max-bytes": INT_TEXT})
    elif command == "generate":
        argv = ["generate", draw(RUN_REFS), draw(st.text(max_size=30).filter(lambda s: not s.startswith("-")))]
        argv += ["--source", draw(SOURCES)] if draw(st.integers(0, 4)) else []
        argv += _opts(draw, {"--max-new-tokens": small_int(24), "--temperature": FLOAT_TEXT,
                             "--top-k": INT_TEXT, "--top-p": FLOAT_TEXT, "--seed": INT_TEXT, "--no-stop": None,
                             "--device": DEVICES, "--state-dir": st.sampled_from(["{RUN}/sources", "{MISSING}"])})
    elif command == "export":
        argv = ["export", draw(RUN_REFS), "--out", draw(st.sampled_from(["{OUT}", "{FILE}", "{RUN}", "", "{EMPTY}"]))]
        argv += ["--source", draw(SOURCES)] if draw(st.integers(0, 4)) else []
    elif command == "compare":
        argv = ["compare", draw(st.sampled_from(["{CFG}", "{CFG}", "{MISSING}", "{FILE}"]))]
        argv += ["--variants", draw(st.one_of(
            st.sampled_from(["spec_opt", "spec_opt,", " spec_opt , spec_opt", ",", "", "SPEC_OPT", "spec-opt",
                             "spec_opt,glob", "all", "std", "spec_opt;glob"]), st.text(max_size=12)))]
    elif command == "train":
        argv = draw(st.sampled_from([["train"], ["train", "--resume", "{RUN}"], ["train", "{CFG}"],
                                     ["train", "--resume", "{MISSING}"], ["train", "--resume", "{FILE}"],
                                     ["train", "--resume", "{RUN}", "--from-checkpoint", "{INT}"],
                                     ["train", "{CFG}", "--from-checkpoint", "{INT}"],
                                     ["train", "--resume", "{EMPTY}"]]))
        argv = [draw(st.sampled_from(["0", "1", "2", "3", "-1", "x", "99"])) if a == "{INT}" else a for a in argv]
    elif command == "prepare":
        argv = ["prepare", draw(st.sampled_from(["{CFG}", "{MISSING}", "{RUN}", "{FILE}", "{BINARY}"]))]
        argv += _opts(draw, {"--force": None})
    elif command == "consolidate":
        argv = ["consolidate", draw(RUN_REFS), "--out", "{OUT}"] + _opts(draw, {
            "--fraction": small_float(1.0), "--steps": small_int(3), "--lr": FLOAT_TEXT,
            "--batch-size": small_int(4), "--device": DEVICES, "--resume": None})
        if "--fraction" not in argv and "--steps" not in argv:
            argv += ["--steps", "1"]
    elif command == "adapt":
        argv = ["adapt", draw(RUN_REFS), "--source", draw(st.sampled_from([
            "new={CORPUS}/ru.jsonl", "new={CORPUS}/ru.jsonl,{CORPUS}/fr.jsonl", "=x", "new=", "new", "",
            "bad name={CORPUS}/ru.jsonl", "new={CORPUS}/*.none", "new={FILE}", "en={CORPUS}/en.jsonl"])),
                "--out", "{OUT}", "--steps", draw(small_int(2))]
        argv += _opts(draw, {"--eval-every": small_int(2), "--lr": FLOAT_TEXT, "--vocab-size": small_int(600),
                             "--seed": INT_TEXT, "--freeze-body": None, "--device": DEVICES})
    elif command == "finetune":
        argv = ["finetune", draw(RUN_REFS), "--source", draw(SOURCES), "--train", "{TRAIN}",
                "--eval", draw(st.sampled_from(["{EVAL}", "{EVAL}", "{MISSING}", "{FILE}", "{BINARY}"])),
                "--epochs", draw(small_int(1))]
        argv += _opts(draw, {"--task": st.sampled_from(["auto", "classification", "regression", "x"]),
                             "--lr": FLOAT_TEXT, "--head-lr": FLOAT_TEXT, "--batch-size": small_int(8),
                             "--max-len": small_int(40), "--seed": INT_TEXT, "--freeze-body": None,
                             "--device": DEVICES})
        return {"command": command, "argv": argv, "examples": draw(finetune_examples())}
    elif command == "report":
        argv = ["report", draw(RUN_REFS), "--out", draw(st.sampled_from(["{OUT}", "{FILE}", ""]))]
    elif command == "settings":
        argv = ["settings"] + draw(st.lists(st.text(max_size=6), max_size=1))
    else:
        argv = draw(st.lists(st.one_of(st.text(max_size=10), st.sampled_from(
            ["--help", "-h", "--", "-", "prepare", "train", "flower", "--resume", "eval", "--version", "--out"])),
            max_size=3))
        if "flower" in argv:  # its superlink/supernode/run commands exec Flower: not in this process
            argv = [a for a in argv if a not in ("superlink", "supernode", "run")]
    return {"command": command, "argv": argv}


@st.composite
def finetune_examples(draw) -> dict:
    fmt = draw(st.sampled_from(["csv", "jsonl"]))
    labels = draw(st.sampled_from([["a", "b"], ["a", "b"], ["1.5", "2.5", "-3"], ["a"], ["", "x"], ["nan", "1"],
                                   ["inf", "1"]]))
    rows = [(draw(DOC_TEXT.filter(lambda s: "\x00" not in s)), draw(st.sampled_from(labels))) for _ in range(
        draw(st.integers(0, 8)))]
    if fmt == "csv":
        import csv

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(draw(st.sampled_from([["text", "label"], ["text", "label"], ["text"], ["sentence", "label"],
                                         []])))
        w.writerows(rows)
        content = buf.getvalue().encode()
    else:
        content = "\n".join(json.dumps({"text": t, "label": label}) for t, label in rows).encode()
        if draw(st.booleans()):
            content += b"\n{broken"
    return {"name": f"train.{fmt}", "content": content}


def run_cli_case(env: Env, case: dict) -> Verdict:
    work = env.case_dir()
    try:
        run = work / "run"
        shutil.copytree(env.run, run)
        cmp = work / "cmp"
        shutil.copytree(env.run, cmp / "spec_opt")  # `compare --variants spec_opt` finds it finished
        data = work / "prepared"
        shutil.copytree(env.prepared, data)
        (work / "file.txt").write_text("not a folder\n")
        (work / "binary.yaml").write_bytes(b"\x00\xff\xfe" * 10)
        (work / "empty").mkdir()
        tree = tiny_tree(env.corpus, str(data), str(cmp))
        (work / "config.yaml").write_text(dump_yaml(tree), encoding="utf-8")
        places = {"{RUN}": run, "{MISSING}": work / "missing", "{FILE}": work / "file.txt", "{PREPARED}": data,
                  "{CORPUS}": env.corpus, "{CFG}": work / "config.yaml", "{OUT}": work / "out",
                  "{BINARY}": work / "binary.yaml", "{EMPTY}": work / "empty", "{TRAIN}": work / "train.csv",
                  "{EVAL}": work / "eval.csv"}
        if case.get("examples"):
            ex = case["examples"]
            places["{TRAIN}"] = places["{EVAL}"] = work / ex["name"]
            (work / ex["name"]).write_bytes(ex["content"])
        argv = []
        for a in case["argv"]:
            for k, v in places.items():
                a = a.replace(k, str(v))
            argv.append(a)
        before_run = snapshot(run)
        out = run_dept(argv, cwd=work)

        def after(code: int) -> str | None:
            if left := leftovers(work):
                return f"left behind {left[:3]}"
            if problems := checkpoint_problems(run):
                return f"checkpoints damaged: {problems[:2]}"
            if code != 0 and case["command"] in ("eval", "generate", "export", "comms") and \
                    snapshot(run) != before_run:
                return f"a failed {case['command']} changed the run: {snapshot_changes(before_run, snapshot(run))[:3]}"
            return None

        def ok() -> str | None:
            cmd = case["command"]
            if cmd == "comms":
                return _comms_output_problem(out)
            if cmd == "eval" and argv[1] == str(run):
                return results_problem(run / "eval.json") or non_finite_in(out.stdout)
            if cmd == "generate":
                return None if re.search(r"\[\d+ tokens", out.stdout) else "no token count"
            if cmd == "export":
                target = Path(argv[argv.index("--out") + 1])
                return None if (target / "config.json").is_file() else "no exported config.json"
            return non_finite_in(out.stdout) if cmd in ("consolidate", "adapt", "finetune") else None

        expect = "error" if _cli_certainly_bad(case["argv"]) else None
        return judge("cli", case, out, expect=expect, check_ok=ok, check_after=after)
    finally:
        shutil.rmtree(work, ignore_errors=True)


INT_OPTIONS = {"--n-layers", "--d-model", "--d-mlp", "--vocab", "--own-vocab", "--local-steps", "--body-params",
               "--dtype-bytes", "--sources", "--sources-per-round", "--max-bytes", "--max-new-tokens", "--top-k",
               "--seed", "--steps", "--batch-size", "--eval-every", "--vocab-size", "--epochs", "--max-len",
               "--from-checkpoint"}
FLOAT_OPTIONS = {"--trim-fraction", "--temperature", "--top-p", "--fraction", "--lr", "--head-lr"}


def _cli_certainly_bad(argv: list[str]) -> str | None:
    for i, a in enumerate(argv[:-1]):
        v = argv[i + 1]
        if a in INT_OPTIONS and _int_ok(v) is None:
            return f"{a} {v!r} is no integer"
        if a in FLOAT_OPTIONS and _float_ok(v) is None:
            return f"{a} {v!r} is no number"
        f = _float_ok(v)
        if a in FLOAT_OPTIONS and f is not None and math.isnan(f):
            return f"{a} {v} is not a number"
        if a in ("--top-p", "--trim-fraction", "--lr", "--head-lr", "--fraction") and f is not None and \
                not math.isfinite(f):
            return f"{a} {v} is not finite"
    if argv[:1] == ["comms"]:
        for name in ("--n-layers", "--d-model", "--vocab", "--own-vocab", "--local-steps", "--dtype-bytes"):
            if name in argv and (_int_ok(argv[argv.index(name) + 1]) or 0) < 1:
                return f"{name} below 1"
    return None


# ---- family: damaged run folders ---------------------------------------------------------------------------------

DAMAGES = ["truncate", "bitflip", "delete", "empty_object", "binary", "empty", "json_list", "null", "append",
           "make_dir", "tmp_leftover"]


@st.composite
def run_folder_cases(draw, run_files: list[str]) -> dict:
    targets = run_files + ["checkpoints", "checkpoints/round_00002", "sources", "sources/en", "checkpoints/round_00001"]
    damages = []
    for _ in range(draw(st.integers(1, 2))):
        damages.append({"target": draw(st.sampled_from(targets)), "how": draw(st.sampled_from(DAMAGES)),
                        "at": draw(st.floats(0, 1)), "bit": draw(st.integers(0, 7)),
                        "junk": draw(st.binary(min_size=1, max_size=48))})
    return {"damages": damages, "command": draw(st.sampled_from(["eval", "eval", "resume", "resume", "generate"]))}


def apply_damage(run: Path, d: dict) -> str | None:
    """Damage one file or folder of `run`; returns the damaged path when its content changed (None also where an
    earlier damage left nothing to damage)."""
    try:
        return _apply_damage(run, d)
    except OSError:  # e.g. the target's folder is a file now
        return None


def _apply_damage(run: Path, d: dict) -> str | None:
    path = run / d["target"]
    how = d["how"]
    if how == "tmp_leftover":
        (path.parent if path.is_file() else path).mkdir(parents=True, exist_ok=True)
        base = path.parent if path.is_file() else path
        (base / f".{path.name}.abc123.tmp").write_bytes(d["junk"])
        (base / ".round_00009.tmp").mkdir(exist_ok=True)
        return None
    if not path.exists():
        return None
    if path.is_dir():
        if how in ("delete", "truncate", "empty"):
            shutil.rmtree(path)
            return d["target"]
        if how == "make_dir":
            return None
        shutil.rmtree(path)
        path.write_bytes(d["junk"])
        return d["target"]
    data = path.read_bytes()
    if how == "truncate":
        new = data[: int(d["at"] * len(data))]
    elif how == "bitflip":
        if not data:
            return None
        i = min(int(d["at"] * len(data)), len(data) - 1)
        new = data[:i] + bytes([data[i] ^ (1 << d["bit"])]) + data[i + 1:]
    elif how == "delete":
        path.unlink()
        return d["target"]
    elif how == "make_dir":
        path.unlink()
        path.mkdir()
        return d["target"]
    else:
        new = {"empty_object": b"{}", "binary": d["junk"], "empty": b"", "json_list": b"[]\n", "null": b"null",
               "append": data + d["junk"]}[how]
    path.write_bytes(new)
    return d["target"] if new != data else None


def run_run_folder_case(env: Env, case: dict) -> Verdict:
    work = env.case_dir()
    try:
        run = work / "run"
        shutil.copytree(env.run, run)
        damaged = [t for t in (apply_damage(run, d) for d in case["damages"]) if t]
        latest = "checkpoints/round_00002"
        # the checkpoint that is read: a change to any of its files is certainly caught (it is checksummed),
        # unless the whole checkpoint went (then the older one is read, or none)
        whole_gone = any(t in ("checkpoints", latest) for t in damaged)
        bad = None if whole_gone else next((t for t in damaged if t.startswith(latest + "/")), None)
        before = snapshot(run)
        left_before = set(leftovers(run))
        problems_before = set(checkpoint_problems(run))
        before_ckpts = {p.name for p in (run / "checkpoints").glob("round_*")} if (run / "checkpoints").is_dir() \
            else set()
        intact_before = set(before_ckpts) - {c.split("/")[1] for c in damaged if c.startswith("checkpoints/round")}
        if case["command"] == "eval":
            argv = ["eval", run]
        elif case["command"] == "resume":
            argv = ["train", "--resume", run]
        else:
            argv = ["generate", run, "the", "--source", "en", "--max-new-tokens", "5"]
        out = run_dept(argv, cwd=work)

        def after(code: int) -> str | None:
            if left := sorted(set(leftovers(run)) - left_before):
                return f"left behind {left[:3]}"
            if case["command"] == "resume" and code == 0 and (left := leftovers(run)):
                return f"a finished resume left {left[:3]}"
            if code != 0:
                if case["command"] in ("eval", "generate"):
                    changes = snapshot_changes(before, snapshot(run))
                    if changes:
                        return f"a failed {case['command']} changed the run: {changes[:3]}"
                else:
                    for name in intact_before:
                        if not (run / "checkpoints" / name).is_dir():
                            return f"intact checkpoint {name} is gone"
                    if problems := [p for p in checkpoint_problems(run) if p.split("/")[0].split(":")[0]
                                    in intact_before]:
                        return f"checkpoints damaged: {problems[:2]}"
            return None

        def ok() -> str | None:
            if case["command"] == "eval":
                return results_problem(run / "eval.json")
            if case["command"] == "resume":  # the checkpoints it read or wrote are sound (older damage may stay)
                problems = sorted(set(checkpoint_problems(run)) - problems_before)
                return results_problem(run / "results.json") or (f"checkpoints: {problems[:2]}" if problems else None)
            return None

        return judge("run_folder", {**case, "bad": bad and f"{bad} damaged"}, out,
                     expect="error" if bad else None, check_ok=ok, check_after=after)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---- all families ----------------------------------------------------------------------------------------------------


def strategy(family: str, env: Env):
    return {"config": config_cases(), "overrides": override_cases(), "data": data_cases(), "cli": cli_cases(),
            "run_folder": run_folder_cases(env.run_files)}[family]


RUNNERS = {"config": run_config_case, "overrides": run_override_case, "data": run_data_case, "cli": run_cli_case,
           "run_folder": run_run_folder_case}


def run_case(env: Env, family: str, case: dict) -> Verdict:
    return RUNNERS[family](env, case)
