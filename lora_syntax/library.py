"""Finding LoRAs by the name typed in a tag, and loading them through a bounded cache.

A name resolves, first rule that matches wins: the path relative to a LoRA folder (``styles/ink``),
the file stem (``ink``), the same two ignoring case, then an alias from the metadata (``ss_output_name``,
``modelspec.title``), exactly and ignoring case: an alias never shadows another file's name (a copy of
``sepia.safetensors`` keeps the alias "sepia"; ``<lora:sepia>`` still means ``sepia.safetensors``, and the
library warns). Several files at one rule -> an error listing them; no file -> an error naming the closest
names. Names can never leave the folders: ``..``, absolute paths, drive letters and symlinks that point
outside are refused, at scan time and again when each file is read (``io.contained``). When two folders hold
the same relative path, the earlier folder wins. A resolved file that changed on disk since the scan
(renamed, deleted, rewritten: size, mtime, ctime or inode) triggers a rescan before it is used.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import torch

from . import io as file_io
from .errors import LoraError, LoraFileError, LoraNameError
from .io import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, pickle_error, read_metadata
from .metadata import LoraInfo, read_info, sidecar
from .plan import COMPONENTS, DENOISERS, TEXT_ENCODERS, Plan

GIB = 1024 ** 3
ALIAS_KEYS = ("ss_output_name", "modelspec.title")
KIND_COMPONENTS = {"te": TEXT_ENCODERS, "unet": DENOISERS}  # LoraInfo.touches -> the plan's component names
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class LoraEntry:
    """One LoRA file found in a folder. ``name`` is what a tag must contain to resolve back to it."""

    name: str                 # relative path without suffix, posix: "styles/ink"
    path: Path
    folder: Path
    aliases: tuple[str, ...] = ()
    size: int = 0
    mtime: float = 0.0
    mtime_ns: int = field(default=0, repr=False)
    refused: str | None = None  # why this file will not be loaded (pickle, symlink out of the folders)
    roots: tuple[Path, ...] | None = field(default=None, compare=False, repr=False)  # every read stays inside
    stamp: tuple[int, ...] = field(default=(), compare=False, repr=False)  # file_stamp() at the scan

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).name

    @cached_property
    def info(self) -> LoraInfo:
        """Metadata, trigger words and preview, read on first use (header only)."""
        if self.refused:
            raise LoraFileError(self.refused, path=self.path)
        return read_info(self.path, roots=self.roots)


def file_stamp(stat: os.stat_result) -> tuple[int, ...]:
    """What says a file changed: size, mtime, ctime and inode. ``cp -p`` and ``rsync -t`` keep the mtime of
    a same-size rewrite, but not its inode change time (nor, for a new file, its inode)."""
    return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def check_name(name: str, *, literal_backslash: bool = False) -> str:
    """The tag name in posix form without a ``.safetensors`` suffix; refuses names that leave the folders.
    A backslash separates folders (Windows habit) unless ``literal_backslash`` (a POSIX file name holding one)."""
    cleaned = name.strip() if literal_backslash else name.strip().replace("\\", "/")
    if not cleaned or "\x00" in cleaned:
        raise LoraNameError(f"LoRA name {name!r} is empty or invalid; write the file's name without its "
                            "suffix, e.g. 'ink' or 'styles/ink'.", name=name)
    if cleaned.startswith("/") or _DRIVE.match(cleaned) or ".." in cleaned.split("/"):
        raise LoraNameError(f"LoRA name {name!r} points outside the LoRA folders (absolute paths, drive letters "
                            "and '..' are refused); use a name relative to a LoRA folder, e.g. 'styles/ink'.",
                            name=name)
    if cleaned.lower().endswith(SAFETENSORS_SUFFIX):
        cleaned = cleaned[: -len(SAFETENSORS_SUFFIX)]
    return "/".join(part for part in cleaned.split("/") if part not in ("", "."))


_LEAVES = (str, bytes, int, float, PurePath)


def tensor_bytes(value: Any, seen: set[int] | None = None) -> int:
    """Bytes of every tensor reachable from a loaded LoRA (patches, adapters, nested adapters), each object
    counted once. A loop over a stack, not recursion: a LoRA holds thousands of small objects."""
    seen = set() if seen is None else seen
    total, stack = 0, [value]
    while stack:
        value = stack.pop()
        if value is None or isinstance(value, _LEAVES) or id(value) in seen:
            continue   # the common leaves (keys, names, alphas): no need to look inside
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            total += 0 if value.device.type == "meta" else value.numel() * value.element_size()
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):  # slotted ones have no __dict__
            stack.extend(getattr(value, name, None) for name in _field_names(type(value)))
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            stack.extend(vars(value).values())
    return total


@functools.lru_cache(maxsize=256)
def _field_names(cls: type) -> tuple[str, ...]:
    """A dataclass's field names, looked up once per class (``dataclasses.fields`` is slow per object)."""
    return tuple(f.name for f in dataclasses.fields(cls))


@dataclass
class _Cached:
    loaded: Any
    nbytes: int
    tree: Any  # held so that id(tree) in the key cannot be reused by another tree


class LoadCache:
    """Loaded LoRAs keyed by (path, file_stamp, architecture, tree id), least recently used evicted
    first when over ``max_items`` or ``max_bytes`` of tensors (SD.Next's ``lora_in_memory_limit``)."""

    def __init__(self, *, max_items: int = 32, max_bytes: int = 2 * GIB) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: OrderedDict[tuple, _Cached] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return sum(item.nbytes for item in self._items.values())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def _key(self, entry: "LoraEntry", tree: Any) -> tuple[tuple, os.stat_result]:
        try:
            stat = entry.path.stat()
        except OSError as error:
            raise LoraFileError(f"LoRA file '{entry.path}' cannot be read: {error.strerror or error}.",
                                path=entry.path) from error
        return (str(entry.path), file_stamp(stat), getattr(tree, "architecture", None), id(tree)), stat

    def _held(self, key: tuple, tree: Any) -> _Cached | None:
        """What the cache holds for ``key`` and this very ``tree`` (call under the lock)."""
        cached = self._items.get(key)
        return cached if cached is not None and cached.tree is tree else None

    def _cached(self, key: tuple, tree: Any) -> Any:
        """The cached load for ``key`` (counted as a hit), or ``None`` (a miss); drops stale versions."""
        with self._lock:
            for old in [k for k in self._items if k[0] == key[0] and k[1] != key[1]]:
                del self._items[old]  # the file changed on disk
            cached = self._held(key, tree)
            if cached is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return cached.loaded
            self.misses += 1
        return None

    def get_or_load(self, entry: "LoraEntry", tree: Any, *, started: Any = None) -> Any:
        """``entry`` loaded onto ``tree``, from the cache when its file is unchanged. ``started``: the file's
        :func:`io.start_read`, when the caller opened it ahead (:meth:`get_or_load_many`)."""
        key, stat = self._key(entry, tree)
        cached = self._cached(key, tree)
        if cached is not None:
            return cached
        loader = importlib.import_module("lora_syntax.loader")
        loaded = loader.load_lora(entry.path, tree, name=entry.name, roots=entry.roots, started=started)
        nbytes = getattr(loaded, "nbytes", 0) or tensor_bytes(loaded) or stat.st_size
        if self.max_items > 0 and nbytes <= self.max_bytes:
            with self._lock:
                self._items[key] = _Cached(loaded, nbytes, tree)
                self._evict()
        return loaded

    def get_or_load_many(self, entries: Sequence["LoraEntry"], tree: Any) -> list[Any]:
        """Each of ``entries`` loaded onto ``tree``, in order. Every file not in the cache is opened first,
        so the values of later files are checked (on the value-check threads) while earlier ones are mapped."""
        started: dict[Path, Any] = {}
        for entry in entries:
            if entry.path in started:
                continue
            key = self._key(entry, tree)[0]
            with self._lock:
                held = self._held(key, tree)
            if held is None:
                started[entry.path] = file_io.start_read(entry.path, roots=entry.roots)
        return [self.get_or_load(entry, tree, started=started.pop(entry.path, None)) for entry in entries]

    def _evict(self) -> None:
        total = self.nbytes
        while self._items and (len(self._items) > self.max_items or total > self.max_bytes):
            _, dropped = self._items.popitem(last=False)
            total -= dropped.nbytes


def _names(entry: LoraEntry) -> tuple[str, ...]:
    return (entry.name,)


def _stems(entry: LoraEntry) -> tuple[str, ...]:
    return (entry.stem,)


def _aliases(entry: LoraEntry) -> tuple[str, ...]:
    return entry.aliases


# What a name is compared with, in order, and whether case is ignored: file names before any alias.
_RULES: tuple[tuple[Callable[[LoraEntry], tuple[str, ...]], bool], ...] = (
    (_names, False), (_stems, False), (_names, True), (_stems, True), (_aliases, False), (_aliases, True))


def lookup_tables(entries: list[LoraEntry]) -> list[dict[str, list[LoraEntry]]]:
    """One ``key -> entries`` table per rule of ``_RULES``, in the order :meth:`LoraLibrary.resolve` tries them."""
    tables = []
    for rule, fold in _RULES:
        table: dict[str, list[LoraEntry]] = {}
        for entry in entries:
            for key in dict.fromkeys(rule(entry)):
                table.setdefault(key.casefold() if fold else key, []).append(entry)
        tables.append(table)
    return tables


def alias_warnings(entries: list[LoraEntry]) -> list[str]:
    """An alias that is another file's name or stem (ignoring case) never resolves to its own file: say so."""
    names: dict[str, list[LoraEntry]] = {}
    for entry in entries:
        for key in dict.fromkeys((entry.name.casefold(), entry.stem.casefold())):
            names.setdefault(key, []).append(entry)
    found = []
    for entry in entries:
        for alias in entry.aliases:
            owners = [other for other in names.get(alias.casefold(), []) if other.path != entry.path]
            if owners:
                found.append(f"LoRA file '{entry.path.name}' has the alias {alias!r} (from its metadata), which is "
                             f"also the name of '{owners[0].path.name}': <lora:{alias}> means that file; write "
                             f"<lora:{entry.name}> for this one")
    return found


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _utf8(name: str) -> bool:
    """False for a file name whose bytes are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unchanged(entry: LoraEntry) -> bool:
    """The file is still there, as it was when the folders were scanned."""
    try:
        return not entry.stamp or file_stamp(entry.path.stat()) == entry.stamp
    except OSError:
        return False


class LoraLibrary:
    """LoRA files under one or more folders, by tag name, with a bounded cache of loaded LoRAs."""

    def __init__(self, folders: Sequence[str | Path] | str | Path, *, cache_items: int = 32,
                 cache_bytes: int = 2 * GIB) -> None:
        folders = [folders] if isinstance(folders, (str, Path)) else folders
        self.folders = tuple(Path(folder).expanduser().absolute() for folder in folders)
        self.cache = LoadCache(max_items=cache_items, max_bytes=cache_bytes)
        self._entries: list[LoraEntry] | None = None
        self._tables: tuple[list[dict[str, list[LoraEntry]]], ...] = ([], [])
        self._metadata_cache: dict[str, tuple[tuple[int, ...], dict[str, str]]] = {}
        self._infos: dict[tuple, LoraInfo] = {}
        self._lock = threading.RLock()
        self.warnings: tuple[str, ...] = ()   # what the last scan found wrong (unreadable folders, names)

    @property
    def roots(self) -> tuple[Path, ...]:
        """The folders, resolved: every file read must lie inside one of them."""
        return tuple(folder.resolve() for folder in self.folders)

    # -- scanning -----------------------------------------------------------------------------
    def entries(self, refresh: bool = False) -> list[LoraEntry]:
        """Every ``.safetensors`` (and refused pickle) file under the folders, sorted by folder then name."""
        with self._lock:
            if self._entries is None or refresh:
                problems: list[str] = []
                self._entries = [entry for folder in self.folders for entry in self._scan(folder, problems)]
                usable = [e for e in self._entries if e.refused is None]
                self._tables = (lookup_tables(usable), lookup_tables([e for e in self._entries if e.refused]))
                problems += alias_warnings(usable)
                for text in problems:
                    if text not in self.warnings:
                        warnings.warn(text, stacklevel=3)
                self.warnings = tuple(problems)
            return list(self._entries)

    def _scan(self, folder: Path, problems: list[str]) -> list[LoraEntry]:
        if not folder.is_dir():
            return []
        roots = tuple(root.resolve() for root in self.folders if root.is_dir())

        def unreadable(error: OSError) -> None:
            problems.append(f"cannot read the LoRA folder '{error.filename}' ({error.strerror or error}); the LoRAs "
                            "in it are not listed. Check its permissions.")

        found = []
        for directory, subdirs, files in os.walk(folder, onerror=unreadable, followlinks=False):
            subdirs.sort()
            for file_name in sorted(files):
                suffix = Path(file_name).suffix.lower()
                if suffix == SAFETENSORS_SUFFIX or suffix in PICKLE_SUFFIXES:
                    entry = self._entry(folder, Path(directory) / file_name, roots)
                    if entry is not None:
                        found.append(entry)
        return found

    def _entry(self, folder: Path, path: Path, roots: tuple[Path, ...]) -> LoraEntry | None:
        try:
            stat = path.stat()
            real = path.resolve()
        except OSError:
            return None  # dangling symlink or vanished file
        name = path.relative_to(folder).with_suffix("").as_posix()
        refused, aliases = None, ()
        if not _utf8(name):
            shown = os.fsencode(name).decode("utf-8", "backslashreplace")
            name = os.fsencode(name).decode("utf-8", "replace")
            refused = (f"LoRA file name '{shown}' in '{folder}' is not valid UTF-8 (it was written on a system with "
                       "another encoding), so no tag can name it; rename the file.")
        elif not _inside(real, roots):
            refused = (f"LoRA file '{path}' is a symlink to '{real}', outside the LoRA folders; it is refused. "
                       "Move or copy the file into a LoRA folder instead.")
        elif path.suffix.lower() in PICKLE_SUFFIXES:
            refused = str(pickle_error(path, f"is a {path.suffix} pickle checkpoint"))
        else:
            metadata = self._metadata(path, stat, roots)
            aliases = tuple(dict.fromkeys(metadata[key].strip() for key in ALIAS_KEYS
                                          if isinstance(metadata.get(key), str) and metadata[key].strip()))
        return LoraEntry(name, path, folder, aliases, stat.st_size, stat.st_mtime, stat.st_mtime_ns, refused,
                         roots, file_stamp(stat))

    def _metadata(self, path: Path, stat: os.stat_result, roots: tuple[Path, ...]) -> dict[str, str]:
        """The file's metadata, re-read only when it changed (:func:`file_stamp`)."""
        stamp = file_stamp(stat)
        cached = self._metadata_cache.get(str(path))
        if cached is None or cached[0] != stamp:
            try:
                metadata = read_metadata(path, roots=roots)
            except LoraFileError:
                metadata = {}  # listed; loading it reports the problem
            cached = self._metadata_cache[str(path)] = (stamp, metadata)
        return cached[1]

    # -- resolving ----------------------------------------------------------------------------
    def resolve(self, name: str, *, rescan: bool = True) -> LoraEntry:
        """The entry a tag name means. Rescans once before giving up (new or renamed files are found), and
        when the file found changed on disk since the scan (its name or alias may mean another file now);
        ``rescan=False``: only the last scan, for checks made on every keystroke."""
        wanted = check_name(name)
        spellings = dict.fromkeys((wanted, check_name(name, literal_backslash=True)))  # "a\\b": a/b, then a\\b
        for refresh in ((False, True) if rescan else (False,)):
            self.entries(refresh=refresh)
            usable, unusable = self._tables
            for spelling in spellings:
                entry = self._match(name, spelling, usable)
                if entry is not None and (refresh or _unchanged(entry)):
                    return entry
                if entry is not None:
                    break   # changed since the scan: rescan, then look again
                refused = self._match(name, spelling, unusable)
                if refused is not None and (refresh or _unchanged(refused)):
                    raise LoraFileError(refused.refused or "", path=refused.path)
        raise self._unknown(name, wanted, self.entries())

    def tag_name(self, entry: LoraEntry) -> str | None:
        """The shortest name (its stem, its relative path, an alias) that :meth:`resolve` maps back to
        ``entry``; None when none does (a file shadowed by the same path in an earlier folder)."""
        for candidate in dict.fromkeys((entry.stem, entry.name, *entry.aliases)):
            try:
                if self.resolve(candidate).path == entry.path:
                    return candidate
            except LoraError:
                continue
        return None

    @staticmethod
    def _match(name: str, wanted: str, tables: list[dict[str, list[LoraEntry]]]) -> LoraEntry | None:
        for (_, fold), table in zip(_RULES, tables):
            found = table.get(wanted.casefold() if fold else wanted, [])
            hits = {entry.name: entry for entry in reversed(found)}  # a later folder's same path is shadowed
            if len(hits) == 1:
                return next(iter(hits.values()))
            if len(hits) > 1:
                candidates = tuple(sorted(hits))
                raise LoraNameError(
                    f"LoRA name {name!r} is ambiguous: it matches {len(candidates)} files: "
                    + ", ".join(repr(c) for c in candidates) + ". Write one of these in the tag instead.",
                    name=name, candidates=candidates)
        return None

    def _unknown(self, name: str, wanted: str, entries: list[LoraEntry]) -> LoraNameError:
        known: dict[str, str] = {}
        for entry in entries:
            for key in (entry.name, entry.stem, *entry.aliases):
                known.setdefault(key.casefold(), entry.name)
        close = difflib.get_close_matches(wanted.casefold(), list(known), n=8, cutoff=0.5)
        suggestions = tuple(dict.fromkeys(known[key] for key in close))[:5]
        folders = ", ".join(f"'{folder}'" for folder in self.folders) or "(no folders configured)"
        hint = (" Closest names: " + ", ".join(repr(s) for s in suggestions) + "." if suggestions
                else f" {len(entries)} LoRA files are there.")
        hint += "".join(f" {text}" for text in self.warnings if text.startswith("cannot read the LoRA folder"))
        missing = [folder for folder in self.folders if not folder.is_dir()]
        if missing:  # a mistyped folder setting, not a mistyped name
            hint += (" Not a folder (missing?): " + ", ".join(f"'{folder}'" for folder in missing)
                     + "; check the LoRA folder setting.")
        return LoraNameError(f"No LoRA named {name!r} in {folders}.{hint}", name=name, candidates=suggestions)

    # -- metadata and loading -----------------------------------------------------------------
    def entry(self, entry_or_name: LoraEntry | str) -> LoraEntry:
        return entry_or_name if isinstance(entry_or_name, LoraEntry) else self.resolve(entry_or_name)

    def info(self, entry_or_name: LoraEntry | str) -> LoraInfo:
        """The entry's :class:`LoraInfo`, re-read when the file or one of its sidecars changes."""
        entry = self.entry(entry_or_name)
        if entry.refused:
            raise LoraFileError(entry.refused, path=entry.path)
        stamp = [entry.path]
        for suffix in (".json", ".civitai.info", ".preview.png", ".png"):
            try:
                stat = sidecar(entry.path, suffix).stat()
                stamp.append((suffix, stat.st_mtime_ns, stat.st_size))
            except OSError:
                pass
        try:
            stat = entry.path.stat()
        except OSError as error:  # deleted or moved since the folder scan
            raise LoraFileError(f"LoRA file '{entry.path}' cannot be read: {error.strerror or error}; "
                                "it may have been moved or deleted since the folders were scanned.",
                                path=entry.path) from error
        key = (*stamp, file_stamp(stat))
        with self._lock:
            if key not in self._infos:
                self._infos = {k: v for k, v in self._infos.items() if k[0] != entry.path}
                self._infos[key] = read_info(entry.path, roots=self.roots)
            return self._infos[key]

    def touching(self, plan: Plan, *, rescan: bool = True) -> Plan:
        """``plan`` whose strength warning counts, for each LoRA, only the components its file has keys for,
        as its header says (``LoraInfo.touches``, cached with the entry): what every plan shown before a run
        (Plan view, ``explain``) uses. A name that does not resolve, or a file whose key names do not say,
        counts on every component. ``rescan=False``: names are looked up in the last scan (per keystroke)."""
        if not plan.stack_warnings:  # fewer components can only lower the sums: no file needs reading
            return plan
        touched = {lora.name: self.touched_components(lora.name, rescan=rescan) for lora in plan.loras}
        return plan.touching(lambda lora: touched[lora.name])

    def touched_components(self, name: str, *, rescan: bool = True) -> tuple[str, ...]:
        """The plan components the file ``name`` resolves to has keys for (every one when unknown)."""
        try:
            kinds = self.info(self.resolve(name, rescan=rescan)).touches
        except LoraError:
            kinds = None
        return COMPONENTS if kinds is None else tuple(c for kind in kinds for c in KIND_COMPONENTS[kind])

    def load(self, entry_or_name: LoraEntry | str, tree):
        """The LoRA mapped onto ``tree`` (a :class:`~lora_syntax.keymaps.tree.ModelTree`), from the cache
        when the file is unchanged on disk."""
        return self.cache.get_or_load(self._loadable(entry_or_name), tree)

    def load_many(self, entries_or_names: Sequence[LoraEntry | str], tree) -> list:
        """Several LoRAs mapped onto ``tree`` (see :meth:`load`); files not in the cache are all opened
        first, so one file's values are checked while another's keys are mapped."""
        return self.cache.get_or_load_many([self._loadable(item) for item in entries_or_names], tree)

    def _loadable(self, entry_or_name: LoraEntry | str) -> LoraEntry:
        """The entry, or its refusal (a pickle, an unreadable file) as a :class:`LoraFileError`."""
        entry = self.entry(entry_or_name)
        if entry.refused:
            raise LoraFileError(entry.refused, path=entry.path)
        return entry
