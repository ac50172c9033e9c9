# perfstat.sh: sourced by the bench scripts.

# syscall_events KIND... prints the perf events that count every system
# call and each KIND (for `perf stat -e`).
syscall_events() { printf 'raw_syscalls:sys_enter'; printf ',syscalls:sys_enter_%s' "$@"; }

# syscalls_per_request CSV REQUESTS prints what `perf stat -x,` wrote to CSV
# for raw_syscalls:sys_enter and syscalls:sys_enter_<kind> events as calls
# per request: "4.20 (read 0.61, writev 2.00, ...)", kinds under 0.005 left
# out; nothing when the file holds no total.
syscalls_per_request() {
  awk -F, -v reqs="$2" '$3 ~ /sys_enter/ { n = $1 / reqs; k = $3; sub(/.*sys_enter_?/, "", k)
    if (k == "") total = n; else if (n >= 0.005) parts = parts sprintf("%s%s %.2f", parts == "" ? "" : ", ", k, n) }
    END { if (total != "") printf "%.2f (%s)", total, parts }' "$1"
}
