/*
 * hostcpuid-trace: call a syscall in a tight loop and record, per call, what it
 * returned, on which vCPU, when, and how long it took.
 *
 *   hostcpuid-trace [-n COUNT] [-d SECONDS] [-c VCPU] [-s SYSCALL_NR]
 *                   [-m hostcpuid|getppid] [--bare | --interleave-bare B] -o FILE
 *
 * The syscall is issued with `svc #0` from inline assembly so that the raw x0
 * comes back untouched (glibc's syscall() would turn -1..-4095 into -1/errno).
 * Time is read from the generic timer's virtual counter (CNTVCT_EL0, the clock
 * CLOCK_MONOTONIC is built on) with one instruction instead of the vDSO, and turned
 * into CLOCK_MONOTONIC nanoseconds after the loop.
 * Records live in a pre-faulted memory buffer and are written to FILE in one go
 * at the end; the format is described in README.md and parsed by harness/observe/trace.py.
 * On success one JSON line goes to stdout.  Exit codes: 0 ok, 2 bad arguments,
 * 3 pinning failed, 4 out of memory, 5 output file error.
 *
 * Build: aarch64-linux-gnu-gcc -static -O2 -o hostcpuid-trace hostcpuid_trace.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/rseq.h>
#include <time.h>
#include <unistd.h>

#if !defined(__aarch64__)
#error "hostcpuid-trace issues arm64 system calls with svc #0: build it for aarch64"
#endif

#define TRACE_MAGIC "HCPUTRC\0"
#define TRACE_VERSION 1
#define NR_GETPPID 173 /* arm64 / asm-generic */
#define NR_GETCPU 168

enum { MODE_HOSTCPUID = 0, MODE_GETPPID = 1 };
enum {
	FLAG_BARE = 1,           /* loop ran without recording: no records follow */
	FLAG_COUNT_LIMIT = 2,    /* -n given */
	FLAG_DURATION_LIMIT = 4, /* -d given */
	FLAG_STOPPED_BY_TIME = 8, /* the duration ran out before the count */
	FLAG_VCPU_RSEQ = 16,      /* vcpu read from the rseq area (else the getcpu syscall) */
	FLAG_INTERLEAVED = 32     /* bare blocks ran between recorded blocks (--interleave-bare) */
};

/* All fields little-endian (the native order on arm64). 96 bytes. */
struct trace_header {
	char magic[8];
	uint16_t version;
	uint16_t header_size;
	uint16_t record_size;
	uint16_t flags;
	uint32_t mode;
	int32_t syscall_nr;
	int32_t pinned_vcpu; /* -1 when not pinned */
	uint32_t reserved0;
	uint64_t requested_count;       /* 0 = no count limit */
	uint64_t requested_duration_ns; /* 0 = no time limit */
	uint64_t calls;                 /* calls actually made */
	uint64_t n_records;             /* records following the header */
	uint64_t start_ns;              /* CLOCK_MONOTONIC */
	uint64_t end_ns;
	uint64_t reserved1[2];
};

/* 32 bytes per call. */
struct trace_record {
	uint32_t seq;
	int32_t vcpu;    /* from getcpu() right after the call */
	uint64_t t_ns;   /* CLOCK_MONOTONIC just before the call */
	int64_t ret;     /* raw x0 */
	uint64_t lat_ns; /* clock after the call minus clock before */
};

_Static_assert(sizeof(struct trace_header) == 96, "header layout");
_Static_assert(sizeof(struct trace_record) == 32, "record layout");

static inline int64_t raw_syscall0(long nr)
{
	register long x8 __asm__("x8") = nr;
	register long x0 __asm__("x0");
	__asm__ volatile("svc #0" : "=r"(x0) : "r"(x8) : "memory", "cc");
	return x0;
}

static inline int raw_getcpu(void)
{
	unsigned cpu = 0;
	register long x8 __asm__("x8") = NR_GETCPU;
	register long x0 __asm__("x0") = (long)&cpu;
	register long x1 __asm__("x1") = 0;
	register long x2 __asm__("x2") = 0;
	__asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory", "cc");
	return x0 < 0 ? (int)x0 : (int)cpu;
}

/*
 * The vCPU after each call.  glibc (>= 2.35) registers an rseq area per thread, and the
 * kernel keeps its cpu_id current on every return to user space: reading it costs a
 * load, where getcpu costs a syscall (~2 us in L2, as much as a getppid).  Falls back
 * to the raw getcpu syscall when rseq is not registered (old kernel, qemu-user,
 * GLIBC_TUNABLES=glibc.pthread.rseq=0) or with --getcpu.
 */
static volatile struct rseq *rseq_area;

static void init_rseq(void)
{
	if (__rseq_size < offsetof(struct rseq, cpu_id) + sizeof(uint32_t))
		return;
	struct rseq *r = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
	if ((int32_t)r->cpu_id >= 0)
		rseq_area = r;
}

static inline int current_vcpu(void)
{
	return rseq_area ? (int)(int32_t)rseq_area->cpu_id : raw_getcpu();
}

/*
 * The clock.  CNTVCT_EL0 counts at CNTFRQ_EL0 Hz and is what the kernel's CLOCK_MONOTONIC
 * reads too; reading it is one instruction (the isb keeps it from being read before the
 * instructions in front of it), where clock_gettime() runs the vDSO's sequence-lock loop.
 * Records hold raw ticks during the loop; to_ns() converts them afterwards, anchored to a
 * CLOCK_MONOTONIC reading taken at the same moment as a counter reading.
 */
static inline uint64_t ticks(void)
{
	uint64_t v;
	__asm__ volatile("isb\n\tmrs %0, cntvct_el0" : "=r"(v) : : "memory");
	return v;
}

/* Right after `svc`: the exception return is context-synchronizing already, no isb needed. */
static inline uint64_t ticks_after_svc(void)
{
	uint64_t v;
	__asm__ volatile("mrs %0, cntvct_el0" : "=r"(v) : : "memory");
	return v;
}

static uint64_t tick_hz, anchor_ticks, anchor_ns;

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void init_clock(void)
{
	__asm__ volatile("mrs %0, cntfrq_el0" : "=r"(tick_hz));
	if (tick_hz == 0)
		tick_hz = 1; /* never divide by zero; a broken CNTFRQ shows as absurd timestamps */
	anchor_ticks = ticks();
	anchor_ns = mono_ns();
}

static inline uint64_t span_ns(uint64_t dticks)
{
	return (uint64_t)((unsigned __int128)dticks * 1000000000u / tick_hz);
}

static inline uint64_t to_ns(uint64_t t)
{
	return t >= anchor_ticks ? anchor_ns + span_ns(t - anchor_ticks) : anchor_ns - span_ns(anchor_ticks - t);
}

/* One recorded call; returns the counter after it. */
static inline uint64_t record_call(struct trace_record *r, uint32_t seq, long nr)
{
	uint64_t t0 = ticks();
	int64_t ret = raw_syscall0(nr);
	uint64_t t1 = ticks_after_svc();
	r->seq = seq;
	r->vcpu = current_vcpu();
	r->t_ns = t0;
	r->ret = ret;
	r->lat_ns = t1 - t0;
	return t1;
}

static void records_to_ns(struct trace_record *r, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		r[i].t_ns = to_ns(r[i].t_ns);
		r[i].lat_ns = span_ns(r[i].lat_ns);
	}
}

static const char *prog = "hostcpuid-trace";

static void usage(FILE *f)
{
	fprintf(f,
		"usage: %s [-n COUNT] [-d SECONDS] [-c VCPU] [-s SYSCALL_NR]\n"
		"       [-m hostcpuid|getppid] [--bare | --interleave-bare B] [--getcpu] -o FILE\n"
		"  -n COUNT     number of calls (1..4294967295)\n"
		"  -d SECONDS   stop after this many seconds (with -n: whichever first)\n"
		"  -c VCPU      pin to this vCPU with sched_setaffinity (verified)\n"
		"  -s NR        syscall number of host_cpuid (required in hostcpuid mode)\n"
		"  -m MODE      hostcpuid (default) or getppid (syscall %d, for comparison)\n"
		"  --bare       same loop without recording; only the total time\n"
		"  --interleave-bare B  after every B recorded calls, B bare ones, timed apart:\n"
		"               the recording overhead measured in one run (needs -n, not -d)\n"
		"  --getcpu     read the vCPU with the getcpu syscall, not from the rseq area\n"
		"  -o FILE      binary trace output (required unless --bare)\n",
		prog, NR_GETPPID);
}

static void die(int code, const char *fmt, const char *arg)
{
	fprintf(stderr, "%s: ", prog);
	fprintf(stderr, fmt, arg);
	fputc('\n', stderr);
	exit(code);
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	if (!s || !*s || *s == '-' || *s == '+')
		return -1;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end)
		return -1;
	*out = v;
	return 0;
}

/* Anonymous, pre-faulted memory: no page faults inside the measured loop. */
static void *alloc_prefaulted(size_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	/* MAP_POPULATE is best effort; touch every page so failure shows up now, not mid-loop */
	for (size_t off = 0; off < bytes; off += 4096)
		((volatile char *)p)[off] = 0;
	return p;
}

static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t n = write(fd, p, len > (1u << 30) ? (1u << 30) : len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Duration-only runs grow the record store in pre-faulted chunks. */
#define CHUNK_RECORDS (1u << 16)
struct chunk {
	struct trace_record *rec;
	size_t used;
};

int main(int argc, char **argv)
{
	uint64_t count = 0, seconds_ns = 0;
	uint64_t interleave = 0;
	int have_count = 0, have_duration = 0, bare = 0, force_getcpu = 0, vcpu = -1, mode = MODE_HOSTCPUID;
	long nr = -1;
	const char *out = NULL;

	static const struct option longopts[] = {
		{"bare", no_argument, NULL, 'B'},
		{"getcpu", no_argument, NULL, 'G'},
		{"interleave-bare", required_argument, NULL, 'I'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int opt;
	while ((opt = getopt_long(argc, argv, "n:d:c:s:m:o:h", longopts, NULL)) != -1) {
		uint64_t v;
		switch (opt) {
		case 'n':
			if (parse_u64(optarg, &v) || v == 0 || v > UINT32_MAX)
				die(2, "bad -n COUNT '%s' (1..4294967295)", optarg);
			count = v;
			have_count = 1;
			break;
		case 'd': {
			char *end;
			errno = 0;
			double d = strtod(optarg, &end);
			if (errno || *end || !(d > 0) || d > 1e6)
				die(2, "bad -d SECONDS '%s' (a positive number)", optarg);
			seconds_ns = (uint64_t)(d * 1e9);
			if (seconds_ns == 0)
				seconds_ns = 1;
			have_duration = 1;
			break;
		}
		case 'c':
			if (parse_u64(optarg, &v) || v >= CPU_SETSIZE)
				die(2, "bad -c VCPU '%s'", optarg);
			vcpu = (int)v;
			break;
		case 's':
			if (parse_u64(optarg, &v) || v > 4095)
				die(2, "bad -s SYSCALL_NR '%s' (0..4095)", optarg);
			nr = (long)v;
			break;
		case 'm':
			if (!strcmp(optarg, "hostcpuid"))
				mode = MODE_HOSTCPUID;
			else if (!strcmp(optarg, "getppid"))
				mode = MODE_GETPPID;
			else
				die(2, "bad -m MODE '%s' (hostcpuid or getppid)", optarg);
			break;
		case 'o':
			if (!*optarg)
				die(2, "empty -o FILE%s", "");
			out = optarg;
			break;
		case 'B':
			bare = 1;
			break;
		case 'G':
			force_getcpu = 1;
			break;
		case 'I':
			if (parse_u64(optarg, &v) || v == 0 || v > UINT32_MAX)
				die(2, "bad --interleave-bare BLOCK '%s' (1..4294967295)", optarg);
			interleave = v;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc)
		die(2, "unexpected argument '%s'", argv[optind]);
	if (!have_count && !have_duration)
		die(2, "give -n COUNT and/or -d SECONDS%s", "");
	if (!out && !bare)
		die(2, "-o FILE is required (unless --bare)%s", "");
	if (interleave && (bare || !have_count || have_duration))
		die(2, "--interleave-bare needs -n COUNT, and neither -d nor --bare%s", "");
	if (mode == MODE_HOSTCPUID && nr < 0)
		die(2, "hostcpuid mode needs -s SYSCALL_NR (436 on v5.4, 451 with the 6.1 profile)%s", "");
	if (mode == MODE_GETPPID) {
		if (nr >= 0 && nr != NR_GETPPID)
		{
			char buf[24];
			snprintf(buf, sizeof(buf), "%ld", nr);
			die(2, "-m getppid calls syscall 173; -s %s contradicts it", buf);
		}
		nr = NR_GETPPID;
	}

	if (!force_getcpu)
		init_rseq();

	if (vcpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(vcpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set) != 0) {
			fprintf(stderr, "%s: cannot pin to vCPU %d: %s\n", prog, vcpu, strerror(errno));
			return 3;
		}
		cpu_set_t got;
		CPU_ZERO(&got);
		int cur = raw_getcpu();
		if (rseq_area && (int)(int32_t)rseq_area->cpu_id != cur) {
			fprintf(stderr, "%s: rseq cpu_id %d disagrees with getcpu %d\n", prog,
				(int)(int32_t)rseq_area->cpu_id, cur);
			return 3;
		}
		if (sched_getaffinity(0, sizeof(got), &got) != 0 || CPU_COUNT(&got) != 1 || !CPU_ISSET(vcpu, &got) ||
		    cur != vcpu) {
			fprintf(stderr, "%s: pinning to vCPU %d did not hold (running on %d)\n", prog, vcpu, cur);
			return 3;
		}
	}

	/* Record storage. */
	struct trace_record *recs = NULL;
	size_t recs_bytes = 0;
	struct chunk *chunks = NULL;
	size_t n_chunks = 0, chunks_cap = 0;
	if (!bare && have_count && !have_duration) {
		recs_bytes = (size_t)count * sizeof(struct trace_record);
		if (count > SIZE_MAX / sizeof(struct trace_record) || !(recs = alloc_prefaulted(recs_bytes))) {
			fprintf(stderr, "%s: cannot allocate %" PRIu64 " records (%" PRIu64 " MiB): %s\n", prog,
				count, (uint64_t)(count * sizeof(struct trace_record)) >> 20, strerror(errno));
			return 4;
		}
	}

	uint64_t limit = have_count ? count : UINT32_MAX;
	uint64_t calls = 0, bare_calls = 0, rec_ticks = 0, bare_ticks = 0;
	int stopped_by_time = 0;
	init_clock();
	uint64_t start = ticks();
	uint64_t stop_at = have_duration ? start + (uint64_t)((unsigned __int128)seconds_ns * tick_hz / 1000000000u)
					 : UINT64_MAX;
	uint64_t end;

	if (bare) {
		if (have_duration) {
			while (calls < limit) {
				raw_syscall0(nr);
				calls++;
				if (ticks() >= stop_at) {
					stopped_by_time = calls < limit;
					break;
				}
			}
		} else {
			for (; calls < limit; calls++)
				raw_syscall0(nr);
		}
		end = ticks();
	} else if (recs) {
		/* with --interleave-bare B: B recorded calls, B bare calls, B recorded, ... each
		 * block timed on its own, so drift of the machine hits both loops alike */
		struct trace_record *r = recs;
		uint64_t block = interleave ? interleave : limit;
		while (calls < limit) {
			uint64_t n = limit - calls < block ? limit - calls : block;
			uint64_t b0 = ticks();
			for (uint64_t i = 0; i < n; i++)
				record_call(r++, (uint32_t)calls++, nr);
			uint64_t b1 = ticks();
			rec_ticks += b1 - b0;
			if (interleave) {
				for (uint64_t i = 0; i < n; i++)
					raw_syscall0(nr);
				bare_ticks += ticks() - b1;
				bare_calls += n;
			}
		}
		end = ticks();
		records_to_ns(recs, calls);
	} else {
		/* a time limit: chunks of pre-faulted records, allocated between calls, up to COUNT */
		struct chunk *c = NULL;
		while (calls < limit) {
			if (!c || c->used == CHUNK_RECORDS) {
				if (n_chunks == chunks_cap) {
					chunks_cap = chunks_cap ? chunks_cap * 2 : 64;
					struct chunk *nc = realloc(chunks, chunks_cap * sizeof(*chunks));
					if (!nc)
						goto oom;
					chunks = nc;
				}
				c = &chunks[n_chunks];
				c->rec = alloc_prefaulted(CHUNK_RECORDS * sizeof(struct trace_record));
				c->used = 0;
				if (!c->rec)
					goto oom;
				n_chunks++;
			}
			uint64_t t1 = record_call(&c->rec[c->used++], (uint32_t)calls, nr);
			calls++;
			if (t1 >= stop_at) {
				stopped_by_time = calls < limit;
				break;
			}
		}
		end = ticks();
		for (size_t i = 0; i < n_chunks; i++)
			records_to_ns(chunks[i].rec, chunks[i].used);
		if (0) {
		oom:
			fprintf(stderr, "%s: out of memory after %" PRIu64 " records\n", prog, calls);
			return 4;
		}
	}

	if (out) {
		struct trace_header h;
		memset(&h, 0, sizeof(h));
		memcpy(h.magic, TRACE_MAGIC, 8);
		h.version = TRACE_VERSION;
		h.header_size = sizeof(h);
		h.record_size = sizeof(struct trace_record);
		h.flags = (bare ? FLAG_BARE : 0) | (have_count ? FLAG_COUNT_LIMIT : 0) |
			  (have_duration ? FLAG_DURATION_LIMIT : 0) | (stopped_by_time ? FLAG_STOPPED_BY_TIME : 0) |
			  (rseq_area && !bare ? FLAG_VCPU_RSEQ : 0) | (interleave ? FLAG_INTERLEAVED : 0);
		h.mode = (uint32_t)mode;
		h.syscall_nr = (int32_t)nr;
		h.pinned_vcpu = vcpu;
		h.requested_count = have_count ? count : 0;
		h.requested_duration_ns = have_duration ? seconds_ns : 0;
		h.calls = calls;
		h.n_records = bare ? 0 : calls;
		h.start_ns = to_ns(start);
		h.end_ns = to_ns(end);

		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		int bad = fd < 0 || write_all(fd, &h, sizeof(h));
		if (!bad && recs)
			bad = write_all(fd, recs, (size_t)calls * sizeof(struct trace_record));
		for (size_t i = 0; !bad && i < n_chunks; i++)
			bad = write_all(fd, chunks[i].rec, chunks[i].used * sizeof(struct trace_record));
		if (!bad && fsync(fd) != 0 && errno != EINVAL && errno != EROFS)
			bad = 1;
		if (fd >= 0 && close(fd) != 0)
			bad = 1;
		if (bad) {
			fprintf(stderr, "%s: cannot write %s: %s\n", prog, out, strerror(errno));
			return 5;
		}
	}

	uint64_t elapsed = span_ns(end - start);
	/* interleaved: the recorded rate is over the recorded blocks only */
	uint64_t rec_ns = interleave ? span_ns(rec_ticks) : elapsed;
	double rate = rec_ns ? (double)calls * 1e9 / (double)rec_ns : 0.0;
	printf("{\"calls\": %" PRIu64 ", \"elapsed_ns\": %" PRIu64 ", \"calls_per_s\": %.1f, \"mode\": \"%s\", "
	       "\"bare\": %s, \"syscall_nr\": %ld, \"vcpu\": %d, \"stopped_by_time\": %s, \"vcpu_source\": \"%s\", "
	       "\"clock\": \"cntvct\", \"tick_hz\": %" PRIu64,
	       calls, elapsed, rate, mode == MODE_HOSTCPUID ? "hostcpuid" : "getppid", bare ? "true" : "false", nr,
	       vcpu, stopped_by_time ? "true" : "false", bare ? "none" : rseq_area ? "rseq" : "getcpu", tick_hz);
	if (interleave) {
		uint64_t bare_ns = span_ns(bare_ticks);
		double bare_rate = bare_ns ? (double)bare_calls * 1e9 / (double)bare_ns : 0.0;
		printf(", \"bare_calls\": %" PRIu64 ", \"bare_calls_per_s\": %.1f, \"overhead_pct\": %.2f", bare_calls,
		       bare_rate, bare_rate > 0 ? 100.0 * (bare_rate - rate) / bare_rate : 0.0);
	}
	printf("}\n");
	fflush(stdout);
	return 0;
}
