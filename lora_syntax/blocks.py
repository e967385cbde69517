"""Block ids, block groups and lora-block-weight (``lbw=``) vectors and presets.

Block ids follow the lora-block-weight extension: ``BASE`` (text encoders), ``IN00``.. ``M00``
``OUT00``.. for UNets, and for FLUX ``EMBED``, ``D00``..``D18`` (double blocks), ``S00``..``S37``
(single blocks), ``FINAL``. An lbw vector lists one multiplier per id of ``LBW_BLOCKS[form]``;
ids a (short) vector does not list keep multiplier 1.
"""

from __future__ import annotations

from collections.abc import Iterable

ARCHITECTURES = ("sd15", "sd2", "sdxl", "flux")


def _ids(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i:02}" for i in range(count))


SD15_BLOCKS = ("BASE", *_ids("IN", 12), "M00", *_ids("OUT", 12))
SDXL_BLOCKS = ("BASE", *_ids("IN", 9), "M00", *_ids("OUT", 9))
FLUX_BLOCKS = ("BASE", "EMBED", *_ids("D", 19), *_ids("S", 38), "FINAL")

#: Every positional lbw form: name -> the block id each position sets.
LBW_FORMS: dict[str, tuple[str, ...]] = {
    "sd15-17": ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
                *(f"OUT{i:02}" for i in range(3, 12))),
    "sd15-26": SD15_BLOCKS,
    "sdxl-12": ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", *_ids("OUT", 6)),
    "sdxl-20": SDXL_BLOCKS,
    "flux-58": ("BASE", *_ids("D", 19), *_ids("S", 38)),
}
#: Forms accepted per architecture (sd2 shares the SD1.5 UNet layout).
ARCH_FORMS: dict[str, tuple[str, ...]] = {
    "sd15": ("sd15-17", "sd15-26"),
    "sd2": ("sd15-17", "sd15-26"),
    "sdxl": ("sdxl-12", "sdxl-20"),
    "flux": ("flux-58",),
}
#: The positional order of lbw vectors per architecture, the short (LoRA) form first.
LBW_BLOCKS: dict[str, tuple[str, ...]] = {
    "sd15": LBW_FORMS["sd15-17"], "sd15-full": LBW_FORMS["sd15-26"],
    "sd2": LBW_FORMS["sd15-17"], "sd2-full": LBW_FORMS["sd15-26"],
    "sdxl": LBW_FORMS["sdxl-12"], "sdxl-full": LBW_FORMS["sdxl-20"],
    "flux": LBW_FORMS["flux-58"],
}
#: Vector length -> (architecture, form) used when the plan is built with no architecture.
FORM_BY_LENGTH: dict[int, tuple[str, str]] = {
    17: ("sd15", "sd15-17"), 26: ("sd15", "sd15-26"),
    12: ("sdxl", "sdxl-12"), 20: ("sdxl", "sdxl-20"), 58: ("flux", "flux-58"),
}
ARCH_BLOCKS: dict[str, tuple[str, ...]] = {
    "sd15": SD15_BLOCKS, "sd2": SD15_BLOCKS, "sdxl": SDXL_BLOCKS, "flux": FLUX_BLOCKS,
}


def block_group(block_id: str) -> str:
    """``"te"``, ``"in"``, ``"mid"`` or ``"out"`` for a block id (what ``in=``/``mid=``/``out=`` address)."""
    if block_id == "BASE":
        return "te"
    if block_id.startswith("IN") or block_id.startswith("D") or block_id == "EMBED":
        return "in"
    if block_id == "M00" or block_id.startswith("S"):
        return "mid"
    if block_id.startswith("OUT") or block_id == "FINAL":
        return "out"
    raise ValueError(f"unknown block id {block_id!r}; expected BASE, INnn, M00, OUTnn, EMBED, Dnn, Snn or FINAL")


# Presets are named sets of blocks; each set is a "depth" class of the architecture. SD1.5's
# classes reproduce the lora-block-weight presets exactly (e.g. OUTD = BASE + OUT03..OUT06).
_DEPTH: dict[str, dict[str, tuple[str, ...]]] = {
    "sd15": {
        "in_shallow": _ids("IN", 5), "in_deep": tuple(f"IN{i:02}" for i in range(5, 12)),
        "mid": ("M00",), "out_deep": _ids("OUT", 7),
        "out_shallow": tuple(f"OUT{i:02}" for i in range(7, 12)),
    },
    "sdxl": {
        "in_shallow": _ids("IN", 5), "in_deep": tuple(f"IN{i:02}" for i in range(5, 9)),
        "mid": ("M00",), "out_deep": _ids("OUT", 4),
        "out_shallow": tuple(f"OUT{i:02}" for i in range(4, 9)),
    },
    "flux": {
        "in_shallow": ("EMBED", *_ids("D", 10)), "in_deep": tuple(f"D{i:02}" for i in range(10, 19)),
        "mid": _ids("S", 19), "out_deep": tuple(f"S{i:02}" for i in range(19, 38)),
        "out_shallow": ("FINAL",),
    },
}
_DEPTH["sd2"] = _DEPTH["sd15"]

#: Preset name -> the depth classes set to 1 (BASE is 1 in every preset but NONE). ALL0.5 is special.
PRESET_CLASSES: dict[str, tuple[str, ...]] = {
    "NONE": (),
    "ALL": ("in_shallow", "in_deep", "mid", "out_deep", "out_shallow"),
    "INS": ("in_shallow",),
    "IND": ("in_deep",),
    "INALL": ("in_shallow", "in_deep"),
    "MIDD": ("in_deep", "mid", "out_deep"),
    "OUTD": ("out_deep",),
    "OUTS": ("out_shallow",),
    "OUTALL": ("out_deep", "out_shallow"),
    "ALL0.5": (),
}
PRESETS = tuple(PRESET_CLASSES)


def preset_multipliers(preset: str, architecture: str) -> dict[str, float]:
    """Multiplier of every block of ``architecture`` under ``preset`` (a name of :data:`PRESETS`)."""
    name = preset.upper()
    blocks = ARCH_BLOCKS[architecture]
    if name == "ALL0.5":
        return {block: 0.5 for block in blocks}
    on = {b for cls in PRESET_CLASSES[name] for b in _DEPTH[architecture][cls]}
    if name != "NONE":
        on.add("BASE")
    return {block: (1.0 if block in on else 0.0) for block in blocks}


def vector_multipliers(values: Iterable[float], form: str) -> dict[str, float]:
    """Block id -> multiplier for a positional vector in ``form`` (a key of :data:`LBW_FORMS`)."""
    return dict(zip(LBW_FORMS[form], values))


def forms_for(length: int, architecture: str | None) -> str | None:
    """The lbw form a vector of ``length`` values takes on ``architecture`` (None: guess by length)."""
    if architecture is None:
        found = FORM_BY_LENGTH.get(length)
        return found[1] if found else None
    for form in ARCH_FORMS.get(architecture, ()):
        if len(LBW_FORMS[form]) == length:
            return form
    return None


def guess_architecture(block_id: str) -> str:
    """The architecture whose presets apply to ``block_id`` when none was given (FLUX ids, else SD1.5)."""
    if block_id in ("EMBED", "FINAL") or block_id[:1] in ("D", "S"):
        return "flux"
    return "sd15"
