# Memory readings of a process, for the benchmark scripts (sourced).
status() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }   # kB
reset_peak() { echo 5 > "/proc/$1/clear_refs"; }                       # restart VmHWM
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ print int(($14 + $15) * 1000 / hz) }' "/proc/$1/stat"; }   # user+system
