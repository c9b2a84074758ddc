#!/bin/sh
# Check the harness in an arm64 Debian userland on this (x86_64) machine, the closest thing
# to an aarch64 CI runner it can offer: arm64 Debian 12 and 13 roots made with mmdebstrap
# and run through qemu-user (binfmt_misc), this repository cloned fresh into each, then
# `make setup`, `make unit`, `make run` and `pytest -m e2e` inside, with PATH limited to
# the system directories.  Everything in there is the arm64 code path: the native gcc (no
# cross compiler), the arm64 qemu-system-aarch64 (TCG: no KVM for it), hostarch's package
# list -- and everything is slower, as on a small arm64 board (see KVM_HARNESS_SLOWDOWN in
# harness/core/deadline.py: the harness measures the factor itself).
#
#   sudo tools/arm64-check.sh                     # both roots, every step: setup unit run e2e
#   sudo tools/arm64-check.sh setup unit          # only these steps
#   sudo SUITES=bookworm tools/arm64-check.sh setup unit run
#
# Environment: SUITES (default "bookworm trixie"), CACHE (default
# ${XDG_CACHE_HOME:-~/.cache}/kvm-harness-arm64: the roots live there, made once and kept,
# with the harness's kernel cache and ccache inside them), MIRROR (default
# http://deb.debian.org/debian), REF (the commit to clone, default HEAD), REUSE_ROOT=0 to
# rebuild the roots, REUSE_CLONE=1 to keep the clone of the same commit (and its .venv)
# from the previous invocation.  KVM_HARNESS_SLOWDOWN, if set, is passed in.  Needs root
# (binfmt_misc, mmdebstrap --mode=root, bind mounts, pivot_root), qemu-user-static (its binfmt file) and
# network to the Debian mirror and PyPI; installs arch-test (mmdebstrap's foreign-arch check)
# when it is missing.
# Times of every step go to $CACHE/arm64-check.times ("suite step seconds status" a line).
set -eu

BINFMT_DIR=${BINFMT_DIR:-/proc/sys/fs/binfmt_misc}
BINFMT_CONF=${BINFMT_CONF:-/usr/lib/binfmt.d/qemu-aarch64.conf}
BINFMT_NAME=qemu-aarch64

say() { echo "arm64-check: $*" >&2; }
die() { say "$*"; exit 2; }

# binfmt_misc: the aarch64 entry registered, enabled, with the F flag (the interpreter is
# opened at registration, so it runs inside a root that does not contain it).
# Prints what it did: "present", "enabled" or "registered".
binfmt_ensure() {
    if [ ! -e "$BINFMT_DIR/register" ]; then
        say "binfmt_misc is not mounted at $BINFMT_DIR: mounting it"
        mount -t binfmt_misc binfmt_misc "$BINFMT_DIR" || die "cannot mount binfmt_misc at $BINFMT_DIR"
    fi
    entry=$BINFMT_DIR/$BINFMT_NAME
    if [ -e "$entry" ]; then
        grep -q '^flags:.*F' "$entry" || die "$entry is registered without the F flag (its interpreter would \
have to exist inside the root): echo -1 > $entry, then run this again"
        if [ "$(head -n 1 "$entry")" = enabled ]; then
            echo present
        else
            say "$entry is disabled: enabling it"
            echo 1 > "$entry"
            echo enabled
        fi
        return
    fi
    [ -r "$BINFMT_CONF" ] || die "no $BINFMT_CONF: apt-get install qemu-user-static (it ships the binfmt entry)"
    line=$(grep -v '^#' "$BINFMT_CONF" | grep -m 1 "^:$BINFMT_NAME:") \
        || die "$BINFMT_CONF has no :$BINFMT_NAME: line"
    say "registering arm64 binaries with binfmt_misc (from $BINFMT_CONF)"
    printf '%s\n' "$line" > "$BINFMT_DIR/register"
    echo registered
}

# where a suite's root lives (made once, kept between runs)
root_of() {
    echo "$CACHE/$1"
}

# a root is usable when its python3 is there and is an arm64 program
root_ready() {
    [ -x "$1/usr/bin/python3" ] && file_is_arm64 "$1/usr/bin/python3"
}

file_is_arm64() {
    # ELF e_machine at offset 18, little-endian: 0xb7 = EM_AARCH64
    [ "$(od -An -tx1 -j18 -N1 "$1" 2>/dev/null | tr -d ' ')" = b7 ]
}

step_cmd() {
    case $1 in
        setup|unit|run) echo "make -C $CLONE $1" ;;
        e2e) echo "$CLONE/.venv/bin/python -m pytest -q -rs -m e2e" ;;
        *) return 1 ;;
    esac
}

[ "${ARM64_CHECK_LIB:-0}" = 1 ] && return 0 2>/dev/null  # sourced by the unit tests: functions only

CACHE=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvm-harness-arm64}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
REF=${REF:-HEAD}
SUITES=${SUITES:-bookworm trixie}
STEPS=${*:-setup unit run e2e}
REPO=$(cd "$(dirname "$0")/.." && pwd)
TIMES=$CACHE/arm64-check.times
CLONE=/srv/kvm-hypercall-harness

for step in $STEPS; do step_cmd "$step" >/dev/null || die "unknown step $step (setup unit run e2e)"; done
[ "$(id -u)" = 0 ] || die "needs root (binfmt_misc, mmdebstrap --mode=root, mounts, pivot_root): run it with sudo"
command -v mmdebstrap >/dev/null || die "mmdebstrap not found: apt-get install mmdebstrap"
mkdir -p "$CACHE"

binfmt_ensure >/dev/null
if ! command -v arch-test >/dev/null; then
    say "installing arch-test (mmdebstrap needs it for a foreign architecture)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q arch-test >&2 || die "cannot install arch-test"
fi

# the site's network settings, if any (as tools/debian13-check.sh)
passenv=""
for var in http_proxy https_proxy no_proxy PIP_INDEX_URL KVM_HARNESS_SLOWDOWN; do
    eval "val=\${$var:-}"
    [ -z "$val" ] || passenv="$passenv $var=$val"
done

for suite in $SUITES; do
    ROOT=$(root_of "$suite")
    # 1. the arm64 root
    if [ "${REUSE_ROOT:-1}" = 0 ] || ! root_ready "$ROOT"; then
        rm -rf "$ROOT"
        t0=$(date +%s)
        # what a fresh Debian has plus what the README asks a user to have before `make
        # setup` (make, git, python3; mount for the pivot_root below)
        mmdebstrap --mode=root --arch=arm64 --variant=apt --include=make,git,python3,ca-certificates,mount \
            "$suite" "$ROOT" "deb $MIRROR $suite main" "deb $MIRROR $suite-updates main" \
            || { echo "$suite mmdebstrap $(( $(date +%s) - t0 )) failed" >> "$TIMES"; die "mmdebstrap $suite failed"; }
        echo "$suite mmdebstrap $(( $(date +%s) - t0 )) ok" | tee -a "$TIMES"
    fi
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"   # no daemons started by apt
    chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    rootenv=$passenv
    if [ -n "${PIP_CERT:-}" ]; then
        [ -r "$PIP_CERT" ] || die "PIP_CERT=$PIP_CERT is not readable"
        cp "$PIP_CERT" "$ROOT/etc/ssl/certs/site-ca-bundle.crt"
        rootenv="$rootenv PIP_CERT=/etc/ssl/certs/site-ca-bundle.crt"
    fi

    # 2. a fresh clone (committed state only, as a user's clone would be); REUSE_CLONE=1
    #    keeps one of the same commit (its .venv too), to run the steps one at a time
    rev=$(git -C "$REPO" rev-parse "$REF")
    if [ "${REUSE_CLONE:-0}" = 1 ] && [ "$(git -C "$ROOT$CLONE" rev-parse HEAD 2>/dev/null)" = "$rev" ]; then
        say "$suite: reusing the clone at $ROOT$CLONE (REUSE_CLONE=1)"
    else
        rm -rf "$ROOT$CLONE"
        mkdir -p "$(dirname "$ROOT$CLONE")"
        git clone -q --no-hardlinks "$REPO" "$ROOT$CLONE"
        git -C "$ROOT$CLONE" checkout -q "$rev"
    fi
    say "$suite: Debian $(cat "$ROOT/etc/debian_version") arm64 root at $ROOT, clone of $(git -C "$REPO" rev-parse --short "$REF")"

    # 3. each step in the root, in a private mount namespace (the binds vanish with it)
    for step in $STEPS; do
        cmd=$(step_cmd "$step")
        t0=$(date +%s)
        status=ok
        # pivot_root, not chroot (as tools/debian13-check.sh: bubblewrap needs user namespaces)
        PASSENV=$rootenv unshare --mount --propagation private /bin/sh -eu -c '
            root=$1; clone=$2; shift 2
            mount --bind "$root" "$root"
            mount --rbind /dev "$root/dev"
            mount -t proc proc "$root/proc"
            mount --rbind /sys "$root/sys"
            mount -t tmpfs tmpfs "$root/tmp"
            mkdir -p "$root/.oldroot"
            cd "$root"
            pivot_root . .oldroot
            exec /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb \
                DEBIAN_FRONTEND=noninteractive $PASSENV /bin/sh -c "umount -l /.oldroot && cd \$0 && exec \"\$@\"" "$clone" "$@"
        ' sh "$ROOT" "$CLONE" $cmd || status="failed($?)"
        echo "$suite $step $(( $(date +%s) - t0 )) $status" | tee -a "$TIMES"
        [ "$status" = ok ] || die "$step failed in the $suite arm64 root (times in $TIMES)"
    done
done
