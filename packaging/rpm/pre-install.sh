# smtprelay: the system user and group, if missing.
getent group smtprelay >/dev/null || groupadd --system smtprelay
getent passwd smtprelay >/dev/null || useradd --system --gid smtprelay \
    --home-dir /var/lib/smtprelay --no-create-home --shell /sbin/nologin smtprelay
