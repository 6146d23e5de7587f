# Sourced by the sbatch scripts on every node before srun: threads, NCCL, Python.
# Override any of these in your environment before `sbatch` (sbatch exports it).

# One OpenMP/MKL thread pool per task, sized to the CPUs SLURM gave the task.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export MKL_NUM_THREADS=${MKL_NUM_THREADS:-$OMP_NUM_THREADS}
# NCCL: fail fast on a dead peer instead of hanging, and say why.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# Uncomment for clusters without InfiniBand / with a specific NIC:
# export NCCL_IB_DISABLE=1
# export NCCL_SOCKET_IFNAME=eth0
export PYTHONUNBUFFERED=1
# The Python that has BrushTrain installed (bash install.sh makes .venv).
BRUSHTRAIN_PYTHON=${BRUSHTRAIN_PYTHON:-$SLURM_SUBMIT_DIR/.venv/bin/python}
