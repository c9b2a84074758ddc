/* Embeds the flat guest images in the hypervisor under the symbol names a
 * kvm-hello-world style hypervisor declares:
 *   extern const unsigned char guest16[], guest16_end[];   (and 32, 64)
 * Harness-supplied. */
	.section .rodata.guest_payload, "a"
	.balign 16
	.globl guest16, guest16_end, guest32, guest32_end, guest64, guest64_end
guest16:
	.incbin "guest16.img"
guest16_end:
	.balign 16
guest32:
	.incbin "guest32.img"
guest32_end:
	.balign 16
guest64:
	.incbin "guest64.img"
guest64_end:
	.section .note.GNU-stack, "", @progbits
