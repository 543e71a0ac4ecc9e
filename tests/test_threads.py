"""Many threads: the first calls on a freshly loaded pipeline (text encoder not yet loaded,
transformers not yet imported) made from 8 threads at once give exactly the images the same
calls give one after another; so do 8 threads that each load their own pipeline, which ask the
process-wide encoder registry (core.encoders) for the same encoder at once. Run in fresh
processes, since this test process has long imported transformers and filled the registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import hashlib, json, sys, threading
import ditkit
from ditkit.core import encoders

assert "transformers" not in sys.modules and not encoders._SHARED  # a fresh process
shared = ditkit.load(sys.argv[1]) if sys.argv[2] == "shared" else None
prompts = ["a red circle", "two blue squares", "", "a big green triangle to the left of a yellow circle",
           "three purple circles", "a red circle", "a small orange square", "four circles"]

def digest(i):
    pipe = shared or ditkit.load(sys.argv[1])  # "own": every call loads its own pipeline
    return hashlib.sha256(pipe.generate(prompts[i], seed=i)[0].tobytes()).hexdigest()

threaded, errors = [None] * len(prompts), []
barrier = threading.Barrier(len(prompts))

def work(i):
    try:
        barrier.wait()
        threaded[i] = digest(i)
    except BaseException as e:
        errors.append(f"thread {i}: {type(e).__name__}: {e}")

threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
for t in threads:
    t.start()
for t in threads:
    t.join()
sequential = [digest(i) for i in range(len(prompts))]
print(json.dumps({"threaded": threaded, "sequential": sequential, "errors": errors,
                  "encoders": len(encoders._SHARED)}))
"""


@pytest.mark.parametrize("pipelines", ["shared", "own"])
def test_first_calls_from_8_threads_equal_the_sequential_results(tiny_model_dir, pipelines):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir), pipelines], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["errors"] == []
    assert result["encoders"] == 1  # one shared encoder, however many threads asked for it at once
    assert None not in result["threaded"]
    assert result["threaded"] == result["sequential"]
    assert len(set(result["sequential"])) == 8  # distinct seeds give distinct images
