"""Every FLUX.1 key dialect, for the registry in :mod:`lora_syntax.formats` (appended after the general
kohya/PEFT dialects, so a FLUX layout wins a tie against them)."""

from __future__ import annotations

from . import flux_aitoolkit, flux_bfl, flux_diffusers, flux_kohya, flux_onetrainer, flux_xlabs

FLUX_DIALECTS = (
    flux_kohya.DIALECT,
    flux_onetrainer.DIALECT,
    flux_diffusers.DIALECT,
    flux_aitoolkit.DIALECT,
    flux_bfl.DIALECT,
    flux_xlabs.DIALECT,
)
