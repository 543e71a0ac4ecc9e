"""Timing-only pass over speed_quality.py's caching/precision rows for shapes-64 (no
ShapesEval), for when the full run's timings were disturbed:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/retime_speed_rows.py

Reads the SmoothCache schedule that speed_quality.py saved (runs/cache_schedule_new.json)
and writes runs/retime_new.json."""
import json, sys
sys.path.insert(0, "benchmarks")
import torch
torch.set_num_threads(2)
import ditkit
from dataclasses import replace
from speed_quality import seconds_per_image
from ditkit.engine.cache import FirstBlockCache, SmoothCache, SmoothSchedule
pipe = ditkit.load("shapes-64"); base = pipe.defaults
sched = SmoothSchedule.load("runs/cache_schedule_new.json")
rows = [("teacher default", "fp32", None), ("first-block cache 0.2", "fp32", lambda: FirstBlockCache(0.2)),
        ("first-block cache 0.35", "fp32", lambda: FirstBlockCache(0.35)), ("smooth cache (alpha 0.15)", "fp32", lambda: SmoothCache(sched)),
        ("bf16", "bf16", None), ("int8", "int8", None)]
out = []
for name, prec, cache in rows:
    t1 = seconds_per_image(pipe, base, 1, prec, cache, 3); t16 = seconds_per_image(pipe, base, 16, prec, cache, 3)
    out.append({"config": name, "b1": t1, "b16": t16}); print(json.dumps(out[-1]), flush=True)
json.dump(out, open("runs/retime_new.json", "w"), indent=2)
