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
#include <unistd.h>
#include <linux/kvm.h>

#define MAX_VCPUS 32
#define MAX_DATA 64

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
	if (request == KVM_RUN)
		before_run(fd);
	ret = real_ioctl_p(fd, request, arg);
	err = errno;
	if (request == KVM_CREATE_VCPU && ret >= 0)
		add_vcpu(ret);
	else if (request == KVM_RUN)
		after_run(fd, ret, ret < 0 ? err : 0);
	errno = err;
	return ret;
}
