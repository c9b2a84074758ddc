#!/bin/sh
# Check the harness on Debian 13 (trixie) from this machine, as a new user would meet it:
# a trixie root made with mmdebstrap, this repository cloned fresh into it, /dev (with
# /dev/kvm), /proc and /sys bound in, then `make setup`, `make run` and `make test` run
# inside with PATH limited to the system directories and the distribution's python3.
#
#   sudo tools/debian13-check.sh                  # everything: setup, unit, run (cold+warm), test
#   sudo tools/debian13-check.sh setup unit       # only these steps (setup unit run run test)
#   sudo TREE=/path/to/linux-5.4 tools/debian13-check.sh tree   # both kernels of your own tree
#                                                  # (e.g. v5.4) built with Debian 13's gcc
#
# Environment: ROOT (default /var/tmp/kvm-harness-trixie; made once, reused), MIRROR
# (default http://deb.debian.org/debian), REF (the commit to clone, default HEAD), REUSE_ROOT=0
# to rebuild the root.  Needs root (mmdebstrap --mode=root, bind mounts, chroot), the
# mmdebstrap package and network to the Debian mirror and PyPI.
# A site whose TLS to PyPI is intercepted sets PIP_CERT (a CA bundle on this machine): it is
# copied into the root and passed to pip there, and so are http(s)_proxy/no_proxy/PIP_INDEX_URL;
# nothing else of this machine's environment goes in.
# Times of every step go to $ROOT/../trixie-check.times (one "step seconds status" a line).
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${ROOT:-/var/tmp/kvm-harness-trixie}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
REF=${REF:-HEAD}
STEPS=${*:-setup unit run run test}
TREE=${TREE:-}
TIMES=$(dirname "$ROOT")/trixie-check.times
CLONE=/srv/kvm-hypercall-harness

die() { echo "debian13-check: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap --mode=root, mounts, pivot_root): run it with sudo"
command -v mmdebstrap >/dev/null || die "mmdebstrap not found: apt-get install mmdebstrap"
[ -c /dev/kvm ] || echo "debian13-check: note: no /dev/kvm on this machine (L0 then runs TCG anyway)" >&2

# 1. the trixie root: only what a fresh Debian 13 has plus what the README asks a user to
#    have before `make setup` (make, git, python3; mount, which any installed Debian has and
#    the pivot_root below uses); make setup installs the rest.
if [ "${REUSE_ROOT:-1}" = 0 ] || [ ! -x "$ROOT/usr/bin/python3" ]; then
    rm -rf "$ROOT"
    t0=$(date +%s)
    mmdebstrap --mode=root --variant=apt --include=make,git,python3,ca-certificates,mount \
        trixie "$ROOT" "deb $MIRROR trixie main" "deb $MIRROR trixie-updates main"
    echo "mmdebstrap $(( $(date +%s) - t0 )) ok" >> "$TIMES"
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
[ -x "$ROOT/usr/bin/umount" ] || chroot "$ROOT" apt-get install -y -q mount
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"   # no daemons started by apt
chmod 755 "$ROOT/usr/sbin/policy-rc.d"

# the site's network settings, if any (see above)
passenv=""
for var in http_proxy https_proxy no_proxy PIP_INDEX_URL; do
    eval "val=\${$var:-}"
    [ -z "$val" ] || passenv="$passenv $var=$val"
done
if [ -n "${PIP_CERT:-}" ]; then
    [ -r "$PIP_CERT" ] || die "PIP_CERT=$PIP_CERT is not readable"
    cp "$PIP_CERT" "$ROOT/etc/ssl/certs/site-ca-bundle.crt"
    passenv="$passenv PIP_CERT=/etc/ssl/certs/site-ca-bundle.crt"
fi

# 2. a fresh clone of this repository (committed state only, as a user's clone would be)
rm -rf "$ROOT$CLONE"
mkdir -p "$(dirname "$ROOT$CLONE")"
git clone -q --no-hardlinks "$REPO" "$ROOT$CLONE"
git -C "$ROOT$CLONE" checkout -q "$(git -C "$REPO" rev-parse "$REF")"
echo "debian13-check: $(cat "$ROOT/etc/debian_version") root at $ROOT, clone of $(git -C "$REPO" rev-parse --short "$REF")"

# 3. each step in the root, in a private mount namespace (the binds vanish with it)
for step in $STEPS; do
    treebind=""
    case $step in
        setup|unit|run|test) cmd="make -C $CLONE $step" ;;
        tree)  # the user's tree, read-only, built by the harness as `kvm-harness build` does
            [ -n "$TREE" ] && [ -f "$TREE/Makefile" ] || die "step tree: set TREE to a kernel tree (a directory with a Makefile)"
            mkdir -p "$ROOT/srv/linux-tree"
            treebind=$TREE
            cmd="env KVM_HARNESS_KERNEL_TREE=/srv/linux-tree $CLONE/.venv/bin/python -m harness build --log-dir /srv/tree-build-logs" ;;
        *) die "unknown step $step (setup unit run test tree)" ;;
    esac
    target=$step
    t0=$(date +%s)
    status=ok
    # pivot_root, not chroot: the kernel refuses new user namespaces to a chrooted process,
    # and bubblewrap (the harness's sandbox) needs them; the old root is detached at once.
    PASSENV=$passenv unshare --mount --propagation private /bin/sh -eu -c '
        root=$1; treebind=$2; shift 2
        mount --bind "$root" "$root"
        if [ -n "$treebind" ]; then mount --bind -o ro "$treebind" "$root/srv/linux-tree"; fi
        mount --rbind /dev "$root/dev"
        mount -t proc proc "$root/proc"
        mount --rbind /sys "$root/sys"
        mount -t tmpfs tmpfs "$root/tmp"
        mkdir -p "$root/.oldroot"
        cd "$root"
        pivot_root . .oldroot
        exec /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb \
            DEBIAN_FRONTEND=noninteractive $PASSENV /bin/sh -c "umount -l /.oldroot && cd \$0 && exec \"\$@\"" "'"$CLONE"'" "$@"
    ' sh "$ROOT" "$treebind" $cmd || status="failed($?)"
    echo "make-$target $(( $(date +%s) - t0 )) $status" | tee -a "$TIMES"
    [ "$status" = ok ] || die "make $target failed inside the trixie root (times in $TIMES)"
done
