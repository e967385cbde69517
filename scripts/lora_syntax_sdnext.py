"""SD.Next glue: ``<lora:…>``/``<lyco:…>`` tags run on lora-syntax's engine, per step, restored after every run.

The only file that imports SD.Next's ``modules`` for generation (the Networks tab is in
``lora_syntax_script.py``). Outside SD.Next it finds no host and does nothing. What it does there:

- before each generation, registers our extra network under ``lora`` and ``lyco`` (SD.Next clears the registry
  after loading scripts, so import-time registration would be lost), or gives them back to the built-in when
  the setting is off;
- when SD.Next activates extra networks (before it encodes the prompt), asks the built-in to drop whatever it
  fused, starts our run and wraps ``callback_on_step_end`` through ``p.task_args`` (SD.Next's own callback runs
  first: interrupt, pause, preview, prompt scheduling);
- restores in ``on_after_process`` (SD.Next calls it in a ``finally``: also on error, interrupt and skip).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:  # present only inside SD.Next
    from modules import extra_networks, script_callbacks, shared
    from modules.logger import log
except ImportError:
    extra_networks = script_callbacks = shared = log = None

from lora_syntax.errors import LoraError  # noqa: E402
from lora_syntax.hosts import webui  # noqa: E402


HASHES_OPTION = "lora_add_hashes_to_infotext"   # SD.Next's "LoRA add hash info to metadata" (off by default)
HASHES_FIELD = "LoRA hashes"
SHORT_HASH_DIGITS = 8                           # SD.Next's NetworkOnDisk.shorthash


def enabled() -> bool:
    """Our setting: on unless the user turned it off (then the built-in handles the tags)."""
    return bool(shared.opts.data.get(webui.SETTING_KEY, True))


class Glue:
    """The extension's state in the running SD.Next: the library, the current run, the last run's record."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.library: Any = None
        self.sdrun: Any = None       # lora_syntax.hosts.sdnext.SdnextRun of the generation in progress
        self.key: tuple[int, str] | None = None   # (generation, tags) already handled: SD.Next calls twice
        self.record: webui.RunRecord | None = None

    def folders(self) -> list[Path]:
        return webui.lora_folders(shared.cmd_opts, shared.models_path)

    def get_library(self) -> Any:
        self.library = webui.library_for(self.library, self.folders())
        return self.library

    def report(self, p: Any, message: str, error: bool = True) -> None:
        """Where SD.Next puts LoRA problems: its log (the generation goes on); errors also go into the
        infotext (``LoRA errors``, in the API's ``info``) and our last-run report."""
        (log.error if error else log.warning)(f"lora-syntax: {message}")
        if self.record is not None:
            (self.record.errors if error else self.record.warnings).append(message)
        if error:
            webui.add_error_field(p.extra_generation_params, message)

    # -- generation ------------------------------------------------------------------------------
    def activate(self, p: Any) -> None:
        """SD.Next activates extra networks: start (or keep) our run for the tags it parsed."""
        with self.lock:
            text = webui.network_text(p.network_data)
            if self.key == (id(p), text) and (self.sdrun is None or self.sdrun.run.active):
                return
            self.finish(p)
            self.key = (id(p), text)
            _release_builtin(p)
            self.record = webui.RunRecord(prompt=text, status="running")
            negatives, warning = webui.strip_negatives(getattr(p, "negative_prompts", None) or [])
            if warning:
                p.negative_prompts = negatives
                self.report(p, warning, error=False)
            if not text:
                return
            try:
                self._start(p, text)
            except LoraError as error:
                self.report(p, str(error))
                self.record.status = "failed"

    def _start(self, p: Any, text: str) -> None:
        from lora_syntax.hosts.diffusers import session_for
        from lora_syntax.hosts.sdnext import SdnextRun

        session = session_for(shared.sd_model, library=self.get_library())
        if session.active is not None:   # a generation that never reached its end (should not happen)
            session.active.end()
        run, messages = webui.start_good_tags(session, text, int(p.steps))
        for message in messages:
            self.report(p, message)
        if run is None:
            self.record.status = "failed"
            return
        self.sdrun = SdnextRun(run, _make_encoder(p), expected_passes=1 + int(bool(getattr(p, "enable_hr", 0))))
        _wrap_callback(p, self.sdrun)
        p.extra_generation_params["LoRA networks"] = ", ".join(lora.name for lora in run.plan.loras)
        if shared.opts.data.get(HASHES_OPTION, False):
            hashes = self.lora_hashes([lora.name for lora in run.plan.loras])
            if hashes:
                p.extra_generation_params[HASHES_FIELD] = ", ".join(hashes)
        p.extra_generation_params.update(webui.infotext_fields(run.plan, quoted=False))
        for warning in run.warnings:
            self.report(p, warning, error=False)
        self.record.run_started(run)

    def lora_hashes(self, names: list[str]) -> list[str]:
        """``LoRA hashes`` as SD.Next's built-in writes them: the first 8 hex digits of each file's addnet hash
        (A1111's, :func:`lora_syntax.metadata.short_hash`), no names, a file that cannot be hashed left out."""
        from lora_syntax.metadata import short_hash

        hashes = []
        for name in names:
            try:
                hashes.append(short_hash(self.get_library().resolve(name, rescan=False).path)[:SHORT_HASH_DIGITS])
            except (LoraError, OSError) as error:
                log.warning(f"lora-syntax: no hash for LoRA '{name}' in the infotext: {error}")
        return hashes

    def finish(self, p: Any | None = None) -> None:
        """End the run: every original weight back (success, error, interrupt, skip)."""
        with self.lock:
            sdrun, self.sdrun, self.key = self.sdrun, None, None
            timings = sdrun.run.end() if sdrun is not None else None
            webui.finish_record(self.record, sdrun and sdrun.run, timings,
                                interrupted=shared.state.interrupted, skipped=shared.state.skipped)


GLUE = Glue()


def _builtin() -> Any:
    try:
        from modules.lora import lora_common
    except ImportError:
        return None
    return getattr(lora_common, "extra_network_lora", None)


def _release_builtin(p: Any) -> None:
    """Let the built-in drop (unfuse) what an earlier generation of its own left in the model.

    Called the way ``extra_networks.activate_filtered`` calls it, with no tags: the built-in keys its state by
    that text-encoder filter and would see nothing to change under another."""
    builtin = _builtin()
    if builtin is None:
        return
    apply_te = getattr(p, "lora_apply_te", None)
    if apply_te is None:
        apply_te = shared.opts.lora_apply_te
    builtin.activate(p, [], include=[], exclude=[] if apply_te else ["text_encoder", "text_encoder_2",
                                                                      "text_encoder_3"])


def _wrap_callback(p: Any, sdrun: Any) -> None:
    """Ours runs after SD.Next's callback (or whatever another extension put in ``p.task_args``)."""
    from modules.processing_callbacks import diffusers_callback
    previous = p.task_args.get("callback_on_step_end") or diffusers_callback
    previous = getattr(previous, "lora_syntax_previous", previous)   # ours from an earlier batch of this p

    def callback(pipe: Any, step: int = 0, timestep: Any = 0, kwargs: dict | None = None) -> dict:
        kwargs = previous(pipe, step, timestep, kwargs if kwargs is not None else {})
        return sdrun.on_step_end(pipe, step, kwargs)

    callback.lora_syntax_previous = previous
    p.task_args["callback_on_step_end"] = callback


def _make_encoder(p: Any) -> Any:
    """Re-encode with SD.Next's own prompt embedder (attention syntax, scheduling), or the pipeline's."""

    def encode(pipe: Any, step: int, kwargs: dict) -> tuple[Any, bool]:
        from modules import prompt_parser_diffusers as parser
        old = parser.embedder
        cfg = kwargs["prompt_embeds"].shape[0] == 2 * len(getattr(old, "prompts", None) or p.prompts)
        if old is None:
            from lora_syntax.hosts.diffusers import reencode
            return reencode(pipe, p.prompts[0], (p.negative_prompts or [None])[0], kwargs)["prompt_embeds"], True
        new = parser.PromptEmbedder(old.prompts, old.negative_prompts, old.steps, old.clip_skip,
                                    _SegmentP(p, step), prompt_attention=old.prompt_attention_value)
        parser.embedder = new     # SD.Next's callback hands out these from now on (its scheduling still works)
        positive = new("prompt_embeds", step - 1)
        negative = new("negative_prompt_embeds", step - 1) if cfg else None
        from lora_syntax.hosts.sdnext import guidance_embeds
        return guidance_embeds(negative, positive, cfg), False

    return encode


class _SegmentP:
    """``p`` as SD.Next's text-encoder cache sees it, keyed by our text-encoder weights of ``step``."""

    def __init__(self, p: Any, step: int) -> None:
        self._p = p
        marker = extra_networks.ExtraNetworkParams([f"lora-syntax-te-step-{step}"])
        self.network_data = {**(p.network_data or {}), "lora_syntax": [marker]}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._p, name)


class LoraSyntaxNetwork:
    """What SD.Next's extra-network registry calls for ``lora`` and ``lyco``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def activate(self, p: Any, params_list: list, step: int = 0, include: Any = None, exclude: Any = None) -> None:
        GLUE.activate(p)   # both kinds read all of p.network_data: a second call with the same tags does nothing

    def deactivate(self, p: Any, force: bool = False) -> None:
        GLUE.finish(p)


NETWORKS = {kind: LoraSyntaxNetwork(kind) for kind in webui.TAG_KINDS}


def before_process(p: Any) -> None:
    registry = extra_networks.extra_network_registry
    if enabled():
        registry.update(NETWORKS)
        if GLUE.record is not None and GLUE.record.status == "off":
            GLUE.record = None
        return
    builtin = _builtin()
    if registry.get("lora") is NETWORKS["lora"] and builtin is not None:
        registry["lora"] = builtin
    if registry.get("lyco") is NETWORKS["lyco"]:
        del registry["lyco"]
    GLUE.record = webui.RunRecord(status="off")


def after_process(p: Any) -> None:
    GLUE.finish(p)


def add_setting() -> None:
    shared.opts.add_option(webui.SETTING_KEY, shared.OptionInfo(True, webui.SETTING_LABEL,
                                                                section=webui.SETTING_SECTION))


def add_routes(_: Any, app: Any) -> None:
    def loras() -> list[dict[str, Any]]:
        return webui.library_payload(GLUE.get_library(), webui.model_architecture(shared))

    def last_run() -> dict[str, Any]:
        return webui.last_run_payload(GLUE.record)

    app.add_api_route(f"{webui.ROUTE_PREFIX}/loras", loras, methods=["GET"])
    app.add_api_route(f"{webui.ROUTE_PREFIX}/last-run", last_run, methods=["GET"])


if script_callbacks is not None and hasattr(shared, "sd_loaded"):   # SD.Next (A1111 has its own glue)
    script_callbacks.on_before_process(before_process)
    script_callbacks.on_after_process(after_process)
    script_callbacks.on_ui_settings(add_setting)
    script_callbacks.on_app_started(add_routes)
