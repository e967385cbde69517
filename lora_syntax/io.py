"""Reading LoRA files safely: safetensors only, header first, every bad file a :class:`LoraFileError`.

Pickle checkpoints (``.pt``, ``.ckpt``, ``.bin``, ``.pth``, or a pickle renamed ``.safetensors``) are
refused: unpickling runs whatever code the file carries. Truncated, corrupt or empty files and
tensors holding NaN/inf are refused with a message naming the file (and the tensor).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import mmap
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import LoraFileError

PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle"})
SAFETENSORS_SUFFIX = ".safetensors"
# Errors safetensors/torch raise for a file that is not what its header promises.
_READ_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError, MemoryError)


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a safetensors header says, without reading any tensor data."""

    metadata: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)


def conversion_hint(path: Path) -> str:
    """A one-liner that converts a trusted pickle checkpoint to safetensors."""
    target = path.with_suffix(SAFETENSORS_SUFFIX).name
    if target == path.name:
        target = f"{path.stem}.converted{SAFETENSORS_SUFFIX}"
    return ("If you trust its source, convert it once: python -c \"import torch; "
            "from safetensors.torch import save_file; "
            f"sd = torch.load('{path.name}', map_location='cpu', weights_only=True); "
            "sd = sd.get('state_dict', sd); "
            f"save_file({{k: v.contiguous() for k, v in sd.items()}}, '{target}')\"")


def pickle_error(path: Path, why: str) -> LoraFileError:
    return LoraFileError(
        f"LoRA file '{path}' {why}; lora-syntax only loads .safetensors files, because loading a pickle "
        f"can run arbitrary code hidden in the file. {conversion_hint(path)}", path=path)


def sniff_pickle(head: bytes) -> str | None:
    """Describe ``head`` (a file's first bytes) if it is a pickle or a torch zip checkpoint."""
    if len(head) >= 9 and head[8:9] == b"{":
        return None  # safetensors: an 8-byte header length, then the JSON header; its length bytes
        #              can look like a pickle opcode (0x80 0x05..., "(\x94"), so this check comes first
    if head.startswith(b"PK\x03\x04"):
        return "is a PyTorch zip checkpoint (a pickle inside a zip)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"is a Python pickle (protocol {head[1]})"
    if head[:1] in (b"(", b"}", b"]") and head[1:2] in (b"d", b"l", b"q", b"(", b"X", b"\x94"):
        return "looks like a Python pickle"
    return None


def _not_a_file(path: Path) -> str:
    """Why ``path`` cannot be opened as a file, with what to do instead."""
    if not path.exists():
        return "does not exist; check the path and its spelling"
    if path.is_dir():
        return "is a folder; give the path of one .safetensors file inside it"
    return "is not a regular file (a device, pipe or socket); give the path of a .safetensors file"


def check_file(path: str | Path) -> Path:
    """Refuse before parsing: missing, not a file, empty, pickle by suffix or by content."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise pickle_error(path, f"is a {path.suffix} pickle checkpoint")
    try:
        if not path.is_file():
            raise LoraFileError(f"LoRA file '{path}' {_not_a_file(path)}.", path=path)
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as error:
        raise LoraFileError(f"LoRA file '{path}' cannot be read: {error.strerror or error}.", path=path) from error
    if size == 0:
        raise LoraFileError(f"LoRA file '{path}' is empty (0 bytes): the download or copy probably failed; "
                            "download it again.", path=path)
    kind = sniff_pickle(head)
    if kind:
        raise pickle_error(path, f"{kind}, despite its {path.suffix or 'missing'} suffix")
    if len(head) < 9 or head[8:9] != b"{":
        raise LoraFileError(f"LoRA file '{path}' is not a safetensors file (its first bytes are not a "
                            "safetensors header); it may be truncated, or another kind of file renamed.", path=path)
    return path


Roots = Sequence[Path] | None
#: The value :func:`parse_json` returns for text it could not read (``None`` is valid JSON).
INVALID = object()


def parse_json(text: str | bytes, *, what: str) -> object:
    """``text`` parsed as JSON, or :data:`INVALID` with a warning naming ``what`` (a file, a metadata key).

    Metadata and sidecars are untrusted input: besides malformed text, nesting deeper than Python's
    recursion limit (``[[[...]]]`` 1,000 deep, 2 KB) raises ``RecursionError`` in ``json``, and one bad
    value must never take down a listing of the whole library."""
    try:
        return json.loads(text)
    except RecursionError:
        warnings.warn(f"ignoring {what}: its JSON is nested too deeply to read", stacklevel=2)
    except (ValueError, TypeError) as error:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
        warnings.warn(f"ignoring {what}: not valid JSON ({error})", stacklevel=2)
    return INVALID



def is_inside(path: str | Path, roots: Sequence[Path]) -> bool:
    """Whether ``path`` (resolved: symlinks followed) lies in one of the (resolved) folders ``roots``."""
    real = Path(os.path.realpath(path))
    return any(real == root or root in real.parents for root in (Path(os.path.realpath(r)) for r in roots))


def outside_error(path: Path, real: str | Path) -> LoraFileError:
    return LoraFileError(f"LoRA file '{path}' leads to '{real}', outside the LoRA folders (a symlink or a "
                         "renamed folder); it is refused. Move or copy the file into a LoRA folder instead.",
                         path=path)


def check_inside(path: str | Path, roots: Roots) -> Path:
    """``path`` when it resolves inside ``roots`` (``None``: no containment asked); else a :class:`LoraFileError`."""
    path = Path(path)
    if roots is not None and not is_inside(path, roots):
        raise outside_error(path, os.path.realpath(path))
    return path


@contextlib.contextmanager
def contained(path: Path, roots: Roots) -> Iterator[str]:
    """The name to open ``path`` by, checked to lie inside ``roots`` at the moment it is read.

    The file is opened first and the check made on what that descriptor refers to (``/proc/self/fd``), and
    the reader is handed that descriptor's name: swapping the file for a symlink between a check and the
    read cannot slip another file in. Without ``/proc`` the resolved path is checked just before use."""
    if roots is None:
        yield str(path)
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise LoraFileError(f"LoRA file '{path}' cannot be read: {error.strerror or error}.", path=path) from error
    try:
        by_fd = Path(f"/proc/self/fd/{fd}")
        if by_fd.is_symlink():
            real = os.readlink(by_fd)
            if not is_inside(real, roots):
                raise outside_error(path, real)
            yield str(by_fd)
        else:
            yield str(check_inside(path, roots))
    finally:
        os.close(fd)


def _corrupt(path: Path, error: BaseException) -> LoraFileError:
    detail = str(error).strip() or type(error).__name__
    return LoraFileError(f"LoRA file '{path}' is truncated or corrupt ({detail}); download it again.", path=path)


def read_header(path: str | Path, *, roots: Roots = None) -> SafetensorsHeader:
    """Metadata, tensor shapes and dtypes of a safetensors file, without loading tensor data.
    ``roots``: the folders the file must lie in when it is read (see :func:`contained`)."""
    path = check_file(check_inside(path, roots))
    try:
        with contained(path, roots) as name, safe_open(name, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            shapes, dtypes = {}, {}
            for key in handle.keys():
                view = handle.get_slice(key)
                shapes[key] = tuple(int(n) for n in view.get_shape())
                dtypes[key] = str(view.get_dtype())
    except _READ_ERRORS as error:
        raise _corrupt(path, error) from error
    return SafetensorsHeader(metadata, shapes, dtypes)


def _check_finite(path: Path, key: str, tensor: torch.Tensor) -> None:
    if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
        return
    try:
        finite = bool(torch.isfinite(tensor).all())
    except (RuntimeError, TypeError):  # dtypes without isfinite (fp8 on some builds)
        finite = bool(torch.isfinite(tensor.float()).all())
    if not finite:
        what = "NaN" if bool(torch.isnan(tensor.float()).any()) else "infinite"
        raise LoraFileError(f"LoRA file '{path}' has {what} values in tensor '{key}': the LoRA was broken in "
                            "training or saving and would ruin every image; retrain or re-download it.", path=path)


_NORM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_all_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor finite. One foreach norm over the file's fp32/fp16/bf16 tensors first (a few times
    faster than a check per tensor); only when it is not finite (NaN/inf, or a huge but finite file) are
    they checked one by one, which names the broken tensor. Other dtypes are always checked one by one."""
    usual = {key: t for key, t in tensors.items() if t.dtype in _NORM_DTYPES and t.numel()}
    total_norm = getattr(torch.nn.utils, "get_total_norm", None)   # torch >= 2.6
    if usual and total_norm is not None:
        try:
            if bool(torch.isfinite(total_norm(list(usual.values()), error_if_nonfinite=False))):
                tensors = {key: t for key, t in tensors.items() if key not in usual}
        except (RuntimeError, TypeError):
            pass
    for key, tensor in tensors.items():
        _check_finite(path, key, tensor)


@dataclass(frozen=True)
class LoraTensors:
    """A file's tensors (checked finite), its metadata, and ``peak``: a bound on |value| over every
    floating-point tensor (``inf`` when the read did not compute one), so callers need no second pass."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    peak: float = math.inf


# safetensors dtype codes the mapped reader handles; any other code (fp8, unsigned...) takes the
# per-tensor safetensors path.
_MAPPED_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                  "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                  "BOOL": torch.bool}
_MAX_HEADER = 100_000_000   # safetensors' own limit on the JSON header


def _entries(header: object, data_len: int) -> list[tuple[str, torch.dtype, list[int], int, int]] | None:
    """``(key, dtype, shape, start, end)`` by offset, each range checked to lie in the data and to hold its
    shape's bytes, without gaps or overlaps (a file rewritten after safetensors validated it still fails
    here); ``None`` when a dtype is not one :data:`_MAPPED_DTYPES` maps."""
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    entries = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _MAPPED_DTYPES.get(info.get("dtype")) if isinstance(info, dict) else None
        if dtype is None:
            return None
        shape, (start, end) = list(info["shape"]), info["data_offsets"]
        if not all(isinstance(n, int) and n >= 0 for n in (*shape, start, end)):
            raise ValueError(f"tensor '{key}' has an invalid shape or offsets")
        if end - start != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"tensor '{key}' has {end - start} bytes for shape {shape}")
        entries.append((key, dtype, shape, start, end))
    entries.sort(key=lambda entry: entry[3])
    position = 0
    for key, _, _, start, end in entries:
        if start != position:
            raise ValueError(f"tensor '{key}' starts at byte {start}, expected {position}")
        position = end
    if position != data_len:
        raise ValueError(f"the header describes {position} bytes of tensor data, the file holds {data_len}")
    return entries


def _peak(run: torch.Tensor) -> float:
    """max |value| of one flat run (NaN when it holds a NaN, inf when an inf): one pass, no temporary."""
    low, high = torch.aminmax(run)
    return max(-float(low), float(high))


#: Bytes of one piece of the value check: a 1 GB file is checked by several threads at once. Pieces stay
#: large: each one ends with a hand-over of the GIL that stalls the thread mapping keys (32 MiB pieces
#: loaded three SDXL files 20% slower than 256 MiB ones on two cores).
CHECK_PIECE_BYTES = 256 * 2**20
#: Most threads that check values: memory bandwidth, not cores, bounds a pass, and a few threads reach it.
MAX_CHECK_THREADS = 4
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _check_pool() -> ThreadPoolExecutor:
    """The value-check threads, made on first use (``aminmax`` releases the GIL, so they run beside the
    caller's key mapping and beside each other)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=check_threads(), thread_name_prefix="lora-syntax value check")
        return _pool


def check_threads() -> int:
    """How many value-check threads: the cores torch's own threads leave over, at most
    :data:`MAX_CHECK_THREADS`. A host that gives torch every core (the default) gets one, whose ``aminmax``
    is already spread over those cores; several such threads would each start a team of torch threads
    and crowd the cores the key mapping needs. One torch thread on 16 cores (the benches) gets four."""
    return max(1, min(MAX_CHECK_THREADS, (os.cpu_count() or 1) // max(1, torch.get_num_threads())))


def _forget_pool() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()   # a forked child has none of the parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


Check = Callable[[], float]


def _run_checks(path: Path, tensors: dict[str, torch.Tensor], runs: list[tuple[torch.Tensor, list[str]]]) -> list[Check]:
    """The value check of ``runs`` (flat same-dtype runs of the file and their keys, in order) as pieces
    of at most :data:`CHECK_PIECE_BYTES`, each returning its peak. A piece that is not finite checks its
    tensors one by one, to name the broken one."""
    checks: list[Check] = []
    for run, keys in runs:
        step = max(1, CHECK_PIECE_BYTES // run.element_size())
        ends, total = [], 0
        for key in keys:
            total += tensors[key].numel()
            ends.append(total)
        first = 0   # index of the first key whose elements reach past the piece's start
        for start in range(0, run.numel(), step):
            stop = min(start + step, run.numel())
            while ends[first] <= start:
                first += 1
            last = first
            while last < len(keys) and ends[last] < stop:
                last += 1
            checks.append(functools.partial(_check_piece, path, run[start:stop],
                                            {key: tensors[key] for key in keys[first:last + 1]}))
    return checks


def _check_piece(path: Path, piece: torch.Tensor, overlapping: dict[str, torch.Tensor]) -> float:
    found = _peak(piece)
    if not math.isfinite(found):
        _check_all_finite(path, overlapping)   # tensor by tensor, to name the broken one
    return found


def _read_mapped(name: str, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], list[Check]] | None:
    """Every tensor as a view of one private (copy-on-write) map of the file, its metadata, and the check
    of its values: ``aminmax`` over pieces of the runs of same-dtype tensors (the data section is
    contiguous) instead of a call per tensor, each returning its peak. ``None`` for files the safetensors
    per-tensor path must read (other dtypes, no tensor data)."""
    with safe_open(name, framework="pt") as handle:   # safetensors validates the header first
        metadata = dict(handle.metadata() or {})
    with open(name, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        length = int.from_bytes(file.read(8), "little")
        if length > min(size - 8, _MAX_HEADER):
            raise ValueError("the header length passes the end of the file")
        try:
            entries = _entries(json.loads(file.read(length)), size - 8 - length)
        except (KeyError, TypeError, AttributeError, IndexError) as error:
            raise ValueError(f"malformed header ({error!r})") from error
        if not entries or size == 8 + length:
            return None
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    tensors: dict[str, torch.Tensor] = {}
    runs: list[tuple[torch.Tensor, list[str]]] = []   # floating-point runs and their keys
    index = 0
    while index < len(entries):
        dtype, first = entries[index][1], entries[index][3]
        stop = index
        while stop < len(entries) and entries[stop][1] == dtype:
            stop += 1
        count = (entries[stop - 1][4] - first) // dtype.itemsize
        run = (torch.frombuffer(mapped, dtype=dtype, count=count, offset=8 + length + first) if count
               else torch.empty(0, dtype=dtype))
        group = entries[index:stop]   # contiguous (checked by _entries): one split makes every view
        pieces = run.split_with_sizes([(end - start) // dtype.itemsize for _, _, _, start, end in group])
        for (key, _, shape, _, _), piece in zip(group, pieces):
            tensors[key] = piece.view(shape)
        if count and dtype.is_floating_point:
            runs.append((run, [key for key, *_ in group]))
        index = stop
    return tensors, metadata, _run_checks(path, tensors, runs)


class PendingRead:
    """A file's tensors and metadata at once, and the check of every value (NaN/inf refused, the peak
    kept) running on the value-check threads meanwhile: the values are read while the caller maps the
    keys, which needs only names and shapes. :meth:`result` waits for the check and raises what it found
    (the first broken piece in file order, whichever thread found it)."""

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], checks: Sequence[Check]) -> None:
        self.tensors, self.metadata = tensors, metadata
        pool = _check_pool()
        self._pieces: list[Future[float]] = [pool.submit(check) for check in checks]

    def result(self) -> LoraTensors:
        peaks = [piece.result() for piece in self._pieces]
        return LoraTensors(self.tensors, self.metadata, max(peaks) if peaks else 0.0)


def start_read(path: str | Path, *, roots: Roots = None) -> PendingRead:
    """Open a safetensors LoRA file (inside ``roots``) and start checking its values; see :class:`PendingRead`."""
    path = check_file(check_inside(path, roots))
    try:
        with contained(path, roots) as name:
            read = _read_mapped(name, path)
            if read is None:
                with safe_open(name, framework="pt", device="cpu") as handle:
                    tensors = {key: handle.get_tensor(key) for key in handle.keys()}
                    metadata = dict(handle.metadata() or {})

                def check() -> float:
                    _check_all_finite(path, tensors)
                    return math.inf
                read = tensors, metadata, [check]
    except _READ_ERRORS as error:
        raise _corrupt(path, error) from error
    if not read[0]:
        raise LoraFileError(f"LoRA file '{path}' holds no tensors: it is empty or was saved incompletely.",
                            path=path)
    return PendingRead(*read)


def read_lora(path: str | Path, *, roots: Roots = None) -> LoraTensors:
    """Every tensor of a safetensors LoRA file, checked to be finite (and to lie inside ``roots``), with its
    metadata and a bound on its values, from one open of the file."""
    return start_read(path, roots=roots).result()


def load_state_dict(path: str | Path, *, device: str | torch.device = "cpu",
                    roots: Roots = None) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors LoRA file, checked to be finite (and to lie inside ``roots``)."""
    tensors = read_lora(path, roots=roots).tensors
    if str(device) != "cpu":
        tensors = {key: tensor.to(device) for key, tensor in tensors.items()}
    return tensors


def read_tensors(path: str | Path, keys: list[str], *, roots: Roots = None) -> dict[str, torch.Tensor]:
    """Only the named tensors (small ones such as ``alpha``), read lazily from a safetensors file."""
    path = check_file(check_inside(path, roots))
    try:
        with contained(path, roots) as name, safe_open(name, framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in keys}
    except _READ_ERRORS as error:
        raise _corrupt(path, error) from error


def read_metadata(path: str | Path, *, roots: Roots = None) -> dict[str, str]:
    """Only the ``__metadata__`` of a safetensors file: what a folder scan needs for aliases."""
    path = check_file(check_inside(path, roots))
    try:
        with contained(path, roots) as name, safe_open(name, framework="pt") as handle:
            return dict(handle.metadata() or {})
    except _READ_ERRORS as error:
        raise _corrupt(path, error) from error
