/* Harness-supplied tiny guests for the modes that are not graded.
 * Default: a 16-bit real-mode guest that writes 'R' to port 0xE9 and halts.
 * -DSTUB32: a 32-bit stub used when guest.c does not build with -m32. */
	.section .start, "ax"
	.globl _start
#ifdef STUB32
	.code32
_start:
	movl $42, 0x400
	movl $42, %eax
1:	hlt
	jmp 1b
#else
	.code16
_start:
	movb $'R', %al
	outb %al, $0xE9
	movb $'\n', %al
	outb %al, $0xE9
	movw $42, %ax
1:	hlt
	jmp 1b
#endif
