/*
 * Exit-level oracle for the KVM-API lab: an LD_PRELOAD shim that wraps ioctl().
 * Written for this harness.
 *
 * Enabled when KVMLAB_ORACLE_OUT names a file.  It appends one JSON object per
 * line (the harness parses them in harness/kvmlab/oracle.py):
 *
 *   {"rec":"start","pid":P,"exe":"..."}                       shim loaded
 *   {"rec":"vcpu","pid":P,"fd":F,"mapped":1,"size":S}         KVM_CREATE_VCPU seen
 *   {"rec":"enter","pid":P,"n":N,"fd":F,"stdout":O,"stderr":E,"in_reply":"hex"|null}
 *        before KVM_RUN call number N (1-based over the process): where stdout and
 *        stderr stand (after fflush), and, if the previous exit of this vcpu was an
 *        IN, the bytes the hypervisor put in the data area for the guest.
 *   {"rec":"exit","pid":P,"n":N,"fd":F,"ret":R,"errno":E,"reason":X,...}
 *        after KVM_RUN call N returns.  IO exits add "dir","size","port","count",
 *        "data" (hex of size*count bytes, OUT only, at most 64); MMIO exits add
 *        "phys","len","is_write","data"; FAIL_ENTRY / INTERNAL_ERROR add a code.
 *   {"rec":"end","pid":P,"stdout":O,"stderr":E}                at exit()
 *   {"rec":"mem","pid":P,"slot":S,"gpa":G,"size":Z}             KVM_SET_USER_MEMORY_REGION
 *   {"rec":"fs","pid":P,"n":N,"op":OP,...,"ret":R,"errno":E}    a file call of the hypervisor
 *        N is the number of KVM_RUN calls so far, so the call happened while the
 *        hypervisor handled exit N (0: before the guest ran).  OP is open (also
 *        openat, creat, fopen, openat2 through syscall()) with "path","flags" or "mode";
 *        read / write (also pread, pwrite, fread, fwrite, fgets, fputs, the fprintf and
 *        dprintf families, and their _FORTIFY_SOURCE __*_chk forms) with "fd","count","data" (hex
 *        of the first 32 bytes moved) and "gpa": the guest physical address of the
 *        buffer when it lies in guest memory, else for a write where those bytes are
 *        found in guest memory ("found":1), else -1; lseek (also fseek) with
 *        "fd","off","whence"; close (also fclose) with "fd".  Only descriptors that a
 *        recorded open returned are followed (not stdout, not /dev/kvm).
 *   {"rec":"deliv","pid":P,"n":N,"id":I,"gpa":G}
 *        at the next KVM_RUN after a read into a buffer outside guest memory: where the
 *        bytes read now are in guest memory (-1: nowhere), i.e. whether they reached
 *        the guest.  I is the read's "id".
 *
 * The kvm_run area is read through the shim's *own* read-only mapping of the
 * vcpu fd (it never trusts the program's pointers), so a hypervisor cannot make
 * the record disagree with what KVM reported except by bypassing libc ioctl()
 * (raw syscalls, static linking).  The harness notices that as missing records
 * and reports "oracle unavailable".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/kvm.h>

#define MAX_VCPUS 32
#define MAX_DATA 64
#define MAX_SLOTS 8
#define MAX_FDS 1024
#define FS_DATA 32
#define MAX_PENDING 16
#define SEARCH_LIMIT (64L << 20)

struct vcpu_map {
	int fd;
	const struct kvm_run *run;
	long size;
	int pending_in; /* last exit was KVM_EXIT_IO IN */
};

static int rec_fd = -1;
static struct vcpu_map vcpus[MAX_VCPUS];
static int nvcpus;
static unsigned long nrun;
static long mmap_size = -1;

typedef int (*ioctl_fn)(int, unsigned long, ...);
static ioctl_fn real_ioctl_p;

static void emit(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;
	if (rec_fd < 0)
		return;
	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(buf) - 3)
		n = sizeof(buf) - 3;
	buf[n++] = '\n';
	(void)syscall(SYS_write, rec_fd, buf, (size_t)n);
}

static void hex(char *dst, const unsigned char *src, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		dst[2 * i] = digits[src[i] >> 4];
		dst[2 * i + 1] = digits[src[i] & 15];
	}
	dst[2 * n] = '\0';
}

static long fd_offset(int fd)
{
	return syscall(SYS_lseek, fd, 0L, SEEK_CUR);
}

static void resolve(void)
{
	if (!real_ioctl_p)
		real_ioctl_p = (ioctl_fn)dlsym(RTLD_NEXT, "ioctl");
}

__attribute__((constructor)) static void oracle_init(void)
{
	const char *path = getenv("KVMLAB_ORACLE_OUT");
	char exe[512];
	ssize_t n;
	resolve();
	if (!path || !*path)
		return;
	rec_fd = (int)syscall(SYS_openat, AT_FDCWD, path,
			      O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	/* keep the record fd out of the low numbers a program may close or reuse */
	if (rec_fd >= 0 && rec_fd < 100) {
		int hi = fcntl(rec_fd, F_DUPFD_CLOEXEC, 1000);
		if (hi >= 0) {
			close(rec_fd);
			rec_fd = hi;
		}
	}
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	exe[n > 0 ? n : 0] = '\0';
	for (char *p = exe; *p; p++)
		if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
			*p = '?';
	emit("{\"rec\":\"start\",\"pid\":%d,\"exe\":\"%s\",\"version\":1}", (int)getpid(), exe);
}

__attribute__((destructor)) static void oracle_fini(void)
{
	if (rec_fd < 0)
		return;
	fflush(stdout);
	fflush(stderr);
	emit("{\"rec\":\"end\",\"pid\":%d,\"stdout\":%ld,\"stderr\":%ld}", (int)getpid(),
	     fd_offset(1), fd_offset(2));
}

static struct vcpu_map *find_vcpu(int fd)
{
	for (int i = 0; i < nvcpus; i++)
		if (vcpus[i].fd == fd)
			return &vcpus[i];
	return NULL;
}

static void add_vcpu(int fd)
{
	struct vcpu_map *v;
	void *p = MAP_FAILED;
	if (nvcpus >= MAX_VCPUS)
		return;
	if (mmap_size < 0) {
		int kfd = (int)syscall(SYS_openat, AT_FDCWD, "/dev/kvm", O_RDWR | O_CLOEXEC);
		if (kfd >= 0) {
			mmap_size = real_ioctl_p(kfd, KVM_GET_VCPU_MMAP_SIZE, 0);
			close(kfd);
		}
	}
	if (mmap_size > 0)
		p = mmap(NULL, (size_t)mmap_size, PROT_READ, MAP_SHARED, fd, 0);
	v = &vcpus[nvcpus++];
	v->fd = fd;
	v->run = p == MAP_FAILED ? NULL : p;
	v->size = mmap_size;
	v->pending_in = 0;
	emit("{\"rec\":\"vcpu\",\"pid\":%d,\"fd\":%d,\"mapped\":%d,\"size\":%ld}", (int)getpid(), fd,
	     v->run != NULL, mmap_size);
}

static const unsigned char *io_data(const struct vcpu_map *v, size_t *len)
{
	const struct kvm_run *r = v->run;
	size_t n = (size_t)r->io.size * r->io.count;
	if (n > MAX_DATA)
		n = MAX_DATA;
	if (r->io.data_offset + n > (size_t)v->size) {
		*len = 0;
		return NULL;
	}
	*len = n;
	return (const unsigned char *)r + r->io.data_offset;
}

static void before_run(int fd)
{
	struct vcpu_map *v = find_vcpu(fd);
	char reply[2 * MAX_DATA + 3] = "null";
	nrun++;
	fflush(stdout);
	fflush(stderr);
	if (v && v->run && v->pending_in) {
		size_t n;
		const unsigned char *d = io_data(v, &n);
		if (d) {
			reply[0] = '"';
			hex(reply + 1, d, n);
			strcat(reply, "\"");
		}
	}
	if (v)
		v->pending_in = 0;
	emit("{\"rec\":\"enter\",\"pid\":%d,\"n\":%lu,\"fd\":%d,\"stdout\":%ld,\"stderr\":%ld,\"in_reply\":%s}",
	     (int)getpid(), nrun, fd, fd_offset(1), fd_offset(2), reply);
}

static void after_run(int fd, int ret, int err)
{
	struct vcpu_map *v = find_vcpu(fd);
	const struct kvm_run *r;
	char data[2 * MAX_DATA + 1] = "";
	if (!v || !v->run) {
		emit("{\"rec\":\"exit\",\"pid\":%d,\"n\":%lu,\"fd\":%d,\"ret\":%d,\"errno\":%d,\"reason\":-1}",
		     (int)getpid(), nrun, fd, ret, err);
		return;
	}
	r = v->run;
	switch (r->exit_reason) {
	case KVM_EXIT_IO: {
		size_t n = 0;
		const unsigned char *d = io_data(v, &n);
		int out = r->io.direction == KVM_EXIT_IO_OUT;
		if (d && out)
			hex(data, d, n);
		v->pending_in = !out;
		emit("{\"rec\":\"exit\",\"pid\":%d,\"n\":%lu,\"fd\":%d,\"ret\":%d,\"errno\":%d,\"reason\":%u,"
		     "\"dir\":\"%s\",\"size\":%u,\"port\":%u,\"count\":%u,\"data\":\"%s\"}",
		     (int)getpid(), nrun, fd, ret, err, r->exit_reason, out ? "out" : "in", r->io.size,
		     r->io.port, r->io.count, data);
		return;
	}
	case KVM_EXIT_MMIO: {
		unsigned len = r->mmio.len > 8 ? 8 : r->mmio.len;
		if (r->mmio.is_write)
			hex(data, r->mmio.data, len);
		emit("{\"rec\":\"exit\",\"pid\":%d,\"n\":%lu,\"fd\":%d,\"ret\":%d,\"errno\":%d,\"reason\":%u,"
		     "\"phys\":%llu,\"len\":%u,\"is_write\":%u,\"data\":\"%s\"}",
		     (int)getpid(), nrun, fd, ret, err, r->exit_reason,
		     (unsigned long long)r->mmio.phys_addr, r->mmio.len, r->mmio.is_write, data);
		return;
	}
	case KVM_EXIT_FAIL_ENTRY:
		emit("{\"rec\":\"exit\",\"pid\":%d,\"n\":%lu,\"fd\":%d,\"ret\":%d,\"errno\":%d,\"reason\":%u,\"code\":%llu}",
		     (int)getpid(), nrun, fd, ret, err, r->exit_reason,
		     (unsigned long long)r->fail_entry.hardware_entry_failure_reason);
		return;
	case KVM_EXIT_INTERNAL_ERROR:
		emit("{\"rec\":\"exit\",\"pid\":%d,\"n\":%lu,\"fd\":%d,\"ret\":%d,\"errno\":%d,\"reason\":%u,\"code\":%u}",
		     (int)getpid(), nrun, fd, ret, err, r->exit_reason, r->internal.suberror);
		return;
	default:
		emit("{\"rec\":\"exit\",\"pid\":%d,\"n\":%lu,\"fd\":%d,\"ret\":%d,\"errno\":%d,\"reason\":%u}",
		     (int)getpid(), nrun, fd, ret, err, r->exit_reason);
	}
}


/* ---- guest memory, as the hypervisor registered it ---------------------------- */

struct region {
	uint64_t gpa, size, uaddr;
};
static struct region regions[MAX_SLOTS];
static int nregions;

static void add_region(const struct kvm_userspace_memory_region *m)
{
	if (!m || m->memory_size == 0 || nregions >= MAX_SLOTS)
		return;
	regions[nregions++] = (struct region){ m->guest_phys_addr, m->memory_size, m->userspace_addr };
	emit("{\"rec\":\"mem\",\"pid\":%d,\"slot\":%u,\"gpa\":%llu,\"size\":%llu}", (int)getpid(),
	     m->slot, (unsigned long long)m->guest_phys_addr, (unsigned long long)m->memory_size);
}

static long long gpa_of(const void *p)
{
	uint64_t a = (uint64_t)(uintptr_t)p;
	for (int i = 0; i < nregions; i++)
		if (a >= regions[i].uaddr && a - regions[i].uaddr < regions[i].size)
			return (long long)(regions[i].gpa + (a - regions[i].uaddr));
	return -1;
}

/* Where `needle` occurs in guest memory (GPA), or -1.  Guest memory is copied with
 * process_vm_readv, so a region the program has unmapped is an error, not a crash. */
static long long find_in_guest(const unsigned char *needle, size_t n)
{
	static unsigned char chunk[(1 << 20) + FS_DATA];
	long searched = 0;
	if (n < 4)
		return -1;
	for (int i = 0; i < nregions; i++) {
		for (uint64_t off = 0; off < regions[i].size && searched < SEARCH_LIMIT; off += 1 << 20) {
			size_t len = regions[i].size - off;
			if (len > (1 << 20) + n - 1)
				len = (1 << 20) + n - 1;
			struct iovec local = { chunk, len }, remote = { (void *)(uintptr_t)(regions[i].uaddr + off), len };
			ssize_t got = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
			if (got < (ssize_t)n)
				continue;
			searched += got;
			const unsigned char *hit = memmem(chunk, (size_t)got, needle, n);
			if (hit)
				return (long long)(regions[i].gpa + off + (uint64_t)(hit - chunk));
		}
	}
	return -1;
}

/* ---- the hypervisor's file calls --------------------------------------------- */

static unsigned char tracked[MAX_FDS];
static int busy; /* inside a wrapper: calls libc makes for us are not the program's */

struct pending_read {
	int id;
	size_t n;
	unsigned char data[FS_DATA];
};
static struct pending_read pending[MAX_PENDING];
static int npending, nreads;

static void json_str(char *dst, size_t cap, const char *s)
{
	size_t j = 0;
	if (!s)
		s = "(null)";
	for (size_t i = 0; s[i] && j + 7 < cap && i < 200; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\') {
			dst[j++] = '\\';
			dst[j++] = (char)c;
		} else if (c < 0x20 || c >= 0x7f) {
			j += (size_t)snprintf(dst + j, cap - j, "\\u%04x", c);
		} else {
			dst[j++] = (char)c;
		}
	}
	dst[j] = '\0';
}

static int followed(const char *path)
{
	return path && strncmp(path, "/dev/", 5) && strncmp(path, "/proc/", 6) && strncmp(path, "/sys/", 5);
}

static void rec_open(const char *op, const char *path, long flags, const char *mode, int ret, int err)
{
	char p[1024], m[64];
	if (rec_fd < 0 || !followed(path))
		return;
	if (ret >= 0 && ret < MAX_FDS)
		tracked[ret] = 1;
	json_str(p, sizeof(p), path);
	json_str(m, sizeof(m), mode ? mode : "");
	emit("{\"rec\":\"fs\",\"pid\":%d,\"n\":%lu,\"op\":\"open\",\"call\":\"%s\",\"path\":\"%s\","
	     "\"flags\":%ld,\"mode\":\"%s\",\"ret\":%d,\"errno\":%d}",
	     (int)getpid(), nrun, op, p, flags, m, ret, ret < 0 ? err : 0);
}

static int is_tracked(int fd)
{
	return rec_fd >= 0 && fd >= 0 && fd < MAX_FDS && tracked[fd];
}

static void rec_io(const char *op, const char *call, int fd, const void *buf, size_t count, long ret, int err)
{
	char data[2 * FS_DATA + 1] = "";
	size_t n = ret > 0 ? (size_t)ret : 0;
	long long gpa = gpa_of(buf);
	int found = 0, id = 0;
	if (n > FS_DATA)
		n = FS_DATA;
	if (n)
		hex(data, buf, n);
	if (gpa < 0 && n && op[0] == 'w') {
		gpa = find_in_guest(buf, n);
		found = gpa >= 0;
	}
	if (op[0] == 'r' && n) {
		id = ++nreads;
		if (gpa < 0 && npending < MAX_PENDING) {
			pending[npending].id = id;
			pending[npending].n = n;
			memcpy(pending[npending].data, buf, n);
			npending++;
		}
	}
	emit("{\"rec\":\"fs\",\"pid\":%d,\"n\":%lu,\"op\":\"%s\",\"call\":\"%s\",\"fd\":%d,\"count\":%zu,"
	     "\"ret\":%ld,\"errno\":%d,\"gpa\":%lld,\"found\":%d,\"id\":%d,\"data\":\"%s\"}",
	     (int)getpid(), nrun, op, call, fd, count, ret, ret < 0 ? err : 0, gpa, found, id, data);
}

static void rec_simple(const char *op, const char *call, int fd, long off, int whence, long ret, int err)
{
	if (op[0] == 'c' && fd >= 0 && fd < MAX_FDS)
		tracked[fd] = 0;
	emit("{\"rec\":\"fs\",\"pid\":%d,\"n\":%lu,\"op\":\"%s\",\"call\":\"%s\",\"fd\":%d,\"off\":%ld,"
	     "\"whence\":%d,\"ret\":%ld,\"errno\":%d}",
	     (int)getpid(), nrun, op, call, fd, off, whence, ret, ret < 0 ? err : 0);
}

static void check_deliveries(void)
{
	for (int i = 0; i < npending; i++)
		emit("{\"rec\":\"deliv\",\"pid\":%d,\"n\":%lu,\"id\":%d,\"gpa\":%lld}", (int)getpid(), nrun,
		     pending[i].id, find_in_guest(pending[i].data, pending[i].n));
	npending = 0;
}

/* the next definition of `name` (libc's), typed like the declaration in its header */
#define REAL(name) \
	static __typeof__(&name) real_##name; \
	if (!real_##name) \
		real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name)

#define OPEN_MODE(flags) \
	mode_t mode = 0; \
	if ((flags) & (O_CREAT | O_TMPFILE)) { \
		va_list ap; \
		va_start(ap, flags); \
		mode = (mode_t)va_arg(ap, int); \
		va_end(ap); \
	}

#define WRAP_OPEN(name) \
	int name(const char *path, int flags, ...) \
	{ \
		OPEN_MODE(flags); \
		REAL(name); \
		int outer = !busy++, ret = real_##name(path, flags, mode), err = errno; \
		busy--; \
		if (outer) \
			rec_open(#name, path, flags, NULL, ret, err); \
		errno = err; \
		return ret; \
	}
WRAP_OPEN(open)
WRAP_OPEN(open64)

#define WRAP_OPENAT(name) \
	int name(int dirfd, const char *path, int flags, ...) \
	{ \
		OPEN_MODE(flags); \
		REAL(name); \
		int outer = !busy++, ret = real_##name(dirfd, path, flags, mode), err = errno; \
		busy--; \
		if (outer) \
			rec_open(#name, path, flags, NULL, ret, err); \
		errno = err; \
		return ret; \
	}
WRAP_OPENAT(openat)
WRAP_OPENAT(openat64)

#define WRAP_CREAT(name) \
	int name(const char *path, mode_t mode) \
	{ \
		REAL(name); \
		int outer = !busy++, ret = real_##name(path, mode), err = errno; \
		busy--; \
		if (outer) \
			rec_open(#name, path, O_WRONLY | O_CREAT | O_TRUNC, NULL, ret, err); \
		errno = err; \
		return ret; \
	}
WRAP_CREAT(creat)
WRAP_CREAT(creat64)

#define WRAP_FOPEN(name) \
	FILE *name(const char *path, const char *m) \
	{ \
		REAL(name); \
		int outer = !busy++; \
		FILE *f = real_##name(path, m); \
		int err = errno; \
		busy--; \
		if (outer) \
			rec_open(#name, path, -1, m, f ? fileno(f) : -1, err); \
		errno = err; \
		return f; \
	}
WRAP_FOPEN(fopen)
WRAP_FOPEN(fopen64)

/* openat2 has no libc wrapper: programs reach it through syscall() */
long syscall(long nr, ...)
{
	va_list ap;
	long a[6];
	REAL(syscall);
	va_start(ap, nr);
	for (int i = 0; i < 6; i++)
		a[i] = va_arg(ap, long);
	va_end(ap);
	long ret = real_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
	int err = errno;
#ifdef SYS_openat2
	if (nr == SYS_openat2 && !busy && rec_fd >= 0) {
		const struct { uint64_t flags, mode, resolve; } *how = (const void *)a[2];
		rec_open("openat2", (const char *)a[1], how ? (long)how->flags : -1, NULL, (int)ret, err);
	}
#endif
	errno = err;
	return ret;
}

#define WRAP_RW(name, op, ctype) \
	ssize_t name(int fd, ctype buf, size_t count) \
	{ \
		REAL(name); \
		int outer = !busy++; \
		ssize_t ret = real_##name(fd, buf, count); \
		int err = errno; \
		busy--; \
		if (outer && is_tracked(fd)) \
			rec_io(op, #name, fd, buf, count, (long)ret, err); \
		errno = err; \
		return ret; \
	}
WRAP_RW(read, "read", void *)
WRAP_RW(write, "write", const void *)

#define WRAP_PRW(name, op, ctype) \
	ssize_t name(int fd, ctype buf, size_t count, off_t off) \
	{ \
		REAL(name); \
		int outer = !busy++; \
		ssize_t ret = real_##name(fd, buf, count, off); \
		int err = errno; \
		busy--; \
		if (outer && is_tracked(fd)) \
			rec_io(op, #name, fd, buf, count, (long)ret, err); \
		errno = err; \
		return ret; \
	}
WRAP_PRW(pread, "read", void *)
WRAP_PRW(pread64, "read", void *)
WRAP_PRW(pwrite, "write", const void *)
WRAP_PRW(pwrite64, "write", const void *)

#define WRAP_STDIO(name, op, ctype) \
	size_t name(ctype buf, size_t size, size_t nmemb, FILE *f) \
	{ \
		REAL(name); \
		int outer = !busy++; \
		size_t ret = real_##name(buf, size, nmemb, f); \
		int err = errno; \
		busy--; \
		if (outer && is_tracked(fileno(f))) /* libc's call ran: f is a stream */ \
			rec_io(op, #name, fileno(f), buf, size * nmemb, (long)(ret * size), err); \
		errno = err; \
		return ret; \
	}
WRAP_STDIO(fread, "read", void *)
WRAP_STDIO(fwrite, "write", const void *)

/* ---- the same calls in other forms ------------------------------------------
 * stdio's text calls never reach the read/write above (libc calls its own
 * internals), and _FORTIFY_SOURCE (Ubuntu's default, the lab's later build
 * profiles) compiles read, pread, fread, fgets and the printf family into checked
 * __*_chk forms.  Each is recorded under the name the program's source uses.  The
 * real call runs first, so a stream reaching fileno() is one libc accepted. */

ssize_t __read_chk(int fd, void *buf, size_t count, size_t buflen);
ssize_t __pread_chk(int fd, void *buf, size_t count, off_t off, size_t buflen);
ssize_t __pread64_chk(int fd, void *buf, size_t count, off64_t off, size_t buflen);
size_t __fread_chk(void *buf, size_t buflen, size_t size, size_t nmemb, FILE *f);
char *__fgets_chk(char *s, size_t buflen, int n, FILE *f);
int __fprintf_chk(FILE *f, int flag, const char *fmt, ...);
int __vfprintf_chk(FILE *f, int flag, const char *fmt, va_list ap);
int __dprintf_chk(int fd, int flag, const char *fmt, ...);
int __vdprintf_chk(int fd, int flag, const char *fmt, va_list ap);

static void io_done(int outer, const char *op, const char *call, int fd, const void *buf, size_t count,
		    long ret, int err)
{
	if (outer && is_tracked(fd))
		rec_io(op, call, fd, buf, count, ret, err);
	errno = err;
}

/* libc's `name` run as `expr` into `ret`, its errno kept in `err`; `outer`: the
 * program's own call, not one libc made for a wrapper */
#define CALL_REAL(name, type, expr) \
	REAL(name); \
	int outer = !busy++; \
	type ret = expr; \
	int err = errno; \
	busy--

ssize_t __read_chk(int fd, void *buf, size_t count, size_t buflen)
{
	CALL_REAL(__read_chk, ssize_t, real___read_chk(fd, buf, count, buflen));
	io_done(outer, "read", "read", fd, buf, count, (long)ret, err);
	return ret;
}

#define WRAP_PREAD_CHK(name, off_type) \
	ssize_t name(int fd, void *buf, size_t count, off_type off, size_t buflen) \
	{ \
		CALL_REAL(name, ssize_t, real_##name(fd, buf, count, off, buflen)); \
		io_done(outer, "read", "pread", fd, buf, count, (long)ret, err); \
		return ret; \
	}
WRAP_PREAD_CHK(__pread_chk, off_t)
WRAP_PREAD_CHK(__pread64_chk, off64_t)

size_t __fread_chk(void *buf, size_t buflen, size_t size, size_t nmemb, FILE *f)
{
	CALL_REAL(__fread_chk, size_t, real___fread_chk(buf, buflen, size, nmemb, f));
	io_done(outer, "read", "fread", fileno(f), buf, size * nmemb, (long)(ret * size), err);
	return ret;
}

/* fgets: the bytes moved are the string it stored */
char *fgets(char *s, int n, FILE *f)
{
	CALL_REAL(fgets, char *, real_fgets(s, n, f));
	io_done(outer, "read", "fgets", fileno(f), s, n > 0 ? (size_t)n : 0, ret ? (long)strlen(s) : 0, err);
	return ret;
}

char *__fgets_chk(char *s, size_t buflen, int n, FILE *f)
{
	CALL_REAL(__fgets_chk, char *, real___fgets_chk(s, buflen, n, f));
	io_done(outer, "read", "fgets", fileno(f), s, n > 0 ? (size_t)n : 0, ret ? (long)strlen(s) : 0, err);
	return ret;
}

int fputs(const char *s, FILE *f)
{
	CALL_REAL(fputs, int, real_fputs(s, f));
	size_t len = strlen(s);
	io_done(outer, "write", "fputs", fileno(f), s, len, ret >= 0 ? (long)len : -1, err);
	return ret;
}

/* the printf family: what was printed is formatted once more (from a copy of the
 * arguments) for the record; its first bytes are then looked for in guest memory */
static void printed(int outer, const char *call, int fd, int ret, int err, const char *fmt, va_list ap)
{
	char text[FS_DATA + 1] = "";
	if (outer && is_tracked(fd) && ret > 0)
		vsnprintf(text, sizeof(text), fmt, ap);
	io_done(outer, "write", call, fd, text, ret > 0 ? (size_t)ret : 0, ret, err);
}

#define PRINTED(name, call, fd, real_call) \
	va_list copy; \
	va_copy(copy, ap); \
	CALL_REAL(name, int, real_call); \
	printed(outer, call, fd, ret, err, fmt, copy); \
	va_end(copy); \
	return ret

int vfprintf(FILE *f, const char *fmt, va_list ap)
{
	PRINTED(vfprintf, "fprintf", fileno(f), real_vfprintf(f, fmt, ap));
}

int __vfprintf_chk(FILE *f, int flag, const char *fmt, va_list ap)
{
	PRINTED(__vfprintf_chk, "fprintf", fileno(f), real___vfprintf_chk(f, flag, fmt, ap));
}

int vdprintf(int fd, const char *fmt, va_list ap)
{
	PRINTED(vdprintf, "dprintf", fd, real_vdprintf(fd, fmt, ap));
}

int __vdprintf_chk(int fd, int flag, const char *fmt, va_list ap)
{
	PRINTED(__vdprintf_chk, "dprintf", fd, real___vdprintf_chk(fd, flag, fmt, ap));
}

int fprintf(FILE *f, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int ret = vfprintf(f, fmt, ap);
	va_end(ap);
	return ret;
}

int __fprintf_chk(FILE *f, int flag, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int ret = __vfprintf_chk(f, flag, fmt, ap);
	va_end(ap);
	return ret;
}

int dprintf(int fd, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int ret = vdprintf(fd, fmt, ap);
	va_end(ap);
	return ret;
}

int __dprintf_chk(int fd, int flag, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int ret = __vdprintf_chk(fd, flag, fmt, ap);
	va_end(ap);
	return ret;
}

off_t lseek(int fd, off_t off, int whence)
{
	REAL(lseek);
	int outer = !busy++;
	off_t ret = real_lseek(fd, off, whence);
	int err = errno;
	busy--;
	if (outer && is_tracked(fd))
		rec_simple("lseek", "lseek", fd, (long)off, whence, (long)ret, err);
	errno = err;
	return ret;
}

off64_t lseek64(int fd, off64_t off, int whence)
{
	REAL(lseek64);
	int outer = !busy++;
	off64_t ret = real_lseek64(fd, off, whence);
	int err = errno;
	busy--;
	if (outer && is_tracked(fd))
		rec_simple("lseek", "lseek64", fd, (long)off, whence, (long)ret, err);
	errno = err;
	return ret;
}

int fseek(FILE *f, long off, int whence)
{
	REAL(fseek);
	int outer = !busy++;
	int ret = real_fseek(f, off, whence);
	int err = errno;
	busy--;
	if (outer && is_tracked(fileno(f)))
		rec_simple("lseek", "fseek", fileno(f), off, whence, ret, err);
	errno = err;
	return ret;
}

int close(int fd)
{
	REAL(close);
	int outer = !busy++, was = is_tracked(fd);
	int ret = real_close(fd), err = errno;
	busy--;
	if (outer && was)
		rec_simple("close", "close", fd, 0, 0, ret, err);
	errno = err;
	return ret;
}

int fclose(FILE *f)
{
	REAL(fclose);
	int fd = f ? fileno(f) : -1;
	int outer = !busy++, was = is_tracked(fd);
	int ret = real_fclose(f), err = errno;
	busy--;
	if (outer && was)
		rec_simple("close", "fclose", fd, 0, 0, ret, err);
	errno = err;
	return ret;
}

int ioctl(int fd, unsigned long request, ...)
{
	va_list ap;
	void *arg;
	int ret, err;

	va_start(ap, request);
	arg = va_arg(ap, void *);
	va_end(ap);
	resolve();
	if (!real_ioctl_p) {
		errno = ENOSYS;
		return -1;
	}
	if (rec_fd < 0)
		return real_ioctl_p(fd, request, arg);
	if (request == KVM_RUN) {
		before_run(fd);
		check_deliveries();
	}
	busy++;
	ret = real_ioctl_p(fd, request, arg);
	busy--;
	err = errno;
	if (request == KVM_CREATE_VCPU && ret >= 0)
		add_vcpu(ret);
	else if (request == KVM_SET_USER_MEMORY_REGION && ret == 0)
		add_region(arg);
	else if (request == KVM_RUN)
		after_run(fd, ret, ret < 0 ? err : 0);
	errno = err;
	return ret;
}
