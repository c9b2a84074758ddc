"""Stage 2, the nested stack: L1's root filesystem and L2's initramfs, L1 under QEMU
(TCG or KVM), L2 under L1's KVM, serial consoles, SSH/SFTP.
"""
