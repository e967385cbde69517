"""The patch engine: fuse a stack of adapters into module weights, re-weight per step, restore by copy.

Per patched module, at plan step s, with m_i(s) the weight of stack entry i on that module:

    W(s) = round( N_k(...N_1( W0 + sum_{i additive} m_i(s) * delta_i(W0) ), m_k(s)) )

W0 is the original weight in fp32, the sum is taken in fp32 and rounded once into the module's dtype;
N_1..N_k are the non-additive adapters (DoRA, OFT, IA3, GLoRA...) applied after the sum, in tag order.
Plain low-rank adapters of a module form ONE GEMM of rank sum(r): ``W0 + (U * m) @ D`` with the
up-factors concatenated into ``U`` (columns scaled by each entry's weight) and the downs into ``D``.

The patcher owns the originals: each touched tensor is backed up once (on its device when memory
allows, else on the CPU), every new weight set is recomputed from the backup (never subtracted), and
:meth:`Patcher.restore` copies the backups back. Any failure while writing weights restores every
touched module before the error leaves, so the model is never left half-patched.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .adapters.base import Adapter
from .errors import LoraApplyError, LoraError, LoraShapeError
from .targets import ModuleTarget

# Keep backups on an accelerator only when this much memory stays free afterwards.
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

    def weights_at(self, step: int) -> tuple[float, ...]:
        """The terms' weights at 1-based ``step`` (steps past the end keep the last weight)."""
        return tuple(t.weights[min(step, len(t.weights)) - 1] if t.weights else 0.0 for t in self.terms)

    def change_points(self) -> tuple[int, ...]:
        """1-based steps (> 1) where some term's weight differs from the step before."""
        steps = max((len(t.weights) for t in self.terms), default=0)
        return tuple(s for s in range(2, steps + 1) if self.weights_at(s) != self.weights_at(s - 1))


@dataclass(frozen=True)
class ApplyReport:
    """What one :meth:`Patcher.apply` call did."""

    step: int
    modules: int                  # modules whose weights were rewritten
    seconds: float


@dataclass
class _Slot:
    """Live state of one patched module: its parameters, backups and cached factors (private)."""

    stack: ModuleStack
    module: torch.nn.Module
    backup_weight: torch.Tensor | None = None
    backup_bias: torch.Tensor | None = None
    low_up: torch.Tensor | None = None      # (out, sum r) concatenated up factors, fp32
    low_down: torch.Tensor | None = None    # (sum r, in*k) concatenated down factors, fp32
    low_terms: tuple[int, ...] = ()         # term indices in the GEMM
    low_ranks: tuple[int, ...] = ()
    current: tuple[float, ...] | None = None
    extra_bytes: int = 0
    cached: bool = False
    pristine: bool = True                   # the module holds its original weights

    @property
    def touched(self) -> bool:
        return self.backup_weight is not None


def _resolve_module(components: Mapping[str, torch.nn.Module], target: ModuleTarget, name: str) -> torch.nn.Module:
    component = components.get(target.component)
    if component is None:
        raise LoraApplyError(f"LoRA {name!r} patches component {target.component!r}, which this pipeline does not "
                             f"have (it has {', '.join(sorted(components)) or 'none'}); use a LoRA made for this model.")
    try:
        module = component.get_submodule(target.module)
    except AttributeError:
        raise LoraApplyError(f"LoRA {name!r} patches {target.component}.{target.module}, which does not exist in "
                             "this model; the LoRA was made for another model or architecture.") from None
    if not isinstance(getattr(module, "weight", None), torch.Tensor):
        raise LoraApplyError(f"LoRA {name!r} patches {target.component}.{target.module}, a "
                             f"{type(module).__name__} without a weight; the LoRA does not fit this model.")
    return module


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
    factors = term.adapter.low_rank(shape)
    if factors is not None:
        up, down = factors
        if up.shape[0] * down.shape[1] != shape.numel() or up.shape[1] != down.shape[0]:
            raise LoraShapeError(f"LoRA {term.name!r} at {where}: factors {tuple(up.shape)} @ {tuple(down.shape)} do "
                                 f"not fit the weight {tuple(shape)}; the LoRA was made for another model.")
    else:
        try:
            delta = term.adapter.delta(torch.empty(shape, device="meta"))
        except (NotImplementedError, RuntimeError):
            delta = None  # an op without a meta kernel: checked for real when applied (still atomic)
        if delta is not None and delta.shape != shape:
            raise LoraShapeError(f"LoRA {term.name!r} at {where}: change of shape {tuple(delta.shape)} does not fit "
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
    """

    def __init__(self, components: Mapping[str, torch.nn.Module]) -> None:
        self.components = dict(components)
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._step: int | None = None

    # -- stack -----------------------------------------------------------------------------
    def load(self, stacks: Iterable[ModuleStack]) -> None:
        """Validate ``stacks`` in full, then make them the active stack (no weight is written here)."""
        stacks = tuple(stacks)
        resolved = {}
        for stack in stacks:
            key = (stack.target.component, stack.target.module)
            if key in resolved:
                raise LoraApplyError(f"two stacks aim at {key[0]}.{key[1]}; merge their terms into one ModuleStack.")
            where = f"{key[0]}.{key[1]}"
            module = _resolve_module(self.components, stack.target, stack.terms[0].name if stack.terms else "?")
            for term in stack.terms:
                _check_term(module, term, where)
            resolved[key] = (stack, module)
        old = self._slots
        try:
            for key in [k for k in old if k not in resolved]:
                self._restore_slot(old[key])
        except BaseException as err:
            self.restore()
            raise _wrap(err, "restoring modules the new stack no longer touches") from err
        self._slots = {}
        for key, (stack, module) in resolved.items():
            previous = old.get(key)
            slot = _Slot(stack, module)
            if previous is not None and previous.module is module:
                slot.backup_weight, slot.backup_bias = previous.backup_weight, previous.backup_bias
                slot.pristine = previous.pristine
                if previous.stack == stack:
                    slot.current = previous.current
            self._slots[key] = slot
        self._step = None

    @property
    def stacks(self) -> tuple[ModuleStack, ...]:
        return tuple(slot.stack for slot in self._slots.values())

    def change_points(self) -> tuple[int, ...]:
        """Every 1-based step (> 1) at which some module's weights change."""
        return tuple(sorted({s for slot in self._slots.values() for s in slot.stack.change_points()}))

    # -- weights ---------------------------------------------------------------------------
    def apply(self, step: int) -> ApplyReport:
        """Write the weights of 1-based ``step`` into every module whose weights differ from what it holds.

        On any failure every touched module is restored before the error propagates.
        """
        start = time.perf_counter()
        changed = 0
        try:
            with torch.no_grad():
                self._make_backups()
                for slot in self._slots.values():
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

    def restore(self) -> None:
        """Copy every backup back into its module and release the backups (bit-exact)."""
        errors = []
        for slot in self._slots.values():
            try:
                self._restore_slot(slot)
            except BaseException as err:  # keep restoring the others; report the first failure
                errors.append(err)
        self._slots = {}
        self._step = None
        if errors:
            raise errors[0]

    @property
    def step(self) -> int | None:
        return self._step

    @property
    def backup_bytes(self) -> int:
        """Bytes held for backups and cached factors (the engine's extra memory)."""
        total = 0
        for slot in self._slots.values():
            for t in (slot.backup_weight, slot.backup_bias):
                if t is not None:
                    total += t.numel() * t.element_size()
            total += slot.extra_bytes
        return total

    # -- internals -------------------------------------------------------------------------
    def _make_backups(self) -> None:
        pending = [s for s in self._slots.values() if not s.touched]
        if not pending:
            return
        needed = sum(s.module.weight.numel() * s.module.weight.element_size() for s in pending)
        for slot in pending:
            device = _backup_device(slot.module.weight, needed)
            slot.backup_weight = slot.module.weight.detach().to(device, copy=True)
            bias = getattr(slot.module, "bias", None)
            if isinstance(bias, torch.Tensor) and any(t.adapter.bias_delta() is not None for t in slot.stack.terms):
                slot.backup_bias = bias.detach().to(device, copy=True)

    def _write(self, slot: _Slot, weights: Sequence[float]) -> None:
        weight = slot.module.weight
        original = slot.backup_weight.to(weight.device)
        direct = weight.dtype == torch.float32 and weight.is_contiguous() and original is not weight
        fused = fuse(original, slot, weights, into=weight.data if direct else None)
        if fused is not None:
            weight.data.copy_(fused)
        if slot.backup_bias is not None:
            bias = slot.module.bias
            base = slot.backup_bias.to(bias.device).float()
            for term, m in zip(slot.stack.terms, weights):
                delta = term.adapter.bias_delta()
                if delta is not None and m != 0.0:
                    base = base + m * delta.to(base.device, torch.float32).reshape(base.shape)
            bias.data.copy_(base)
        slot.current = tuple(weights)
        slot.pristine = False

    def _restore_slot(self, slot: _Slot) -> None:
        with torch.no_grad():
            if slot.backup_weight is not None:
                slot.module.weight.data.copy_(slot.backup_weight)
            if slot.backup_bias is not None:
                slot.module.bias.data.copy_(slot.backup_bias)
        slot.backup_weight = slot.backup_bias = None
        slot.current = None
        slot.pristine = True


def _backup_device(weight: torch.Tensor, needed: int) -> torch.device:
    """The weight's own device when ``needed`` more bytes leave a margin free there, else the CPU."""
    if weight.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(weight.device)
        return weight.device if free - needed > DEVICE_BACKUP_MARGIN else torch.device("cpu")
    if weight.device.type in ("cpu", "meta"):
        return weight.device
    return torch.device("cpu")


def _low_rank_cache(slot: _Slot, device: torch.device) -> None:
    """Concatenate the low-rank factors of the slot's plain-LoRA terms once, on the module's device."""
    ups, downs, terms, ranks = [], [], [], []
    shape = slot.module.weight.shape
    for index, term in enumerate(slot.stack.terms):
        if not term.adapter.additive:
            continue
        factors = term.adapter.low_rank(shape)
        if factors is None:
            continue
        up, down = factors
        ups.append(up.to(device, torch.float32))
        downs.append(down.to(device, torch.float32))
        terms.append(index)
        ranks.append(up.shape[1])
    if terms:
        slot.low_up, slot.low_down = torch.cat(ups, dim=1), torch.cat(downs, dim=0)
        slot.extra_bytes = (slot.low_up.numel() + slot.low_down.numel()) * 4
    slot.low_terms, slot.low_ranks, slot.cached = tuple(terms), tuple(ranks), True


def _rank_scale(weights: Sequence[float], ranks: Sequence[int], device: torch.device) -> torch.Tensor:
    """Each entry's weight repeated over its rank's columns of the concatenated up-factor."""
    return torch.tensor([w for w, r in zip(weights, ranks) for _ in range(r)], device=device, dtype=torch.float32)


def fuse(original: torch.Tensor, slot: _Slot, weights: Sequence[float],
         into: torch.Tensor | None = None) -> torch.Tensor | None:
    """fp32 fused weight of ``slot`` at ``weights`` from the ``original`` tensor (the formula above).

    ``into`` (an fp32 contiguous weight on the original's device) lets a pure low-rank stack be written
    in place by one ``addmm`` with no temporary; the function then returns ``None``.
    """
    if not slot.cached:
        _low_rank_cache(slot, original.device)
    w0 = original.float()
    shape = w0.shape
    low = [weights[i] for i in slot.low_terms]
    others = any(m != 0.0 for i, m in enumerate(weights) if i not in slot.low_terms)
    fused = None
    if any(m != 0.0 for m in low):
        if len(set(low)) == 1:  # one weight for all: fold it into addmm's alpha, no scaled copy of U
            up, alpha = slot.low_up, low[0]
        else:
            up, alpha = slot.low_up * _rank_scale(low, slot.low_ranks, w0.device), 1.0
        if into is not None and not others:
            torch.addmm(w0.reshape(shape[0], -1), up, slot.low_down, alpha=alpha, out=into.view(shape[0], -1))
            return None
        fused = torch.addmm(w0.reshape(shape[0], -1), up, slot.low_down, alpha=alpha).reshape(shape)
    if not others:
        return w0.clone() if fused is None else fused
    fused = w0.clone() if fused is None else fused
    low_set = set(slot.low_terms)
    for index, (term, m) in enumerate(zip(slot.stack.terms, weights)):
        if index in low_set or m == 0.0 or not term.adapter.additive:
            continue
        fused = fused + m * term.adapter.delta(w0).to(fused.device, torch.float32)
    for term, m in zip(slot.stack.terms, weights):
        if not term.adapter.additive and m != 0.0:
            fused = term.adapter.patched(fused, m).to(torch.float32)
    return fused
