# smtprelay: stop and disable on removal (not on upgrade). Configuration, key, tokens and
# queue stay in /etc/smtprelay and /var/lib/smtprelay.
if [ "$1" -eq 0 ]; then
    systemctl disable --now smtprelay.service >/dev/null 2>&1 || :
fi
