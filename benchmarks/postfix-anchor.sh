#!/usr/bin/env bash
# Starts a private Postfix instance (Debian's postfix package) on 127.0.0.1:$1 as the
# benchmark anchor. Durable like smtprelay: cleanup fsyncs each queue file before the 250.
# Every message is put on hold so that Postfix, like smtprelay's intake, only queues.
# Usage: postfix-anchor.sh PORT DIR   (stop with: postfix -c DIR/etc stop)
set -euo pipefail
port=$1
dir=$2
mkdir -p "$dir/etc" "$dir/queue" "$dir/data"
cp /etc/postfix/master.cf.proto "$dir/etc/master.cf" 2>/dev/null || cp /etc/postfix/master.cf "$dir/etc/master.cf"
cp /etc/postfix/dynamicmaps.cf "$dir/etc/" 2>/dev/null || true
cp -r /etc/postfix/dynamicmaps.cf.d "$dir/etc/" 2>/dev/null || true
cp /etc/postfix/postfix-files "$dir/etc/" 2>/dev/null || true
cp -r /etc/postfix/postfix-files.d "$dir/etc/" 2>/dev/null || true
cat > "$dir/etc/main.cf" <<CONF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
myhostname = anchor.bench.internal
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject
header_checks = regexp:$dir/etc/hold
alias_maps =
alias_database =
maillog_file_prefixes = $dir
maillog_file = $dir/maillog
default_process_limit = 200
CONF
echo '/^/ HOLD' > "$dir/etc/hold"
# One smtpd on our port, not chrooted (the private queue has no chroot jail).
sed -i -E 's/^smtp( +)inet( +)n( +)-( +)y/smtp\1inet\2n\3-\4n/' "$dir/etc/master.cf"
sed -i -E "s/^smtp +inet/127.0.0.1:$port inet/" "$dir/etc/master.cf"
sed -i -E 's/^(cleanup|pickup|tlsmgr|rewrite|bounce|defer|trace|verify|flush|proxymap|smtp|relay|showq|error|retry|discard|local|virtual|lmtp|anvil|scache|postlog)( +)(unix|fifo|unix-dgram)( +)([n-])( +)-( +)y/\1\2\3\4\5\6-\7n/' "$dir/etc/master.cf"
chown -R postfix:postfix "$dir/queue" "$dir/data"
postfix -c "$dir/etc" check >/dev/null 2>&1 || true
# Postfix reports start-up errors only to syslog; without a syslog daemon it fails silently.
syslog=/var/tmp/smtprelay-bench-syslog
if ! pgrep -x rsyslogd >/dev/null && ! pgrep -f benchmarks/devlog.py >/dev/null; then
    python3 "$(dirname "$0")/devlog.py" "$syslog" &
    sleep 0.3
fi
postfix -c "$dir/etc" start || {
    tail -5 "$syslog" 2>/dev/null
    exit 1
}
