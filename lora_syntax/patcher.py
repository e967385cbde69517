"""The patch engine: fuse a stack of adapters into module weights, re-weight per step, restore by copy.

Per patched module, at plan step s, with m_i(s) the weight of stack entry i on that module:

    W(s) = round( N_k(...N_1( W0 + sum_{i additive} m_i(s) * delta_i(W0) ), m_k(s)) )

W0 is the original weight in fp32, the sum is taken in fp32 and rounded once into the module's dtype;
N_1..N_k are the non-additive adapters (DoRA, OFT, IA3, GLoRA...) applied after the sum, in tag order.
Plain low-rank adapters of a module form ONE GEMM of rank sum(r): ``W0 + (U * m) @ D`` with the
up-factors concatenated into ``U`` (columns scaled by each entry's weight) and the downs into ``D``.

The patcher owns the originals and never writes into them. A touched parameter is switched to an
engine-owned tensor (``param.data = buffer``) that receives every fused weight set; restoring switches the
original tensor back, so it is bit-exact by construction and costs no copy. Where the device lacks room
for those buffers (CUDA, less than :data:`DEVICE_BACKUP_MARGIN` left), the original is copied to the CPU
instead and the fused weights are written in place; restoring then copies it back. Every weight set is
recomputed from the original (never subtracted). Any failure while writing weights restores every
touched module before the error leaves, so the model is never left half-patched.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from . import batched, triton_fuse
from .adapters.base import Adapter
from .errors import LoraApplyError, LoraError, LoraShapeError
from .factors import prepare_factors
from .fusing import fuse
from .gcpause import collector_paused
from .grouping import DIRECT_DTYPES, GroupState, member_of, share_factors
from .owned import OwnedTensor, buffers
from .targets import ModuleTarget

# Give fused weights their own buffers on an accelerator only when this much memory stays free afterwards.
DEVICE_BACKUP_MARGIN = 1 << 30


@dataclass(frozen=True)
class Term:
    """One adapter on one module with its weight at every plan step (index 0 = step 1)."""

    name: str                     # the LoRA's name, for error messages
    adapter: Adapter
    weights: tuple[float, ...]


@dataclass(frozen=True)
class ModuleStack:
    """Every term aimed at one module, in tag order."""

    target: ModuleTarget
    terms: tuple[Term, ...]

    @functools.cached_property
    def _planned(self) -> tuple[tuple[tuple[float, ...], ...], tuple[int, ...]]:
        return _schedule(tuple(t.weights for t in self.terms))

    @functools.cached_property
    def schedule(self) -> tuple[tuple[float, ...], ...]:
        """The terms' weights per step (index 0 = step 1): every apply reads it."""
        return self._planned[0]

    def weights_at(self, step: int) -> tuple[float, ...]:
        """The terms' weights at 1-based ``step`` (steps past the end keep the last weight)."""
        return self.schedule[min(step, len(self.schedule)) - 1]

    def change_points(self) -> tuple[int, ...]:
        """1-based steps (> 1) where some term's weight differs from the step before."""
        return self._planned[1]


@functools.lru_cache(maxsize=1024)
def _schedule(weights: tuple[tuple[float, ...], ...]) -> tuple[tuple[tuple[float, ...], ...], tuple[int, ...]]:
    """Per-step weight rows of terms with these weights, and the steps where the row changes: computed once
    per distinct combination (a LoRA's hundreds of modules usually share one), not once per module."""
    steps = max((len(w) for w in weights), default=0)
    rows = tuple(tuple(w[min(s, len(w)) - 1] if w else 0.0 for w in weights) for s in range(1, max(steps, 1) + 1))
    return rows, tuple(s for s in range(2, len(rows) + 1) if rows[s - 1] != rows[s - 2])


@dataclass(frozen=True)
class ApplyReport:
    """What one :meth:`Patcher.apply` call did."""

    step: int
    modules: int                  # modules whose weights were rewritten
    seconds: float


@dataclass
class _Slot:
    """Live state of one patched module: its owned parameters and cached factors (private)."""

    stack: ModuleStack
    module: torch.nn.Module
    device: torch.device                    # the weight's device at load: where the factors are prepared
    changes_bias: bool = False              # some term has a bias delta (the module's bias is then owned too)
    weight: OwnedTensor | None = None
    bias: OwnedTensor | None = None
    low_up: torch.Tensor | None = None      # (out, sum r) concatenated up factors, fp32 (accelerator: maybe half)
    low_down: torch.Tensor | None = None    # (sum r, in*k) concatenated down factors, likewise
    low_terms: tuple[int, ...] = ()         # term indices in the GEMM
    low_ranks: tuple[int, ...] = ()
    low_scales: tuple[float, ...] = ()      # per low-rank term: its scale when not folded into low_up
    low_exact: bool = False                 # every factor is exact in TF32 (from fp16/bf16 files)
    other_terms: tuple[int, ...] = ()       # term indices outside the GEMM (other types, non-additive)
    adapters: tuple[Adapter, ...] = ()      # by term: what a write reads (owned copies, factors.owned_copy)
    current: tuple[float, ...] | None = None
    extra_bytes: int = 0
    cached: bool = False
    pristine: bool = True                   # the module shows its original weights
    grouped: bool = False                   # written with its group (``current`` is then not kept)

    @property
    def touched(self) -> bool:
        return self.weight is not None

    def take_factors(self, other: _Slot) -> None:
        """Use ``other``'s prepared factors (same module, same adapters in the same order)."""
        self.low_up, self.low_down, self.low_terms = other.low_up, other.low_down, other.low_terms
        self.low_ranks, self.low_scales, self.other_terms = other.low_ranks, other.low_scales, other.other_terms
        self.low_exact, self.extra_bytes, self.cached = other.low_exact, other.extra_bytes, True
        self.adapters = other.adapters


def _factor_key(slot: _Slot) -> tuple:
    """Slots with one key have the same factors: one module, on one device, and the same adapter objects
    (the library hands out one object per loaded file, so a stack used again meets the same ones)."""
    return (slot.stack.target.component, slot.stack.target.module, slot.device,
            tuple(id(term.adapter) for term in slot.stack.terms))


def _room_for_factors(slots: Iterable[_Slot]) -> bool:
    """Whether factors kept on an accelerator leave :data:`DEVICE_BACKUP_MARGIN` free on it."""
    devices = {slot.low_up.device for slot in slots if slot.low_up is not None}
    return all(torch.cuda.mem_get_info(d)[0] > DEVICE_BACKUP_MARGIN for d in devices if d.type == "cuda")


def _resolve_module(components: Mapping[str, torch.nn.Module], target: ModuleTarget, name: str,
                    index: dict[str, dict[str, torch.nn.Module] | None]) -> tuple[torch.nn.Module, torch.Tensor]:
    """The module ``target`` names, and its weight. ``index`` holds each plain component's modules by name,
    built on first use by one walk (a lookup per target instead of a walk down the path)."""
    component = components.get(target.component)
    if component is None:
        raise LoraApplyError(f"LoRA {name!r} patches component {target.component!r}, which this pipeline does not "
                             f"have (it has {', '.join(sorted(components)) or 'none'}); use a LoRA made for this model.")
    if target.component not in index:   # components that name their modules their own way keep get_submodule
        plain = type(component).get_submodule is torch.nn.Module.get_submodule
        index[target.component] = dict(component.named_modules(remove_duplicate=False)) if plain else None
    try:
        modules = index[target.component]
        module = modules[target.module] if modules is not None else component.get_submodule(target.module)
    except (AttributeError, KeyError):
        raise LoraApplyError(f"LoRA {name!r} patches {target.component}.{target.module}, which does not exist in "
                             "this model; the LoRA was made for another model or architecture.") from None
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise LoraApplyError(f"LoRA {name!r} patches {target.component}.{target.module}, a "
                             f"{type(module).__name__} without a weight; the LoRA does not fit this model.")
    return module, weight


def _fit_key(module: torch.nn.Module, weight: torch.Tensor, stack: ModuleStack) -> tuple:
    """What a term's shape check depends on: the module, its weight's shape and bias size, and the adapter
    objects (the library hands out one per loaded file; ids, valid while the patcher holds the objects)."""
    bias = getattr(module, "bias", None)
    return (id(module), tuple(weight.shape), bias.numel() if isinstance(bias, torch.Tensor) else None,
            tuple(id(term.adapter) for term in stack.terms))


def _check_term(module: torch.nn.Module, term: Term, where: str) -> None:
    """Shape-check a term against its module without touching the module (meta tensors where possible)."""
    try:
        _check_shapes(module, term, where)
    except LoraShapeError as err:
        if where in str(err):
            raise
        raise LoraShapeError(f"LoRA {term.name!r} at {where}: {err}") from err


def _check_shapes(module: torch.nn.Module, term: Term, where: str) -> None:
    shape = module.weight.shape
    try:
        fitted = term.adapter.check_fits(shape)
    except (NotImplementedError, RuntimeError):
        fitted = None  # an op without a meta kernel: checked for real when applied (still atomic)
    if fitted is not None and tuple(fitted) != tuple(shape):
        raise LoraShapeError(f"LoRA {term.name!r} at {where}: change of shape {tuple(fitted)} does not fit "
                             f"the weight {tuple(shape)}; the LoRA was made for another model.")
    bias = term.adapter.bias_delta()
    if bias is not None:
        own = getattr(module, "bias", None)
        if not isinstance(own, torch.Tensor) or own.numel() != bias.numel():
            raise LoraShapeError(f"LoRA {term.name!r} at {where}: it changes a bias of {bias.numel()} values, but the "
                                 f"module has {'no bias' if own is None else f'{own.numel()}'}; it does not fit this model.")


def _wrap(err: BaseException, what: str) -> BaseException:
    """A :class:`LoraError` for ``err``; KeyboardInterrupt/SystemExit pass through unchanged."""
    if isinstance(err, LoraError) or not isinstance(err, Exception):
        return err
    return LoraApplyError(f"{what} failed ({type(err).__name__}: {err}); the model was restored to its original "
                          "weights. This is a bug or an unsupported LoRA; please report it with the LoRA file.")


class Patcher:
    """Owns the original weights of every module a stack touches, writes fused weights per step.

    ``components`` maps pipeline attribute names (``unet``, ``text_encoder``...) to modules. One patcher
    may be re-loaded with new stacks (:meth:`load`): modules the new stack no longer touches are
    restored, the others keep their backups, so consecutive generations re-use them.

    ``in_place=True`` always uses copy mode: the modules keep their own tensors (same storage, new
    values) and the originals wait on the CPU. For code that holds the weights' addresses, such as CUDA
    graphs (``torch.compile(mode="reduce-overhead")``); it costs a copy on restore. A change takes
    effect for modules patched from then on.

    ``grouped`` writes pure low-rank modules of one shape together (:mod:`lora_syntax.batched`); ``None``
    does so on the devices in :data:`GROUPED_DEVICES`. ``fused`` picks how a group is written: by the
    Triton kernel (:mod:`lora_syntax.triton_fuse`; ``None``: wherever it is available) or, ``False``, by
    batched products.
    """

    def __init__(self, components: Mapping[str, torch.nn.Module], *, in_place: bool = False,
                 grouped: bool | None = None, fused: bool | None = None) -> None:
        self.components = dict(components)
        self.in_place = in_place
        self.grouped = grouped
        self.fused = fused
        self._groups: list[GroupState] | None = None
        self._loose: list[_Slot] = []           # slots written one by one (every slot until groups are built)
        self._factors: dict[tuple, _Slot] = {}  # the last stack's slots by module and adapters: their factors
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._step: int | None = None
        # the last stack's modules whose terms passed the shape check: by module, what was checked (ids), the
        # objects themselves (held, so that the ids stay theirs) and whether a term changes the bias; the
        # next load of the same LoRAs skips the check
        self._fitted: dict[tuple[str, str], tuple[tuple, tuple, bool]] = {}

    # -- stack -----------------------------------------------------------------------------
    @collector_paused()
    def load(self, stacks: Iterable[ModuleStack]) -> None:
        """Validate ``stacks`` in full, then make them the active stack (no weight is written here)."""
        stacks = tuple(stacks)
        resolved, index, fitted = {}, {}, {}
        for stack in stacks:
            key = (stack.target.component, stack.target.module)
            if key in resolved:
                raise LoraApplyError(f"two stacks aim at {key[0]}.{key[1]}; merge their terms into one ModuleStack.")
            where = f"{key[0]}.{key[1]}"
            module, weight = _resolve_module(self.components, stack.target, stack.terms[0].name if stack.terms else "?",
                                             index)
            checked = _fit_key(module, weight, stack)
            held = self._fitted.get(key)
            if held is None or held[0] != checked:
                for term in stack.terms:
                    _check_term(module, term, where)
                held = (checked, (module, *(term.adapter for term in stack.terms)),
                        any(term.adapter.bias_delta() is not None for term in stack.terms))
            fitted[key] = held
            resolved[key] = (stack, module, weight.device, held[2])
        old = self._slots
        try:
            with torch.no_grad():
                for key in [k for k in old if k not in resolved]:
                    self._restore_slot(old[key])
        except BaseException as err:
            self.restore()
            raise _wrap(err, "restoring modules the new stack no longer touches") from err
        self._slots = {}
        self._groups = None
        for key, (stack, module, device, changes_bias) in resolved.items():
            previous = old.get(key)
            slot = _Slot(stack, module, device, changes_bias)
            if previous is not None and previous.module is module:
                slot.weight, slot.bias, slot.pristine = previous.weight, previous.bias, previous.pristine
                if previous.stack == stack and not previous.grouped:
                    slot.current = previous.current
            self._slots[key] = slot
        self._step = None
        try:
            self._prepare_factors()
        except BaseException as err:
            self.restore()
            raise _wrap(err, "preparing the LoRA factors") from err
        self._fitted = fitted

    def _prepare_factors(self) -> None:
        """Give every slot its factors, on its module's device, now rather than at the first apply: taken
        from the last stack where a module meets the same adapters again (the next generation of one
        stack re-uses them), else prepared and moved in one copy per device."""
        fresh, kept = [], {}
        for slot in self._slots.values():
            key = _factor_key(slot)
            donor = self._factors.get(key)
            if donor is not None and donor.cached:
                slot.take_factors(donor)
            else:
                fresh.append(slot)
            kept[key] = slot
        prepare_factors(fresh)
        self._factors = kept

    @property
    def stacks(self) -> tuple[ModuleStack, ...]:
        return tuple(slot.stack for slot in self._slots.values())

    @property
    def modules(self) -> tuple[torch.nn.Module, ...]:
        """The modules the loaded stack touches (resolved once, at :meth:`load`), in its order."""
        return tuple(slot.module for slot in self._slots.values())

    def change_points(self) -> tuple[int, ...]:
        """Every 1-based step (> 1) at which some module's weights change."""
        return tuple(sorted({s for slot in self._slots.values() for s in slot.stack.change_points()}))

    # -- weights ---------------------------------------------------------------------------
    @collector_paused()
    def apply(self, step: int) -> ApplyReport:
        """Write the weights of 1-based ``step`` into every module whose weights differ from what it holds.

        On any failure every touched module is restored before the error propagates.
        """
        start = time.perf_counter()
        changed = 0
        try:
            with torch.no_grad():
                self._make_backups()
                changed = self._write_groups(step)
                for slot in self._loose:
                    weights = slot.stack.weights_at(step)
                    if slot.pristine and not any(weights):
                        slot.current = weights  # all terms at 0: the original weights are already there
                    elif weights != slot.current:
                        self._write(slot, weights)
                        changed += 1
        except BaseException as err:
            self.restore()
            raise _wrap(err, f"applying the LoRA weights of step {step}") from err
        self._step = step
        return ApplyReport(step, changed, time.perf_counter() - start)

    def restore(self, *, keep_factors: bool = True) -> None:
        """Give every touched module its original tensors back (bit-exact) and release the buffers.

        The stack's factors stay on their device for the next load of the same LoRAs (a generation
        after a generation) unless ``keep_factors`` is false or the device is short of memory
        (:data:`DEVICE_BACKUP_MARGIN` free); :meth:`release_factors` drops them."""
        errors = []
        with torch.no_grad():
            for slot in self._slots.values():
                try:
                    self._restore_slot(slot)
                except BaseException as err:  # keep restoring the others; report the first failure
                    errors.append(err)
        self._slots = {}
        self._groups = None
        self._loose = []
        self._step = None
        if not keep_factors or errors or not _room_for_factors(self._factors.values()):
            self.release_factors()
        if errors:
            raise errors[0]

    def release_factors(self) -> None:
        """Drop the factors kept from the last stack (what :meth:`restore` keeps for the next load)."""
        self._factors = {}
        self._fitted = {}

    @property
    def factor_bytes(self) -> int:
        """Bytes of factors kept from the last stack (counted in :attr:`backup_bytes` while it is loaded)."""
        return sum(slot.extra_bytes for slot in self._factors.values())

    @property
    def writes_by_kernel(self) -> bool:
        """Whether the loaded stack's groups are written by the fused Triton kernel (known after an apply)."""
        return bool(self._groups) and all(state.group.fused for state in self._groups)

    @property
    def step(self) -> int | None:
        return self._step

    @property
    def backup_bytes(self) -> int:
        """Bytes held for fused-weight buffers (or CPU copies) and cached factors: the engine's extra memory."""
        total = 0
        for slot in self._slots.values():
            total += sum(owned.extra_bytes for owned in (slot.weight, slot.bias) if owned is not None)
            total += slot.extra_bytes
        return total

    # -- internals -------------------------------------------------------------------------
    def _make_backups(self) -> None:
        pending = [s for s in self._slots.values() if not s.touched]
        if not pending:
            return
        weights = [s.module.weight for s in pending]   # one module attribute look-up each
        needed = sum(w.numel() * w.element_size() for w in weights)
        rooms: dict[torch.device, bool] = {}   # one free-memory query per device, not one per module
        swapped = []
        for slot, weight in zip(pending, weights):
            device = weight.device
            if device not in rooms:
                rooms[device] = not self.in_place and _room_on_device(weight, needed)
            # ``in_place_only`` modules (rows of a host's fused weight) cannot take a buffer: copy mode
            swapped.append(rooms[device] and not getattr(type(slot.module), "in_place_only", False))
        fresh = buffers([w for w, room in zip(weights, swapped) if room])
        for slot, weight, room in zip(pending, weights, swapped):
            slot.weight = OwnedTensor(weight, room, next(fresh) if room else None)
            if slot.changes_bias:   # the shape check made sure the module has a bias of that size
                slot.bias = OwnedTensor(slot.module.bias, room)

    def _write_groups(self, step: int, rebuilt: bool = False) -> int:
        """Write the groups whose weights change at ``step``; return how many modules were written.

        Groups are built on the first apply of a stack (buffers and factors exist by then). If the host
        replaced a grouped parameter's data since (``module.to``), the groups are built again."""
        if self._groups is None:
            self._build_groups()
        changed = 0
        for state in self._groups:
            row = state.row_at(step)
            if row == state.current:
                continue
            if state.pristine and row in state.zero_rows:
                state.current = row   # every member at 0 and still original: nothing to write
                continue
            if not state.addresses_hold() and not rebuilt:
                self._build_groups()
                return self._write_groups(step, rebuilt=True)   # every group is written afresh
            # a first write covers every member (buffers are installed for all); later ones what changed
            select, selection = state.delta(row) if state.installed else (None, None)
            batched.write(state.group, state.columns(row), select, state.everyone if select is None else selection)
            if not state.installed:   # the first write of this stack: show the buffers
                for slot in state.slots:
                    slot.weight.install()
                    slot.pristine = False
                state.installed = True
            state.pristine = False
            state.current = row
            changed += len(state.slots) if select is None else len(select)
        return changed

    def _build_groups(self) -> None:
        """Group the eligible modules (once per stack); their factors become views of the group's stacks.
        Every other slot is written one by one (``_loose``)."""
        eligible, members = [], []
        for slot in self._slots.values():
            slot.grouped = False
            grouping = self.grouped if self.grouped is not None else slot.module.weight.device.type in GROUPED_DEVICES
            member = member_of(slot) if grouping and slot.touched else None
            if member is not None:
                eligible.append(slot)
                members.append(member)
        fused = bool(members) and self.fused is not False and all(triton_fuse.available(m.original.device)
                                                                  for m in members)
        groups, _ = batched.build_groups(members, fused=fused)
        slot_of = {id(m): s for m, s in zip(members, eligible)}
        self._groups = []
        for group in groups:
            slots = [slot_of[id(m)] for m in group.members]
            for slot in slots:
                slot.grouped = True
            share_factors(group, slots)   # hold the factors once
            self._groups.append(GroupState(group, slots))
        for device in {state.group.device for state in self._groups}:   # one copy per device and dtype
            states = [state for state in self._groups if state.group.device == device]
            moved = iter(batched.upload([t for state in states for t in state.to_upload()], device))
            for state in states:
                state.take_uploaded(moved)
        self._loose = [slot for slot in self._slots.values() if not slot.grouped]

    def _write(self, slot: _Slot, weights: Sequence[float]) -> None:
        if not any(weights):
            self._restore_slot(slot, release=False)   # every term back at 0: show the original again
            slot.current = tuple(weights)
            return
        owned = slot.weight
        target = owned.target
        original = owned.original.to(target.device)
        direct = (target.dtype == original.dtype and target.dtype in DIRECT_DTYPES and target.is_contiguous()
                  and original is not target)
        fused = fuse(original, slot, weights, into=target if direct else None)
        if fused is not None:
            target.copy_(fused)
        if slot.bias is not None:
            bias_target = slot.bias.target
            base = slot.bias.original.to(bias_target.device).float()
            for adapter, m in zip(slot.adapters, weights):
                delta = adapter.bias_delta()
                if delta is not None and m != 0.0:
                    base = base + m * delta.to(base.device, torch.float32).reshape(base.shape)
            bias_target.copy_(base)
            slot.bias.install()
        owned.install()
        slot.current = tuple(weights)
        slot.pristine = False

    def _restore_slot(self, slot: _Slot, release: bool = True) -> None:
        """Show ``slot``'s original tensors again (under ``torch.no_grad``, as every caller is)."""
        for owned in (slot.weight, slot.bias):
            if owned is not None:
                owned.restore()
        if release:
            slot.weight = slot.bias = None
            slot.current = None
        slot.pristine = True


# Devices whose modules are written by batched products by default (Patcher(grouped=...) overrides).
GROUPED_DEVICES = ("cuda",)


def _room_on_device(weight: torch.Tensor, needed: int) -> bool:
    """Whether ``needed`` more bytes fit beside ``weight`` (CUDA: with a margin left free).

    On the CPU the answer is always yes; elsewhere (CUDA without room, other accelerators) the
    original goes to the CPU and fused weights are written in place.
    """
    if weight.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(weight.device)
        return free - needed > DEVICE_BACKUP_MARGIN
    return weight.device.type in ("cpu", "meta")
