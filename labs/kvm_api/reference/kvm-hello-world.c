/*
 * Reference hypervisor for the KVM-API hypercall lab (seed 003).
 *
 * Written for this harness from the KVM API documentation
 * (Documentation/virt/kvm/api.rst): /dev/kvm -> KVM_CREATE_VM -> memory slot ->
 * KVM_CREATE_VCPU -> mmap(kvm_run) -> KVM_SET_SREGS/KVM_SET_REGS -> KVM_RUN loop.
 * It keeps the layout of a kvm-hello-world style program: the guest image is the
 * byte array guest64[]..guest64_end[] supplied by payload.S, copied to GPA 0,
 * and run in 64-bit long mode with `-l`.
 *
 * Hypercalls (all port I/O, one exit each):
 *   0xE9  OUT  1 byte   putchar (Part A "Hello, world!", one exit per character)
 *   0xEA  OUT  4 bytes  printVal(uint32_t): prints the value in decimal + '\n'
 *   0xEB  IN   4 bytes  getNumExits(): number of exits so far, this one included
 *   0xEC  OUT  4 bytes  display(const char *): GVA of a NUL-terminated string
 *   0xED  OUT  4 bytes  file-system call: GVA of a struct fs_req (below)
 *
 * struct fs_req (little endian, 40 bytes, in guest memory):
 *   u32 op; u32 reserved; i64 ret; u64 a0, a1, a2;
 *   op 1 open(a0 = GVA path, a1 = flags, a2 = mode)     flags/mode: Linux x86 values
 *   op 2 read(a0 = fd, a1 = GVA buf, a2 = count)
 *   op 3 write(a0 = fd, a1 = GVA buf, a2 = count)
 *   op 4 close(a0 = fd)
 *   op 5 lseek(a0 = fd, a1 = offset, a2 = whence)
 *   ret <- result, or -errno (Linux semantics).  Guest descriptors start at 3.
 *
 * Files live under one directory chosen with --root DIR (default: the current
 * directory).  Absolute paths and `..` components are refused (-EPERM); the open
 * uses openat2(RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS) so a symlink cannot lead
 * out (-EXDEV); without openat2 only flat names are accepted, with O_NOFOLLOW.
 *
 * Bad guest input (address outside guest memory or not mapped, unterminated
 * string, unknown port, length beyond guest memory, bad request block) stops the
 * VM with a message naming the exit, the port and the problem: exit status 2.
 * Host/KVM failures exit with status 1.  A clean halt with the expected result
 * (42 in RAX and at GPA 0x400, as in the original example) exits with status 0.
 *
 * --explain prints the answers to the Part A questions from the running code.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>
#include <linux/kvm.h>
#ifdef __has_include
#if __has_include(<linux/openat2.h>)
#include <linux/openat2.h>
#define HAVE_OPENAT2_H 1
#endif
#endif

extern const unsigned char guest16[], guest16_end[];
extern const unsigned char guest32[], guest32_end[];
extern const unsigned char guest64[], guest64_end[];

/* ---- guest physical layout (long mode) ---------------------------------- */
#define MEM_SIZE      0x200000ULL /* 2 MiB of guest "physical" memory at GPA 0 */
#define CODE_GPA      0x0ULL      /* image copied here; RIP starts here        */
#define CODE_MAX      0x100000ULL /* the image may not reach the page tables    */
#define PML4_GPA      0x100000ULL
#define PDPT_GPA      0x101000ULL
#define PD_GPA        0x102000ULL
#define STACK_TOP     MEM_SIZE    /* RSP; grows down towards the page tables     */
#define RESULT_GPA    0x400ULL    /* the guest leaves 42 here before halting    */

/* paging bits */
#define PTE_P   (1ULL << 0)
#define PTE_RW  (1ULL << 1)
#define PTE_US  (1ULL << 2)
#define PTE_PS  (1ULL << 7)
#define PTE_ADDR_MASK 0x000ffffffffff000ULL

/* control-register bits */
#define CR0_PE (1U << 0)
#define CR0_MP (1U << 1)
#define CR0_ET (1U << 4)
#define CR0_NE (1U << 5)
#define CR0_WP (1U << 16)
#define CR0_AM (1U << 18)
#define CR0_PG (1U << 31)
#define CR4_PAE (1U << 5)
#define EFER_LME (1U << 8)
#define EFER_LMA (1U << 10)

/* ---- hypercall ports ---------------------------------------------------- */
#define PORT_PUTCHAR  0xE9
#define PORT_PRINTVAL 0xEA
#define PORT_NUMEXITS 0xEB
#define PORT_DISPLAY  0xEC
#define PORT_FS       0xED

#define FS_OPEN  1
#define FS_READ  2
#define FS_WRITE 3
#define FS_CLOSE 4
#define FS_LSEEK 5

#define MAX_STR   4096          /* longest string display()/open() accept      */
#define MAX_IO    (1U << 20)    /* longest single read/write                  */
#define MAX_FILES 16            /* guest descriptors 3 .. 3+MAX_FILES-1       */
#define FD_BASE   3

#define EXIT_HOST  1
#define EXIT_GUEST 2

struct vm {
	int sys_fd, vm_fd, vcpu_fd;
	unsigned char *mem;
	struct kvm_run *run;
	int run_size;
	uint64_t exits;
	int root_fd;
	int host_fd[MAX_FILES];
	int explain;
	uint64_t hello_exits;  /* putchar exits before the first other hypercall */
	int hello_done;
	uint64_t guest_size;
};


static void die_host(const char *what)
{
	fprintf(stderr, "kvm-hello-world: host error: %s: %s\n", what, strerror(errno));
	exit(EXIT_HOST);
}

/* Stop the VM because the guest asked for something invalid. */
static void guest_error(struct vm *vm, const char *call, const char *fmt, ...)
{
	va_list ap;
	fflush(stdout);
	fprintf(stderr, "kvm-hello-world: guest error at exit #%" PRIu64 " (port 0x%x, %s): ",
		vm->exits, vm->run->io.port, call);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("; stopping the VM\n", stderr);
	exit(EXIT_GUEST);
}

/* ---- guest memory access ------------------------------------------------- */

/* Host pointer for [gpa, gpa+len) if it lies inside guest memory, else NULL. */
static void *gpa_ptr(struct vm *vm, uint64_t gpa, uint64_t len)
{
	if (gpa >= MEM_SIZE || len > MEM_SIZE - gpa)
		return NULL;
	return vm->mem + gpa;
}

static uint64_t current_cr3(struct vm *vm)
{
	struct kvm_sregs sregs;
	if (ioctl(vm->vcpu_fd, KVM_GET_SREGS, &sregs) < 0)
		die_host("KVM_GET_SREGS");
	return sregs.cr3;
}

/*
 * Walk the guest's 4-level page table (starting at CR3) for one GVA.
 * On success stores the GPA and how many bytes remain in that page, returns 0.
 * Returns -1 if the address is not canonical, not mapped, or the table itself
 * lies outside guest memory.
 */
static int gva_to_gpa(struct vm *vm, uint64_t cr3, uint64_t gva, uint64_t *gpa, uint64_t *span)
{
	uint64_t table = cr3 & PTE_ADDR_MASK;
	int shift = 39;
	int64_t sgva = (int64_t)(gva << 16) >> 16;

	if ((uint64_t)sgva != gva)
		return -1; /* not canonical */
	for (int level = 4; level >= 1; level--, shift -= 9) {
		uint64_t idx = (gva >> shift) & 0x1ff;
		uint64_t *entp = gpa_ptr(vm, table + idx * 8, 8);
		uint64_t ent;
		if (!entp)
			return -1;
		ent = *entp;
		if (!(ent & PTE_P))
			return -1;
		if ((level == 3 || level == 2) && (ent & PTE_PS)) {
			uint64_t size = 1ULL << shift;
			uint64_t base = ent & PTE_ADDR_MASK & ~(size - 1);
			*gpa = base + (gva & (size - 1));
			*span = size - (gva & (size - 1));
			return 0;
		}
		table = ent & PTE_ADDR_MASK;
	}
	*gpa = table + (gva & 0xfff);
	*span = 0x1000 - (gva & 0xfff);
	return 0;
}

/* Copy between guest virtual memory and the host, page by page. 0 or -1. */
static int guest_copy(struct vm *vm, uint64_t gva, void *host, uint64_t len, int to_guest)
{
	uint64_t cr3 = current_cr3(vm);
	unsigned char *h = host;
	while (len) {
		uint64_t gpa, span, n;
		void *p;
		if (gva_to_gpa(vm, cr3, gva, &gpa, &span) < 0)
			return -1;
		n = len < span ? len : span;
		p = gpa_ptr(vm, gpa, n);
		if (!p)
			return -1;
		if (to_guest)
			memcpy(p, h, n);
		else
			memcpy(h, p, n);
		h += n;
		gva += n;
		len -= n;
	}
	return 0;
}

/* Read a NUL-terminated string of at most max-1 bytes. 0, -EFAULT or -ENAMETOOLONG. */
static int guest_string(struct vm *vm, uint64_t gva, char *buf, size_t max)
{
	uint64_t cr3 = current_cr3(vm);
	size_t n = 0;
	while (n < max) {
		uint64_t gpa, span;
		const char *p;
		if (gva_to_gpa(vm, cr3, gva + n, &gpa, &span) < 0)
			return -EFAULT;
		p = gpa_ptr(vm, gpa, 1);
		if (!p)
			return -EFAULT;
		for (uint64_t i = 0; i < span && n < max; i++) {
			if (!gpa_ptr(vm, gpa + i, 1))
				return -EFAULT;
			buf[n] = p[i];
			if (p[i] == '\0')
				return 0;
			n++;
		}
	}
	return -ENAMETOOLONG;
}

/* ---- file-system hypercalls -------------------------------------------- */

struct fs_req {
	uint32_t op;
	uint32_t reserved;
	int64_t ret;
	uint64_t a0, a1, a2;
};

/* The Linux x86 open flags a guest may use. */
#define GUEST_O_ACCMODE 03
#define GUEST_O_ALLOWED (03 | 0100 /*CREAT*/ | 0200 /*EXCL*/ | 01000 /*TRUNC*/ | 02000 /*APPEND*/)

static int path_is_confined(const char *path)
{
	const char *p = path;
	if (path[0] == '\0' || path[0] == '/')
		return 0;
	while (*p) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);
		if (len == 2 && p[0] == '.' && p[1] == '.')
			return 0;
		if (!slash)
			break;
		p = slash + 1;
	}
	return 1;
}

static int open_beneath(struct vm *vm, const char *path, int flags, mode_t mode)
{
#if defined(HAVE_OPENAT2_H) && defined(SYS_openat2)
	struct open_how how;
	long fd;
	memset(&how, 0, sizeof(how));
	how.flags = (uint64_t)(flags | O_CLOEXEC);
	how.mode = (flags & O_CREAT) ? (mode & 0777) : 0;
	how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
	fd = syscall(SYS_openat2, vm->root_fd, path, &how, sizeof(how));
	if (fd >= 0 || errno != ENOSYS)
		return fd >= 0 ? (int)fd : -errno;
#endif
	/* Fallback: only flat names, never through a symlink. */
	if (strchr(path, '/'))
		return -EPERM;
	{
		int fd2 = openat(vm->root_fd, path, flags | O_CLOEXEC | O_NOFOLLOW, mode & 0777);
		return fd2 >= 0 ? fd2 : -errno;
	}
}

static int64_t fs_open(struct vm *vm, struct fs_req *r)
{
	char path[MAX_STR];
	int rc, slot, fd;
	int flags = (int)r->a1;

	rc = guest_string(vm, r->a0, path, sizeof(path));
	if (rc == -EFAULT)
		guest_error(vm, "open", "path at GVA 0x%" PRIx64 " is outside guest memory", r->a0);
	if (rc == -ENAMETOOLONG)
		guest_error(vm, "open", "path at GVA 0x%" PRIx64 " is not terminated within %d bytes",
			    r->a0, MAX_STR);
	if (r->a1 & ~(uint64_t)GUEST_O_ALLOWED || (flags & GUEST_O_ACCMODE) == 3)
		return -EINVAL;
	if (!path_is_confined(path))
		return -EPERM;
	for (slot = 0; slot < MAX_FILES; slot++)
		if (vm->host_fd[slot] < 0)
			break;
	if (slot == MAX_FILES)
		return -EMFILE;
	fd = open_beneath(vm, path, flags, (mode_t)r->a2);
	if (fd < 0)
		return fd;
	vm->host_fd[slot] = fd;
	return FD_BASE + slot;
}

static int host_fd_of(struct vm *vm, uint64_t gfd)
{
	if (gfd < FD_BASE || gfd >= FD_BASE + MAX_FILES)
		return -1;
	return vm->host_fd[gfd - FD_BASE];
}

static int64_t fs_rw(struct vm *vm, struct fs_req *r, int is_write)
{
	const char *call = is_write ? "write" : "read";
	int hfd = host_fd_of(vm, r->a0);
	uint64_t count = r->a2;
	unsigned char *buf;
	ssize_t n;

	if (hfd < 0)
		return -EBADF;
	if (count > MEM_SIZE)
		guest_error(vm, call, "length %" PRIu64 " is larger than guest memory (%llu bytes)",
			    count, (unsigned long long)MEM_SIZE);
	if (count > MAX_IO)
		count = MAX_IO; /* a short transfer, as Linux may do */
	buf = malloc(count ? count : 1);
	if (!buf)
		die_host("malloc");
	if (is_write) {
		if (guest_copy(vm, r->a1, buf, count, 0) < 0)
			guest_error(vm, call, "buffer GVA 0x%" PRIx64 "+%" PRIu64 " is outside guest memory",
				    r->a1, count);
		n = write(hfd, buf, count);
		if (n >= 0)
			fsync(hfd); /* visible on disk when the guest continues */
	} else {
		/* validate the destination first so a bad buffer consumes no file data */
		if (guest_copy(vm, r->a1, buf, count, 0) < 0)
			guest_error(vm, call, "buffer GVA 0x%" PRIx64 "+%" PRIu64 " is outside guest memory",
				    r->a1, count);
		n = read(hfd, buf, count);
		if (n > 0 && guest_copy(vm, r->a1, buf, (uint64_t)n, 1) < 0)
			guest_error(vm, call, "buffer GVA 0x%" PRIx64 " became invalid", r->a1);
	}
	free(buf);
	return n < 0 ? -errno : n;
}

static int64_t fs_close(struct vm *vm, struct fs_req *r)
{
	int hfd = host_fd_of(vm, r->a0);
	if (hfd < 0)
		return -EBADF;
	vm->host_fd[r->a0 - FD_BASE] = -1;
	return close(hfd) < 0 ? -errno : 0;
}

static int64_t fs_lseek(struct vm *vm, struct fs_req *r)
{
	int hfd = host_fd_of(vm, r->a0);
	off_t off;
	if (hfd < 0)
		return -EBADF;
	if (r->a2 > 2)
		return -EINVAL;
	off = lseek(hfd, (off_t)r->a1, (int)r->a2);
	return off < 0 ? -errno : off;
}

static void handle_fs(struct vm *vm, uint32_t gva)
{
	struct fs_req req;
	if (guest_copy(vm, gva, &req, sizeof(req), 0) < 0)
		guest_error(vm, "fs", "request block at GVA 0x%x is outside guest memory", gva);
	switch (req.op) {
	case FS_OPEN:  req.ret = fs_open(vm, &req); break;
	case FS_READ:  req.ret = fs_rw(vm, &req, 0); break;
	case FS_WRITE: req.ret = fs_rw(vm, &req, 1); break;
	case FS_CLOSE: req.ret = fs_close(vm, &req); break;
	case FS_LSEEK: req.ret = fs_lseek(vm, &req); break;
	default:       req.ret = -ENOSYS; break;
	}
	if (guest_copy(vm, gva, &req, sizeof(req), 1) < 0)
		guest_error(vm, "fs", "request block at GVA 0x%x is outside guest memory", gva);
}

/* ---- exits -------------------------------------------------------------- */

static uint32_t io_u32(struct vm *vm)
{
	unsigned char *data = (unsigned char *)vm->run + vm->run->io.data_offset;
	uint32_t v = 0;
	memcpy(&v, data, vm->run->io.size > 4 ? 4 : vm->run->io.size);
	return v;
}

static void handle_io(struct vm *vm)
{
	struct kvm_run *run = vm->run;
	unsigned char *data = (unsigned char *)run + run->io.data_offset;
	int out = run->io.direction == KVM_EXIT_IO_OUT;
	uint16_t port = run->io.port;

	if (run->io.count != 1)
		guest_error(vm, "io", "string I/O (rep, count %u) is not a hypercall", run->io.count);
	if (port != PORT_PUTCHAR && !vm->hello_done)
		vm->hello_done = 1;
	switch (port) {
	case PORT_PUTCHAR:
		if (!out || run->io.size != 1)
			break;
		putchar(data[0]);
		fflush(stdout);
		if (!vm->hello_done)
			vm->hello_exits++;
		return;
	case PORT_PRINTVAL:
		if (!out || run->io.size != 4)
			break;
		printf("%u\n", io_u32(vm));
		fflush(stdout);
		return;
	case PORT_NUMEXITS: {
		uint32_t n = (uint32_t)vm->exits;
		if (out || run->io.size != 4)
			break;
		memcpy(data, &n, 4);
		return;
	}
	case PORT_DISPLAY: {
		char s[MAX_STR];
		int rc;
		if (!out || run->io.size != 4)
			break;
		rc = guest_string(vm, io_u32(vm), s, sizeof(s));
		if (rc == -EFAULT)
			guest_error(vm, "display", "string at GVA 0x%x is outside guest memory", io_u32(vm));
		if (rc == -ENAMETOOLONG)
			guest_error(vm, "display", "string at GVA 0x%x is not terminated within %d bytes",
				    io_u32(vm), MAX_STR);
		fputs(s, stdout);
		fflush(stdout);
		return;
	}
	case PORT_FS:
		if (!out || run->io.size != 4)
			break;
		handle_fs(vm, io_u32(vm));
		return;
	default:
		guest_error(vm, "io", "unknown port (direction %s, size %u)", out ? "out" : "in",
			    run->io.size);
	}
	guest_error(vm, "io", "wrong direction or size for this port (direction %s, size %u)",
		    out ? "out" : "in", run->io.size);
}

/* ---- setup --------------------------------------------------------------- */

static void vm_init(struct vm *vm, const char *root)
{
	int api;
	struct kvm_userspace_memory_region region;

	memset(vm, 0, sizeof(*vm));
	for (int i = 0; i < MAX_FILES; i++)
		vm->host_fd[i] = -1;
	vm->root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (vm->root_fd < 0) {
		fprintf(stderr, "kvm-hello-world: cannot open --root directory %s: %s\n", root,
			strerror(errno));
		exit(EXIT_HOST);
	}
	vm->sys_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->sys_fd < 0)
		die_host("open /dev/kvm");
	api = ioctl(vm->sys_fd, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION) {
		fprintf(stderr, "kvm-hello-world: KVM API version %d, expected %d\n", api, KVM_API_VERSION);
		exit(EXIT_HOST);
	}
	vm->vm_fd = ioctl(vm->sys_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0)
		die_host("KVM_CREATE_VM");
	/* Needed by Intel hosts for real-mode emulation; harmless elsewhere. */
	if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000UL) < 0)
		die_host("KVM_SET_TSS_ADDR");
	vm->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (vm->mem == MAP_FAILED)
		die_host("mmap guest memory");
	madvise(vm->mem, MEM_SIZE, MADV_MERGEABLE);
	memset(&region, 0, sizeof(region));
	region.slot = 0;
	region.guest_phys_addr = 0;
	region.memory_size = MEM_SIZE;
	region.userspace_addr = (uint64_t)(uintptr_t)vm->mem;
	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die_host("KVM_SET_USER_MEMORY_REGION");
}

static void vcpu_init(struct vm *vm)
{
	vm->vcpu_fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, 0);
	if (vm->vcpu_fd < 0)
		die_host("KVM_CREATE_VCPU");
	vm->run_size = ioctl(vm->sys_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (vm->run_size <= 0)
		die_host("KVM_GET_VCPU_MMAP_SIZE");
	vm->run = mmap(NULL, (size_t)vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpu_fd, 0);
	if (vm->run == MAP_FAILED)
		die_host("mmap kvm_run");
}

static void setup_long_mode(struct vm *vm)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	struct kvm_segment seg;
	uint64_t *pml4 = (uint64_t *)(vm->mem + PML4_GPA);
	uint64_t *pdpt = (uint64_t *)(vm->mem + PDPT_GPA);
	uint64_t *pd = (uint64_t *)(vm->mem + PD_GPA);

	vm->guest_size = (uint64_t)(guest64_end - guest64);
	if (vm->guest_size > CODE_MAX) {
		fprintf(stderr, "kvm-hello-world: guest image is %" PRIu64 " bytes, more than %llu\n",
			vm->guest_size, (unsigned long long)CODE_MAX);
		exit(EXIT_HOST);
	}
	memcpy(vm->mem + CODE_GPA, guest64, vm->guest_size);

	/* One 2 MiB page: GVA [0, 2 MiB) -> GPA [0, 2 MiB), supervisor+user, RW. */
	pml4[0] = PTE_P | PTE_RW | PTE_US | PDPT_GPA;
	pdpt[0] = PTE_P | PTE_RW | PTE_US | PD_GPA;
	pd[0] = PTE_P | PTE_RW | PTE_US | PTE_PS | 0x0;

	if (ioctl(vm->vcpu_fd, KVM_GET_SREGS, &sregs) < 0)
		die_host("KVM_GET_SREGS");
	sregs.cr3 = PML4_GPA;
	sregs.cr4 = CR4_PAE;
	sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
	sregs.efer = EFER_LME | EFER_LMA;

	memset(&seg, 0, sizeof(seg));
	seg.base = 0;
	seg.limit = 0xffffffff;
	seg.present = 1;
	seg.dpl = 0;
	seg.s = 1;
	seg.g = 1;
	seg.l = 1;       /* 64-bit code segment */
	seg.type = 11;   /* execute/read, accessed */
	seg.selector = 1 << 3;
	sregs.cs = seg;
	seg.l = 0;
	seg.db = 1;
	seg.type = 3;    /* read/write, accessed */
	seg.selector = 2 << 3;
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = seg;
	if (ioctl(vm->vcpu_fd, KVM_SET_SREGS, &sregs) < 0)
		die_host("KVM_SET_SREGS");

	memset(&regs, 0, sizeof(regs));
	regs.rflags = 2;
	regs.rip = CODE_GPA;
	regs.rsp = STACK_TOP;
	if (ioctl(vm->vcpu_fd, KVM_SET_REGS, &regs) < 0)
		die_host("KVM_SET_REGS");
}

/* ---- run ------------------------------------------------------------------ */

/* The one place where control passes to the guest; --explain prints this line. */
static const int kvm_run_line = __LINE__ + 3;
static int enter_guest(struct vm *vm)
{
	return ioctl(vm->vcpu_fd, KVM_RUN, 0);
}

static int run_vm(struct vm *vm)
{
	struct kvm_regs regs;
	uint64_t result;

	for (;;) {
		if (enter_guest(vm) < 0) {
			if (errno == EINTR)
				continue;
			die_host("KVM_RUN");
		}
		vm->exits++; /* control is back in the hypervisor */
		switch (vm->run->exit_reason) {
		case KVM_EXIT_HLT:
			goto halted;
		case KVM_EXIT_IO:
			handle_io(vm);
			break;
		case KVM_EXIT_SHUTDOWN:
			fprintf(stderr, "kvm-hello-world: guest error at exit #%" PRIu64
				": triple fault (KVM_EXIT_SHUTDOWN); stopping the VM\n", vm->exits);
			return EXIT_GUEST;
		case KVM_EXIT_MMIO:
			fprintf(stderr, "kvm-hello-world: guest error at exit #%" PRIu64
				": access to unbacked GPA 0x%llx (KVM_EXIT_MMIO); stopping the VM\n",
				vm->exits, (unsigned long long)vm->run->mmio.phys_addr);
			return EXIT_GUEST;
		case KVM_EXIT_FAIL_ENTRY:
			fprintf(stderr, "kvm-hello-world: host error: KVM_EXIT_FAIL_ENTRY, reason 0x%llx\n",
				(unsigned long long)vm->run->fail_entry.hardware_entry_failure_reason);
			return EXIT_HOST;
		case KVM_EXIT_INTERNAL_ERROR:
			fprintf(stderr, "kvm-hello-world: host error: KVM_EXIT_INTERNAL_ERROR, suberror %u\n",
				vm->run->internal.suberror);
			return EXIT_HOST;
		default:
			fprintf(stderr, "kvm-hello-world: unexpected exit reason %u at exit #%" PRIu64 "\n",
				vm->run->exit_reason, vm->exits);
			return EXIT_HOST;
		}
	}
halted:
	if (ioctl(vm->vcpu_fd, KVM_GET_REGS, &regs) < 0)
		die_host("KVM_GET_REGS");
	memcpy(&result, vm->mem + RESULT_GPA, sizeof(result));
	if (regs.rax != 42 || result != 42) {
		fprintf(stderr, "kvm-hello-world: wrong result: RAX=%llu, memory at 0x%llx = %llu (want 42)\n",
			(unsigned long long)regs.rax, RESULT_GPA, (unsigned long long)result);
		return EXIT_GUEST;
	}
	return 0;
}

/* ---- --explain -------------------------------------------------------------- */

static void explain_page_table(struct vm *vm)
{
	uint64_t cr3 = current_cr3(vm);
	int pages = 1;
	uint64_t *pml4 = gpa_ptr(vm, cr3 & PTE_ADDR_MASK, 4096);
	printf("  levels: 4 (PML4 -> PDPT -> PD, the PD entry maps a 2 MiB page: PS=1)\n");
	printf("  CR3 = 0x%llx\n", (unsigned long long)cr3);
	for (int i = 0; pml4 && i < 512; i++) {
		uint64_t *pdpt;
		if (!(pml4[i] & PTE_P))
			continue;
		pages++;
		pdpt = gpa_ptr(vm, pml4[i] & PTE_ADDR_MASK, 4096);
		printf("  PML4[%d] = 0x%llx -> PDPT at GPA 0x%llx\n", i, (unsigned long long)pml4[i],
		       (unsigned long long)(pml4[i] & PTE_ADDR_MASK));
		for (int j = 0; pdpt && j < 512; j++) {
			uint64_t *pd;
			if (!(pdpt[j] & PTE_P))
				continue;
			pages++;
			pd = gpa_ptr(vm, pdpt[j] & PTE_ADDR_MASK, 4096);
			printf("  PDPT[%d] = 0x%llx -> PD at GPA 0x%llx\n", j, (unsigned long long)pdpt[j],
			       (unsigned long long)(pdpt[j] & PTE_ADDR_MASK));
			for (int k = 0; pd && k < 512; k++) {
				uint64_t gva = ((uint64_t)i << 39) | ((uint64_t)j << 30) | ((uint64_t)k << 21);
				if (!(pd[k] & PTE_P))
					continue;
				printf("  PD[%d] = 0x%llx -> %s page: GVA 0x%llx-0x%llx -> GPA 0x%llx-0x%llx\n",
				       k, (unsigned long long)pd[k], (pd[k] & PTE_PS) ? "2 MiB" : "(4 KiB table)",
				       (unsigned long long)gva, (unsigned long long)(gva + 0x1fffff),
				       (unsigned long long)(pd[k] & PTE_ADDR_MASK),
				       (unsigned long long)((pd[k] & PTE_ADDR_MASK) + 0x1fffff));
			}
		}
	}
	printf("  page-table pages: %d (4 KiB each); every other GVA is unmapped\n", pages);
}

static void explain_before(struct vm *vm)
{
	struct kvm_regs regs;
	if (ioctl(vm->vcpu_fd, KVM_GET_REGS, &regs) < 0)
		die_host("KVM_GET_REGS");
	printf("== Part A answers (from the running reference) ==\n");
	printf("guest memory: %llu bytes (%llu MiB), mmap(MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE) in vm_init\n",
	       (unsigned long long)MEM_SIZE, (unsigned long long)(MEM_SIZE >> 20));
	printf("  host VA %p-%p, registered with KVM_SET_USER_MEMORY_REGION as slot 0 at GPA 0x0\n",
	       (void *)vm->mem, (void *)(vm->mem + MEM_SIZE - 1));
	printf("vcpu runtime area (struct kvm_run): %d bytes, mmap of the vcpu fd in vcpu_init,\n"
	       "  size from KVM_GET_VCPU_MMAP_SIZE, host VA %p-%p\n", vm->run_size, (void *)vm->run,
	       (void *)((char *)vm->run + vm->run_size - 1));
	printf("guest code: %llu bytes copied from guest64[] (host VA %p) to GPA 0x%llx-0x%llx, host VA %p-%p\n",
	       (unsigned long long)vm->guest_size, (const void *)guest64, CODE_GPA,
	       CODE_GPA + vm->guest_size - 1, (void *)(vm->mem + CODE_GPA),
	       (void *)(vm->mem + CODE_GPA + vm->guest_size - 1));
	printf("page table: PML4 GPA 0x%llx, PDPT GPA 0x%llx, PD GPA 0x%llx (host VA %p, %p, %p)\n",
	       PML4_GPA, PDPT_GPA, PD_GPA, (void *)(vm->mem + PML4_GPA), (void *)(vm->mem + PDPT_GPA),
	       (void *)(vm->mem + PD_GPA));
	explain_page_table(vm);
	printf("kernel stack: RSP = 0x%llx (top of guest memory, host VA %p), grows down to GPA 0x%llx\n",
	       (unsigned long long)regs.rsp, (void *)(vm->mem + regs.rsp - 1), PD_GPA + 0x1000);
	printf("entry point: RIP = 0x%llx (GVA; set with KVM_SET_REGS in setup_long_mode)\n",
	       (unsigned long long)regs.rip);
	printf("control enters the guest at %s:%d (ioctl KVM_RUN) and returns to the hypervisor when that ioctl returns\n",
	       __FILE__, kvm_run_line);
	printf("== guest output follows ==\n");
	fflush(stdout);
}

static void explain_after(struct vm *vm, int rc)
{
	uint64_t result;
	memcpy(&result, vm->mem + RESULT_GPA, sizeof(result));
	printf("== after the run ==\n");
	printf("\"Hello, world!\\n\": %" PRIu64 " exits, one KVM_EXIT_IO (OUT, 1 byte, port 0x%x) per character;\n"
	       "  the byte is read at (char *)run + run->io.data_offset (data_offset = %llu)\n",
	       vm->hello_exits, PORT_PUTCHAR, (unsigned long long)vm->run->io.data_offset);
	printf("the number 42: written by the guest to GPA 0x%llx (now %llu) and to RAX before hlt; read back\n"
	       "  by the hypervisor via the memory mapping and KVM_GET_REGS\n",
	       RESULT_GPA, (unsigned long long)result);
	printf("total exits: %" PRIu64 "; exit status %d\n", vm->exits, rc);
}

static void usage(void)
{
	fprintf(stderr, "usage: kvm-hello-world -l [--root DIR] [--explain]\n"
			"  only long mode (-l) is implemented by the reference\n");
}

int main(int argc, char **argv)
{
	struct vm vm;
	const char *root = ".";
	int longmode = 0, explain = 0, rc;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-l"))
			longmode = 1;
		else if (!strcmp(argv[i], "--explain"))
			explain = longmode = 1;
		else if (!strcmp(argv[i], "--root") && i + 1 < argc)
			root = argv[++i];
		else if (!strcmp(argv[i], "-r") || !strcmp(argv[i], "-s") || !strcmp(argv[i], "-p")) {
			fprintf(stderr, "kvm-hello-world: mode %s is not implemented by the reference; use -l\n",
				argv[i]);
			return EXIT_HOST;
		} else {
			usage();
			return EXIT_HOST;
		}
	}
	if (!longmode) {
		usage();
		return EXIT_HOST;
	}
	(void)guest16; (void)guest16_end; (void)guest32; (void)guest32_end;
	vm_init(&vm, root);
	vcpu_init(&vm);
	setup_long_mode(&vm);
	vm.explain = explain;
	if (explain)
		explain_before(&vm);
	rc = run_vm(&vm);
	if (explain)
		explain_after(&vm, rc);
	return rc;
}
