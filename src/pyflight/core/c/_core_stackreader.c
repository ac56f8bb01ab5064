/* pyflight._core: the native stack reader (CPython 3.11-3.13, Linux).
 *
 * The sampler needs the GIL to look at other threads, so it finds them only where they
 * let go of it (a lock, a socket call, the switch interval's check), and charges their
 * CPU there. This file reads, *without the GIL*, the Python stack of the thread that
 * holds it at that instant: the sampling thread calls read_wait(), which releases the
 * GIL, sleeps until its tick is due, finds the GIL's holder and walks its
 * _PyInterpreterFrame chain, then takes the GIL back and returns the stack as
 * (qualname, filename, line) tuples for record() (docs/internals.md).
 *
 * Safety: the holder runs on while we read, and its frames, code objects or thread
 * state may be freed under us, so no pointer of its is ever dereferenced: every read of
 * its memory goes through process_vm_readv() on our own pid (or pread() of
 * /proc/self/mem where that syscall is refused), which fails with EFAULT on an unmapped
 * address instead of faulting. What is read is checked before use (type pointers are
 * ours: a code object's ob_type must be &PyCode_Type, a str's &PyUnicode_Type; lengths
 * and depths are bounded), a change of GIL holder during the walk discards it, and
 * anything odd just gives no stack: the sampler then records the frame it sees itself.
 *
 * Internal headers (Py_BUILD_CORE) give the layouts of the GIL, the thread state, the
 * interpreter frame and the code object of the version built against; this file is the
 * only one of the extension compiled with them.
 */
#define Py_BUILD_CORE 1
#include "_core.h"

#if defined(__linux__) && PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#define PYFL_STACKREADER 1
#endif

#ifdef PYFL_STACKREADER
#include "internal/pycore_code.h"
#include "internal/pycore_frame.h"
#include "internal/pycore_gil.h"
#include "internal/pycore_interp.h"
#include "internal/pycore_runtime.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_FRAMES 128        /* deepest stack read (record() cuts to max_stack_depth) */
#define MAX_STR 4096          /* longest name or file name copied, in UTF-8 bytes */
#define MAX_LINETABLE 65536   /* largest location table copied */
#define CODE_CACHE 512        /* direct-mapped entries, keyed by code object address */
#define ARENA (1 << 18)     /* bytes of names and file names one read may copy */
#define CHUNK_MAX (1 << 17) /* most of the data stack copied in one read */

/* ------------------------------------------------------------------ safe reads */

static int mem_fd = -1;       /* /proc/self/mem, when process_vm_readv is refused */
static int use_mem_fd;        /* 1: read through mem_fd */
static pid_t self_pid;

/* Copies n bytes at address src of this process into dst: 0, or -1 if any of it is not
 * mapped (or the read is refused). Never faults. */
static int rd(void *dst, uintptr_t src, size_t n) {
    if (!src || src + n < src) return -1;
    if (use_mem_fd) {
        ssize_t got = pread(mem_fd, dst, n, (off_t)src);
        return got == (ssize_t)n ? 0 : -1;
    }
    struct iovec local = {dst, n}, remote = {(void *)src, n};
    return process_vm_readv(self_pid, &local, 1, &remote, 1, 0) == (ssize_t)n ? 0 : -1;
}

/* ------------------------------------------------------------------ strings and lines */

/* Copies the exact str at `addr` as UTF-8 (lone surrogates as surrogatepass does) into
 * out (room for MAX_STR bytes): its length, or -1 if it is not a readable compact str. */
static Py_ssize_t read_str(uintptr_t addr, char *out) {
    PyCompactUnicodeObject u;
    if (rd(&u, addr, sizeof u) < 0) return -1;
    PyASCIIObject *a = &u._base;
    if (Py_TYPE((PyObject *)a) != &PyUnicode_Type || !a->state.compact || a->length < 0 || a->length > MAX_STR)
        return -1;
    Py_ssize_t n = a->length;
    if (a->state.ascii) {
        if (rd(out, addr + sizeof(PyASCIIObject), (size_t)n) < 0) return -1;
        return n;
    }
    unsigned kind = a->state.kind;
    if (kind != 1 && kind != 2 && kind != 4) return -1;
    static uint8_t raw[MAX_STR * 4]; /* static: the sampling thread's stack may be small */
    if (rd(raw, addr + sizeof(PyCompactUnicodeObject), (size_t)n * kind) < 0) return -1;
    Py_ssize_t len = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t c = kind == 1 ? raw[i] : kind == 2 ? ((uint16_t *)raw)[i] : ((uint32_t *)raw)[i];
        int need = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
        if (c > 0x10FFFF || len + need > MAX_STR) return -1;
        if (need == 1) {
            out[len++] = (char)c;
        } else if (need == 2) {
            out[len++] = (char)(0xC0 | (c >> 6));
            out[len++] = (char)(0x80 | (c & 0x3F));
        } else if (need == 3) {
            out[len++] = (char)(0xE0 | (c >> 12));
            out[len++] = (char)(0x80 | ((c >> 6) & 0x3F));
            out[len++] = (char)(0x80 | (c & 0x3F));
        } else {
            out[len++] = (char)(0xF0 | (c >> 18));
            out[len++] = (char)(0x80 | ((c >> 12) & 0x3F));
            out[len++] = (char)(0x80 | ((c >> 6) & 0x3F));
            out[len++] = (char)(0x80 | (c & 0x3F));
        }
    }
    return len;
}

/* Location table varints (Objects/locations.md): 6 bits a byte, bit 6 = more follows. */
static int lt_varint(const uint8_t *p, size_t n, size_t *i, unsigned *out) {
    unsigned v = 0;
    for (int shift = 0; *i < n && shift < 32; shift += 6) {
        uint8_t b = p[(*i)++];
        v |= (unsigned)(b & 63) << shift;
        if (!(b & 64)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* Line of the instruction at byte offset addrq, from a copy of co_linetable (the PEP 626
 * location table of 3.11-3.13): as PyCode_Addr2Line, -1 where it has none. */
static int addr2line(const uint8_t *p, size_t n, int firstlineno, int addrq) {
    if (addrq < 0) return firstlineno;
    int line = firstlineno, addr = 0;
    size_t i = 0;
    while (i < n) {
        uint8_t first = p[i++];
        if (!(first & 0x80)) return -1;
        int code = (first >> 3) & 15, len = (first & 7) + 1, delta = 0, has_line = 1;
        unsigned v, skip;
        if (code == 15) { /* no location */
            has_line = 0;
        } else if (code == 14 || code == 13) { /* long form / no columns: signed line delta */
            if (lt_varint(p, n, &i, &v) < 0) return -1;
            delta = (v & 1) ? -(int)(v >> 1) : (int)(v >> 1);
            for (int k = 0; code == 14 && k < 3; k++)
                if (lt_varint(p, n, &i, &skip) < 0) return -1;
        } else if (code >= 10) { /* one line: delta 0..2, two column bytes */
            delta = code - 10;
            i += 2;
        } else { /* short form: same line, one column byte */
            i += 1;
        }
        line += delta;
        addr += 2 * len;
        if (addrq < addr) return has_line ? line : -1;
    }
    return -1;
}

/* ------------------------------------------------------------------ code object cache */

/* What a code object gives a stack entry, copied out of it once. An entry is used again
 * only if the code object read at its address still has the same name, file and
 * location table objects and first line (the address of a freed code object may be
 * reused, but not with all of those the same while the old ones are alive in it). */
typedef struct {
    uintptr_t code, qualname, filename, linetable;
    int firstlineno, lasti, line; /* lasti -> line: the last lookup */
    char *name, *file;
    uint8_t *lt;
    Py_ssize_t name_len, file_len, lt_len;
    uint64_t stamp; /* changes whenever the entry is made anew: see py_cache */
} CodeEntry;

static CodeEntry cache[CODE_CACHE];
static uint64_t stamps;

static void entry_clear(CodeEntry *e) {
    free(e->name);
    free(e->file);
    free(e->lt);
    memset(e, 0, sizeof *e);
}

/* The cache entry of the code object `addr`, whose header `co` was just read; NULL if its
 * strings or table cannot be read. */
static CodeEntry *code_entry(uintptr_t addr, const PyCodeObject *co) {
    CodeEntry *e = &cache[(addr >> 4) % CODE_CACHE];
    if (e->code == addr && e->qualname == (uintptr_t)co->co_qualname && e->filename == (uintptr_t)co->co_filename
        && e->linetable == (uintptr_t)co->co_linetable && e->firstlineno == co->co_firstlineno)
        return e;
    entry_clear(e);
    static char buf[MAX_STR];
    Py_ssize_t n;
    PyBytesObject lt;
    if ((n = read_str((uintptr_t)co->co_qualname, buf)) < 0 || !(e->name = malloc((size_t)n + 1))) goto fail;
    memcpy(e->name, buf, (size_t)n);
    e->name_len = n;
    if ((n = read_str((uintptr_t)co->co_filename, buf)) < 0 || !(e->file = malloc((size_t)n + 1))) goto fail;
    memcpy(e->file, buf, (size_t)n);
    e->file_len = n;
    if (rd(&lt, (uintptr_t)co->co_linetable, offsetof(PyBytesObject, ob_sval)) < 0 || Py_TYPE((PyObject *)&lt) != &PyBytes_Type
        || Py_SIZE((PyObject *)&lt) < 0 || Py_SIZE((PyObject *)&lt) > MAX_LINETABLE)
        goto fail;
    e->lt_len = Py_SIZE((PyObject *)&lt);
    if (!(e->lt = malloc((size_t)e->lt_len + 1))
        || rd(e->lt, (uintptr_t)co->co_linetable + offsetof(PyBytesObject, ob_sval), (size_t)e->lt_len) < 0)
        goto fail;
    e->code = addr;
    e->qualname = (uintptr_t)co->co_qualname;
    e->filename = (uintptr_t)co->co_filename;
    e->linetable = (uintptr_t)co->co_linetable;
    e->firstlineno = co->co_firstlineno;
    e->lasti = INT_MIN;
    e->stamp = ++stamps;
    return e;
fail:
    entry_clear(e);
    return NULL;
}

/* ------------------------------------------------------------------ the walk */

#define CODE_HEAD offsetof(PyCodeObject, co_code_adaptive)
#define FRAME_HEAD offsetof(_PyInterpreterFrame, localsplus)

#if PY_VERSION_HEX >= 0x030D0000
#define FRAME_CODE(f) ((uintptr_t)(f)->f_executable)
#define FRAME_INSTR(f) ((uintptr_t)(f)->instr_ptr)
#else
#define FRAME_CODE(f) ((uintptr_t)(f)->f_code)
#define FRAME_INSTR(f) ((uintptr_t)(f)->prev_instr)
#endif

/* One stack entry of the last read: offsets into `arena`. */
typedef struct {
    uint32_t name, name_len, file, file_len;
    int line, slot;  /* slot, stamp: the cache entry it came from */
    uint64_t stamp;
} Entry;

static struct {
    Entry e[MAX_FRAMES];
    int depth;
    unsigned long ident, tid;
    uint64_t t;   /* when it was read: CLOCK_MONOTONIC ns */
    uint64_t cpu; /* the thread's CPU clock then (0: unknown) */
    char arena[ARENA];
    size_t used;
} out;

static int arena_put(const char *s, Py_ssize_t n, uint32_t *at) {
    if (out.used + (size_t)n > ARENA) return -1;
    memcpy(out.arena + out.used, s, (size_t)n);
    *at = (uint32_t)out.used;
    out.used += (size_t)n;
    return 0;
}

static uintptr_t frame_of(uintptr_t tstate_addr, const PyThreadState *ts) {
#if PY_VERSION_HEX >= 0x030D0000
    (void)tstate_addr;
    return (uintptr_t)ts->current_frame;
#else
    _PyCFrame cf;
    (void)tstate_addr;
    if (rd(&cf, (uintptr_t)ts->cframe, sizeof cf) < 0) return 0;
    return (uintptr_t)cf.current_frame;
#endif
}

/* The holder's current data stack chunk, copied in one read: its frames (all but those
 * of running generators and coroutines, and of older chunks) are taken from here. */
static char chunk_buf[CHUNK_MAX];
static uintptr_t chunk_lo, chunk_hi;

static int read_frame(void *dst, uintptr_t addr) {
    if (addr >= chunk_lo && addr + FRAME_HEAD <= chunk_hi && addr + FRAME_HEAD > addr) {
        memcpy(dst, chunk_buf + (addr - chunk_lo), FRAME_HEAD);
        return 0;
    }
    return rd(dst, addr, FRAME_HEAD);
}

/* The code object headers of the walk, each distinct address read once, all in one call. */
typedef union {
    PyCodeObject co;
    char raw[CODE_HEAD];
} CodeHead;
static CodeHead heads[MAX_FRAMES];
static uintptr_t head_addr[MAX_FRAMES];

/* Reads the headers of the n code objects at head_addr: how many, from the first, were
 * read (all of them if nothing failed). */
static int read_heads(int n) {
    if (n == 0) return 0;
    if (use_mem_fd) {
        for (int i = 0; i < n; i++)
            if (rd(&heads[i], head_addr[i], CODE_HEAD) < 0) return i;
        return n;
    }
    static struct iovec local[MAX_FRAMES], remote[MAX_FRAMES];
    for (int i = 0; i < n; i++) {
        local[i] = (struct iovec){&heads[i], CODE_HEAD};
        remote[i] = (struct iovec){(void *)head_addr[i], CODE_HEAD};
    }
    ssize_t got = process_vm_readv(self_pid, local, (unsigned long)n, remote, (unsigned long)n, 0);
    return got <= 0 ? 0 : (int)((size_t)got / CODE_HEAD); /* partial reads stop at an element */
}

/* Reads the stack of thread state `addr` (of interpreter `interp`) into `out`: its depth
 * (0 for no Python frame), or -1 if it cannot be read consistently. System calls: the
 * thread state, (3.11-3.12) its C frame, its data stack chunk, one per frame outside it,
 * and one for all the code objects. */
static int walk(uintptr_t addr, PyInterpreterState *interp) {
    PyThreadState ts;
    if (rd(&ts, addr, sizeof ts) < 0 || ts.interp != interp) return -1;
    out.ident = ts.thread_id;
    out.tid = ts.native_thread_id;
    out.depth = 0;
    out.used = 0;
    chunk_lo = chunk_hi = 0;
    uintptr_t f = frame_of(addr, &ts);
    if (!f) return 0;
    uintptr_t top = (uintptr_t)ts.datastack_top, chunk = (uintptr_t)ts.datastack_chunk;
    if (chunk && top > chunk) {
        uintptr_t lo = chunk + offsetof(_PyStackChunk, data);
        if (top > lo && top - lo > CHUNK_MAX) lo = top - CHUNK_MAX;
        if (top > lo && rd(chunk_buf, lo, top - lo) == 0) {
            chunk_lo = lo;
            chunk_hi = top;
        }
    }
    /* 1: the frames, innermost first: their code object, instruction and owner */
    static struct {
        uintptr_t instr;
        int head, owner;
    } fr[MAX_FRAMES];
    int n = 0, n_heads = 0;
    union {
        _PyInterpreterFrame f;
        char raw[FRAME_HEAD];
    } frame;
    for (int guard = 0; f && n < MAX_FRAMES && guard < 4 * MAX_FRAMES; guard++) {
        if (read_frame(&frame, f) < 0) return -1;
        f = (uintptr_t)frame.f.previous;
#if PY_VERSION_HEX >= 0x030C0000
        if (frame.f.owner == FRAME_OWNED_BY_CSTACK) continue; /* the C stack's shim */
#endif
        uintptr_t code = FRAME_CODE(&frame.f);
        int h = 0;
        while (h < n_heads && head_addr[h] != code) h++;
        if (h == n_heads) head_addr[n_heads++] = code;
        fr[n].instr = FRAME_INSTR(&frame.f);
        fr[n].head = h;
        fr[n].owner = frame.f.owner;
        n++;
    }
    /* 2: their code objects, checked and named */
    if (read_heads(n_heads) < n_heads) return -1;
    for (int i = 0; i < n; i++) {
        const PyCodeObject *co = &heads[fr[i].head].co;
        uintptr_t code = head_addr[fr[i].head];
        if (Py_TYPE((PyObject *)co) != &PyCode_Type) return -1;
        uintptr_t start = code + CODE_HEAD;
        if (fr[i].owner != FRAME_OWNED_BY_GENERATOR
            && fr[i].instr < start + (uintptr_t)co->_co_firsttraceable * sizeof(_Py_CODEUNIT))
            continue; /* a frame still being set up: not part of the stack yet */
        /* an instruction outside its own code: the frame was popped and its memory reused
         * by another call while we copied it (a mix of two frames): no stack this time */
        if (Py_SIZE((PyObject *)co) <= 0 || fr[i].instr < start
            || fr[i].instr >= start + (uintptr_t)Py_SIZE((PyObject *)co) * sizeof(_Py_CODEUNIT))
            return -1;
        CodeEntry *e = code_entry(code, co);
        if (!e) return -1;
        int lasti = (int)(((intptr_t)fr[i].instr - (intptr_t)start) / (intptr_t)sizeof(_Py_CODEUNIT));
        if (e->lasti != lasti) {
            e->line = addr2line(e->lt, (size_t)e->lt_len, e->firstlineno, lasti * (int)sizeof(_Py_CODEUNIT));
            e->lasti = lasti;
        }
        Entry *x = &out.e[out.depth];
        if (arena_put(e->name, e->name_len, &x->name) < 0 || arena_put(e->file, e->file_len, &x->file) < 0)
            return out.depth; /* names too long to keep: the innermost frames only */
        x->name_len = (uint32_t)e->name_len;
        x->file_len = (uint32_t)e->file_len;
        x->line = e->line > 0 ? e->line : 0;
        x->slot = (int)(e - cache);
        x->stamp = e->stamp;
        out.depth++;
    }
    return out.depth;
}

/* The GIL of interpreter `interp` and the fields read from it. */
static struct _gil_runtime_state *gil_of(PyInterpreterState *interp) {
#if PY_VERSION_HEX >= 0x030C0000
    return interp->ceval.gil;
#else
    (void)interp;
    return &_PyRuntime.ceval.gil;
#endif
}

#if PY_VERSION_HEX >= 0x030D0000
#define GIL_LOCKED(g) __atomic_load_n(&(g)->locked, __ATOMIC_ACQUIRE)
#define GIL_HOLDER(g) ((uintptr_t)__atomic_load_n(&(g)->last_holder, __ATOMIC_ACQUIRE))
#else
#define GIL_LOCKED(g) __atomic_load_n(&(g)->locked._value, __ATOMIC_ACQUIRE)
#define GIL_HOLDER(g) ((uintptr_t)__atomic_load_n(&(g)->last_holder._value, __ATOMIC_ACQUIRE))
#endif
#define GIL_SWITCHES(g) __atomic_load_n(&(g)->switch_number, __ATOMIC_ACQUIRE)

/* Without the GIL: reads the stack of the thread holding it, if another thread holds it
 * and stays the holder throughout. 1 if `out` holds a stack, else 0. */
static int read_holder(PyInterpreterState *interp, uintptr_t me) {
    struct _gil_runtime_state *gil = gil_of(interp);
    if (!gil) return 0;
    unsigned long switches = GIL_SWITCHES(gil);
    uintptr_t holder = GIL_HOLDER(gil);
    if (!GIL_LOCKED(gil) || !holder || holder == me) return 0;
    int depth = walk(holder, interp);
    /* the instant of the read, and the thread's CPU clock then (MAKE_THREAD_CPUCLOCK(tid,
     * CPUCLOCK_SCHED), built from the native id: no pthread handle of a thread that may
     * be gone; a gone thread's clock fails, and gives 0) */
    struct timespec cpu;
    out.t = pyfl_now_ns();
    clockid_t clock = (clockid_t)((~(unsigned long)out.tid) << 3 | 6);
    out.cpu = out.tid && clock_gettime(clock, &cpu) == 0 ? (uint64_t)cpu.tv_sec * 1000000000u + (uint64_t)cpu.tv_nsec : 0;
    /* the holder changed meanwhile (or took the GIL right as we looked): not its stack */
    if (depth <= 0 || !GIL_LOCKED(gil) || GIL_HOLDER(gil) != holder || GIL_SWITCHES(gil) != switches) return 0;
    return 1;
}

/* ------------------------------------------------------------------ Python functions */

/* One read at a time: the cache, `out` and the buffers are static (all the reads are made
 * by the sampling thread; the flag keeps a test's read or a second sampler out). */
static int reader_busy;
static int probed;      /* 0 not yet, 1 works, -1 does not */
static char probe_error[200];

static void after_fork_child(void) {
    reader_busy = 0;
    self_pid = getpid();
    if (use_mem_fd) { /* the parent's /proc/self/mem is the parent's memory */
        close(mem_fd);
        mem_fd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
        use_mem_fd = mem_fd >= 0;
    }
}

/* Nonzero if a seccomp filter may be in force (`Seccomp: 2` in /proc/self/status, or it
 * cannot be told). A filter may kill the process on a system call it does not allow
 * (systemd's SystemCallFilter= does by default) instead of failing it, and
 * process_vm_readv is in no usual allowlist: then it is never tried. */
static int seccomp_filtered(void) {
    static char buf[8192];
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 1;
    buf[n] = 0;
    const char *p = strstr(buf, "\nSeccomp:");
    if (!p) return (size_t)n == sizeof buf - 1; /* no such line: a kernel without seccomp */
    p += strlen("\nSeccomp:");
    while (*p == ' ' || *p == '\t')
        p++;
    return *p != '0';
}

/* Can we read our own memory safely? process_vm_readv (unless a seccomp filter may be in
 * force), else pread of /proc/self/mem (open and pread are allowed everywhere). */
static const char *probe(void) {
    if (probed) return probed > 0 ? NULL : probe_error;
    volatile uint64_t here = 0x5079666C53746B52u;
    uint64_t got = 0;
    self_pid = getpid();
    int err = 0, filtered = seccomp_filtered();
    use_mem_fd = 0;
    if (!filtered && rd(&got, (uintptr_t)&here, sizeof got) == 0 && got == here) {
        probed = 1;
    } else {
        err = filtered ? 0 : errno;
        mem_fd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
        if (mem_fd >= 0) {
            use_mem_fd = 1;
            got = 0;
            if (rd(&got, (uintptr_t)&here, sizeof got) == 0 && got == here) probed = 1;
        }
        if (probed != 1) {
            use_mem_fd = 0;
            if (mem_fd >= 0) close(mem_fd);
            mem_fd = -1;
            if (filtered)
                snprintf(probe_error, sizeof probe_error,
                         "a seccomp filter may be in force (process_vm_readv not tried) and /proc/self/mem is "
                         "not readable");
            else
                snprintf(probe_error, sizeof probe_error,
                         "process_vm_readv on the own process failed (%s) and /proc/self/mem is not readable",
                         strerror(err));
            probed = -1;
            return probe_error;
        }
    }
    /* an unmapped address must fail, not fault */
    if (rd(&got, (uintptr_t)8, sizeof got) == 0) {
        snprintf(probe_error, sizeof probe_error, "reading an unmapped address did not fail");
        probed = -1;
        return probe_error;
    }
    pthread_atfork(NULL, NULL, after_fork_child);
    return NULL;
}

/* The (qualname, filename, line) tuple last made for each code cache entry, made and
 * dropped with the GIL held only (the entry's stamp tells whether it is still its own):
 * a thread read again where it was costs no new object. */
static struct {
    uint64_t stamp;
    PyObject *entry;
} py_cache[CODE_CACHE];

static PyObject *out_entry(const Entry *x) {
    PyObject *cached = py_cache[x->slot].entry;
    if (cached && py_cache[x->slot].stamp == x->stamp
        && PyLong_AsLong(PyTuple_GET_ITEM(cached, 2)) == x->line)
        return Py_NewRef(cached);
    PyObject *name = NULL, *file = NULL;
    if (cached && py_cache[x->slot].stamp == x->stamp) { /* same code, another line */
        name = Py_NewRef(PyTuple_GET_ITEM(cached, 0));
        file = Py_NewRef(PyTuple_GET_ITEM(cached, 1));
    } else {
        name = PyUnicode_DecodeUTF8(out.arena + x->name, x->name_len, "surrogatepass");
        file = name ? PyUnicode_DecodeUTF8(out.arena + x->file, x->file_len, "surrogatepass") : NULL;
    }
    PyObject *entry = name && file ? Py_BuildValue("(OOi)", name, file, x->line) : NULL;
    Py_XDECREF(name);
    Py_XDECREF(file);
    if (entry) PyObject_GC_UnTrack(entry); /* strs and an int: no cycle for the GC to look at */
    if (entry) {
        Py_XSETREF(py_cache[x->slot].entry, Py_NewRef(entry));
        py_cache[x->slot].stamp = x->stamp;
    }
    return entry;
}

/* The stack in `out` as a tuple of (qualname, filename, line), innermost first. */
static PyObject *out_stack(void) {
    PyObject *stack = PyTuple_New(out.depth);
    if (!stack) return NULL;
    for (int i = 0; i < out.depth; i++) {
        PyObject *entry = out_entry(&out.e[i]);
        if (!entry) {
            Py_DECREF(stack);
            return NULL;
        }
        PyTuple_SET_ITEM(stack, i, entry);
    }
    return stack;
}

/* stackreader_probe() -> None if the reader works here, else why not (str). */
static PyObject *sr_probe(PyObject *mod, PyObject *unused) {
    const char *why = probe();
    if (why) return PyUnicode_FromString(why);
    Py_RETURN_NONE;
}

/* stackreader_wait(fd, timeout) -> (ident, native_tid, stack, t, cpu) or None: releases the GIL,
 * waits up to timeout seconds for fd (an eventfd or pipe: the sampler's stop) to be
 * readable, then reads the stack of the thread holding the GIL at that instant, if any
 * (see the top of this file; t: when, in CLOCK_MONOTONIC ns; cpu: the thread's CPU clock
 * then, 0 if unknown), and takes the GIL back. None if woken by fd, if no other
 * thread held the GIL, or if its stack could not be read. Raises only on bad arguments. */
static PyObject *sr_wait(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "stackreader_wait(fd, timeout) takes 2 arguments");
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    if (fd < -1 || fd > INT_MAX) return PyErr_Format(PyExc_ValueError, "bad file descriptor");
    double timeout = PyFloat_AsDouble(args[1]);
    if (timeout == -1.0 && PyErr_Occurred()) return NULL;
    int ms = timeout <= 0 ? 0 : timeout >= 3600 ? 3600000 : (int)(timeout * 1000.0 + 0.5);
    PyInterpreterState *interp = PyInterpreterState_Get();
    uintptr_t me = (uintptr_t)PyThreadState_Get();
    int ok = probe() == NULL, found = 0, woken = 0;
    Py_BEGIN_ALLOW_THREADS
    struct pollfd p = {(int)fd, POLLIN, 0};
    woken = poll(&p, fd >= 0 ? 1 : 0, ms) > 0;
    if (ok && !woken && !__atomic_exchange_n(&reader_busy, 1, __ATOMIC_ACQUIRE)) {
        found = read_holder(interp, me); /* self_pid: kept by after_fork_child */
        if (!found) __atomic_store_n(&reader_busy, 0, __ATOMIC_RELEASE);
    }
    Py_END_ALLOW_THREADS
    if (!found) Py_RETURN_NONE;
    PyObject *stack = out_stack();
    PyObject *res = stack ? Py_BuildValue("(kkNKK)", out.ident, out.tid, stack, (unsigned long long)out.t,
                                          (unsigned long long)out.cpu)
                          : NULL;
    __atomic_store_n(&reader_busy, 0, __ATOMIC_RELEASE);
    if (!res) PyErr_Clear(); /* out of memory: no native stack this tick */
    if (!res) Py_RETURN_NONE;
    return res;
}

/* stackreader_read_thread(ident) -> stack or None: with the GIL held, reads the stack of
 * this interpreter's thread `ident` the way the reader does (for tests: the walk and the
 * line table against the frame objects). */
static PyObject *sr_read_thread(PyObject *mod, PyObject *arg) {
    unsigned long ident = PyLong_AsUnsignedLong(arg);
    if (ident == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    if (probe()) Py_RETURN_NONE;
    if (__atomic_exchange_n(&reader_busy, 1, __ATOMIC_ACQUIRE)) Py_RETURN_NONE;
    PyInterpreterState *interp = PyInterpreterState_Get();
    PyObject *res = NULL;
    for (PyThreadState *t = PyInterpreterState_ThreadHead(interp); t; t = PyThreadState_Next(t)) {
        if (t->thread_id == ident) {
            if (self_pid != getpid()) self_pid = getpid();
            if (walk((uintptr_t)t, interp) >= 0) res = out_stack();
            break;
        }
    }
    __atomic_store_n(&reader_busy, 0, __ATOMIC_RELEASE);
    if (!res && PyErr_Occurred()) return NULL;
    if (!res) Py_RETURN_NONE;
    return res;
}

static PyObject *sr_read_address(PyObject *mod, PyObject *arg) {
    /* for tests: walk() from an arbitrary thread-state address must never crash */
    uintptr_t addr = (uintptr_t)PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) return NULL;
    if (probe() || __atomic_exchange_n(&reader_busy, 1, __ATOMIC_ACQUIRE)) Py_RETURN_NONE;
    int depth;
    Py_BEGIN_ALLOW_THREADS
    depth = walk(addr, PyInterpreterState_Main());
    Py_END_ALLOW_THREADS
    PyObject *res = depth >= 0 ? out_stack() : NULL;
    __atomic_store_n(&reader_busy, 0, __ATOMIC_RELEASE);
    if (!res && PyErr_Occurred()) return NULL;
    if (!res) Py_RETURN_NONE;
    return res;
}

/* _stackreader_use_proc_mem(on) -> bool: for tests, read through /proc/self/mem (the
 * fallback where process_vm_readv is refused) or not; True if that is now the case. */
static PyObject *sr_use_proc_mem(PyObject *mod, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    if (probe() || __atomic_exchange_n(&reader_busy, 1, __ATOMIC_ACQUIRE)) Py_RETURN_FALSE;
    if (on && mem_fd < 0) mem_fd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
    use_mem_fd = on && mem_fd >= 0;
    __atomic_store_n(&reader_busy, 0, __ATOMIC_RELEASE);
    return PyBool_FromLong(use_mem_fd == on);
}

static PyMethodDef sr_methods[] = {
    {"stackreader_probe", sr_probe, METH_NOARGS, "None if the native stack reader works here, else why not."},
    {"_stackreader_use_proc_mem", sr_use_proc_mem, METH_O, "Read through /proc/self/mem or not (tests)."},
    {"stackreader_wait", (PyCFunction)(void (*)(void))sr_wait, METH_FASTCALL,
     "stackreader_wait(fd, timeout): sleep without the GIL, then read the GIL holder's stack."},
    {"stackreader_read_thread", sr_read_thread, METH_O, "Stack of thread `ident` read as the reader does (tests)."},
    {"_stackreader_read_address", sr_read_address, METH_O, "Walk from any address without crashing (tests)."},
    {NULL, NULL, 0, NULL},
};

int pyfl_stackreader_init(PyObject *mod) { return PyModule_AddFunctions(mod, sr_methods); }

#else /* not Linux, or a CPython version whose layouts this file does not know */

static PyObject *sr_probe(PyObject *mod, PyObject *unused) {
    return PyUnicode_FromString("the native stack reader supports CPython 3.11-3.13 on Linux only");
}

static PyObject *sr_wait(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) { Py_RETURN_NONE; }

static PyObject *sr_read_thread(PyObject *mod, PyObject *arg) { Py_RETURN_NONE; }

static PyMethodDef sr_methods[] = {
    {"stackreader_probe", sr_probe, METH_NOARGS, "None if the native stack reader works here, else why not."},
    {"_stackreader_use_proc_mem", sr_read_thread, METH_O, "Unsupported here: returns None."},
    {"stackreader_wait", (PyCFunction)(void (*)(void))sr_wait, METH_FASTCALL, "Unsupported here: returns None."},
    {"stackreader_read_thread", sr_read_thread, METH_O, "Unsupported here: returns None."},
    {"_stackreader_read_address", sr_read_thread, METH_O, "Unsupported here: returns None."},
    {NULL, NULL, 0, NULL},
};

int pyfl_stackreader_init(PyObject *mod) { return PyModule_AddFunctions(mod, sr_methods); }

#endif

/* ------------------------------------------------------------------ the caller chain
 *
 * For the asyncio source's waiting sites (_core_asyncio.c, note_sync_wait): this is the
 * one file compiled with the interpreter's internal headers, so the walk over the
 * *current* thread's frames lives here. The current thread holds the GIL and its frames
 * cannot change under us: plain reads, no safe reads needed. */

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#include "internal/pycore_frame.h"

static PyCodeObject *frame_code(_PyInterpreterFrame *fr) {
#if PY_VERSION_HEX >= 0x030D0000
    return PyCode_Check(fr->f_executable) ? (PyCodeObject *)fr->f_executable : NULL;
#else
    return fr->f_code;
#endif
}

static const void *frame_instr(_PyInterpreterFrame *fr) {
#if PY_VERSION_HEX >= 0x030D0000
    return fr->instr_ptr;
#else
    return fr->prev_instr;
#endif
}

uint64_t pyfl_caller_chain(PyFrameObject *f, int (*is_library)(PyCodeObject *), int max_depth) {
    _PyInterpreterFrame *fr = f->f_frame;
    PyCodeObject *code = frame_code(fr);
    uint64_t h = 0;
    for (int depth = 0; code && is_library(code) && depth < max_depth; depth++) {
        do
            fr = fr->previous;
        while (fr && (_PyFrame_IsIncomplete(fr) || !frame_code(fr)));
        if (!fr) break;
        code = frame_code(fr);
        h = (h ^ (((uint64_t)(uintptr_t)code) >> 4) ^ ((uint64_t)(uintptr_t)frame_instr(fr) << 20)) * 0x100000001b3ull;
    }
    return h;
}

#else /* a version whose frame layout this file does not know: the public API, slower */

uint64_t pyfl_caller_chain(PyFrameObject *f, int (*is_library)(PyCodeObject *), int max_depth) {
    uint64_t h = 0;
    PyFrameObject *g = (PyFrameObject *)Py_NewRef(f);
    for (int depth = 0; depth < max_depth; depth++) {
        PyCodeObject *code = PyFrame_GetCode(g);
        int library = is_library(code);
        Py_DECREF(code);
        if (!library) break;
        Py_SETREF(g, PyFrame_GetBack(g));
        if (!g) break;
        code = PyFrame_GetCode(g);
        h = (h ^ (((uint64_t)(uintptr_t)code) >> 4) ^ ((uint64_t)PyFrame_GetLasti(g) << 20)) * 0x100000001b3ull;
        Py_DECREF(code);
    }
    Py_XDECREF(g);
    return h;
}

#endif
