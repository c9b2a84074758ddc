"""Finding the assignment's guest-side functions in guest.c (no KVM needed)."""
from __future__ import annotations

from harness.kvmlab import guestapi

SRC = r'''
#include <stdint.h>
#define PORT 0x10  /* printVal(  in a comment must not count */
// uint32_t getNumExits(void) { in a line comment }
static inline void outb(uint16_t port, uint8_t v) { asm("outb %0,%1" : : "a"(v), "Nd"(port)); }
void printVal(uint32_t val) { outb(PORT, val); }
static const char *s = "void display(const char *x) {";
int hc_open(char *path, int flags) { return 0; }
int hc_read(char *buf, int count, int fd) { return count; }
void hc_write(int fd, const char *buf, uint32_t len) { }
int hc_close(int fd) { return 0; }
void __attribute__((noreturn)) __attribute__((section(".start"))) _start(void) { for(;;); }
'''


def test_finds_definitions_not_comments_or_strings():
    funcs = guestapi.find_functions(SRC)
    assert "printVal" in funcs and "_start" in funcs and "outb" in funcs
    assert "getNumExits" not in funcs and "display" not in funcs
    assert funcs["printVal"].params[0].name == "val"


def test_fs_shapes_and_adapters():
    api = guestapi.analyse(SRC)
    assert api.fs_problem is None
    assert {k: f.name for k, f in api.fs.items()} == {
        "open": "hc_open", "read": "hc_read", "write": "hc_write", "close": "hc_close"}
    h = guestapi.config_header(api, mode=1, nonce="n0", abs_path="/abs")
    assert "#define KVMLAB_HAVE_PRINTVAL 1" in h
    assert "KVMLAB_HAVE_DISPLAY" not in h
    # the fd is the parameter named fd, wherever it stands; the count is the other int
    assert "hc_read((void *)(b), (n), (fd))" in h
    # a void write reports the requested length
    assert "((hc_write((fd), (void *)(b), (n))), (long)(n))" in h
    assert "hc_open((void *)(p), KVMLAB_OW)" in h


def test_missing_fs_functions_are_named():
    api = guestapi.analyse("void printVal(unsigned v) { }\nint fopen_x(char *p) { return 0; }\n")
    assert api.fs == {}
    assert "read/write/close" in api.fs_problem


def test_wrong_shape_is_reported():
    api = guestapi.analyse("int open(int x) {return 0;}\nint read(int a,int b,int c){return 0;}\n"
                           "int write(int fd, char *b, int n){return 0;}\nint close(int fd){return 0;}\n")
    assert api.fs == {} and "path first" in api.fs_problem


def test_port_first_and_other_names_are_bound_with_the_students_own_port():
    src = ("#define PV 0xE9\nvoid printVal(uint16_t port, uint32_t value) { }\n"
           "uint32_t get_num_exits(uint16_t port) { return 0; }\n"
           "void displayString(uint16_t port, const char *s) { }\n"
           "void _start(void) { uint32_t n = get_num_exits(0xEB); printVal(PV, n); displayString(0xEC, \"x\"); }\n")
    api = guestapi.analyse(src)
    h = guestapi.config_header(api, mode=1, nonce="n0", abs_path="/abs")
    assert "#define KVMLAB_PRINTVAL(arg) (printVal(PV, (unsigned int)(arg)))" in h
    assert "#define KVMLAB_GETNUMEXITS() (get_num_exits(0xEB))" in h
    assert "#define KVMLAB_DISPLAY(arg) (displayString(0xEC, (const char *)(arg)))" in h


def test_a_port_from_a_variable_cannot_be_bound_and_says_why():
    src = ("void printVal(uint16_t port, uint32_t value) { }\n"
           "void _start(void) { uint16_t p = 0x10; printVal(p, 5); }\n")
    api = guestapi.analyse(src)
    assert api.has("printVal") and not api.bound("printVal")
    assert "constants" in api.unbound["printVal"]
    assert "KVMLAB_HAVE_PRINTVAL" not in guestapi.config_header(api, mode=1, nonce="n", abs_path="/a")


def test_without_the_functions_the_students_outb_inb_wrappers_are_bound_at_its_own_ports():
    src = ("static inline void outb(uint16_t port, uint8_t v) { }\n"
           "static inline void outl(uint16_t port, uint32_t v) { }\n"
           "static inline uint32_t inl(uint16_t port) { return 0; }\n"
           "void _start(void) { outl(0xEA, inl(0xEB)); outl(0xEC, (uint32_t)\"hi\"); }\n")
    api = guestapi.analyse(src)
    assert not api.bound("printVal")
    guestapi.bind_wrappers(api, {"printVal": (0xEA, 4, "out"), "getNumExits": (0xEB, 4, "in"),
                                 "display": (0xEC, 4, "out")})
    h = guestapi.config_header(api, mode=1, nonce="n", abs_path="/a")
    assert "#define KVMLAB_PRINTVAL(arg) (outl(0xea, (unsigned int)(arg)))" in h, h
    assert "#define KVMLAB_GETNUMEXITS() (inl(0xeb))" in h
    assert "outl(0xec," in h and "outb(" not in h   # an 8-bit wrapper cannot carry 4 bytes
