# A benchmark's scratch directory and clean-up (sourced).
#   bench_work NAME     sets $work (a new directory under /var/tmp, readable by Postfix's
#                       daemons) and $pids; on exit, kills $pids, stops the Postfix instance
#                       in $work/postfix if there is one, and removes $work
bench_work() {
    work=$(mktemp -d "/var/tmp/smtprelay-$1.XXXXXX")
    chmod 755 "$work"
    pids=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    postfix -c "$work/postfix/etc" stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
