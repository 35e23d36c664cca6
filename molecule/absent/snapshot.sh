# Paths (with type and mode) below the directories a deployment can touch. Excluded: state systemd,
# journald and ansible keep for themselves, and /var/tmp (where the snapshot lives). Plus the content
# of the files the role edits instead of owning (its block must go, the rest stay). One command group:
# prepare.yml redirects the whole snapshot into a file.
{
find /etc /opt /usr /var /run /root /srv /home -xdev \
    \( -path /var/log/journal -o -path /var/lib/systemd -o -path /run/systemd -o -path /run/log \
       -o -path /root/.ansible -o -path /var/tmp -o -path /var/cache/ldconfig -o -path /run/user \
       -o -path /var/lib/dbus -o -path /run/dbus -o -path /etc/machine-id -o -name __pycache__ \) -prune \
    -o -printf '%y %m %p\n' 2>/dev/null | LC_ALL=C sort
sha256sum /etc/hosts
}
