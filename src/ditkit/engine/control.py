"""Controls of a generation request: what a caller writes -> checked AppliedControls.

A caller names each control as (what, condition image, scale):
- what: a condition kind ("edges", "boxes", "seg"), which means the embedded control model
  <base name>-control-<kind> (shapes-64 -> shapes-64-control-edges); or a control model, by
  its embedded name or its folder (a training run's RUN/control);
- condition: an image (path, PIL, array) of the condition map (core/control_maps.py; make one
  from any image with `ditkit control-map`); one map for every image of the call. A map of
  another size is resized to the output's (nearest neighbour, so labels and edges stay crisp)
  with a warning;
- scale: >= 0 (default 1.0; 0 leaves the base model's output bit-identical).

The CLI and the server write one control as "WHAT:IMAGE[:SCALE]" (parse_control_spec).
Control models are loaded once per Engine (Engine.control_model) and checked against its model:
a control trained for another base is refused with both names.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from ditkit.core.control import AppliedControl, check_scale
from ditkit.core.control_maps import CONDITIONS, maps_tensor
from ditkit.core.images import load_image

MAX_CONTROLS = 4  # controls of one request (each runs its copied blocks at every step)
ControlSpec = tuple  # (what, image) or (what, image, scale)


def parse_control_spec(spec: str) -> tuple[str, str, float]:
    """"edges:map.png" or "edges:map.png:0.8" (or a control model instead of the kind) ->
    (what, image path, scale). A last part that is not a number belongs to the path."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"bad control {spec!r}: write KIND:IMAGE[:SCALE] with KIND one of {', '.join(CONDITIONS)} "
                         "(or a control model's name or folder), e.g. edges:edges.png:0.8")
    what, rest = spec.split(":", 1)
    path, scale = rest, 1.0
    head, sep, tail = rest.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
            path = head
        except ValueError:
            pass
    if not what or not path:
        raise ValueError(f"bad control {spec!r}: write KIND:IMAGE[:SCALE], e.g. edges:edges.png:0.8")
    return what, path, check_scale(scale)


def control_name(what: str, source: str | None) -> str:
    """The control model a caller means: a kind -> <base name>-control-<kind>; else `what` itself."""
    if what in CONDITIONS:
        if not source:
            raise ValueError(f"control kind {what!r} names the embedded <model>-control-{what}, and this model has no "
                             "name: give a control model's folder instead")
        return f"{Path(source).name}-control-{what}"
    return what


def condition_tensor(image, size: int, what: str = "condition map") -> torch.Tensor:
    """A condition image -> (1, 3, size, size) in [-1, 1], its gray level on every channel."""
    im = load_image(image, what)
    if im.size != (size, size):
        warnings.warn(f"{what} is {im.size[0]}x{im.size[1]}; resized to the output's {size}x{size} "
                      "(nearest neighbour)", stacklevel=3)
        im = im.resize((size, size), Image.NEAREST)
    return maps_tensor([im.convert("L")])


def applied_controls(engine, controls: Sequence[ControlSpec] | None, size: int) -> tuple[AppliedControl, ...]:
    """The request's controls for `engine` (an Engine) at output side `size`."""
    if controls is None:
        return ()
    if isinstance(controls, (str, bytes)) or not isinstance(controls, Sequence):
        raise ValueError("control must be a list of (kind or control model, condition image[, scale]) tuples, e.g. "
                         "[('edges', 'edges.png', 1.0)]")
    if len(controls) > MAX_CONTROLS:
        raise ValueError(f"at most {MAX_CONTROLS} controls per request, got {len(controls)}")
    out = []
    for k, item in enumerate(controls):
        if isinstance(item, str):
            item = parse_control_spec(item)
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3) or not isinstance(item[0], (str, Path)):
            raise ValueError(f"control {k} must be (kind or control model, condition image[, scale]), got {item!r}")
        what, image = str(item[0]), item[1]
        scale = check_scale(item[2] if len(item) == 3 else 1.0)
        net, info = engine.control_model(control_name(what, engine.source))
        if what in CONDITIONS and info.condition != what:
            raise ValueError(f"control model {info.folder.name} reads {info.condition} maps, not {what}")
        cond = condition_tensor(image, size, f"control {k} ({info.condition}) map").to(engine.device)
        out.append(AppliedControl(net, cond, scale))
    return tuple(out)
