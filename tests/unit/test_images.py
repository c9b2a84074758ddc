"""Image recipes without mmdebstrap: overlays, argv, cpio writer, ELF reader, payload disk."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.stack import images
from harness.core.errors import ImageError


def parse_newc(data: bytes):
    """Minimal newc reader: name -> (mode, data)."""
    out, off = {}, 0
    while True:
        assert data[off:off + 6] == b"070701", f"bad cpio header at {off}"
        fields = [int(data[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name = data[off + 110: off + 110 + namesize - 1].decode()
        off += 110 + namesize
        off += -off % 4
        body = data[off: off + filesize]
        off += filesize
        off += -off % 4
        if name == "TRAILER!!!":
            return out
        assert fields[2] == 0 and fields[3] == 0, f"{name} not owned by root"
        out[name] = (mode, body)


@pytest.mark.parametrize("overlay,init,tag", [(images.OVERLAY_L1, "sbin/harness-init", "l1"),
                                               (images.OVERLAY_L2, "init", "l2")])
def test_overlay_init_scripts(overlay, init, tag):
    files = images.read_overlay(overlay)
    script = files[init].decode()
    assert script.startswith("#!/bin/busybox sh\n")
    assert images.overlay_mode(init, files[init]) == 0o755
    assert f'"HARNESS-READY {tag}"' in script
    assert "10.0.2.15/24" in script and "via 10.0.2.2" in script
    assert "/etc/dropbear/dropbear_ed25519_host_key" in script and " -s " in script  # key-only logins
    root = [l for l in files["etc/passwd"].decode().splitlines() if l.startswith("root:")]
    assert root and root[0].split(":")[1] == "x"  # dropbear needs a non-empty password field
    assert subprocess.run(["sh", "-n", str(overlay / init)]).returncode == 0


def test_l1_init_mounts_payload_and_keeps_console_shell():
    s = (images.OVERLAY_L1 / "sbin/harness-init").read_text()
    assert "/dev/vdb" in s and "/payload" in s and "-o ro" in s
    assert "cttyhack" in s


def test_l2_init_is_quiet_on_console():
    s = (images.OVERLAY_L2 / "init").read_text()
    # only the ready/error lines may reach the console: every byte costs ~1 ms in L2
    to_console = [l for l in s.splitlines() if "/dev/console" in l and not l.strip().startswith("#")]
    assert all("HARNESS-" in l for l in to_console), to_console
    assert "exec </dev/null >>/run/init.log 2>&1" in s
    assert "cttyhack" not in s


def test_mmdebstrap_argv():
    argv = images.mmdebstrap_argv(images.L1_PACKAGES, Path("/x/root"), mirror="http://m/debian")
    assert argv[:4] == ["mmdebstrap", "--mode=root", "--arch=arm64", "--variant=extract"]
    assert "--include=busybox-static,dropbear-bin,openssh-sftp-server,util-linux,qemu-system-arm" in argv
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in argv
    assert argv[-3:] == ["bookworm", "/x/root", "http://m/debian"]


def test_mke2fs_argv():
    argv = images.mke2fs_argv(Path("/src"), Path("/img"), 64, "lbl")
    assert argv[0] == "mke2fs" and "-d" in argv and argv[-2:] == ["/img", "64M"]


def test_cpio_writer_roundtrip(tmp_path):
    base = tmp_path / "base"
    (base / "bin").mkdir(parents=True)
    (base / "bin/busybox").write_bytes(b"\x7fELFfake")
    os.chmod(base / "bin/busybox", 0o755)
    (base / "usr/lib").mkdir(parents=True)
    os.symlink("openssh/sftp-server", base / "usr/lib/sftp-server")
    raw = images.build_l2_cpio(base, ["bin/sh", "sbin/ip", "bin/busybox"], {"init": b"#!/bin/busybox sh\n"},
                               {"root/.ssh/authorized_keys": (b"ssh-ed25519 AAA x\n", 0o600)}, b"WORKLOAD")
    assert len(raw) % 512 == 0
    entries = parse_newc(raw)
    assert entries["init"] == (0o100755, b"#!/bin/busybox sh\n")
    assert entries["bin/busybox"][1] == b"\x7fELFfake"  # not replaced by an applet link
    assert entries["bin/sh"] == (0o120777, b"/bin/busybox")
    assert entries["sbin/ip"][1] == b"/bin/busybox"
    assert entries["usr/lib/sftp-server"][1] == b"openssh/sftp-server"
    assert entries["usr/bin/hostcpuid-trace"] == (0o100755, b"WORKLOAD")
    assert entries["root/.ssh/authorized_keys"][0] == 0o100600
    assert entries["root/.ssh"][0] == 0o40700
    assert entries["dev/console"][0] == 0o20600
    assert entries["tmp"][0] == 0o41777
    # every entry's parent directory comes first
    names = list(entries)
    for i, n in enumerate(names):
        if "/" in n:
            assert n.rsplit("/", 1)[0] in names[:i], n
    # and GNU cpio agrees
    if shutil.which("cpio"):
        p = subprocess.run(["cpio", "-it", "--quiet"], input=raw, capture_output=True)
        assert p.returncode == 0 and b"usr/bin/hostcpuid-trace" in p.stdout


def test_cpio_rejects_duplicates():
    c = images.Cpio()
    c.file("a", b"", 0o644)
    with pytest.raises(ValueError):
        c.file("a", b"", 0o644)


def test_elf_needed_reads_host_binary():
    ls = shutil.which("ls")
    assert "libc.so.6" in images.elf_needed(Path(os.path.realpath(ls)))


def test_elf_needed_static_and_non_elf(tmp_path):
    (tmp_path / "x").write_text("#!/bin/sh\n")
    assert images.elf_needed(tmp_path / "x") == []


def test_library_closure_follows_symlinks(tmp_path):
    # a fake arm64 root: an ELF from the host needing libc.so.6 -> versioned file
    real = Path(os.path.realpath(shutil.which("true")))
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy(real, root / "bin/prog")
    needed = images.elf_needed(root / "bin/prog")
    libdir = root / "lib/aarch64-linux-gnu"
    libdir.mkdir(parents=True)
    for lib in needed:
        (libdir / (lib + ".real")).write_bytes(b"not elf")
        os.symlink(lib + ".real", libdir / lib)
    (root / "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1").write_bytes(b"ld")
    os.symlink("aarch64-linux-gnu/ld-linux-aarch64.so.1", root / "lib/ld-linux-aarch64.so.1")
    keep = images.library_closure(root, ["bin/prog"], "t")
    for lib in needed:
        assert f"lib/aarch64-linux-gnu/{lib}" in keep and f"lib/aarch64-linux-gnu/{lib}.real" in keep
    assert "lib/ld-linux-aarch64.so.1" in keep and "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1" in keep


def test_library_closure_missing_library(tmp_path):
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy(os.path.realpath(shutil.which("true")), root / "bin/prog")
    with pytest.raises(ImageError, match="not found in the extract") as e:
        images.library_closure(root, ["bin/prog"], "rootfs-l2")
    assert e.value.stage == "rootfs-l2"


@pytest.mark.parametrize("name", ["", "a/b", "..", ".hidden"])
def test_payload_rejects_bad_names(tmp_path, name):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(ImageError, match="bad payload file name") as e:
        images.payload_disk(tmp_path / "p.ext4", {name: f})
    assert e.value.stage == "payload"


def test_payload_rejects_missing_file(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        images.payload_disk(tmp_path / "p.ext4", {"Image": tmp_path / "missing"})


@pytest.mark.skipif(not (shutil.which("mke2fs") and shutil.which("debugfs")), reason="needs e2fsprogs")
def test_payload_disk_contents(tmp_path):
    a = tmp_path / "Image"
    a.write_bytes(os.urandom(300_000))
    b = tmp_path / "initrd"
    b.write_bytes(b"cpio")
    disk = images.payload_disk(tmp_path / "out" / "payload.ext4", {"Image": a, "initramfs.cpio.gz": b},
                               log_dir=tmp_path / "logs")
    assert disk.exists() and (tmp_path / "logs/payload.log").read_text().startswith("$ mke2fs")
    got = subprocess.run(["debugfs", "-R", "cat /Image", str(disk)], capture_output=True).stdout
    assert got == a.read_bytes()
    ls = subprocess.run(["debugfs", "-R", "ls -p /", str(disk)], capture_output=True, text=True).stdout
    assert "/initramfs.cpio.gz/" in ls
    assert not list((tmp_path / "out").glob(".*"))  # staging removed
