"""Running an exported velocity graph (interop.export) in ONNX Runtime or OpenVINO, behind the
DiT's own call signature, so the engine, the samplers, guidance and the tasks use it as they
use the torch model (issue 31).

    model, cfg = load_exported("out/shapes-64-onnx")              # its natural engine: onnxruntime
    model, cfg = load_exported("out/shapes-64-onnx", "openvino")  # OpenVINO reads ONNX too
    model = export_for_engine(torch_model, cfg, "onnxruntime")    # a torch model folder, exported on load
    v = model(x, t, context, context_mask)                         # (B, C, H, W), as DiT.forward
    v = model.at_precision("int8")(x, t, context, context_mask)

Which engines exist and what precisions each offers: interop.engines.
"""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ditkit.core.checkpoint import CONFIG_FILE, read_model_config
from ditkit.core.config import DiTConfig, SampleConfig, _from_dict
from ditkit.core.model import DiT
from ditkit.interop.engines import GRAPH_FILES, NATURAL_ENGINE, READS, GraphRun, check_engine, open_graph
from ditkit.interop.export import export_model, sha256_of


def is_exported(folder: str | Path) -> bool:
    """Whether a model folder holds an exported graph (its config has an "export" section)."""
    path = Path(folder) / CONFIG_FILE
    try:
        return path.is_file() and "export" in json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False  # read_model_config gives the clear error when the folder is loaded


# ----------------------------------------------------------------------------
# the model stand-in
# ----------------------------------------------------------------------------

class ExportedGraph:
    """One exported graph and the compiled versions of it made so far, one per precision
    (compiled on first use under a lock, as the engine's int8 copy of a torch model is).

    It holds the compiled runs, not the models that use them: a model refers to its graph, so a
    graph that also held its models would make a reference cycle, freed only by the cyclic garbage
    collector at an arbitrary moment (and thread). An engine's session is freed deterministically
    instead, with the last pipeline that uses it."""

    def __init__(self, graph: Path, fmt: str, engine: str, config: DiTConfig, info: dict, keep=None):
        if fmt not in READS[engine]:
            raise ValueError(f"the {engine} engine cannot read an {fmt} export (it reads {', '.join(READS[engine])}); "
                             f"load it with --engine {NATURAL_ENGINE[fmt]}")
        self.graph, self.format, self.engine, self.config, self.info = Path(graph), fmt, engine, config, info
        self._keep = keep  # the temporary folder of an export made on load, removed with this object
        self._runs: dict[str, GraphRun] = {}
        self._lock = threading.Lock()

    def model(self, precision: str) -> "ExportedModel":
        """The model running this graph at a precision (compiled on first use, then shared)."""
        with self._lock:
            if precision not in self._runs:
                self._runs[precision] = open_graph(self.graph, self.format, self.engine, precision)
            return ExportedModel(self, precision, self._runs[precision])


class ExportedModel(nn.Module):
    """Stands where the DiT stands: forward(x, t, context, context_mask, cond=None) -> v with the
    DiT's shapes (core/model.py), computed by the exported graph. `config` is the DiT's config.
    Features that need the model's blocks (block_runner: feature caches, control) are refused."""

    def __init__(self, graph: ExportedGraph, precision: str, run: GraphRun):
        super().__init__()
        self.exported, self.precision, self._run = graph, precision, run
        self.config = graph.config
        self.engine_name = graph.engine
        # An empty parameter, so callers that ask a model for its device and dtype through
        # parameters() (the engine, prompt_velocity) get the CPU and float32 the graph runs at.
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    match_batch = staticmethod(DiT.match_batch)  # the tasks repeat an image condition to the guidance batch

    def at_precision(self, precision: str) -> "ExportedModel":
        """The same graph compiled at another precision (compiled once per graph)."""
        return self if precision == self.precision else self.exported.model(precision)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None, block_runner=None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        if block_runner is not None:
            raise ValueError(blocks_refusal(self.engine_name, "feature caching and control"))
        if x.device.type != "cpu":
            raise ValueError(f"the {self.engine_name} engine runs on the CPU; got a tensor on {x.device}")
        if cond is not None:
            cond = DiT.match_batch(cond, x.shape[0])
        DiT.check_input(self, x, cond)  # the DiT's own shape checks (they read only self.config)
        info = self.exported.info
        if not info.get("dynamic_size") and tuple(x.shape[-2:]) != (info["size"], info["size"]):
            raise ValueError(f"this export takes {info['size']}x{info['size']} images (its positions, "
                             f"{self.config.positions!r}, fix the size); got {x.shape[-2]}x{x.shape[-1]}: "
                             f"export again with --size {x.shape[-1]}, or use --engine torch")
        b = x.shape[0]
        if context_mask is None:
            context_mask = torch.ones(context.shape[:2], dtype=torch.bool)
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t
        feeds = {"x": x, "t": t, "context": context, "context_mask": context_mask.bool()}
        if cond is not None:
            feeds["cond"] = cond
        feeds = {k: np.ascontiguousarray(v.detach().cpu().numpy() if k == "context_mask"
                                         else v.detach().float().cpu().numpy()) for k, v in feeds.items()}
        return torch.from_numpy(self._run(feeds))

    def __repr__(self) -> str:
        return f"ExportedModel(engine={self.engine_name}, precision={self.precision}, graph={self.exported.graph})"


def blocks_refusal(engine: str, feature: str) -> str:
    return (f"{feature} needs the model's blocks, and the {engine} engine runs the whole velocity call as one "
            "exported graph: use --engine torch for it")


def is_exported_model(model) -> bool:
    return isinstance(model, ExportedModel)


# ----------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------

def read_export_info(folder: Path, cfg: dict) -> dict:
    info = cfg.get("export")
    where = folder / CONFIG_FILE
    if not isinstance(info, dict) or info.get("format") not in GRAPH_FILES or "graph" not in info:
        raise ValueError(f"{where}: the 'export' section must name a format ({', '.join(GRAPH_FILES)}) and a graph")
    if not isinstance(info.get("size"), int) or Path(info["graph"]).name != info["graph"]:
        raise ValueError(f"{where}: the 'export' section needs an integer size and a graph file name in the folder")
    return info


def load_exported(folder: str | Path, engine: str | None = None) -> tuple[ExportedModel, dict]:
    """An exported folder's model (fp32; at_precision for others) and its config dict (with the
    sample settings parsed, as checkpoint.load_model returns them). engine: default the
    format's own; "torch" is refused (the folder has a graph, not weights)."""
    folder = Path(folder)
    cfg = read_model_config(folder)
    info = read_export_info(folder, cfg)
    engine = check_engine(engine or NATURAL_ENGINE[info["format"]])
    if engine == "torch":
        raise ValueError(f"{folder} holds an exported graph, not torch weights: load it with --engine "
                         f"{NATURAL_ENGINE[info['format']]}, or load the model folder it was exported from")
    graph = folder / info["graph"]
    if graph.is_file() and info.get("sha256") and sha256_of(graph) != info["sha256"]:
        raise ValueError(f"exported graph {graph} does not match the sha256 in {folder / CONFIG_FILE}: "
                         "the file is corrupt or was changed; export the model again")
    try:
        config = DiTConfig.from_dict(cfg["model"])
        cfg["sample"] = _from_dict(SampleConfig, cfg.get("sample") or {}, "sample")
    except (TypeError, ValueError) as e:
        raise ValueError(f"model config {folder / CONFIG_FILE} is invalid: {e}") from None
    return ExportedGraph(graph, info["format"], engine, config, info).model("fp32"), cfg


def export_for_engine(model: nn.Module, cfg: dict, engine: str) -> ExportedModel:
    """A torch model run by another engine: exported to ONNX into a temporary folder (kept as long
    as the returned model lives) and opened there. About 3 s for shapes-64 on 2 cores."""
    check_engine(engine)
    work = tempfile.TemporaryDirectory(prefix="ditkit-export-")
    sample = cfg.get("sample")
    plain = {**cfg, "sample": sample.__dict__ if isinstance(sample, SampleConfig) else sample}
    folder = export_model(model, plain, Path(work.name) / "graph", to="onnx")
    info = json.loads((folder / CONFIG_FILE).read_text())["export"]
    graph = ExportedGraph(folder / info["graph"], "onnx", engine, model.config, info, keep=work)
    return graph.model("fp32")
