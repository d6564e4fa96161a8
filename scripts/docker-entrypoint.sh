#!/bin/sh
# The image's entry point: make the container's own cgroup tree writable, so that the server can give each
# sandbox a cgroup of its own (Docker mounts /sys/fs/cgroup read-only unless the container is privileged;
# with CAP_SYS_ADMIN and the container's own cgroup namespace it may remount it), then run the role.
if [ "$(id -u)" = 0 ] && grep -qs ' /sys/fs/cgroup [^ ]* ro[, ]' /proc/self/mountinfo; then
    mount -o remount,rw /sys/fs/cgroup 2>/dev/null \
        || echo "lambent-entrypoint: /sys/fs/cgroup stays read-only: sandboxes cannot be jailed" >&2
fi
exec "$@"
