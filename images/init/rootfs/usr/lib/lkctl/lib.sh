# lib.sh: shell functions shared by lkctl's init scripts (sourced, POSIX sh / busybox ash).
#
# Console contract with the host: "lkctl-init: ready" once services are started, "lkctl-init: error: <why>"
# for a failure init survives, "lkctl-init: fatal: <why>" for one it cannot.

LKCTL_LIB=/usr/lib/lkctl
LKCTL_RUN=/run/lkctl
export PATH=/sbin:/usr/sbin:/bin:/usr/bin

# lkctl.debug on the kernel command line makes every script verbose (and traced with lkctl.debug=trace).
if [ -z "${LKCTL_DEBUG+x}" ]; then
    LKCTL_DEBUG=
    if [ -r /proc/cmdline ]; then
        for _w in $(cat /proc/cmdline); do
            case "$_w" in
                lkctl.debug | lkctl.debug=1 | lkctl.debug=y*) LKCTL_DEBUG=1 ;;
                lkctl.debug=trace) LKCTL_DEBUG=trace ;;
            esac
        done
    fi
    export LKCTL_DEBUG
fi
[ "$LKCTL_DEBUG" = trace ] && set -x

say() { echo "lkctl-init: $*" >/dev/console 2>/dev/null || echo "lkctl-init: $*" >&2; }
error() { say "error: $*"; }
# (the uptime is read by the shell itself: a fork would cost more than the line under TCG)
debug() {
    [ -z "$LKCTL_DEBUG" ] && return 0
    read -r _up _ </proc/uptime 2>/dev/null
    say "debug: [${_up-}] $*"
}

# write_resolv TEXT: the resolver config. /etc/resolv.conf may be linuxkit's symlink to
# /run/resolvconf/resolv.conf (/run is a fresh tmpfs): write through it.
write_resolv() {
    _target=/etc/resolv.conf
    if [ -L "$_target" ]; then
        _target=$(readlink /etc/resolv.conf)
        case "$_target" in /*) ;; *) _target=/etc/$_target ;; esac
    fi
    mkdir -p "${_target%/*}"
    printf '%s' "$1" >"$_target" || error "cannot write $_target"
}

# fw_cfg_copy SRC DEST: every QEMU fw_cfg entry under SRC, a directory of the kernel's by_name/ tree (a directory
# per name component; an entry is a link to its by_key/ directory, whose `raw` is the contents), becomes the file
# DEST/<its path below SRC>, made with the caller's umask. The tree is walked with the shell's own globs and each
# file is one `cat`, a directory one `mkdir` when it is new (under TCG every process costs the guest tens of ms;
# this was a find pipeline with mkdir, cat and mv per file). Nothing reads DEST while init copies (the services
# start later), so there is no temp file; a copy that fails is removed: a file is there whole or not at all.
fw_cfg_copy() {
    local _e _d
    for _e in "$1"/*; do
        _d=$2/${_e##*/}
        if [ -f "$_e/raw" ]; then
            [ -d "$2" ] || mkdir -p "$2"
            if cat "$_e/raw" >"$_d"; then
                debug "fw_cfg ${_e#/sys/firmware/qemu_fw_cfg/by_name/} -> $_d"
            else
                rm -f "$_d"
                error "cannot copy fw_cfg ${_e#/sys/firmware/qemu_fw_cfg/by_name/} to $_d"
            fi
        elif [ -d "$_e" ]; then
            fw_cfg_copy "$_e" "$_d"
        fi
    done
}

# jload PREFIX FILE: eval FILE's JSON as PREFIX_* variables (see json.awk). Returns 1 if it is not valid JSON.
# A bundle's config (under /containers, fixed at build time) is parsed once: the assignments are kept beside it
# in FILE.PREFIX.sh, because `container run` and `container exec` both load it and awk is slow under TCG.
jload() {
    case "$2" in /containers/*)
        if [ -f "$2.$1.sh" ]; then
            . "$2.$1.sh"
            return 0
        fi ;;
    esac
    _j=$(awk -v prefix="$1" -f "$LKCTL_LIB/json.awk" "$2") || { error "cannot parse $2"; return 1; }
    eval "$_j"
    case "$2" in /containers/*) { printf '%s\n' "$_j" >"$2.$1.sh.tmp" && mv -f "$2.$1.sh.tmp" "$2.$1.sh"; } 2>/dev/null ;; esac
    return 0
}

# jget VAR NAME: VAR=value of the flattened JSON variable NAME ("" if unset).
jget() { eval "$1=\${$2-}"; }

# jlen VAR NAME: VAR=element count of the flattened JSON array NAME (0 if absent).
jlen() { eval "$1=\${$2__len:-0}"; }

# mount_spec DEST TYPE SOURCE OPTIONS(comma-separated) [BIND_SOURCE_ROOT]
# (Directories are made only when missing: each mkdir is a fork, and under TCG a fork costs milliseconds.)
# Mount like runc/linuxkit would from an OCI mount: bind/rbind, then ro via a bind remount, propagation flags
# (shared, rprivate...) via --make-*, a lone "remount,<propagation>" as a propagation change only.
# An overlay gets its upperdir/workdir created first; a file bind gets a file to land on.
mount_spec() {
    _dest=$1 _type=$2 _src=$3 _opts=$4
    _keep= _prop= _bind= _ro= _remount= _dirs=
    _ifs=$IFS
    IFS=,
    for _o in $_opts; do
        case "$_o" in
            '') ;;
            bind) _bind=bind ;;
            rbind) _bind=rbind ;;
            ro) _ro=1; _keep="$_keep,ro" ;;
            remount) _remount=1 ;;
            shared | rshared | private | rprivate | slave | rslave | unbindable | runbindable) _prop="$_prop $_o" ;;
            upperdir=* | workdir=*) [ -d "${_o#*=}" ] || _dirs="$_dirs,${_o#*=}"; _keep="$_keep,$_o" ;;
            *) _keep="$_keep,$_o" ;;
        esac
    done
    # shellcheck disable=SC2086
    [ -z "$_dirs" ] || mkdir -p ${_dirs#,}
    IFS=$_ifs
    _keep=${_keep#,}
    [ "$_type" = bind ] && [ -z "$_bind" ] && [ -z "$_remount" ] && _bind=rbind
    # a VM with a persistent root disk (003-rootdisk): a bind of the VM's root gives the service that disk
    [ -n "$_bind" ] && [ "$_src" = / ] && [ -s "$LKCTL_RUN/rootdisk" ] && read -r _src <"$LKCTL_RUN/rootdisk"
    if [ -n "$_bind" ]; then
        if [ -d "$_src" ]; then
            [ -d "$_dest" ] || mkdir -p "$_dest"
        elif [ -e "$_src" ]; then
            [ -e "$_dest" ] || { mkdir -p "${_dest%/*}" && : >"$_dest"; }
        else
            error "${LKCTL_NAME:-init}: bind source $_src does not exist (for $_dest)"
            return 2
        fi
        mount -o "$_bind" "$_src" "$_dest" || return 1
        if [ -n "$_ro" ]; then
            mount -o "remount,bind,$_keep" "$_dest" || return 1
        fi
    elif [ -n "$_remount" ]; then
        if [ -n "$_keep" ]; then
            mount -o "remount,$_keep" "$_dest" || return 1
        fi
    else
        [ -n "$_type" ] || _type=none
        [ -n "$_src" ] || _src=$_type
        if [ "$_type" = cgroup ] && [ -f /sys/fs/cgroup/cgroup.controllers ]; then
            # cgroup v2 only: bind the one hierarchy (a second cgroup2 mount with other flags is EBUSY)
            mount_spec "$_dest" bind /sys/fs/cgroup "rbind,$_keep"
            return
        fi
        [ -d "$_dest" ] || mkdir -p "$_dest"
        if [ -n "$_keep" ]; then
            mount -t "$_type" -o "$_keep" "$_src" "$_dest" || return 1
        else
            mount -t "$_type" "$_src" "$_dest" || return 1
        fi
    fi
    for _p in $_prop; do
        mount "--make-$_p" "$_dest" || return 1
    done
    return 0
}

# mount_list PREFIX ABSROOT RELROOT: perform the mounts[] of a flattened OCI document. An absolute destination
# is taken under ABSROOT (a container rootfs, or "" for the root namespace), a relative one under RELROOT.
mount_list() {
    _mp=$1 _root=$2 _rel=$3
    jlen _n "${_mp}_mounts"
    _i=0
    while [ "$_i" -lt "$_n" ]; do
        jget _md "${_mp}_mounts_${_i}_destination"
        jget _mt "${_mp}_mounts_${_i}_type"
        jget _ms "${_mp}_mounts_${_i}_source"
        jlen _no "${_mp}_mounts_${_i}_options"
        _mo= _k=0
        while [ "$_k" -lt "$_no" ]; do
            jget _x "${_mp}_mounts_${_i}_options_${_k}"
            _mo="$_mo,$_x"
            _k=$((_k + 1))
        done
        case "$_md" in
            /*) _full="$_root$_md" ;;
            *) _full="$_rel/$_md" ;;
        esac
        debug "mount ${_mt:--} ${_ms:--} on $_full (${_mo#,})"
        mount_spec "$_full" "$_mt" "$_ms" "${_mo#,}"
        [ $? -ne 1 ] || error "${LKCTL_NAME:-init}: mounting ${_ms:-$_mt} on $_full failed"
        _i=$((_i + 1))
    done
}

# run_parts DIR: run every regular file of DIR in name order (symlinks followed), like linuxkit's rc.init. A
# /bin/sh script runs in a subshell of this one (this file already loaded: a fork, no exec, no parsing lib.sh
# again); anything else is executed (or given to sh when it is not executable).
run_parts() {
    for _f in "$1"/*; do
        [ -f "$_f" ] || continue
        debug "running $_f"
        _l=
        read -r _l <"$_f"
        if [ "$_l" = "#!/bin/sh" ]; then (. "$_f"); elif [ -x "$_f" ]; then "$_f"; else sh "$_f"; fi ||
            error "$_f failed with status $?"
    done
}

# log_to NAME FILE: append stdin to FILE and copy it to the console with a "[NAME] " prefix, each line as soon as
# it is written. (Not sed: busybox sed reads one line ahead to know the last one, so a service's latest line stayed
# off the console until it printed another. The shell's read takes a byte at a time and holds nothing back.) No tee
# either: the loop writes both copies (the file gets the text as written; only NUL bytes cannot pass a shell
# variable), which spares every container two processes while it starts.
log_to() {
    while :; do
        if IFS= read -r _line; then
            printf '%s\n' "$_line" >&3
        elif [ -n "$_line" ]; then
            printf '%s' "$_line" >&3 # the last line had no newline: nor has the file
        else
            break
        fi
        printf '[%s] %s\n' "$1" "$_line"
    done 3>>"$2" >"${LKCTL_CONSOLE:-/dev/console}"
}

# bundle_name DIR: the container name of a bundle dir (onboot's "000-" order prefix dropped).
bundle_name() {
    _bn=${1%/}
    _bn=${_bn##*/}
    case "$_bn" in [0-9][0-9][0-9]-?*) _bn=${_bn#????} ;; esac
    echo "$_bn"
}

# run_bundles DIR KIND: run each bundle of DIR in name order, waiting for each (onboot, onshutdown).
# A failure is reported and the next one still runs, as in linuxkit.
run_bundles() {
    [ -d "$1" ] || return 0
    mkdir -p "/var/log/$2"
    for _b in "$1"/*/; do
        _b=${_b%/}
        [ -f "$_b/config.json" ] || continue
        _n=$(bundle_name "$_b")
        debug "$2: running $_n"
        set -o pipefail
        /usr/lib/lkctl/container run "$_b" "$_n" </dev/null 2>&1 | log_to "$_n" "/var/log/$2/$_n.log"
        _rc=$?
        set +o pipefail
        [ "$_rc" -eq 0 ] || error "$2 container $_n exited with status $_rc"
    done
}

# start_service DIR: start the service bundle DIR in the background, in its own session, its output in
# /var/log/<name>.log and on the console. Its pid (= process group) goes in /run/lkctl/services/<name>.pid.
start_service() {
    _n=${1%/}
    _n=${_n##*/}
    [ -d "$LKCTL_RUN/services" ] || mkdir -p "$LKCTL_RUN/services"
    debug "starting service $_n"
    (
        set -o pipefail
        LKCTL_PIDFILE=$LKCTL_RUN/services/$_n.pid setsid /usr/lib/lkctl/container run "$1" "$_n" </dev/null 2>&1 |
            log_to "$_n" "/var/log/$_n.log"
        _rc=$?
        echo "$_rc" >"$LKCTL_RUN/services/$_n.status"
        [ -e "$LKCTL_RUN/shutdown" ] || error "service $_n exited with status $_rc"
    ) &
}

# stop_services [TIMEOUT]: SIGTERM every service's process group, SIGKILL what is left after TIMEOUT seconds.
stop_services() {
    _left=
    for _p in "$LKCTL_RUN"/services/*.pid; do
        [ -f "$_p" ] || continue
        _n=${_p##*/}
        _n=${_n%.pid}
        kill -TERM -"$(cat "$_p")" 2>/dev/null && _left="$_left $_n"
    done
    _t=$((${1:-5} * 10))
    while [ -n "$_left" ] && [ "$_t" -gt 0 ]; do
        _alive=
        for _n in $_left; do
            kill -0 -"$(cat "$LKCTL_RUN/services/$_n.pid")" 2>/dev/null && _alive="$_alive $_n"
        done
        _left=$_alive
        [ -z "$_left" ] || usleep 100000
        _t=$((_t - 1))
    done
    for _n in $_left; do
        say "service $_n still running ${1:-5}s after SIGTERM; killing it"
        kill -KILL -"$(cat "$LKCTL_RUN/services/$_n.pid")" 2>/dev/null
    done
}
