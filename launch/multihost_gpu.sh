#!/usr/bin/env bash
# Multi-host GPU launch: run this script on every host with the same arguments.
#   COORDINATOR=host0:12345 NUM_HOSTS=2 HOST_ID=0 bash launch/multihost_gpu.sh \
#       --config=configs/rlpt_qwen.py:qwen3_8b --config.model.path=/ckpt/Qwen3-8B-Base \
#       --config.mesh.data=2 --config.mesh.fsdp=8 --workdir=/shared/runs/rlpt_8b
# Every host sees its local GPUs; jax.distributed joins them into one mesh. The workdir must
# be on a file system all hosts share (checkpoints are written collectively).
set -euo pipefail
: "${COORDINATOR:?set COORDINATOR=host:port of host 0}"
: "${NUM_HOSTS:?set NUM_HOSTS}"
: "${HOST_ID:?set HOST_ID (0..NUM_HOSTS-1)}"
cd "$(dirname "$0")/.."
exec .venv/bin/python launch/train.py --coordinator_address="$COORDINATOR" \
    --num_processes="$NUM_HOSTS" --process_id="$HOST_ID" "$@"
