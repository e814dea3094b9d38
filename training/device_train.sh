#!/usr/bin/env bash
# The plate detector's training on a lent GPU (the `device` tool's machine), in one prepared run.
#
# Here, first:   python -m training.device_pack        # build/device-pack, ~40 MiB (prints its size)
# Then the device tool's run, from the repository root, carrying the pack:
#   run(command="bash training/device_train.sh", carry=["build/device-pack"], timeout_s=600)
# Back here, with the files it returns (plate-fp32.onnx, plate.pt, losses.log):
#   python tools/build_shared_model.py --plate-fp32 <files_at>/plate-fp32.onnx
#   python tools/plate_validation.py --audited --choose   # threshold and figures, on validation photos
#
# BUDGET_MIN (default 8) is the training's wall-clock budget: the machine's start, the data's
# loading (every worker decodes the pack) and the export fit in the 10 minutes of one run.
set -euo pipefail
export PYTHONPATH="layers/anonymizer${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-build/device-out}"
mkdir -p "$OUT"
nvidia-smi -L || true
python3 -m training.train_plates --pack build/device-pack --device cuda \
  --resume "${RESUME:-training/checkpoints/plate-v6.pt}" --freeze "${FREEZE:-3}" \
  --workers "${WORKERS:-14}" --batch "${BATCH:-64}" --big-prob 0.25 --lr "${LR:-3e-4}" \
  --epochs 100000 --samples-per-epoch 6400 --budget-min "${BUDGET_MIN:-8}" --seed "${SEED:-12}" \
  --threads 2 --work "$OUT" --out "$OUT/int8-unused" 2>&1 | tee "$OUT/train.log"
