# The body shared by the sbatch scripts (sourced, not run): start one task per GPU with srun.
# Usage inside an sbatch script: source "$SLURM_SUBMIT_DIR/slurm/run.sh" "$@"
set -uo pipefail
cd "$SLURM_SUBMIT_DIR"
source slurm/env.sh
if [ $# -lt 1 ]; then
    echo "usage: sbatch [sbatch options] $0 CONFIG [key=value ...]" >&2
    exit 2
fi
CONFIG=$1
shift
echo "brushtrain job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST}:" \
     "${SLURM_NNODES} node(s) x ${SLURM_NTASKS_PER_NODE:-?} task(s); config ${CONFIG} $*"
# resume=auto: a requeued job continues from the newest complete checkpoint in output_dir.
# Devices and nodes come from the allocation (launch/env.py), so they always match it.
srun --kill-on-bad-exit=1 "$BRUSHTRAIN_PYTHON" -m train fit -c "$CONFIG" resume=auto "$@"
status=$?
echo "brushtrain job ${SLURM_JOB_ID}: srun exited with ${status}"
exit $status
