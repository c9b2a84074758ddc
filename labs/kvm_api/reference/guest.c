/*
 * Reference guest for the KVM-API hypercall lab (seed 003).  Freestanding,
 * 64-bit long mode, linked flat at GVA 0 (guest.ld); `_start` is the first byte.
 * Written for this harness.  Port map: see kvm-hello-world.c.
 */
#include <stddef.h>
#include <stdint.h>

#define PORT_PUTCHAR  0xE9
#define PORT_PRINTVAL 0xEA
#define PORT_NUMEXITS 0xEB
#define PORT_DISPLAY  0xEC
#define PORT_FS       0xED

/* Linux x86 values; the hypervisor accepts exactly these. */
#define O_RDONLY 00
#define O_WRONLY 01
#define O_RDWR   02
#define O_CREAT  0100
#define O_EXCL   0200
#define O_TRUNC  01000
#define O_APPEND 02000
#define SEEK_SET 0
#define SEEK_CUR 1
#define SEEK_END 2

static inline void outb(uint16_t port, uint8_t value)
{
	asm volatile("outb %0,%1" : : "a"(value), "Nd"(port) : "memory");
}

static inline void outl(uint16_t port, uint32_t value)
{
	asm volatile("outl %0,%1" : : "a"(value), "Nd"(port) : "memory");
}

static inline uint32_t inl(uint16_t port)
{
	uint32_t ret;
	asm volatile("inl %1,%0" : "=a"(ret) : "Nd"(port) : "memory");
	return ret;
}

/* The guest is identity mapped below 2 MiB, so a pointer fits in 32 bits. */
static inline uint32_t gva32(const void *p)
{
	return (uint32_t)(uintptr_t)p;
}

void printVal(uint32_t val)
{
	outl(PORT_PRINTVAL, val);
}

uint32_t getNumExits(void)
{
	return inl(PORT_NUMEXITS);
}

void display(const char *str)
{
	outl(PORT_DISPLAY, gva32(str));
}

/* Multi-argument calls: the arguments travel in a block in guest memory whose
 * address is the single 32-bit value of the OUT; the result comes back in it. */
struct fs_req {
	uint32_t op;
	uint32_t reserved;
	int64_t ret;
	uint64_t a0, a1, a2;
};

static int64_t fs_call(uint32_t op, uint64_t a0, uint64_t a1, uint64_t a2)
{
	volatile struct fs_req req = { op, 0, 0, a0, a1, a2 };
	outl(PORT_FS, gva32((const void *)&req));
	return req.ret;
}

int open(const char *path, int flags, int mode)
{
	return (int)fs_call(1, (uint64_t)(uintptr_t)path, (uint64_t)(uint32_t)flags, (uint64_t)(uint32_t)mode);
}

long read(int fd, void *buf, unsigned long count)
{
	return (long)fs_call(2, (uint64_t)fd, (uint64_t)(uintptr_t)buf, count);
}

long write(int fd, const void *buf, unsigned long count)
{
	return (long)fs_call(3, (uint64_t)fd, (uint64_t)(uintptr_t)buf, count);
}

int close(int fd)
{
	return (int)fs_call(4, (uint64_t)fd, 0, 0);
}

long lseek(int fd, long offset, int whence)
{
	return (long)fs_call(5, (uint64_t)fd, (uint64_t)offset, (uint64_t)whence);
}

static unsigned long slen(const char *s)
{
	unsigned long n = 0;
	while (s[n])
		n++;
	return n;
}

static void __attribute__((noinline)) demo(void)
{
	const char *p;
	uint32_t before, after;
	int a, b;
	char buf[64];
	long n;

	/* Part A: one exit per character. */
	for (p = "Hello, world!\n"; *p; ++p)
		outb(PORT_PUTCHAR, (uint8_t)*p);

	/* Part B */
	printVal(2024);
	uint32_t numExits = getNumExits();
	printVal(numExits);
	before = getNumExits();
	display("display: this whole line costs one exit\n");
	after = getNumExits();
	printVal(after - before - 1); /* exits spent in display(): 1 */

	/* Part C: two files open at once, interleaved writes, seek, read back. */
	a = open("guest_a.txt", O_RDWR | O_CREAT | O_TRUNC, 0644);
	b = open("guest_b.txt", O_RDWR | O_CREAT | O_TRUNC, 0644);
	printVal((uint32_t)a);
	printVal((uint32_t)b);
	write(a, "first line of A\n", 16);
	write(b, "only line of B\n", 15);
	write(a, "second line of A\n", 17);
	lseek(a, 0, SEEK_SET);
	n = read(a, buf, sizeof(buf) - 1);
	if (n >= 0) {
		buf[n] = '\0';
		display(buf);
	}
	printVal((uint32_t)n);
	close(a);
	close(b);
	/* Errors come back as -errno: ../ is refused (-EPERM = -1), a missing file -ENOENT = -2. */
	printVal((uint32_t)-open("../escape.txt", O_WRONLY | O_CREAT, 0644));
	printVal((uint32_t)-open("missing.txt", O_RDONLY, 0));
	display("done\n");
	(void)slen;
}

void __attribute__((noreturn)) __attribute__((section(".start"))) _start(void)
{
	demo();
	*(volatile long *)0x400 = 42;
	for (;;)
		asm volatile("hlt" : : "a"(42) : "memory");
}
