# smtprelay: the token store key (made once, never replaced), modes, the service.
if [ ! -e /etc/smtprelay/token.key ]; then
    /usr/bin/smtprelay token keygen --to /etc/smtprelay/token.key
fi
chown root:smtprelay /etc/smtprelay/token.key /etc/smtprelay/smtprelay.toml
chmod 0640 /etc/smtprelay/token.key /etc/smtprelay/smtprelay.toml
install -d -o smtprelay -g smtprelay -m 0750 /var/lib/smtprelay
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -eq 1 ]; then
    systemctl enable smtprelay.service >/dev/null 2>&1 || :
else
    # Upgrade: the queue stays; the new binary takes over.
    systemctl try-restart smtprelay.service >/dev/null 2>&1 || :
fi
