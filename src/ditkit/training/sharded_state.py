"""The training state of a distributed run: a sharded checkpoint in safetensors through
torch.distributed.checkpoint (DCP), loadable on any number of ranks.

Each rank writes its own shards of model, EMA and optimizer state (DCP's
HuggingFaceStorageWriter: plain safetensors files, each carrying its pieces' offsets), and DCP
loads them into whatever sharding the reading run has: FSDP2 on 2 ranks, DDP on 3, one plain
process. The non-tensor part (step, optimizer hyperparameters, config) is one JSON file.
Why not DCP's default FileSystemWriter: it writes its metadata as a pickle, and ditkit never
unpickles a file.

Files in the run folder (train.output_dir):
    train_state.json          {"step", "folder", "world", "parallel", "param_groups", ...}
    train_state-00000250/     shard-0000R-model-00001-of-00001.safetensors per writing rank

A save goes to `.train_state-00000250.ditkit-partial/`, which rank 0 renames once every rank's
shards are complete; then it replaces train_state.json atomically and only then removes the
previous state folder. A kill at any moment leaves train_state.json naming a complete folder;
a run that starts removes the partial and unreferenced folders (remove_stale_states).
The one-process format (core.checkpoint's train_state.safetensors) stays as it was; a run
resumes from whichever of the two is newer (latest_state), on any world size.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ditkit.core.checkpoint import STATE_FILE, match_moment_layouts, read_train_state
from ditkit.core.files import _fsync_dir, atomic_write_json
from ditkit.training.distributed import Ranks

POINTER = "train_state.json"
FORMAT = "ditkit-dcp-safetensors/1"
_FOLDER = re.compile(r"^train_state-\d{8}$")
_PARTIAL = re.compile(r"^\.train_state-\d{8}\.ditkit-partial$")


def state_folder_name(step: int) -> str:
    return f"train_state-{step:08d}"


def _read_pointer(out: Path) -> dict | None:
    try:
        meta = json.loads((out / POINTER).read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ValueError(f"{out / POINTER} is not valid JSON ({e}); it is written atomically by ditkit train") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{out / POINTER}: unknown training-state format {meta.get('format')!r}; expected {FORMAT}")
    return meta


def latest_state(out: str | Path) -> tuple[str, int] | None:
    """("sharded", step) or ("file", step) for the newer training state in the run folder (both
    exist only after a kill between writing one kind and removing the other), or None."""
    out = Path(out)
    found = []
    meta = _read_pointer(out)
    if meta is not None:
        found.append((int(meta["step"]), "sharded"))
    if (out / STATE_FILE).exists():
        with safe_open(str(out / STATE_FILE), "pt") as f:
            found.append((int((f.metadata() or {}).get("step", -1)), "file"))
    if not found:
        return None
    step, kind = max(found)
    return kind, step


def remove_stale_states(out: str | Path) -> list[Path]:
    """Remove partial state folders and state folders train_state.json does not name (a kill
    during a save, or between its rename and the removal of the previous one). Rank 0 calls it
    on start, before any rank writes."""
    out = Path(out)
    if not out.is_dir():
        return []
    meta = _read_pointer(out)
    keep = meta["folder"] if meta is not None else None
    removed = []
    for entry in sorted(out.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and entry.name != keep and (
                _FOLDER.match(entry.name) or _PARTIAL.match(entry.name)):
            shutil.rmtree(entry)
            removed.append(entry)
    return removed


def remove_sharded_states(out: str | Path) -> None:
    """Drop the sharded state after a newer one-process state was written (pointer first, so
    no moment has a pointer to a missing folder)."""
    out = Path(out)
    if (out / POINTER).exists():
        (out / POINTER).unlink()
        remove_stale_states(out)


# ----------------------------------------------------------------------------
# state <-> flat tensors
# ----------------------------------------------------------------------------

def _flat_state(model: nn.Module, ema: nn.Module | None,
                optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict], dict]:
    """{"model.K", "ema.K", "opt.FQN.NAME": tensor (DTensor shards under FSDP)}, the optimizer's
    param_groups (parameters by name) and its non-tensor per-parameter state."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    # contiguous(): safetensors stores dense tensors; the DiT's convolutions are channels-last
    # (DDP keeps them so). Loading goes through these copies and then set_*_state_dict.
    flat = {f"model.{k}": v.contiguous() for k, v in get_model_state_dict(model).items()}
    if ema is not None:
        flat.update({f"ema.{k}": v.contiguous() for k, v in get_model_state_dict(ema).items()})
    osd = get_optimizer_state_dict(model, optimizer)
    scalars: dict[str, dict] = {}
    for fqn, st in osd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                flat[f"opt.{fqn}.{name}"] = v.contiguous()
            else:
                scalars.setdefault(fqn, {})[name] = v
    return flat, osd["param_groups"], scalars


def _json_groups(groups: list[dict]) -> list[dict]:
    return [{k: (float(v) if torch.is_tensor(v) else v) for k, v in g.items()} for g in groups]


def save_sharded(out: str | Path, step: int, model: nn.Module, ema: nn.Module | None,
                 optimizer: torch.optim.Optimizer, config, ranks: Ranks) -> None:
    """Every rank writes its shards (a collective: all ranks call it); rank 0 then commits the
    folder and train_state.json. `model` is the unwrapped model (FSDP shards it in place)."""
    import torch.distributed.checkpoint as dcp  # why here: DCP's import is heavy and only distributed runs save this way

    out = Path(out)
    name = state_folder_name(step)
    partial = out / f".{name}.ditkit-partial"
    if ranks.main:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    ranks.barrier()
    flat, groups, scalars = _flat_state(model, ema, optimizer)
    # save_distributed: each rank writes its own file (no gather to rank 0); DCP returns on
    # rank 0 only after every rank's write has finished.
    dcp.save(flat, storage_writer=dcp.HuggingFaceStorageWriter(str(partial), save_distributed=True))
    if ranks.main:
        _fsync_dir(partial)
        final = out / name
        if final.exists():  # the same step saved again (a time budget's cut): the same state
            shutil.rmtree(partial)
        else:
            os.replace(partial, final)
        _fsync_dir(out)
        atomic_write_json(out / POINTER, {
            "format": FORMAT, "step": step, "folder": name, "world": ranks.world, "parallel": ranks.parallel,
            "ema": ema is not None, "param_groups": _json_groups(groups), "opt_scalars": scalars,
            "config": config.to_dict()}, durable=True)
        remove_stale_states(out)
        if (out / STATE_FILE).exists():  # an older one-process state
            (out / STATE_FILE).unlink()
    ranks.barrier()


def load_sharded(out: str | Path, model: nn.Module, ema: nn.Module | None,
                 optimizer: torch.optim.Optimizer) -> int:
    """Load the run's sharded state into this run's sharding (every rank calls it; without a
    process group, as one plain process); the step to continue from."""
    import torch.distributed.checkpoint as dcp  # why here: see save_sharded
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, set_model_state_dict,
                                                         set_optimizer_state_dict)

    out = Path(out)
    meta = _read_pointer(out)
    if meta is None:
        raise ValueError(f"{out} holds no sharded training state ({POINTER})")
    folder = out / meta["folder"]
    flat, _, _ = _flat_state(model, ema, optimizer)
    saved = set()
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            saved.update(f.keys())
    if ema is None or not meta.get("ema", True):  # no EMA here, or none saved (this run's starts as the model)
        flat = {k: v for k, v in flat.items() if not k.startswith("ema.")}
        saved = {k for k in saved if not k.startswith("ema.")}
    if set(flat) != saved:
        diff = sorted(set(flat) ^ saved)
        raise ValueError(f"training state {folder} does not match the model config "
                         f"({len(diff)} tensors differ, e.g. {diff[:3]})")
    with warnings.catch_warnings():  # without a process group DCP warns that it loads in one process: we mean to
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(flat, storage_reader=dcp.HuggingFaceStorageReader(str(folder)))
    set_model_state_dict(model, {k[len("model."):]: v for k, v in flat.items() if k.startswith("model.")})
    if ema is not None:
        ema_state = {k[len("ema."):]: v for k, v in flat.items() if k.startswith("ema.")}
        set_model_state_dict(ema, ema_state or get_model_state_dict(model))
    state: dict[str, dict] = {}
    for k, v in flat.items():
        if k.startswith("opt."):
            fqn, name = k[len("opt."):].rsplit(".", 1)
            state.setdefault(fqn, {})[name] = v
    for fqn, sc in meta["opt_scalars"].items():
        state.setdefault(fqn, {}).update(sc)
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": meta["param_groups"]})
    match_moment_layouts(optimizer)
    return int(meta["step"])


def load_file_on_ranks(out: str | Path, model: nn.Module, ema: nn.Module | None,
                       optimizer: torch.optim.Optimizer, ranks: Ranks) -> int:
    """A one-process state (train_state.safetensors) into a distributed run: rank 0 reads the
    file and the full tensors are broadcast and sharded (every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    path = Path(out) / STATE_FILE
    model_sd: dict = {}
    ema_sd: dict = {}
    osd: dict = {}
    step, error = 0, ""
    if ranks.main:
        try:
            model_sd, ema_sd, osd, step = _read_state_file(path)
        except (ValueError, OSError) as e:
            error = str(e)
    if not ranks.from_rank0(0 if error else 1):  # every rank stops, not only rank 0
        raise ValueError(error or f"rank 0 could not read the training state {path}")
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, model_sd, options=opts)
    if ema is not None:
        set_model_state_dict(ema, ema_sd, options=opts)
    set_optimizer_state_dict(model, optimizer, osd, options=opts)
    match_moment_layouts(optimizer)
    return ranks.from_rank0(step)


def _read_state_file(path: Path) -> tuple[dict, dict, dict, int]:
    """core.checkpoint's one-process state as full state dicts keyed by parameter name."""
    tensors, meta = read_train_state(path)
    groups = json.loads(meta["param_groups"])
    names = [n for g in groups for n in g.get("names", [])]
    if len(names) != sum(len(g["params"]) for g in groups):
        raise ValueError(f"training state {path} predates parameter names in its optimizer groups; "
                         "resume it once in one process (train.parallel none) before a distributed run")
    state: dict[str, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(names[int(idx)], {})[name] = v
    for idx, sc in json.loads(meta["opt_scalars"]).items():
        state.setdefault(names[int(idx)], {}).update(sc)
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    ema_sd = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
    osd = {"state": state, "param_groups": [{**g, "params": g["names"]} for g in groups]}
    return model_sd, ema_sd, osd, int(meta["step"])
