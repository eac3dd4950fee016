# Run build steps nproc at a time: `job CMD...` starts one in the background (waiting for a free
# slot), `jobs_wait` waits for all of them and fails if any did. Sourced by the build scripts.
job_limit=${PUNA_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}
job_pids=()
job() {
  while [ "$(jobs -rp | wc -l)" -ge "$job_limit" ]; do sleep 0.2; done
  "$@" &
  job_pids+=($!)
}
jobs_wait() {
  local p failed=0
  for p in "${job_pids[@]}"; do wait "$p" || failed=1; done
  job_pids=()
  [ $failed = 0 ] || { echo "$(basename "$0"): a build step failed (see above)" >&2; exit 1; }
}
