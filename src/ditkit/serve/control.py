"""The `control` field of a generate job: [{"kind" or "model", "image", "scale"}] -> checked controls.

A control names its control model by a kind ("edges", "boxes", "seg": the embedded
<model>-control-<kind>, as in Pipeline.generate) or by "model": an embedded control model, or
one of the folders the server was started with (ServeSettings.control_models). No other path
is opened: a request never names a file the operator did not list. The condition image is an
upload like any other (params.decode_base64 / open_image: the same limits), and the control
model is loaded and checked against the job's model (engine.control.applied_controls, in
params.job_controls) before the job is queued, so every refusal is a 4xx at once.
"""

from __future__ import annotations

from ditkit.api import Pipeline
from ditkit.core.control import check_scale, embedded_controls, read_control_info
from ditkit.core.control_maps import CONDITIONS
from ditkit.engine.control import MAX_CONTROLS, control_name
from ditkit.serve.errors import ApiError
from ditkit.serve.settings import ServeSettings


def embedded_name(pipe: Pipeline, kind: str) -> str:
    """The embedded control model a kind means for `pipe`'s model: <its name>-control-<kind>, by the
    name it was loaded as, whatever id the server gives it (engine.control.control_name)."""
    return control_name(kind, pipe.engine.source or pipe.source)


def served_controls(name: str, pipe: Pipeline, settings: ServeSettings) -> list[dict]:
    """The control models a client may use with model `name` (its /v1/models entry): the embedded
    ones named <name>-control-<kind> and the server's control_models, each whose base
    architecture is this model's; {"id", "condition", "kind"}: kind is set when {"kind": kind}
    selects it (the embedded one). A broken folder in control_models is a ValueError at startup."""
    if pipe.engine_name != "torch":  # an exported graph has no blocks for a control to join (interop.runtime)
        return []
    config = pipe.model.config.to_dict()
    out = []
    embedded = [embedded_name(pipe, kind) for kind in CONDITIONS if embedded_name(pipe, kind) in embedded_controls()]
    for control in embedded + list(settings.control_models):
        info = read_control_info(control)
        if info.base.config == config:  # the weights are checked when a job uses it (Engine.control_model)
            kind = info.condition if control == embedded_name(pipe, info.condition) else None
            out.append({"id": control, "condition": info.condition, "kind": kind})
    return out


def control_what(item: dict, k: int, pipe: Pipeline, model: str, settings: ServeSettings) -> tuple[str, str | None]:
    """Control k's control model (an embedded name or a listed folder) and its kind (None when
    given as "model"); a 400 naming the field when it is neither."""
    kind, name = item.get("kind"), item.get("model")
    param = f"control.{k}"
    if (kind is None) == (name is None):
        raise ApiError(400, f"{param} needs exactly one of kind ({', '.join(CONDITIONS)}) or model (a control "
                       "model's name)", param, "invalid_control")
    usable = ", ".join(c["id"] for c in served_controls(model, pipe, settings)) or "none"
    if kind is not None:
        if kind not in CONDITIONS:
            raise ApiError(400, f"unknown control kind {kind!r}; allowed: {', '.join(CONDITIONS)}", f"{param}.kind",
                           "invalid_control")
        wanted = embedded_name(pipe, kind)
        if wanted not in embedded_controls():
            raise ApiError(400, f"model {model!r} has no {kind} control: kind {kind!r} means the embedded control "
                           f"model {wanted}, which is not embedded; name a control model in 'model' instead "
                           f"(this server's for {model!r}: {usable})", f"{param}.kind", "control_not_found")
        return wanted, kind
    if not isinstance(name, str) or name not in embedded_controls() + list(settings.control_models):
        raise ApiError(400, f"control model {name!r} is not served: give an embedded control model or a folder the "
                       f"server was started with (control_models); this server's for {model!r}: {usable}",
                       f"{param}.model", "control_not_found")
    return name, None


def check_controls(raw, pipe: Pipeline, model: str, settings: ServeSettings) -> list[tuple[str, float, str | None]]:
    """The job's control items (dicts of JobRequest.control) -> [(control model, scale, kind or
    None)], in order; each bad field a 400 naming it. The images are decoded, and the control
    models loaded, after these checks (params.job_controls)."""
    if pipe.engine_name != "torch":
        raise ApiError(400, f"control needs the model's blocks, and this server runs {model} with the "
                       f"{pipe.engine_name} engine (one exported graph): serve it with --engine torch for control",
                       "control", "invalid_control")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "control must be a non-empty list of {kind or model, image, scale}", "control",
                       "invalid_control")
    if len(raw) > MAX_CONTROLS:
        raise ApiError(400, f"at most {MAX_CONTROLS} controls per job, got {len(raw)}", "control", "invalid_control")
    out = []
    for k, item in enumerate(raw):
        what, kind = control_what(item, k, pipe, model, settings)
        scale = item.get("scale")
        try:
            scale = check_scale(1.0 if scale is None else scale)
        except ValueError as e:
            raise ApiError(400, str(e), f"control.{k}.scale", "invalid_value") from None
        out.append((what, scale, kind))
    return out


def check_kinds(applied, kinds: list, pipe: Pipeline) -> None:
    """A control asked for by kind must read that kind's maps (a misnamed embedded model would not)."""
    for k, (control, kind) in enumerate(zip(applied, kinds)):
        if kind is not None and control.net.condition != kind:
            raise ApiError(400, f"control {k}: {embedded_name(pipe, kind)} reads {control.net.condition} maps, not "
                           f"{kind}", f"control.{k}.kind", "invalid_control")


def client_message(error: Exception, model: str, pipe: Pipeline) -> str:
    """A library error about a control, with the server's model folder replaced by the model's id
    (a client never sees the server's paths; the control folders it may name are listed anyway)."""
    message = str(error) or error.__class__.__name__
    for source in sorted({str(s) for s in (pipe.source, pipe.engine.source) if s}, key=len, reverse=True):
        message = message.replace(source, model)
    return message
