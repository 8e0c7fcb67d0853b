"""Write ``minilm_sentence_transformers.json``: all-MiniLM-L6-v2's embeddings of a few sentences computed by
sentence-transformers itself, the independent reference ``tests/test_minilm.py`` checks ``MiniLM.embed`` against
(sentence-transformers is not a dependency: install it without its dependencies, which would pull a torch).

    pip install --no-deps sentence-transformers
    HF_HUB_OFFLINE=1 python tests/reference/make_minilm_reference.py
"""

from __future__ import annotations

import json
from pathlib import Path

import sentence_transformers
import torch

from subnets.models.minilm import load_minilm

SENTENCES = [
    "A man is playing a guitar.",
    "  The quick brown fox jumps over the lazy dog, then naps in the sun for the rest of the afternoon.  ",
    "Hello!",
    "Return the number of items in a container.",
    "Les chiens aboient, la caravane passe.",
    "x" * 2000,
]


def main() -> None:
    torch.set_num_threads(1)
    source = load_minilm().source
    model = sentence_transformers.SentenceTransformer(source["model_path"], device="cpu")
    vectors = model.encode(SENTENCES, batch_size=2, convert_to_numpy=True)
    out = Path(__file__).with_name("minilm_sentence_transformers.json")
    out.write_text(json.dumps({
        "made_by": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, "
                   "tests/reference/make_minilm_reference.py",
        "model": {"package": source["package"], "version": source["version"],
                  "model.safetensors sha256": source["files_sha256"]["model.safetensors"]},
        "sentences": SENTENCES, "embeddings": vectors.astype(float).round(8).tolist()}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
