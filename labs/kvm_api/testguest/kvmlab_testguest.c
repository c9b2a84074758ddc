/*
 * Harness test guest for the KVM-API lab.  Written for this harness.
 *
 * It is compiled together with the submission's guest.c (textually included,
 * so its static helpers are visible) and linked with the submission's
 * hypervisor.  It calls the submission's own guest-side functions, so whatever
 * ports the student chose are used; the harness finds out what happened from the
 * exit record of the oracle, never from this guest's say-so.
 *
 * The harness generates kvmlab_cfg.h, which defines
 *   KVMLAB_MODE              the mode built in: 1 functional, 2 bad address,
 *                            3 huge length, 4 unknown port, 5 unterminated string.
 *                            It is read at run time from kvmlab_mode_tag, so the
 *                            harness builds once and patches the digit after
 *                            "=" in the hypervisor binary for each other mode.
 *   KVMLAB_HAVE_PRINTVAL / _GETNUMEXITS / _DISPLAY / _FS
 *   KVMLAB_PRINTVAL(v) KVMLAB_GETNUMEXITS() KVMLAB_DISPLAY(s)
 *                            the submission's own functions, under its names, with
 *                            any extra argument (a port) as its guest.c passes it
 *   KVMLAB_OPEN_W(p) KVMLAB_OPEN_R(p) KVMLAB_READ(fd,b,n) KVMLAB_WRITE(fd,b,n)
 *   KVMLAB_CLOSE(fd)        adapters to the submission's file functions
 *   KVMLAB_ABS_PATH          an absolute path outside the run directory
 *
 * Marks: printVal(KVMLAB_MARK + i) brackets each step; the harness finds the
 * marks in the OUT data of the exit record.  Keep this file small: the image must
 * stay below 0x2000, where kvm-hello-world style hypervisors put the page tables.
 */
#include "kvmlab_cfg.h"
#include "student_guest.c"

/* The student's O_* macros when guest.c defines them, else Linux x86 values.
 * KVMLAB_O(O_CREAT, ...) pastes the name, so it is not expanded before the test. */
#ifdef O_WRONLY
#define KVMLAB_V_O_WRONLY O_WRONLY
#else
#define KVMLAB_V_O_WRONLY 01
#endif
#ifdef O_CREAT
#define KVMLAB_V_O_CREAT O_CREAT
#else
#define KVMLAB_V_O_CREAT 0100
#endif
#ifdef O_TRUNC
#define KVMLAB_V_O_TRUNC O_TRUNC
#else
#define KVMLAB_V_O_TRUNC 01000
#endif
#ifdef O_RDONLY
#define KVMLAB_V_O_RDONLY O_RDONLY
#else
#define KVMLAB_V_O_RDONLY 0
#endif
#define KVMLAB_O(name, dflt) KVMLAB_V_##name

#define KVMLAB_MARK 0x4B4C0000u
#define KVMLAB_STR(x) (void *)(x)

static inline void kvmlab_out32(unsigned short port, unsigned int v)
{
	asm volatile("outl %0,%1" : : "a"(v), "Nd"(port) : "memory");
}

#ifdef KVMLAB_HAVE_PRINTVAL
#define KVMLAB_P(v) KVMLAB_PRINTVAL(v)
#else
#define KVMLAB_P(v) ((void)0)
#endif

/* Aligned to 256 and after the code: its address is above 0xFF and its low byte is
 * 0, so a display() that passes only 8 bits of the address cannot find it. */
static const char kvmlab_display_text[] __attribute__((aligned(256))) =
	"kvmlab-display-" KVMLAB_NONCE " one exit\n";
#define KVMLAB_LONG 240

#if defined(KVMLAB_HAVE_FS)
static const char kvmlab_a1[] = "alpha-" KVMLAB_NONCE "-1\n";
static const char kvmlab_b1[] = "bravo-" KVMLAB_NONCE "-only\n";
static const char kvmlab_a2[] = "alpha-" KVMLAB_NONCE "-2\n";
#endif

/* the mode, read at run time: the harness patches the digit in the built binary */
static volatile const char kvmlab_mode_tag[] = "kvmlab-mode-" KVMLAB_NONCE "=" KVMLAB_MODE_DIGIT;

static int kvmlab_mode(void)
{
	return kvmlab_mode_tag[sizeof(kvmlab_mode_tag) - 2] - '0';
}

static unsigned long kvmlab_len(const char *s)
{
	unsigned long n = 0;
	while (s[n])
		n++;
	return n;
}

/* its own frame: the 6000 bytes are on the stack only in this mode */
static void __attribute__((noinline)) kvmlab_unterminated(void)
{
#ifdef KVMLAB_HAVE_DISPLAY
	/* 6000 non-NUL bytes, no terminator within them */
	char big[6000];
	for (int i = 0; i < 6000; i++)
		big[i] = 'A';
	asm volatile("" : : "r"(big) : "memory");
	KVMLAB_DISPLAY(KVMLAB_STR(big));
#endif
}

static void __attribute__((noinline)) kvmlab_main(void)
{
	KVMLAB_P(KVMLAB_MARK + 1);
	if (kvmlab_mode() == 1) {
#ifdef KVMLAB_HAVE_GETNUMEXITS
	{
		/* twice, a mark between: a constant or a guest-side counter cannot match both */
		unsigned int n = (unsigned int)KVMLAB_GETNUMEXITS();
		KVMLAB_P(n);
		KVMLAB_P(KVMLAB_MARK + 0x11);
		n = (unsigned int)KVMLAB_GETNUMEXITS();
		KVMLAB_P(n);
	}
#endif
	KVMLAB_P(KVMLAB_MARK + 2);
#ifdef KVMLAB_HAVE_DISPLAY
	KVMLAB_DISPLAY(KVMLAB_STR(kvmlab_display_text));
#endif
	KVMLAB_P(KVMLAB_MARK + 3);
	KVMLAB_P((unsigned long)kvmlab_display_text);
#ifdef KVMLAB_HAVE_DISPLAY
	{
		/* a long string on the stack (a high address): 'L' x KVMLAB_LONG, the nonce */
		char big[KVMLAB_LONG + 16];
		const char *t = KVMLAB_NONCE;
		int i;
		for (i = 0; i < KVMLAB_LONG; i++)
			big[i] = (char)('a' + i % 26);
		for (int k = 0; t[k]; k++)
			big[i++] = t[k];
		big[i++] = '\n';
		big[i] = 0;
		asm volatile("" : : "r"(big) : "memory");
		KVMLAB_P(KVMLAB_MARK + 0x12);
		KVMLAB_DISPLAY(KVMLAB_STR(big));
		KVMLAB_P(KVMLAB_MARK + 0x13);
		KVMLAB_P((unsigned long)big);
	}
#endif
#ifdef KVMLAB_HAVE_FS
	{
		long fa, fb, fr, r;
		unsigned int sum = 0;
		char buf[64];
		KVMLAB_P(KVMLAB_MARK + 4);
		fa = (long)KVMLAB_OPEN_W("kvmlab_a.txt");
		KVMLAB_P(fa);
		fb = (long)KVMLAB_OPEN_W("kvmlab_b.txt");
		KVMLAB_P(fb);
		KVMLAB_P(KVMLAB_WRITE(fa, kvmlab_a1, kvmlab_len(kvmlab_a1)));
		KVMLAB_P(KVMLAB_WRITE(fb, kvmlab_b1, kvmlab_len(kvmlab_b1)));
		KVMLAB_P(KVMLAB_WRITE(fa, kvmlab_a2, kvmlab_len(kvmlab_a2)));
		KVMLAB_CLOSE(fa);
		KVMLAB_CLOSE(fb);
		KVMLAB_P(KVMLAB_MARK + 5);
		for (r = 0; r < (long)sizeof(buf); r++)
			buf[r] = 0;
		fr = (long)KVMLAB_OPEN_R("kvmlab_in.txt");
		KVMLAB_P(fr);
		r = (long)KVMLAB_READ(fr, buf, 37);
		KVMLAB_P(r);
		for (long i = 0; i < 37; i++)
			sum += (unsigned char)buf[i];
		KVMLAB_P(sum);
		buf[37] = '\0';
#ifdef KVMLAB_HAVE_DISPLAY
		KVMLAB_DISPLAY(KVMLAB_STR(buf));
#endif
		KVMLAB_CLOSE(fr);
		KVMLAB_P(KVMLAB_MARK + 6);
		{
			long e;
			e = (long)KVMLAB_OPEN_W("../kvmlab_escape_dotdot.txt");
			KVMLAB_P(e);
			if (e >= 0) { KVMLAB_WRITE(e, "escaped\n", 8); KVMLAB_CLOSE(e); }
			e = (long)KVMLAB_OPEN_W(KVMLAB_ABS_PATH);
			KVMLAB_P(e);
			if (e >= 0) { KVMLAB_WRITE(e, "escaped\n", 8); KVMLAB_CLOSE(e); }
			e = (long)KVMLAB_OPEN_W("kvmlab_link/kvmlab_escape_link.txt");
			KVMLAB_P(e);
			if (e >= 0) { KVMLAB_WRITE(e, "escaped\n", 8); KVMLAB_CLOSE(e); }
		}
		KVMLAB_P(KVMLAB_MARK + 7);
	}
#endif
	} else if (kvmlab_mode() == 2) {
	/* far outside any guest memory a kvm-hello-world style VM has */
#ifdef KVMLAB_HAVE_DISPLAY
	KVMLAB_DISPLAY(KVMLAB_STR(0xFFFFF000UL));
#endif
	} else if (kvmlab_mode() == 3) {
#ifdef KVMLAB_HAVE_FS
	{
		long fd = (long)KVMLAB_OPEN_W("kvmlab_huge.txt");
		KVMLAB_P(fd);
		KVMLAB_P(KVMLAB_WRITE(fd, kvmlab_display_text, 0x7FFFFFF0UL));
	}
#endif
	} else if (kvmlab_mode() == 4) {
	kvmlab_out32(0x3F7, 0x4B4C4B4Cu); /* a port no hypercall uses */
	} else if (kvmlab_mode() == 5) {
		kvmlab_unterminated();
	}
	KVMLAB_P(KVMLAB_MARK + 0xFF);
}

void __attribute__((noreturn, used, section(".kvmlab_entry"))) kvmlab_entry(void)
{
	kvmlab_main();
	*(volatile unsigned long *)0x400 = 42;
	for (;;)
		asm volatile("hlt" : : "a"(42) : "memory");
}
