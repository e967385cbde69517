"""A LoRA file -> :class:`LoadedLora` for one model tree: read, check architecture, group keys, build, validate.

    file --io.read_lora--> tensors --detect_architecture--> refuse another family
         --pick_dialect.group--> ModuleParams --build_adapter (+ sliced rows)--> ModulePatch (with block id)
Every adapter's weight change is shape-checked against its module (``Adapter.check_fits``: arithmetic
or the ``meta`` device, nothing big is materialised) before anything is returned, so a LoRA either maps
whole or fails with a named error.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapters.base import Adapter
from .adapters.registry import build_adapter, sliced
from .errors import ArchitectureMismatchError, LoraError, LoraFactorsError, LoraFileError, LoraShapeError
from .formats import pick_dialect
from .formats.base import Grouped, ModuleParams
from .formats.peft import apply_adapter_metadata
from .gcpause import collector_paused
from .io import LoraTensors, PendingRead, start_read
from .keymaps.blockids import block_of
from .keymaps.detect import detect_architecture
from .keymaps.tree import ModelTree
from .targets import LoadedLora, ModulePatch, ModuleTarget

DISPLAY_NAMES = {"sd15": "SD1.5", "sd2": "SD2", "sdxl": "SDXL", "flux": "FLUX.1"}
#: |value| of a factor above which a LoRA is loaded with a warning: trained factors stay far below 1, and
#: one this large saturates half-precision weights (65,504) at any usual weight.
LARGE_VALUE = 1e4


def display_name(architecture: str) -> str:
    return DISPLAY_NAMES.get(architecture, architecture)


def _a(architecture: str) -> str:
    """``display_name`` with its article ("an SDXL", "a FLUX.1"): letters read with a vowel sound take "an"."""
    shown = display_name(architecture)
    return f"{'an' if shown[:1].upper() in 'AEFHILMNORSX' and not shown.startswith('FLUX') else 'a'} {shown}"


class _InMemory:
    """An in-memory state dict as a read whose check is done (:class:`io.PendingRead`'s interface)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors, self.metadata = dict(tensors), {}

    def result(self) -> LoraTensors:
        return LoraTensors(self.tensors, self.metadata)


def _read(source: Path | str | Mapping[str, torch.Tensor], roots: Sequence[Path] | None,
          started: PendingRead | None = None) -> tuple[Path | None, PendingRead | _InMemory]:
    """The tensors and metadata of a file (one open; its values checked meanwhile; ``started``: that open,
    made ahead by the caller), or of an in-memory state dict."""
    if isinstance(source, Mapping):
        return None, _InMemory(source)
    path = Path(source)
    return path, started if started is not None else start_read(path, roots=roots)


@contextlib.contextmanager
def _values_first(read: PendingRead | _InMemory) -> Iterator[None]:
    """An error found while mapping keys gives way to the file's broken values, if it has any: what a
    reader that checked every value before mapping would have said."""
    try:
        yield
    except LoraError:
        read.result()
        raise


def _fp8(tensor: torch.Tensor) -> bool:
    """fp8 factors (FLUX LoRAs saved as float8_e4m3fn or e5m2) have no ``max`` or ``norm`` kernel on the CPU:
    they are read as fp32, one tensor at a time, as the adapters read them."""
    return tensor.is_floating_point() and tensor.element_size() == 1


def _readable(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in a dtype torch's reductions take (:func:`_fp8`)."""
    return tensor.float() if _fp8(tensor) else tensor


def large_values(state_dict: Mapping[str, torch.Tensor], name: str, peak: float = math.inf) -> tuple[str, ...]:
    """A warning naming the tensor with the largest |value| when it passes :data:`LARGE_VALUE` (alphas aside).
    ``peak``: a known bound on every |value| (the reader's fused check); when it is under the limit, or else
    one norm over every factor is, nothing more is read: a usual file costs no pass here."""
    if peak <= LARGE_VALUE:
        return ()
    factors = {k: t for k, t in state_dict.items() if not k.endswith("alpha") and t.is_floating_point() and t.numel()}
    if not factors:
        return ()
    wide = [t for t in factors.values() if not _fp8(t)]
    narrow = [t for t in factors.values() if _fp8(t)]
    try:
        norms = [float(torch.nn.utils.get_total_norm(wide, error_if_nonfinite=False))] if wide else []
        bound = math.hypot(*norms, *(float(torch.linalg.vector_norm(_readable(t))) for t in narrow))
    except (AttributeError, RuntimeError, TypeError):   # torch < 2.6, or dtypes without a norm
        bound = float("inf")
    if bound <= LARGE_VALUE:
        return ()
    peaks = {key: float(_readable(tensor).detach().abs().max().float()) for key, tensor in factors.items()}
    key = max(peaks, key=peaks.__getitem__)
    if peaks[key] <= LARGE_VALUE:
        return ()
    return (f"LoRA '{name}': tensor '{key}' holds values up to {peaks[key]:.3g} (above {LARGE_VALUE:,.0f}); trained "
            "LoRA factors are far smaller, so this file will likely ruin the image. Check it, or re-download it.",)


def check_architecture(shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str], tree: ModelTree,
                       *, name: str, path: Path | None = None) -> str | None:
    """The file's detected architecture; :class:`ArchitectureMismatchError` when it is not the model's."""
    found = detect_architecture(shapes, metadata)
    if found is not None and found != tree.architecture:
        raise ArchitectureMismatchError(
            f"'{name}' is {_a(found)} LoRA; the loaded model is {display_name(tree.architecture)}. "
            f"Use it with {_a(found)} model, or pick {_a(tree.architecture)} LoRA.",
            path=path, lora_architecture=found, model_architecture=tree.architecture)
    return found


def _shapes_of(params: ModuleParams) -> str:
    """``"lora_down.weight (4, 32), lora_up.weight (32, 4)"``: the module's tensors, alpha aside (a scalar
    says nothing about shapes); any other scalar shows as ``()``, so the list is never empty."""
    shown = [f"{k} {tuple(v.shape)}" for k, v in sorted(params.params.items()) if v.ndim or k != "alpha"]
    return ", ".join(shown) or ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(params.params.items()))


def _where(params: ModuleParams, name: str) -> str:
    """``LoRA 'name', key 'file key' -> component.module``: a weight key, not the alpha scalar."""
    target = params.target
    keys = [key for key in params.source_keys if not key.endswith("alpha")] or list(params.source_keys)
    return f"LoRA '{name}', key '{keys[0] if keys else target.module}' -> {target.component}.{target.module}"


def _check_shape(adapter: Adapter, params: ModuleParams, tree: ModelTree, name: str, path: Path | None) -> None:
    """Compare the shape of the adapter's change (``Adapter.check_fits``) with the module's weight."""
    target = params.target
    info = tree.get(target.component, target.module)
    try:
        shape = adapter.check_fits(info.weight_shape)
        bias = adapter.bias_delta()
    except (LoraShapeError, RuntimeError, ValueError) as err:
        detail = "" if isinstance(err, LoraShapeError) else f" ({err})"  # the adapter's text repeats ours
        raise LoraShapeError(f"{_where(params, name)}: the module's weight has shape {info.weight_shape} but the "
                             f"file has {_shapes_of(params)}; the LoRA was made for another model{detail}.",
                             path=path) from err
    if tuple(shape) != info.weight_shape:
        raise LoraShapeError(f"{_where(params, name)}: expected a change of shape {info.weight_shape}, found "
                             f"{tuple(shape)} (from {_shapes_of(params)})", path=path)
    if bias is not None and (not info.has_bias or bias.numel() != info.weight_shape[0]):
        expected = f"({info.weight_shape[0]},)" if info.has_bias else "no bias (the module has none)"
        raise LoraShapeError(f"{_where(params, name)}: bias change of shape {tuple(bias.shape)}, expected {expected}",
                             path=path)


def _fused_rows_of(adapter: Adapter) -> set[int]:
    """The output rows a fused module's adapter holds (its factors', and a per-row DoRA scale's); empty when
    the type does not say."""
    rows = getattr(adapter, "out_features", None)
    found = set() if rows is None else {int(rows)}
    scale = getattr(adapter, "dora_scale", None)
    if isinstance(scale, torch.Tensor) and scale.dim() >= 1 and not (scale.dim() >= 2 and scale.shape[0] == 1):
        found.add(int(scale.shape[0]))   # per output row; a (1, in) scale is per input column
    return found


def _check_fused_rows(adapter: Adapter, params: ModuleParams, name: str, path: Path | None) -> None:
    """A fused file module (FLUX ``qkv``, ``linear1``) split by rows must hold exactly the rows of the modules
    it is split onto: slicing would silently drop any rows past them."""
    expected = params.fused_rows
    found = _fused_rows_of(adapter)
    if expected is None or not found or found == {expected}:
        return
    start, stop = params.rows
    raise LoraShapeError(f"{_where(params, name)}: the fused module is split onto the model's modules by output "
                         f"rows ({expected} in all; this module takes rows {start}:{stop}), but the file has "
                         f"{_shapes_of(params)} ({' and '.join(map(str, sorted(found)))} rows); the LoRA was made "
                         "for another model.", path=path)


def _patch(params: ModuleParams, tree: ModelTree, name: str, path: Path | None) -> ModulePatch:
    target = params.target
    where = f"LoRA '{name}' at {target.component}.{target.module}"
    try:
        adapter = build_adapter(params.params, where=where)
        if params.rows is not None:
            _check_fused_rows(adapter, params, name, path)
            adapter = sliced(adapter, *params.rows)
    except LoraFileError as err:
        raise type(err)(str(err), path=path) from err
    _check_shape(adapter, params, tree, name, path)
    block = block_of(tree.architecture, target.component, target.module, tree.config.get(target.component))
    return ModulePatch(ModuleTarget(target.component, target.module, block), adapter, params.source_keys)


@dataclass(frozen=True)
class Misfit:
    """A module whose weight shape the LoRA's tensors do not fit."""

    target: str                   # "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"
    model_shape: tuple[int, ...]
    file_shapes: str              # "lora_down.weight (4, 32), lora_up.weight (32, 4)"


@dataclass(frozen=True)
class ShapeFit:
    """How a LoRA's modules fit a tree's shapes (``inspect`` counts them instead of stopping at the first)."""

    format: str
    keys: int                     # keys in the file
    named_keys: int               # keys that name a module of the tree
    modules: int                  # modules they name
    misfits: tuple[Misfit, ...]   # the modules whose shapes do not fit
    unmatched: tuple[str, ...]


@dataclass(frozen=True)
class _Read:
    """A file read and its keys grouped per module (what :func:`load_lora` and :func:`shape_fit` share)."""

    path: Path | None
    name: str
    keys: int
    metadata: dict[str, str]
    format: str
    grouped: Grouped              # .modules (ModuleParams) and .unmatched keys
    values: PendingRead | _InMemory

    def warnings(self) -> tuple[str, ...]:
        """Loadable but suspicious values (:func:`large_values`), once every value is checked."""
        checked = self.values.result()
        return large_values(checked.tensors, self.name, checked.peak)


def _grouped(source: Path | str | Mapping[str, torch.Tensor], tree: ModelTree, metadata: Mapping[str, str] | None,
             name: str | None, roots: Sequence[Path] | None = None, started: PendingRead | None = None) -> _Read:
    """Read (inside ``roots`` when given), refuse another architecture, pick the key dialect and group the keys
    per module."""
    path, read = _read(source, roots, started)
    state_dict = read.tensors
    metadata = {**read.metadata, **dict(metadata or {})}
    name = name or (path.stem if path is not None else "LoRA")
    with _values_first(read):
        if not state_dict:
            raise LoraFileError(f"LoRA '{name}' holds no tensors.", path=path)
        check_architecture({k: tuple(v.shape) for k, v in state_dict.items()}, metadata, tree, name=name, path=path)
        dialect = pick_dialect(state_dict.keys(), name=name)
        try:
            grouped = apply_adapter_metadata(dialect.group(state_dict, tree), metadata, f"LoRA '{name}'")
        except LoraFileError as err:
            raise type(err)(f"LoRA '{name}': {err}", path=path) from err
    return _Read(path, name, len(state_dict), metadata, dialect.name, grouped, read)


def shape_fit(source: Path | str | Mapping[str, torch.Tensor], tree: ModelTree, *, name: str | None = None) -> ShapeFit:
    """Like :func:`load_lora`, but every module is checked and the misfits are counted, not raised."""
    read = _grouped(source, tree, None, name)
    misfits = []
    with _values_first(read.values):
        for params in read.grouped.modules:
            try:
                _patch(params, tree, read.name, read.path)
            except LoraFactorsError:
                raise   # a damaged file, not one made for another model
            except LoraShapeError:
                info = tree.get(params.target.component, params.target.module)
                misfits.append(Misfit(f"{params.target.component}.{params.target.module}",
                                      info.weight_shape if info else (), _shapes_of(params)))
    read.values.result()
    modules = read.grouped.modules
    return ShapeFit(format=read.format, keys=read.keys, named_keys=sum(len(p.source_keys) for p in modules),
                    modules=len(modules), misfits=tuple(misfits), unmatched=tuple(read.grouped.unmatched))


def load_lora(source: Path | str | Mapping[str, torch.Tensor], tree: ModelTree, *,
              metadata: Mapping[str, str] | None = None, name: str | None = None,
              roots: Sequence[Path] | None = None, started: PendingRead | None = None) -> LoadedLora:
    """Map a LoRA file (or an in-memory state dict) onto ``tree``; every problem is a :class:`LoraFileError`.

    ``metadata`` adds to (and overrides) the file's own safetensors metadata; ``name`` is used in messages
    (default: the file stem); ``roots``: the LoRA folders the file must lie in when it is read;
    ``started``: the file's :func:`io.start_read` when the caller opened it ahead (its checks already running).
    """
    with collector_paused():
        return _load(source, tree, metadata, name, roots, started)


def _load(source: Path | str | Mapping[str, torch.Tensor], tree: ModelTree, metadata: Mapping[str, str] | None,
          name: str | None, roots: Sequence[Path] | None, started: PendingRead | None = None) -> LoadedLora:
    read = _grouped(source, tree, metadata, name, roots, started)
    path, name, grouped = read.path, read.name, read.grouped
    with _values_first(read.values):
        patches = tuple(_patch(params, tree, name, path) for params in grouped.modules)
        if not patches:
            sample = ", ".join(grouped.unmatched[:3])
            raise LoraFileError(f"LoRA '{name}' ({read.format} keys): none of its {read.keys} keys maps onto "
                                f"a module of the {display_name(tree.architecture)} model, e.g. {sample}; "
                                "it was made for another model.", path=path)
    return LoadedLora(path=path or Path(name), architecture=tree.architecture, format=read.format,
                      patches=patches, unmatched=tuple(grouped.unmatched), metadata=read.metadata,
                      warnings=read.warnings(), nbytes=_held_bytes(grouped))


def _held_bytes(grouped: Grouped) -> int:
    """Bytes of the storages behind the modules' tensors, each counted once: a mapped file's tensors are
    views of a few runs of it, so this is about the file's size (no walk over every adapter object)."""
    storages = {}
    for params in grouped.modules:
        for tensor in params.params.values():
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())
