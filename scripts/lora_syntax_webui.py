"""A1111 / Forge glue: ``<lora:…>``/``<lyco:…>`` tags run on lora-syntax's engine, per step, restored always.

The only file importing A1111's or Forge's ``modules`` for generation (the Networks tab is in
``lora_syntax_script.py``); elsewhere (SD.Next, tests, plain Python) it finds no such host and does nothing.
Everything that needs no host code is in :mod:`lora_syntax.hosts.a1111`. What it does in the host:

- at each generation start (a wrapper around ``processing.process_images_inner``, whose ``finally`` also
  restores after errors, interrupts and skips) it registers our extra network under ``lora`` and ``lyco``,
  or gives both back to the built-in when the setting is off;
- ``activate`` (before the host encodes the prompt) tells the built-in it has nothing (so it neither applies
  the tags nor later copies its backups over our weights), refuses quantized/fp8 storage (the built-in then
  takes the tags), starts our run on the host's own modules and writes the infotext;
- ``on_cfg_denoiser`` writes each step's weights before the model runs and swaps the conds after a
  text-encoder change point; ``deactivate`` and the wrapper's ``finally`` restore; a checkpoint load restores
  first (the session's state-dict guard and ``on_model_loaded``).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:  # A1111 >= 1.6 and Forge; SD.Next has no sd_samplers_cfg_denoiser
    from modules import extra_networks, processing, prompt_parser, script_callbacks, sd_samplers_cfg_denoiser, shared
except ImportError:
    extra_networks = processing = prompt_parser = script_callbacks = sd_samplers_cfg_denoiser = shared = None

from lora_syntax.errors import LoraError  # noqa: E402
from lora_syntax.hosts import a1111, webui  # noqa: E402

SESSION_ATTRIBUTE = "_lora_syntax_session"
UNSUPPORTED = ("lora-syntax applies tags to SD1.5, SD2 and SDXL models in this web UI; the loaded model ({model}) "
               "is not one of them, so the built-in LoRA handler applies the tags.")
LOG_PREFIX = "[lora-syntax]"


def enabled() -> bool:
    return bool(shared.opts.data.get(webui.SETTING_KEY, True))


def text_encoder(embedder: Any) -> Any:
    """An A1111/Forge text-encoder wrapper -> our component (transformers CLIP, or OpenCLIP with fused q/k/v)."""
    from lora_syntax.keymaps.view import openclip_text, same_names

    embedder = getattr(embedder, "wrapped", embedder)          # A1111's prompt-weighting hijack
    model = getattr(embedder, "model", None)
    if model is not None and hasattr(getattr(model, "transformer", None), "resblocks"):
        return openclip_text(model)                             # A1111 SD2 / SDXL OpenCLIP
    return same_names(embedder.transformer)                     # transformers CLIPTextModel


def host_components(sd_model: Any) -> dict[str, Any]:
    """The model's UNet and text encoders under diffusers names (Forge's ``forge_objects`` or A1111's LDM model)."""
    from lora_syntax.keymaps.view import ldm_unet

    forge = getattr(sd_model, "forge_objects", None)
    if forge is not None:
        clip = forge.clip.cond_stage_model
        encoders = [getattr(clip, name, None) for name in ("clip_l", "clip_h", "clip_g")]
        unet = forge.unet.model.diffusion_model
    else:
        conditioner = getattr(sd_model, "conditioner", None)     # SDXL: CLIP-L, OpenCLIP-G, size embedders
        encoders = list(conditioner.embedders) if conditioner is not None else [sd_model.cond_stage_model]
        encoders = [e for e in encoders if hasattr(getattr(e, "wrapped", e), "transformer")
                    or hasattr(getattr(getattr(e, "wrapped", e), "model", None), "transformer")]
        unet = sd_model.model.diffusion_model
    found = {"unet": ldm_unet(unet)}
    for name, encoder in zip(("text_encoder", "text_encoder_2"), [e for e in encoders if e is not None]):
        found[name] = text_encoder(encoder)
    return found


def architecture(sd_model: Any, unet: Any) -> str:
    from lora_syntax.keymaps.view import unet_architecture

    for flag, name in (("is_sdxl", "sdxl"), ("is_sd2", "sd2"), ("is_sd1", "sd15")):
        if getattr(sd_model, flag, False):
            return name
    return unet_architecture(unet) or "sd15"


def forge_storage(sd_model: Any) -> str | None:
    """Forge's own storage flag (fp8/nf4/gguf checkpoints), read before any weight is looked at."""
    forge = getattr(sd_model, "forge_objects", None)
    dtype = getattr(getattr(getattr(forge, "unet", None), "model", None), "storage_dtype", None)
    if dtype is None or dtype in a1111.EXACT_DTYPES:
        return None
    return a1111.REFUSAL.format(what="UNet", how=str(dtype).removeprefix("torch."))


class Glue:
    """The extension's state in the running host: sessions per model, the run in progress, the last report."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.library: Any = None
        self.run: Any = None           # EngineRun in progress
        self.hook: a1111.StepHook | None = None
        self.owner: int | None = None  # id(p) of the generation the run belongs to
        self.source = ""
        self.hr_pass = False
        self.record: webui.RunRecord | None = None
        self.network = LoraSyntaxNetwork(self) if extra_networks is not None else None
        self.builtin: Any = None

    # -- plumbing -------------------------------------------------------------------------------
    def get_library(self) -> Any:
        self.library = webui.library_for(self.library, webui.lora_folders(shared.cmd_opts, shared.models_path))
        return self.library

    def session(self, sd_model: Any) -> Any:
        from lora_syntax.keymaps.view import component_tree
        from lora_syntax.session import EngineSession

        session = getattr(sd_model, SESSION_ATTRIBUTE, None)
        library = self.get_library()
        if session is None or session.library is not library:
            components = host_components(sd_model)
            tree = component_tree(architecture(sd_model, components["unet"]), components)
            session = EngineSession(components, tree, library)
            object.__setattr__(sd_model, SESSION_ATTRIBUTE, session)
        return session

    def report(self, p: Any, message: str, error: bool = True) -> None:
        """A problem goes to the console and the generation's comments (shown under the image), never a traceback."""
        print(f"{LOG_PREFIX} {message}", file=sys.stderr)
        if p is not None and hasattr(p, "comment"):
            p.comment(f"lora-syntax: {message}")
        if p is not None and error:
            webui.add_error_field(p.extra_generation_params, message)
        if self.record is not None:
            (self.record.errors if error else self.record.warnings).append(message)

    def register(self) -> None:
        """Our network under ``lora``/``lyco`` (setting on), or the built-in back (setting off)."""
        registry, aliases = extra_networks.extra_network_registry, extra_networks.extra_network_aliases
        current = registry.get("lora")
        if current is not None and current is not self.network:
            self.builtin = current
        if enabled():
            for kind in webui.TAG_KINDS:
                registry[kind] = self.network
                aliases.pop(kind, None)
        elif self.builtin is not None:
            registry["lora"] = self.builtin
            registry.pop("lyco", None)
            aliases["lyco"] = self.builtin

    def builtin_has_nothing(self) -> None:
        """Make the built-in drop whatever it applied, so its restore never runs over our weights."""
        networks = sys.modules.get("networks")
        if networks is None or not hasattr(networks, "load_networks"):
            return
        networks.load_networks([], [], [], [])
        model = shared.sd_model
        original = getattr(model, "forge_objects_original", None)
        if original is not None:     # Forge: its LoraLoader puts its backup Parameters back now, not mid-run
            for patcher in (original.unet, getattr(original.clip, "patcher", None)):
                if hasattr(patcher, "refresh_loras"):
                    patcher.refresh_loras()
            return
        for module in getattr(model, "modules", lambda: [])():    # A1111: restore its backups now
            if getattr(module, "network_current_names", ()):
                networks.network_restore_weights_from_backup(module)
                module.network_current_names = ()

    # -- generation -----------------------------------------------------------------------------
    def activate(self, p: Any, params_list: list[Any]) -> None:
        with self.lock:
            if self.owner is not None and self.owner != id(p):
                self.finish("done")                       # a stale run of an earlier generation
            self.builtin_has_nothing()
            if not params_list:      # this batch (or pass) has no tags: nothing of ours may stay applied
                self.finish("done")
                return
            source = webui.network_text({"lora": params_list})
            if self.run is not None and source == self.source:
                if getattr(p, "is_hr_pass", False):
                    if not self.hr_pass:
                        self.hr_pass = True
                        self.hook.new_pass(p.hr_second_pass_steps or p.steps)
                elif self.hr_pass or self.hook.passes:   # the next batch: step-1 weights before its conds
                    self.hr_pass = False
                    self.hook.new_pass(first_pass_steps(p))
                return
            self.finish("done")
            self.start(p, source, params_list)

    def start(self, p: Any, source: str, params_list: list[Any]) -> None:
        self.record = webui.RunRecord(prompt=source, status="running")
        session = None
        refusal = forge_storage(shared.sd_model)
        if refusal is None:
            try:
                session = self.session(shared.sd_model)
            except (ValueError, AttributeError, TypeError):   # FLUX, SD3...: no LDM UNet / CLIP where we look
                refusal = UNSUPPORTED.format(model=type(shared.sd_model).__name__)
            else:
                refusal = a1111.storage_refusal(session.components)
        if refusal:
            self.report(p, refusal)
            self.record.status = "off"
            if self.builtin is not None:
                self.builtin.activate(p, params_list)
            return
        steps = (p.hr_second_pass_steps or p.steps) if getattr(p, "is_hr_pass", False) else first_pass_steps(p)
        run, messages = webui.start_good_tags(session, source, steps)   # a broken tag is left out, named
        for message in messages:
            self.report(p, message)
        if run is None:
            self.record.status = "failed" if messages else "done"
            return
        self.run, self.owner, self.source, self.hr_pass = run, id(p), source, bool(getattr(p, "is_hr_pass", False))
        self.hook = a1111.StepHook(run, lambda: encode(p), select)
        for warning in run.warnings:
            self.report(p, warning, error=False)
        self.record.steps = [steps]
        self.record.run_started(run)
        p.extra_generation_params.update(webui.infotext_fields(run.plan, quoted=False))   # the host quotes
        self.lora_hashes(p, [lora.name for lora in run.plan.loras])

    def lora_hashes(self, p: Any, names: list[str]) -> None:
        """``Lora hashes`` as the built-in writes it (its own hash cache), so hosts and sites still read it."""
        networks = sys.modules.get("networks")
        if networks is None or not shared.opts.data.get("lora_add_hashes_to_infotext", True):
            return
        hashes = {}
        for name in names:
            entry = networks.available_network_aliases.get(name)
            if entry is not None:
                entry.read_hash()
                if entry.shorthash:
                    hashes[name.translate(str.maketrans("", "", ":,"))] = entry.shorthash
        if hashes:
            p.extra_generation_params["Lora hashes"] = ", ".join(f"{k}: {v}" for k, v in hashes.items())

    def denoiser(self, params: Any) -> None:
        with self.lock:
            if self.hook is None:
                return
            d = params.denoiser
            if not self.run.active:      # a checkpoint load restored the weights mid-run (state-dict guard)
                self.report(getattr(d, "p", None), "the model's weights were reloaded during this generation; "
                            "its LoRA tags are not applied to the remaining steps.")
                self.finish("failed")
                return
            try:
                swap = self.hook.before_call(d, d.step, d.steps, d.total_steps)
            except LoraError as err:
                self.report(getattr(d, "p", None), str(err))
                self.finish("failed")
                return
            if swap.replaced:
                params.text_cond = swap.cond
                if params.text_uncond is not None and swap.uncond is not None:
                    params.text_uncond = swap.uncond

    def finish(self, status: str) -> None:
        """End the run: every original tensor back (idempotent)."""
        with self.lock:
            run, self.run, self.hook, self.owner, self.source = self.run, None, None, None, ""
            if run is None:
                return
            timings = run.end()
            if self.record is not None:
                self.record.status = status
            webui.finish_record(self.record, run, timings)


def first_pass_steps(p: Any) -> int:
    """The steps the first sampling pass of ``p`` runs (img2img: a part of ``p.steps``)."""
    img2img = isinstance(p, processing.StableDiffusionProcessingImg2Img)
    return a1111.pass_steps(p.steps, denoising=p.denoising_strength if img2img else None,
                            fix_steps=bool(shared.opts.data.get("img2img_fix_steps", False)))


class LoraSyntaxNetwork(extra_networks.ExtraNetwork if extra_networks is not None else object):
    """Our handler for ``<lora:…>`` and ``<lyco:…>`` (one object under both names: one call per activation)."""

    def __init__(self, glue: Glue) -> None:
        super().__init__("lora")
        self.glue = glue

    def activate(self, p: Any, params_list: list[Any]) -> None:
        self.glue.activate(p, params_list)

    def deactivate(self, p: Any) -> None:
        self.glue.finish("interrupted" if shared.state.interrupted else "done")


def encode(p: Any) -> tuple[Any, Any]:
    """The current pass's prompts encoded by the host as ``setup_conds``/``calculate_hr_conds`` do, never
    through its cond cache (which keeps the step-1 conds for the next generation)."""
    from modules import sd_samplers

    hr = bool(getattr(p, "is_hr_pass", False))
    if hr:
        prompts, negatives, size = p.hr_prompts, p.hr_negative_prompts, (p.hr_upscale_to_x, p.hr_upscale_to_y)
        config = sd_samplers.find_sampler_config(p.hr_sampler_name or p.sampler_name)
        steps = p.hr_second_pass_steps or p.steps
        hires, cfg = (config.total_steps(steps) if config else steps), getattr(p, "hr_cfg", p.cfg_scale)
        extra = {"distilled_cfg_scale": p.hr_distilled_cfg} if hasattr(p, "hr_distilled_cfg") else {}
    else:
        prompts, negatives, size, hires, cfg = p.prompts, p.negative_prompts, (p.width, p.height), None, p.cfg_scale
        extra = {"distilled_cfg_scale": p.distilled_cfg_scale} if hasattr(p, "distilled_cfg_scale") else {}
    steps = getattr(p, "firstpass_steps", None) or p.steps
    old = bool(shared.opts.data.get("use_old_scheduling", False))
    c_text = prompt_parser.SdConditioning(prompts, width=size[0], height=size[1], **extra)
    c = prompt_parser.get_multicond_learned_conditioning(shared.sd_model, c_text, steps, hires, old)
    if cfg == 1:
        return c, None
    uc_text = prompt_parser.SdConditioning(negatives, width=size[0], height=size[1], is_negative_prompt=True, **extra)
    return c, prompt_parser.get_learned_conditioning(shared.sd_model, uc_text, steps, hires, old)


def select(encoded: tuple[Any, Any], call: int) -> tuple[Any, Any]:
    """The conds of denoiser call ``call`` (prompt editing resolved by the host's own functions)."""
    c, uc = encoded
    _, cond = prompt_parser.reconstruct_multicond_batch(c, call)
    return cond, (prompt_parser.reconstruct_cond_batch(uc, call) if uc is not None else None)


GLUE: Glue | None = None


def install() -> Glue:
    """Hook the host once: the setting, the generation wrapper, the denoiser and model-load callbacks."""
    global GLUE
    if GLUE is not None:
        return GLUE
    glue = GLUE = Glue()
    shared.options_templates.update(shared.options_section(webui.SETTING_SECTION, {
        webui.SETTING_KEY: shared.OptionInfo(True, webui.SETTING_LABEL)}))
    inner = processing.process_images_inner

    def process_images_inner(p: Any) -> Any:
        with glue.lock:
            glue.register()
        status = "failed"
        try:
            result = inner(p)
            status = "interrupted" if shared.state.interrupted else "skipped" if shared.state.skipped else "done"
            return result
        finally:
            glue.finish(status)

    process_images_inner.lora_syntax_inner = inner
    processing.process_images_inner = process_images_inner
    script_callbacks.on_cfg_denoiser(glue.denoiser)
    script_callbacks.on_model_loaded(lambda _model: glue.finish("done"))
    script_callbacks.on_infotext_pasted(infotext_pasted)
    return glue


def infotext_pasted(_infotext: str, params: dict[str, Any]) -> None:
    """Paste-back: an image's ``LoRA weights`` field puts back the tags its prompt no longer has."""
    value = params.get(webui.INFOTEXT_FIELD)
    if value:
        params["Prompt"] = webui.paste_tags(params.get("Prompt", ""), value)


def last_run() -> dict[str, Any]:
    return webui.last_run_payload(GLUE.record if GLUE is not None else None)


def routes(_blocks: Any, app: Any) -> None:
    """``GET /lora-syntax/v1/last-run``: the last generation's plan and engine report (tests, scripts)."""
    app.add_api_route(f"{webui.ROUTE_PREFIX}/last-run", last_run, methods=["GET"])


if sd_samplers_cfg_denoiser is not None and getattr(script_callbacks, "on_cfg_denoiser", None) is not None:
    install()
    script_callbacks.on_app_started(routes)
