#!/usr/bin/env bash
# Cloud TPU pod slice: the same command on every worker, e.g.
#   gcloud compute tpus tpu-vm ssh NAME --worker=all --command \
#     "cd rlpt_jax && bash launch/tpu_pod.sh --config=configs/rlpt_qwen.py:qwen3_8b_tpu \
#        --config.model.path=/mnt/shared/Qwen3-8B-Base --workdir=/mnt/shared/runs/rlpt_8b"
# The model folder and the workdir must be on a file system every worker mounts (e.g.
# Filestore or NFS); gs:// run folders are not supported yet.
# jax.distributed.initialize() discovers the slice's workers from the TPU metadata.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python launch/train.py --distributed "$@"
