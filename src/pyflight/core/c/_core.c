/* pyflight._core: the C recording core.
 *
 * Contract: docs/internals.md (functions) and docs/format.md (bytes produced). One
 * recorder per process, kept in the static `S`. Every function runs with the GIL held and
 * never releases it. The recorder's state is only changed inside sections marked by
 * `S.busy`: a few CPython calls made there may run a garbage collection (hence gc
 * callbacks and finalizers, i.e. Python code) on 3.11, so a call that re-enters the core
 * while it is busy drops its event (counted) or raises RuntimeError instead of touching
 * half-updated state. Frame chains are walked before the busy section starts.
 *
 * Memory: batches and tables use PyMem_Raw*; when that fails the event is dropped and
 * counted in `dropped_events`. The core keeps alive only str, int, bytes and tuples of
 * those (never a frame or code object beyond the call that passed it).
 */
#include "_core.h"
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#ifdef Py_GIL_DISABLED
#error "pyflight._core relies on the GIL; free-threaded builds use the pure-Python core"
#endif

#define N_KINDS 128
#define NOT_A_KIND 0xFF
#define MAX_ARGS 16        /* most arguments a kind may take */
#define VARINT_MAX 10      /* bytes of the longest varint */
#define FRAME_HEAD 9       /* 'G', u32 body length, u32 CRC */
#define LOCAL_FRAMES 256   /* frame references collected on the C stack before using the heap */
#define MAX_DEPTH_LIMIT 65536

/* ------------------------------------------------------------------ primitives */

/* CLOCK_MONOTONIC in nanoseconds: the clock of every event. */
static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Writes v as unsigned LEB128 at p (room for VARINT_MAX bytes); returns the length. */
static inline size_t put_varint(uint8_t *p, uint64_t v) {
    size_t n = 0;
    for (; v >= 0x80; v >>= 7)
        p[n++] = (uint8_t)(v | 0x80);
    p[n++] = (uint8_t)v;
    return n;
}

/* Length in bytes of v as LEB128. */
static inline size_t varint_len(uint64_t v) {
    size_t n = 1;
    for (; v >= 0x80; v >>= 7)
        n++;
    return n;
}

/* Writes v little-endian at p. */
static void put_u32le(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t crc_table[8][256];

/* Fills the slicing-by-8 tables of the zlib CRC-32 (reflected polynomial 0xEDB88320). */
static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (uint32_t i = 0; i < 256; i++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
}

/* Equals zlib.crc32(p[:n]), on any byte order. */
static uint32_t crc32_zlib(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (; n >= 8; p += 8, n -= 8) {
        c ^= (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        c = crc_table[7][c & 0xFF] ^ crc_table[6][(c >> 8) & 0xFF] ^ crc_table[5][(c >> 16) & 0xFF]
            ^ crc_table[4][c >> 24] ^ crc_table[3][p[4]] ^ crc_table[2][p[5]] ^ crc_table[1][p[6]]
            ^ crc_table[0][p[7]];
    }
    while (n--)
        c = crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* Sets exception `type` with `msg`; returns -1. */
static int fail(PyObject *type, const char *msg) {
    PyErr_SetString(type, msg);
    return -1;
}

/* A growable byte buffer. */
typedef struct {
    uint8_t *data;
    size_t len, cap;
} Buf;

/* Makes room for `extra` more bytes: 0, or -1 if out of memory (buffer unchanged). */
static int buf_reserve(Buf *b, size_t extra) {
    if (b->cap - b->len >= extra) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) {
        if (cap > SIZE_MAX / 2) return -1;
        cap *= 2;
    }
    uint8_t *data = PyMem_RawRealloc(b->data, cap);
    if (!data) return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

/* Releases the buffer's memory and leaves it empty. */
static void buf_free(Buf *b) {
    PyMem_RawFree(b->data);
    *b = (Buf){NULL, 0, 0};
}

/* ------------------------------------------------------------------ interning of byte keys */

/* Frames or stacks of one generation: ids 1..n. Each key is stored exactly as its entry
 * in the generation's section, concatenated in id order, so `enc` is the section body. */
typedef struct {
    Buf enc;
    uint32_t n, cap;   /* entries; capacity of `off` */
    size_t *off;       /* off[i] = start of id i+1 in enc; off[n] == enc.len */
    uint32_t *slots;   /* open-addressing index: 0 = empty, else an id */
    uint32_t nslots;   /* 0 or a power of two greater than 2n */
} Intern;

/* FNV-1a. */
static uint32_t hash_bytes(const uint8_t *p, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

/* Rebuilds the index with `nslots` slots: 0, or -1 if out of memory (table unchanged). */
static int intern_rehash(Intern *t, uint32_t nslots) {
    uint32_t *slots = PyMem_RawCalloc(nslots, sizeof *slots);
    if (!slots) return -1;
    for (uint32_t id = 1; id <= t->n; id++) {
        uint32_t i = hash_bytes(t->enc.data + t->off[id - 1], t->off[id] - t->off[id - 1]) & (nslots - 1);
        while (slots[i])
            i = (i + 1) & (nslots - 1);
        slots[i] = id;
    }
    PyMem_RawFree(t->slots);
    t->slots = slots;
    t->nslots = nslots;
    return 0;
}

/* Id of `key` (1..n), added if new; 0 if out of memory (table unchanged). */
static uint32_t intern_bytes(Intern *t, const uint8_t *key, size_t len) {
    uint32_t h = hash_bytes(key, len), i;
    for (i = h & (t->nslots - 1); t->nslots && t->slots[i]; i = (i + 1) & (t->nslots - 1)) {
        uint32_t id = t->slots[i];
        if (t->off[id] - t->off[id - 1] == len && memcmp(t->enc.data + t->off[id - 1], key, len) == 0)
            return id;
    }
    if (t->n >= UINT32_MAX / 4) return 0;
    if (2 * (t->n + 1) >= t->nslots && intern_rehash(t, t->nslots ? 2 * t->nslots : 64) < 0) return 0;
    if (t->n + 2 > t->cap) {
        uint32_t cap = t->cap ? 2 * t->cap : 64;
        size_t *off = PyMem_RawRealloc(t->off, cap * sizeof *off);
        if (!off) return 0;
        t->off = off;
        t->cap = cap;
    }
    if (buf_reserve(&t->enc, len) < 0) return 0;
    memcpy(t->enc.data + t->enc.len, key, len);
    t->off[t->n] = t->enc.len;
    t->enc.len += len;
    t->off[++t->n] = t->enc.len;
    for (i = h & (t->nslots - 1); t->slots[i]; i = (i + 1) & (t->nslots - 1))
        ;
    t->slots[i] = t->n;
    return t->n;
}

/* Releases the table's memory and leaves it empty. */
static void intern_free(Intern *t) {
    buf_free(&t->enc);
    PyMem_RawFree(t->off);
    PyMem_RawFree(t->slots);
    memset(t, 0, sizeof *t);
}

/* ------------------------------------------------------------------ recorder state */

/* The events one thread recorded in one generation. */
typedef struct TBuf {
    struct TBuf *next;
    uint64_t tid, base_ns, last_ns, n_events;
    Buf ev;              /* encoded events */
    PyflStep *step;      /* the thread's innermost step whose begin is only noted (see
                          * PyflStep; ->outer: the steps it runs in); written by a seal */
} TBuf;

/* The open generation. */
typedef struct {
    uint64_t seq, start_ns;
    uint64_t epoch;      /* unique over the process lifetime; 0 = none open */
    uint64_t n_events, ev_bytes;
    uint64_t live_bytes; /* what re-recording the live table took at open: not counted by gen_due */
    PyObject *str_ids;   /* dict str -> int id, created on first use */
    Buf strs;            /* strings section body */
    uint32_t n_strs;
    Intern frames, stacks;
    TBuf *batches;
} Gen;

typedef struct {
    uint64_t start_ns, end_ns, size;
} RingMeta;

static struct {
    int configured, enabled, busy;
    uint8_t counts[N_KINDS];
    uint64_t max_bytes, min_age_ns, gen_max_bytes, gen_interval_ns;
    Py_ssize_t max_depth;
    uint64_t epoch;      /* generations ever opened: never reset, so stale thread pointers never match */
    Gen gen;
    PyObject *ring;      /* list of framed generations (bytes), oldest first */
    RingMeta *meta;      /* parallel to ring */
    size_t meta_cap;
    uint64_t ring_bytes, events, sealed, evicted, dropped;
    uint64_t stacks;     /* stack arguments interned (walked): what the budget's hook estimate counts */
    uint64_t last_t;     /* time of the last event appended (any thread): commit's seal decision */
    PyObject *live;      /* dict key -> tuple (kind, *args), insertion ordered */
    Buf scratch;         /* the stack key being built */
    PyObject *here;      /* the HERE sentinel */
} S;

/* The calling thread's batch and the epoch of the generation it belongs to. */
PYFL_TLS int pyfl_tls_sent;

static PYFL_TLS struct {
    TBuf *buf;
    uint64_t epoch;
} tls;

/* Pending blocks (see _core.h, PyflPending): a list of nodes on the blocked threads' C
 * stacks, changed only with the GIL held. pending_fork_gen changes in a forked child,
 * where the list is dropped (its nodes belong to threads that do not exist there). */
static PyflPending *pending_head;
static uint64_t pending_fork_gen = 1;
static int pending_flushing;

/* A parsed record() call. */
typedef struct {
    uint8_t kind, n, n_stacks;
    char type[MAX_ARGS];          /* 'u' int, 's' str, 'k' stack from a frame, 't' stack as entries */
    uint64_t val[MAX_ARGS];       /* 'u': the value */
    PyObject *obj[MAX_ARGS];      /* 's': the str; 'k': innermost frame or NULL; 't': the tuple (borrowed) */
    Py_ssize_t depth[MAX_ARGS];   /* 'k': frames collected for it */
} Ev;

/* ------------------------------------------------------------------ generation tables */

/* The ids of recently interned str objects, by identity: the hooks pass the same objects
 * again and again (a callback's qualname, an asyncio wait's name), and a pointer compare
 * is ~10x cheaper than the dict lookup. An entry holds its str (so its address cannot be
 * reused by another) and is valid for the generation it was made in only. */
#define STR_CACHE 256
static struct {
    PyObject *s;
    uint64_t epoch;
    int64_t id;
} str_cache[STR_CACHE];

static int64_t intern_str_slow(PyObject *s);

/* Id of str `s` in the open generation (0 for "" and for non-exact str), added if new;
 * -1 if out of memory. Runs no Python code: exact str keys only (a str the cache lets
 * go of is freed without running any). */
static int64_t intern_str(PyObject *s) {
    size_t h = ((uintptr_t)s >> 4) & (STR_CACHE - 1);
    if (str_cache[h].s == s && str_cache[h].epoch == S.gen.epoch) return str_cache[h].id;
    int64_t id = intern_str_slow(s);
    if (id > 0 && S.gen.epoch) {
        Py_INCREF(s);
        Py_XSETREF(str_cache[h].s, s);
        str_cache[h].epoch = S.gen.epoch;
        str_cache[h].id = id;
    }
    return id;
}

static int64_t intern_str_slow(PyObject *s) {
    Gen *g = &S.gen;
    if (!PyUnicode_CheckExact(s) || PyUnicode_GET_LENGTH(s) == 0) return 0;
    if (!g->str_ids && !(g->str_ids = PyDict_New())) goto nomem;
    PyObject *found = PyDict_GetItemWithError(g->str_ids, s);
    if (found) return (int64_t)PyLong_AsUnsignedLong(found);
    if (PyErr_Occurred()) goto nomem;
    Py_ssize_t n;
    PyObject *tmp = NULL, *id = NULL;
    const char *utf8 = PyUnicode_AsUTF8AndSize(s, &n);
    if (!utf8) { /* lone surrogates: encoded like the Python side, with surrogatepass */
        PyErr_Clear();
        if (!(tmp = PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass"))) goto nomem;
        utf8 = PyBytes_AS_STRING(tmp);
        n = PyBytes_GET_SIZE(tmp);
    }
    size_t old = g->strs.len;
    if (buf_reserve(&g->strs, VARINT_MAX + (size_t)n) == 0) {
        g->strs.len += put_varint(g->strs.data + g->strs.len, (uint64_t)n);
        memcpy(g->strs.data + g->strs.len, utf8, (size_t)n);
        g->strs.len += (size_t)n;
        id = PyLong_FromUnsignedLong(g->n_strs + 1);
    }
    Py_XDECREF(tmp);
    if (!id || PyDict_SetItem(g->str_ids, s, id) < 0) {
        Py_XDECREF(id);
        g->strs.len = old;
        goto nomem;
    }
    Py_DECREF(id);
    return ++g->n_strs;
nomem:
    PyErr_Clear();
    return -1;
}

/* The frame-id cache: (code object, instruction offset) -> id of that frame in the open
 * generation. A frame's key (qualname, filename, line) is a function of its code and
 * offset, so a stack seen again (the same wait, the same await chain) costs a few
 * compares per frame instead of a line-table scan and two dict lookups (a blocked
 * Condition.wait: ~1 us less). Direct-mapped; an entry is valid only in the generation
 * (`epoch`) that made it. It keeps no reference (code objects must not outlive their
 * users), so a hit also checks the qualname and filename objects and the first line:
 * a match needs a code object freed and another allocated at the same address, within
 * one generation, with the same name and file objects and first line. */
#define FRAME_CACHE_SIZE 4096
typedef struct {
    const void *code, *qualname, *filename;
    int lasti, firstlineno;
    uint32_t fid;
    uint64_t epoch;
} FrameCacheEntry;
static FrameCacheEntry frame_cache[FRAME_CACHE_SIZE];

/* Id of the frame (func, file, line) - func and file str ids, negative if their interning
 * failed - in the open generation; 0 if out of memory. */
static uint32_t frame_id(int64_t func, int64_t file, uint64_t line) {
    if (func < 0 || file < 0) return 0;
    uint8_t key[3 * VARINT_MAX];
    size_t n = put_varint(key, (uint64_t)func);
    n += put_varint(key + n, (uint64_t)file);
    n += put_varint(key + n, line);
    return intern_bytes(&S.gen.frames, key, n);
}

/* Id of frame f's (qualname, filename, current line) in the open generation; 0 if out
 * of memory. Keeps no reference to f or its code. */
static uint32_t intern_frame(PyFrameObject *f) {
    PyCodeObject *code = PyFrame_GetCode(f);
    int lasti = PyFrame_GetLasti(f);
    size_t slot = (((uintptr_t)code >> 4) ^ ((uintptr_t)(unsigned)lasti * 0x9E3779B1u)) & (FRAME_CACHE_SIZE - 1);
    FrameCacheEntry *e = &frame_cache[slot];
    if (e->code == (const void *)code && e->lasti == lasti && e->epoch == S.gen.epoch
        && e->qualname == (const void *)code->co_qualname && e->filename == (const void *)code->co_filename
        && e->firstlineno == code->co_firstlineno) {
        Py_DECREF(code);
        return e->fid;
    }
    int64_t func = intern_str(code->co_qualname), file = intern_str(code->co_filename);
    int line = PyFrame_GetLineNumber(f);
    uint32_t fid = frame_id(func, file, line > 0 ? (uint64_t)line : 0);
    if (fid)
        *e = (FrameCacheEntry){code, code->co_qualname, code->co_filename, lasti, code->co_firstlineno, fid, S.gen.epoch};
    Py_DECREF(code);
    return fid;
}

/* A stack's key is built in S.scratch: stack_open(depth) leaves room for the depth,
 * stack_add() appends each frame id (innermost first), stack_close(depth) writes the depth
 * right before the ids and interns the key: the stack's id, or -1 if out of memory. */
static int stack_open(Py_ssize_t depth) {
    Buf *b = &S.scratch;
    b->len = 0;
    if (buf_reserve(b, VARINT_MAX + 5 * (size_t)depth) < 0) return -1;
    b->len = VARINT_MAX;
    return 0;
}

static inline void stack_add(uint32_t fid) { S.scratch.len += put_varint(S.scratch.data + S.scratch.len, fid); }

static int64_t stack_close(Py_ssize_t depth) {
    Buf *b = &S.scratch;
    uint8_t *key = b->data + VARINT_MAX - varint_len((uint64_t)depth);
    put_varint(key, (uint64_t)depth);
    uint32_t id = intern_bytes(&S.gen.stacks, key, (size_t)(b->data + b->len - key));
    return id ? (int64_t)id : -1;
}

/* Id of the stack frames[0..depth) (innermost first) in the open generation: 0 for an
 * empty stack, -1 if out of memory. */
static int64_t intern_stack(PyObject **frames, Py_ssize_t depth) {
    if (depth == 0) return 0;
    if (stack_open(depth) < 0) return -1;
    for (Py_ssize_t i = 0; i < depth; i++) {
        uint32_t fid = intern_frame((PyFrameObject *)frames[i]);
        if (!fid) return -1;
        stack_add(fid);
    }
    return stack_close(depth);
}

/* Id of the stack given as a tuple of (qualname, filename, line) entries, innermost first
 * (checked by parse_event), cut to max_depth, in the open generation: 0 for an empty
 * stack, -1 if out of memory. Its strs are interned by value: they are new objects each
 * time (the native stack reader's), not worth a place in the identity cache. */
static int64_t intern_entries(PyObject *entries) {
    Py_ssize_t depth = PyTuple_GET_SIZE(entries);
    if (depth > S.max_depth) depth = S.max_depth;
    if (depth == 0) return 0;
    if (stack_open(depth) < 0) return -1;
    for (Py_ssize_t i = 0; i < depth; i++) {
        PyObject *e = PyTuple_GET_ITEM(entries, i);
        int64_t func = intern_str_slow(PyTuple_GET_ITEM(e, 0)), file = intern_str_slow(PyTuple_GET_ITEM(e, 1));
        unsigned long long line = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(e, 2));
        if (line == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            line = 0;
        }
        uint32_t fid = frame_id(func, file, (uint64_t)line);
        if (!fid) return -1;
        stack_add(fid);
    }
    return stack_close(depth);
}

/* True if `a` is a stack given as entries: a tuple of (str, str, int >= 0) tuples. */
static int is_entries(PyObject *a) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(a); i++) {
        PyObject *e = PyTuple_GET_ITEM(a, i);
        if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) != 3 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(e, 0))
            || !PyUnicode_CheckExact(PyTuple_GET_ITEM(e, 1)) || !PyLong_CheckExact(PyTuple_GET_ITEM(e, 2))
            || _PyLong_Sign(PyTuple_GET_ITEM(e, 2)) < 0)
            return 0;
    }
    return 1;
}

/* Stores new references to up to `max` frames from f outwards (innermost first) in out;
 * returns how many. A failing frame lookup just ends the stack there.
 * f may be another thread's frame (the sampler, the stall watchdog, a pending block
 * flushed at a seal). PyFrame_GetBack makes a frame object for the next frame out, and
 * that allocation may run the cyclic GC, whose finalizers run Python code that can hand
 * the GIL over: the other thread could then pop the very frame being wrapped, leaving
 * the new frame object pointing at freed stack (a crash seen under a threaded server).
 * So the GC is held off during the walk: nothing in it can then let the GIL go. */
static Py_ssize_t collect_frames(PyFrameObject *f, PyObject **out, Py_ssize_t max) {
    Py_ssize_t n = 0;
    if (!f || max == 0) return 0;
    int gc_was_on = PyGC_Disable();
    Py_INCREF(f);
    do
        out[n++] = (PyObject *)f;
    while (n < max && (f = PyFrame_GetBack(f)));
    if (PyErr_Occurred())
        PyErr_Clear();
    if (gc_was_on) PyGC_Enable();
    return n;
}

/* ------------------------------------------------------------------ generations and ring */

/* Frees everything the open generation owns and marks none open. */
static void gen_free(Gen *g) {
    for (TBuf *b = g->batches, *next; b; b = next) {
        next = b->next;
        buf_free(&b->ev);
        PyMem_RawFree(b);
    }
    Py_CLEAR(g->str_ids);
    for (int i = 0; i < STR_CACHE; i++) /* its entries were this generation's */
        Py_CLEAR(str_cache[i].s);
    buf_free(&g->strs);
    intern_free(&g->frames);
    intern_free(&g->stacks);
    memset(g, 0, sizeof *g);
}

/* Opens generation `seq` at time t (never fails: tables are allocated on first use). */
static void gen_open(uint64_t seq, uint64_t t) {
    memset(&S.gen, 0, sizeof S.gen);
    S.gen.seq = seq;
    S.gen.start_ns = t;
    S.gen.epoch = ++S.epoch;
}

/* True if the open generation must be sealed before an event at time t. The live table's
 * copy does not count: with more live entries than a generation holds (40,000 live asyncio
 * tasks), each event would otherwise seal and re-record them all. */
static inline int gen_due(uint64_t t) {
    const Gen *g = &S.gen;
    return g->ev_bytes + g->strs.len + g->frames.enc.len + g->stacks.enc.len - g->live_bytes >= S.gen_max_bytes
           || t - g->start_ns >= S.gen_interval_ns;
}

/* Exact body size of the open generation if sealed at end_ns; *n_batches gets the
 * number of non-empty batches. */
static uint64_t body_size(const Gen *g, uint64_t end_ns, uint64_t *n_batches) {
    uint64_t size = varint_len(g->seq) + varint_len(g->start_ns) + varint_len(end_ns)
                    + varint_len(g->n_strs) + g->strs.len + varint_len(g->frames.n) + g->frames.enc.len
                    + varint_len(g->stacks.n) + g->stacks.enc.len;
    *n_batches = 0;
    for (const TBuf *b = g->batches; b; b = b->next) {
        if (b->n_events) {
            ++*n_batches;
            size += varint_len(b->tid) + varint_len(b->base_ns) + varint_len(b->n_events)
                    + varint_len(b->ev.len) + b->ev.len;
        }
    }
    return size + varint_len(*n_batches);
}

/* Writes varint `count` then the bytes of `body` at p; returns the end. */
static uint8_t *put_section(uint8_t *p, uint64_t count, const Buf *body) {
    p += put_varint(p, count);
    if (body->len)
        memcpy(p, body->data, body->len);
    return p + body->len;
}

/* The open generation framed per docs/format.md ('G', length, CRC-32, body), ending at
 * end_ns; NULL (maybe with an exception) if out of memory or over 4 GiB. */
static PyObject *gen_encode(const Gen *g, uint64_t end_ns) {
    uint64_t n_batches, size = body_size(g, end_ns, &n_batches);
    PyObject *out = size > UINT32_MAX ? NULL : PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(FRAME_HEAD + size));
    if (!out) return NULL;
    uint8_t *head = (uint8_t *)PyBytes_AS_STRING(out), *p = head + FRAME_HEAD;
    p += put_varint(p, g->seq);
    p += put_varint(p, g->start_ns);
    p += put_varint(p, end_ns);
    p = put_section(p, g->n_strs, &g->strs);
    p = put_section(p, g->frames.n, &g->frames.enc);
    p = put_section(p, g->stacks.n, &g->stacks.enc);
    p += put_varint(p, n_batches);
    for (const TBuf *b = g->batches; b; b = b->next) {
        if (b->n_events) {
            p += put_varint(p, b->tid);
            p += put_varint(p, b->base_ns);
            p += put_varint(p, b->n_events);
            p = put_section(p, b->ev.len, &b->ev);
        }
    }
    head[0] = 'G';
    put_u32le(head + 1, (uint32_t)size);
    put_u32le(head + 5, crc32_zlib(head + FRAME_HEAD, (size_t)size));
    return out;
}

/* Appends a framed generation to the ring: 0, or -1 if out of memory (ring unchanged). */
static int ring_push(PyObject *frame, uint64_t start_ns, uint64_t end_ns) {
    size_t n = (size_t)PyList_GET_SIZE(S.ring);
    if (n == S.meta_cap) {
        size_t cap = S.meta_cap ? 2 * S.meta_cap : 64;
        RingMeta *meta = PyMem_RawRealloc(S.meta, cap * sizeof *meta);
        if (!meta) return -1;
        S.meta = meta;
        S.meta_cap = cap;
    }
    if (PyList_Append(S.ring, frame) < 0) return -1;
    S.meta[n] = (RingMeta){start_ns, end_ns, (uint64_t)PyBytes_GET_SIZE(frame)};
    S.ring_bytes += S.meta[n].size;
    return 0;
}

/* Drops the oldest generations while the ring holds more than max_bytes, then while the
 * oldest ended before t - min_age_ns. On a memory failure the ring is left as it was. */
static void evict(uint64_t t) {
    size_t n = 0, len = (size_t)PyList_GET_SIZE(S.ring);
    uint64_t bytes = S.ring_bytes;
    while (n < len && bytes > S.max_bytes)
        bytes -= S.meta[n++].size;
    while (n < len && t >= S.min_age_ns && S.meta[n].end_ns < t - S.min_age_ns)
        bytes -= S.meta[n++].size;
    if (!n) return;
    if (PyList_SetSlice(S.ring, 0, (Py_ssize_t)n, NULL) < 0) {
        PyErr_Clear();
        return;
    }
    memmove(S.meta, S.meta + n, (len - n) * sizeof *S.meta);
    S.ring_bytes = bytes;
    S.evicted += n;
}

static int parse_event(PyObject *const *args, Py_ssize_t nargs, Ev *ev, int allow_stacks);
static int append_event(const Ev *ev, PyObject **frames, uint64_t t);

/* Seals the open generation at t (busy section): frames it into the ring if it holds any
 * event (if memory runs out it is dropped and its events counted), evicts, opens the
 * next generation at t and re-records the live entries in insertion order. An empty
 * generation is not emitted; the next one reuses its number. */
static void pending_ev(const PyflPending *p, Ev *ev, int with_stack);
static int append_event_to(const Ev *ev, PyObject **frames, uint64_t t, uint64_t tid);

static void steps_flush(TBuf *b);

static void seal_gen(uint64_t t) {
    uint64_t seq = S.gen.seq;
    /* pending blocks not flushed with their stacks (a seal forced while one was being
     * flushed): their BLOCK_BEGIN without a stack, so that this generation has it */
    for (PyflPending *p = pending_head; p; p = p->next) {
        if (p->flushed || p->epoch != S.gen.epoch) continue;
        Ev ev;
        pending_ev(p, &ev, 0);
        if (append_event_to(&ev, NULL, p->t0, p->tid) < 0) S.dropped++;
        p->flushed = 1;
    }
    /* steps running across the seal: their BEGIN in this generation, their END in the next */
    for (TBuf *b = S.gen.batches; b; b = b->next)
        if (b->step) steps_flush(b);
    if (S.gen.n_events) {
        PyObject *frame = gen_encode(&S.gen, t);
        if (frame && ring_push(frame, S.gen.start_ns, t) == 0) {
            S.sealed++;
        } else {
            PyErr_Clear();
            S.dropped += S.gen.n_events;
        }
        Py_XDECREF(frame);
        seq++;
    }
    evict(t);
    gen_free(&S.gen);
    gen_open(seq, t);
    Py_ssize_t pos = 0;
    PyObject *key, *entry;
    while (PyDict_Next(S.live, &pos, &key, &entry)) {
        Ev ev; /* parse_event cannot fail here: set_live checked the entry */
        if (parse_event(&PyTuple_GET_ITEM(entry, 0), PyTuple_GET_SIZE(entry), &ev, 0) < 0
            || append_event(&ev, NULL, t) < 0) {
            PyErr_Clear();
            S.dropped++;
        }
    }
    S.gen.live_bytes = S.gen.ev_bytes + S.gen.strs.len + S.gen.frames.enc.len + S.gen.stacks.enc.len;
}

/* Discards ring, open generation and live table and disables recording; keeps the
 * configuration and the counters. Runs no Python code (releases only str/int/bytes/tuple). */
static void discard_all(void) {
    S.enabled = 0;
    gen_free(&S.gen);
    Py_CLEAR(S.ring);
    PyMem_RawFree(S.meta);
    S.meta = NULL;
    S.meta_cap = 0;
    S.ring_bytes = 0;
    Py_CLEAR(S.live);
    buf_free(&S.scratch);
}

/* ------------------------------------------------------------------ recording */

/* Checks (kind, *values) against the kind table and converts the ints; changes no state.
 * -1 with TypeError/ValueError/OverflowError if anything is wrong. Strings and frames
 * are interned later, by append_event. */
static int parse_event(PyObject *const *args, Py_ssize_t nargs, Ev *ev, int allow_stacks) {
    if (nargs < 1) return fail(PyExc_TypeError, "an event kind is required");
    if (!PyLong_Check(args[0])) return fail(PyExc_TypeError, "event kind must be an int");
    long kind = PyLong_AsLong(args[0]);
    if (kind == -1 && PyErr_Occurred())
        PyErr_Clear();
    if (kind < 0 || kind >= N_KINDS || S.counts[kind] == NOT_A_KIND)
        return fail(PyExc_ValueError, "unknown event kind");
    if (nargs - 1 != S.counts[kind]) {
        PyErr_Format(PyExc_ValueError, "event kind %ld takes %d arguments, got %zd", kind, S.counts[kind], nargs - 1);
        return -1;
    }
    ev->kind = (uint8_t)kind;
    ev->n = (uint8_t)(nargs - 1);
    ev->n_stacks = 0;
    for (int i = 0; i < ev->n; i++) {
        PyObject *a = args[i + 1];
        ev->type[i] = 'u';
        if (PyLong_Check(a)) {
            ev->val[i] = PyLong_AsUnsignedLongLong(a);
            if (ev->val[i] == (uint64_t)-1 && PyErr_Occurred()) return -1;
        } else if (a == Py_None) {
            ev->val[i] = 0;
        } else if (PyUnicode_CheckExact(a)) {
            ev->type[i] = 's';
            ev->obj[i] = a;
        } else if (allow_stacks && (PyFrame_Check(a) || a == S.here)) {
            ev->type[i] = 'k';
            ev->obj[i] = a == S.here ? (PyObject *)PyEval_GetFrame() : a;
            ev->n_stacks++;
        } else if (allow_stacks && PyTuple_CheckExact(a) && is_entries(a)) {
            ev->type[i] = 't'; /* a stack as (qualname, filename, line) entries */
            ev->obj[i] = a;
        } else {
            PyErr_Format(PyExc_TypeError, "event argument %d must be int, None, str%s, not %.100s", i + 1,
                         allow_stacks ? ", a frame, HERE or a stack of (function, file, line)" : "",
                         Py_TYPE(a)->tp_name);
            return -1;
        }
    }
    return 0;
}

/* The calling thread's batch in the open generation, created with its first event at t
 * if needed; NULL if out of memory. */
static TBuf *batch_for(uint64_t tid, uint64_t t);

static inline TBuf *thread_buf(uint64_t t) {
    if (tls.epoch == S.gen.epoch) return tls.buf;
    TBuf *b = batch_for((uint64_t)PyThread_get_thread_native_id(), t);
    if (!b) return NULL;
    tls.buf = b;
    tls.epoch = S.gen.epoch;
    return b;
}

/* The batch of thread `tid` in the open generation (one per thread: a pending block's
 * flush may have made it for a thread that had recorded nothing yet), created with its
 * first event at t if needed; NULL if out of memory. */
static TBuf *batch_for(uint64_t tid, uint64_t t) {
    for (TBuf *b = S.gen.batches; b; b = b->next)
        if (b->tid == tid) return b;
    TBuf *b = PyMem_RawCalloc(1, sizeof *b);
    if (!b) return NULL;
    b->tid = tid;
    b->base_ns = b->last_ns = t;
    b->next = S.gen.batches;
    S.gen.batches = b;
    return b;
}

/* Busy section: interns the event's strings and stacks (`frames` holds each stack
 * argument's collected frames, in argument order) and appends the event at time t to the
 * calling thread's batch. 0, or -1 if out of memory (event not appended). */
static int append_event(const Ev *ev, PyObject **frames, uint64_t t) { return append_event_to(ev, frames, t, 0); }

/* append_event into the batch of thread `tid` (0: the calling thread's). */
static int put_event(TBuf *b, uint8_t kind, uint64_t t, int n, const uint64_t *v);

static int append_event_to(const Ev *ev, PyObject **frames, uint64_t t, uint64_t tid) {
    uint64_t v[MAX_ARGS];
    for (int i = 0; i < ev->n; i++) {
        int64_t id = 0;
        if (ev->type[i] == 's') {
            id = intern_str(ev->obj[i]);
        } else if (ev->type[i] == 'k') {
            id = intern_stack(frames, ev->depth[i]);
            frames += ev->depth[i];
            S.stacks++;
        } else if (ev->type[i] == 't') {
            id = intern_entries(ev->obj[i]);
            S.stacks++;
        }
        if (id < 0) return -1;
        v[i] = ev->type[i] == 'u' ? ev->val[i] : (uint64_t)id;
    }
    TBuf *b = tid ? batch_for(tid, t) : thread_buf(t);
    if (!b) return -1;
    return put_event(b, ev->kind, t, ev->n, v);
}

/* Busy section: appends event (kind, time t, n int values v) to batch b. 0, or -1 if out
 * of memory (nothing appended). */
static int put_event(TBuf *b, uint8_t kind, uint64_t t, int n, const uint64_t *v) {
    if (buf_reserve(&b->ev, 1 + VARINT_MAX * (1 + (size_t)n)) < 0) return -1;
    uint8_t *start = b->ev.data + b->ev.len, *p = start;
    *p++ = kind;
    p += put_varint(p, t >= b->last_ns ? t - b->last_ns : 0);
    for (int i = 0; i < n; i++)
        p += put_varint(p, v[i]);
    if (t > b->last_ns)
        b->last_ns = t;
    b->ev.len += (size_t)(p - start);
    b->n_events++;
    S.gen.ev_bytes += (uint64_t)(p - start);
    S.gen.n_events++;
    S.events++;
    if (t > S.last_t) S.last_t = t;
    return 0;
}

/* Busy section: appends the BEGIN event of noted step s (at its start time) to batch x,
 * after those of the steps it runs in (outermost first: times never decrease). Out of
 * memory drops a BEGIN (counted). */
static void step_begin_to(TBuf *x, PyflStep *s) {
    if (s->outer) step_begin_to(x, s->outer);
    uint64_t v[2] = {s->vals[0], 0};
    int n = 1;
    if (s->name) {
        int64_t id = intern_str(s->name);
        v[1] = id > 0 ? (uint64_t)id : 0;
        n = 2;
    }
    if ((unsigned)s->begin_kind >= N_KINDS || S.counts[s->begin_kind] != n
        || put_event(x, (uint8_t)s->begin_kind, s->t0, n, v) < 0)
        S.dropped++;
}

/* Busy section, sealing only: writes the BEGIN events of batch b's noted steps at their
 * start times and forgets them (they end with END events, in the next generation). If b
 * already holds events recorded after the outermost one began (a batch's times never go
 * back), the BEGINs go into a second batch of the same thread, based at that start:
 * a generation's batches are merged by time. */
static void steps_flush(TBuf *b) {
    PyflStep *outermost = b->step;
    while (outermost->outer) outermost = outermost->outer;
    TBuf *x = b;
    if (b->n_events && b->last_ns > outermost->t0) {
        if (!(x = PyMem_RawCalloc(1, sizeof *x))) {
            S.dropped++;
            b->step = NULL;
            return;
        }
        x->tid = b->tid;
        x->base_ns = x->last_ns = outermost->t0;
        x->next = b->next; /* after b: the seal's loop over the batches visits it next, empty of steps */
        b->next = x;
    }
    step_begin_to(x, b->step);
    b->step = NULL;
}

/* The BLOCK_BEGIN event of pending block p, its stack argument the frame (borrowed) if
 * with_stack and there is one, else 0. */
static void pending_ev(const PyflPending *p, Ev *ev, int with_stack) {
    ev->kind = (uint8_t)p->kind;
    ev->n = (uint8_t)p->n;
    ev->n_stacks = 0;
    for (int i = 0; i < p->n; i++) {
        ev->type[i] = 'u';
        ev->val[i] = i == p->stack_at ? 0 : p->vals[i];
    }
    if (with_stack && p->frame) {
        ev->type[p->stack_at] = 'k';
        ev->obj[p->stack_at] = (PyObject *)p->frame;
        ev->n_stacks = 1;
    }
}

/* Writes pending block p's BLOCK_BEGIN (at its start time, into its thread's batch),
 * with its stack if with_stack, unless it was written meanwhile. Frames are collected
 * first, which may run Python code (another thread may then end p, or a seal write it):
 * unless `own` (called by p's thread, whose node cannot go away), p is only touched again
 * if it is still in the list with the same start and thread. */
static void pending_write(PyflPending *p, int with_stack, int own) {
    PyObject *local[LOCAL_FRAMES], **frames = local;
    Ev ev;
    uint64_t t0 = p->t0, tid = p->tid, epoch = p->epoch;
    Py_ssize_t depth = 0, max = S.max_depth < LOCAL_FRAMES ? S.max_depth : LOCAL_FRAMES;
    pending_ev(p, &ev, with_stack);
    if (ev.n_stacks) {
        depth = collect_frames((PyFrameObject *)ev.obj[p->stack_at], frames, max);
        ev.depth[p->stack_at] = depth;
    }
    int found = own; /* the owner's node cannot go away meanwhile: no list walk */
    for (PyflPending *q = own ? NULL : pending_head; q; q = q->next)
        if (q == p && q->t0 == t0 && q->tid == tid) found = 1;
    if (found && !p->flushed && S.enabled && !S.busy && S.gen.epoch == epoch) {
        S.busy = 1;
        /* the owner's batch through its thread-local pointer: no search of the batches */
        if (append_event_to(&ev, frames, t0, own ? 0 : tid) < 0) S.dropped++;
        S.busy = 0;
        p->flushed = 1;
    }
    for (Py_ssize_t i = 0; i < depth; i++)
        Py_DECREF(frames[i]);
}

/* Before a seal: writes every pending block of the open generation with its stack. */
static void pending_flush(void) {
    if (pending_flushing || !S.enabled) return;
    pending_flushing = 1;
    for (int rounds = 0; rounds < 100000; rounds++) {
        PyflPending *p = pending_head;
        while (p && (p->flushed || p->epoch != S.gen.epoch)) p = p->next;
        if (!p) break;
        pending_write(p, 1, 0);
        if (!p->flushed) break; /* could not (re-entered, stopped): seal_gen writes it without a stack */
    }
    pending_flushing = 0;
}

void pyfl_pending_begin(PyflPending *p) {
    p->linked = p->flushed = 0;
    if (!S.enabled) return;
    p->t0 = now_ns();
    p->epoch = S.gen.epoch;
    p->fork_gen = pending_fork_gen;
    p->prev = NULL;
    p->next = pending_head;
    if (pending_head) pending_head->prev = p;
    pending_head = p;
    p->linked = 1;
}

void pyfl_pending_end(PyflPending *p, uint64_t stack_min_ns) {
    if (!p->linked || p->fork_gen != pending_fork_gen) return;
    if (!p->flushed && S.enabled && p->epoch == S.gen.epoch)
        pending_write(p, now_ns() - p->t0 >= stack_min_ns, 1);
    if (p->prev) p->prev->next = p->next;
    else pending_head = p->next;
    if (p->next) p->next->prev = p->prev;
    p->linked = 0;
}

/* Records a parsed event; never raises. Its frame chains are collected first (this may
 * run a garbage collection); then, unless recording stopped meanwhile, the open
 * generation is sealed if due and the event appended with a fresh timestamp (or `when`,
 * if nonzero, brought within the open generation and not after now). A call
 * re-entering a busy core, or running out of memory, drops the event (counted). */
static uint64_t commit_step(Ev *ev, uint64_t when, PyflStep *step, Ev *one);

static uint64_t commit_at(Ev *ev, uint64_t when) { return commit_step(ev, when, NULL, NULL); }

/* commit_at; and with `step`: if step's begin is still only noted in the calling thread's
 * batch when the event is appended, `one` (its last argument set to the step's duration)
 * is appended instead of ev. */
static uint64_t commit_step(Ev *ev, uint64_t when, PyflStep *step, Ev *one) {
    PyObject *local[LOCAL_FRAMES], **frames = local;
    uint64_t at = 0;
    size_t n_frames = 0, need = (size_t)ev->n_stacks * (size_t)S.max_depth;
    if (need > LOCAL_FRAMES && !(frames = PyMem_RawMalloc(need * sizeof *frames))) {
        S.dropped++;
        return 0;
    }
    for (int i = 0; ev->n_stacks && i < ev->n; i++) {
        if (ev->type[i] == 'k') {
            ev->depth[i] = collect_frames((PyFrameObject *)ev->obj[i], frames + n_frames, S.max_depth);
            n_frames += (size_t)ev->depth[i];
        }
    }
    /* with blocks pending, a generation is sealed one event late: the event after the one
     * that made it due writes their BLOCK_BEGINs (with stacks, outside the busy section) first */
    int pending_due = 0;
    if (pending_head && S.enabled && !S.busy && S.last_t >= S.gen.start_ns && gen_due(S.last_t)) {
        pending_flush();
        pending_due = 1;
    }
    if (S.enabled && S.busy) {
        S.dropped++;
    } else if (S.enabled) {
        S.busy = 1;
        uint64_t t = now_ns();
        if (gen_due(t) && (pending_due || !pending_head)) {
            seal_gen(t);
            t = now_ns();
        }
        if (when && when < t) t = when > S.gen.start_ns ? when : S.gen.start_ns;
        if (step && tls.epoch == S.gen.epoch && tls.buf && tls.buf->step == step) {
            tls.buf->step = step->outer;
            one->val[one->n - 1] = t > step->t0 ? t - step->t0 : 0;
            ev = one;
        }
        if (append_event(ev, frames, t) < 0)
            S.dropped++;
        else
            at = t;
        S.busy = 0;
    }
    for (size_t i = 0; i < n_frames; i++)
        Py_DECREF(frames[i]);
    if (frames != local)
        PyMem_RawFree(frames);
    return at;
}

static uint64_t commit(Ev *ev) { return commit_at(ev, 0); }

/* record(kind, *args): see docs/internals.md. Returns at once when stopped; raises (and
 * records nothing) on bad arguments. */
static PyObject *core_record(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    Ev ev;
    if (!S.enabled) Py_RETURN_NONE;
    if (parse_event(args, nargs, &ev, 1) < 0) return NULL;
    commit(&ev);
    Py_RETURN_NONE;
}

/* record_at(t, kind, *args): record() dated t (CLOCK_MONOTONIC ns) instead of now; a t
 * after now reads as now, one before the open generation as its start (and, in the
 * calling thread's batch, one before its previous event as that event's time). */
static PyObject *core_record_at(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    Ev ev;
    if (nargs < 1) return PyErr_Format(PyExc_TypeError, "record_at() needs a time and an event kind");
    uint64_t at = PyLong_AsUnsignedLongLong(args[0]);
    if (at == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    if (!S.enabled) Py_RETURN_NONE;
    if (parse_event(args + 1, nargs - 1, &ev, 1) < 0) return NULL;
    commit_at(&ev, at ? at : 1);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ internal API (_core.h) */

int pyfl_enabled(void) { return S.enabled; }

uint64_t pyfl_now_ns(void) { return now_ns(); }

/* Starts an event of `kind` with n int arguments (vals[i], or 0 where vals is NULL): 0, or
 * -1 (counted in dropped_events) if the kind or the count is wrong. */
static int ev_of_ints(Ev *ev, int kind, int n, const uint64_t *vals) {
    if (kind < 0 || kind >= N_KINDS || S.counts[kind] != n || n > MAX_ARGS) {
        S.dropped++;
        return -1;
    }
    ev->kind = (uint8_t)kind;
    ev->n = (uint8_t)n;
    ev->n_stacks = 0;
    for (int i = 0; i < n; i++) {
        ev->type[i] = 'u';
        ev->val[i] = vals ? vals[i] : 0;
    }
    return 0;
}

uint64_t pyfl_record_ints(int kind, int n, const uint64_t *vals) {
    Ev ev;
    if (!S.enabled || ev_of_ints(&ev, kind, n, vals) < 0) return 0;
    return commit(&ev);
}

void pyfl_record_stack(int kind, int n, const uint64_t *vals, int stack_at, PyFrameObject *f) {
    Ev ev;
    if (!S.enabled) return;
    if (stack_at < 0 || stack_at >= n) {
        S.dropped++;
        return;
    }
    if (ev_of_ints(&ev, kind, n, vals) < 0) return;
    if (f) {
        ev.type[stack_at] = 'k';
        ev.obj[stack_at] = (PyObject *)f;
        ev.n_stacks = 1;
    } else {
        ev.val[stack_at] = 0;
    }
    commit(&ev);
}

uint64_t pyfl_record_typed(int kind, int n, const char *types, const uint64_t *vals, PyObject *const *objs) {
    Ev ev;
    if (!S.enabled || ev_of_ints(&ev, kind, n, NULL) < 0) return 0;
    for (int i = 0; i < n; i++) {
        if (types[i] == 's') {
            if (objs[i] && PyUnicode_CheckExact(objs[i])) {
                ev.type[i] = 's';
                ev.obj[i] = objs[i];
            }
        } else if (types[i] == 'k') {
            if (objs[i] && PyFrame_Check(objs[i])) {
                ev.type[i] = 'k';
                ev.obj[i] = objs[i];
                ev.n_stacks++;
            }
        } else {
            ev.val[i] = vals[i];
        }
    }
    return commit(&ev);
}

uint64_t pyfl_step_begin(PyflStep *s) {
    s->t0 = 0;
    s->outer = NULL;
    if (!S.enabled) return 0;
    Ev ev;
    uint64_t t = now_ns();
    if (!S.busy) {
        S.busy = 1;
        TBuf *b = thread_buf(t);
        if (b) {
            s->outer = b->step; /* a step inside a step (another loop run from a step) */
            b->step = s;
            s->t0 = t;
        }
        S.busy = 0;
        if (s->t0) return t;
    }
    /* busy (re-entered) or out of memory: the plain BEGIN event, which counts its drop */
    if (ev_of_ints(&ev, s->begin_kind, s->name ? 2 : 1, s->vals) < 0) return 0;
    if (s->name && PyUnicode_CheckExact(s->name)) {
        ev.type[1] = 's';
        ev.obj[1] = s->name;
    }
    return commit(&ev);
}

/* pyfl_step_end when the fast path cannot: through commit, like any event. */
#if defined(__GNUC__)
__attribute__((noinline, cold))
#endif
static void step_end_slow(PyflStep *s) {
    Ev ev, one;
    uint64_t vals[3] = {s->vals[0], 0, 0};
    int n = s->name ? 3 : 2;
    if (S.enabled && ev_of_ints(&ev, s->end_kind, 1, s->vals) == 0) {
        if (s->t0 && ev_of_ints(&one, s->one_kind, n, vals) == 0) {
            if (s->name && PyUnicode_CheckExact(s->name)) {
                one.type[1] = 's';
                one.obj[1] = s->name;
            }
            commit_step(&ev, 0, s, &one);
        } else {
            commit(&ev);
        }
    }
    /* on every path (a drop, a stop, a re-entered core), no batch points at s after this */
    if (S.enabled && tls.epoch == S.gen.epoch && tls.buf && tls.buf->step == s) tls.buf->step = s->outer;
}

/* The usual case takes a short path: the step's begin still noted in this thread's batch
 * of the open generation, nothing due (no seal, so no pending block to write first): the
 * one event goes straight into the batch, without building an Ev for commit. */
int pyfl_step_end(PyflStep *s) {
    TBuf *b = tls.buf;
    int n = s->name ? 3 : 2;
    if (S.enabled && !S.busy && s->t0 && tls.epoch == S.gen.epoch && b && b->step == s
        && S.counts[s->one_kind] == n) {
        uint64_t t = now_ns();
        if (t - s->t0 < s->min_ns) { /* too short to keep, and its begin was never written */
            b->step = s->outer;
            return 0;
        }
        if (!gen_due(t)) {
            uint64_t v[3] = {s->vals[0], 0, 0};
            S.busy = 1;
            if (s->name) {
                int64_t id = PyUnicode_CheckExact(s->name) ? intern_str(s->name) : 0;
                v[1] = id > 0 ? (uint64_t)id : 0;
            }
            v[n - 1] = t > s->t0 ? t - s->t0 : 0;
            b->step = s->outer;
            int wrote = put_event(b, (uint8_t)s->one_kind, t, n, v) == 0;
            if (!wrote) S.dropped++;
            S.busy = 0;
            return wrote;
        }
    }
    step_end_slow(s);
    return 0;
}

int pyfl_record_args(PyObject *const *args, Py_ssize_t nargs) {
    Ev ev;
    if (!S.enabled) return 0;
    if (parse_event(args, nargs, &ev, 1) < 0) return -1;
    commit(&ev);
    return 0;
}

/* True if `key` hashes without running Python code: exact str or int, bool, None, or
 * (at most 8 levels of) tuples of those. */
static int key_ok(PyObject *key, int depth) {
    if (PyUnicode_CheckExact(key) || PyLong_CheckExact(key) || PyBool_Check(key) || key == Py_None) return 1;
    if (!PyTuple_CheckExact(key) || depth >= 8) return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(key); i++)
        if (!key_ok(PyTuple_GET_ITEM(key, i), depth + 1)) return 0;
    return 1;
}

int pyfl_set_live(PyObject *const *args, Py_ssize_t nargs, int record) {
    Ev ev;
    if (!S.enabled) return 0;
    if (nargs < 1 || !key_ok(args[0], 0))
        return fail(PyExc_TypeError, "set_live() key must be a str, int or tuple of them");
    /* remembered only: a C caller's own entry, not parsed now (a bad one is dropped, and
     * counted, when a seal re-records it) */
    if (record && parse_event(args + 1, nargs - 1, &ev, 0) < 0) return -1;
    PyObject *entry = PyTuple_New(nargs - 1);
    if (!entry) return -1;
    int atomic = 1;
    for (Py_ssize_t i = 1; i < nargs; i++) {
        PyTuple_SET_ITEM(entry, i - 1, Py_NewRef(args[i]));
        atomic &= PyLong_CheckExact(args[i]) || PyUnicode_CheckExact(args[i]) || args[i] == Py_None;
    }
    if (atomic) PyObject_GC_UnTrack(entry); /* ints and strs make no cycle: no GC pass walks it */
    int rc = S.busy ? fail(PyExc_RuntimeError, "pyflight core re-entered while busy") : 0;
    if (rc == 0) {
        if (record) commit(&ev);
        rc = S.live ? PyDict_SetItem(S.live, args[0], entry) : 0;
    }
    Py_DECREF(entry);
    return rc;
}

/* set_live(key, kind, *args): records the event and remembers it under key (args: int,
 * None or str only). Nothing when stopped. */
static PyObject *core_set_live(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (pyfl_set_live(args, nargs, 1) < 0) return NULL;
    Py_RETURN_NONE;
}

int pyfl_clear_live(PyObject *key) {
    if (!key_ok(key, 0)) return fail(PyExc_TypeError, "clear_live() key must be a str, int or tuple of them");
    if (!S.live) return 0;
    if (S.busy) return fail(PyExc_RuntimeError, "pyflight core re-entered while busy");
    PyObject *found = PyDict_GetItemWithError(S.live, key);
    if ((!found && PyErr_Occurred()) || (found && PyDict_DelItem(S.live, key) < 0)) return -1;
    return 0;
}

/* clear_live(key): forgets key (missing is fine). */
static PyObject *core_clear_live(PyObject *mod, PyObject *key) {
    if (pyfl_clear_live(key) < 0) return NULL;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ control */

/* seal(): seals the open generation now. No-op when stopped or re-entered. */
static PyObject *core_seal(PyObject *mod, PyObject *unused) {
    if (S.enabled && !S.busy) pending_flush(); /* may run Python code: check again */
    if (S.enabled && !S.busy) {
        S.busy = 1;
        seal_gen(now_ns());
        S.busy = 0;
    }
    Py_RETURN_NONE;
}

/* maybe_seal(): seals if the open generation is due, else just evicts (by age). No-op
 * when stopped or re-entered. */
static PyObject *core_maybe_seal(PyObject *mod, PyObject *unused) {
    if (S.enabled && !S.busy) {
        if (pending_head && gen_due(now_ns())) pending_flush();
    }
    if (S.enabled && !S.busy) {
        S.busy = 1;
        uint64_t t = now_ns();
        if (gen_due(t))
            seal_gen(t);
        else
            evict(t);
        S.busy = 0;
    }
    Py_RETURN_NONE;
}

/* snapshot(): seals, then returns a new list of the ring's framed generations, oldest
 * first. RuntimeError when stopped or re-entered. */
static PyObject *core_snapshot(PyObject *mod, PyObject *unused) {
    if (!S.enabled || S.busy)
        return PyErr_Format(PyExc_RuntimeError, "%s", S.enabled ? "pyflight core re-entered while busy" : "not recording");
    pending_flush(); /* may run Python code: check again */
    if (!S.enabled || S.busy)
        return PyErr_Format(PyExc_RuntimeError, "%s", S.enabled ? "pyflight core re-entered while busy" : "not recording");
    S.busy = 1;
    seal_gen(now_ns());
    PyObject *out = PyList_GetSlice(S.ring, 0, PY_SSIZE_T_MAX);
    S.busy = 0;
    return out;
}

/* stats(): the counters of docs/internals.md as a new dict. */
static PyObject *core_stats(PyObject *mod, PyObject *unused) {
    uint64_t n_batches, open = S.enabled && S.gen.n_events ? body_size(&S.gen, now_ns(), &n_batches) : 0;
    return Py_BuildValue("{s:O,s:n,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K}", "enabled", S.enabled ? Py_True : Py_False,
                         "generations", S.ring ? PyList_GET_SIZE(S.ring) : (Py_ssize_t)0,
                         "ring_bytes", (unsigned long long)S.ring_bytes, "open_bytes", (unsigned long long)open,
                         "events", (unsigned long long)S.events, "sealed", (unsigned long long)S.sealed,
                         "evicted", (unsigned long long)S.evicted, "dropped_events", (unsigned long long)S.dropped,
                         "seq", (unsigned long long)S.gen.seq, "stacks", (unsigned long long)S.stacks);
}

/* configure(arg_counts, *, max_bytes, min_age_ns, gen_max_bytes, gen_interval_ns,
 * max_stack_depth=128): checks everything before changing anything. */
static PyObject *core_configure(PyObject *mod, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"arg_counts", "max_bytes", "min_age_ns", "gen_max_bytes",
                             "gen_interval_ns", "max_stack_depth", NULL};
    Py_buffer counts;
    long long v[5] = {LLONG_MIN, LLONG_MIN, LLONG_MIN, LLONG_MIN, 128}; /* LLONG_MIN: missing */
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|$LLLLL:configure", kwlist, &counts, &v[0], &v[1], &v[2],
                                     &v[3], &v[4]))
        return NULL;
    int ok = !S.enabled || fail(PyExc_RuntimeError, "configure() while running") == 0;
    for (int i = 0; ok && i < 5; i++) {
        if (v[i] < 0)
            ok = fail(v[i] == LLONG_MIN ? PyExc_TypeError : PyExc_ValueError,
                      "configure() needs max_bytes, min_age_ns, gen_max_bytes and gen_interval_ns >= 0") == 0;
    }
    if (ok && v[4] > MAX_DEPTH_LIMIT)
        ok = fail(PyExc_ValueError, "max_stack_depth must be at most 65536") == 0;
    if (ok && counts.len != N_KINDS)
        ok = fail(PyExc_ValueError, "arg_counts must be 128 bytes") == 0;
    for (Py_ssize_t i = 0; ok && i < N_KINDS; i++) {
        uint8_t c = ((const uint8_t *)counts.buf)[i];
        if (c > MAX_ARGS && c != NOT_A_KIND)
            ok = fail(PyExc_ValueError, "a kind may take at most 16 arguments") == 0;
    }
    if (ok) {
        memcpy(S.counts, counts.buf, N_KINDS);
        S.max_bytes = (uint64_t)v[0];
        S.min_age_ns = (uint64_t)v[1];
        S.gen_max_bytes = (uint64_t)v[2];
        S.gen_interval_ns = (uint64_t)v[3];
        S.max_depth = (Py_ssize_t)v[4];
        S.configured = 1;
    }
    PyBuffer_Release(&counts);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* start(): starts recording into a fresh ring with generation 1 open; resets the
 * counters. RuntimeError if running or never configured. */
static PyObject *core_start(PyObject *mod, PyObject *unused) {
    if (S.enabled || !S.configured)
        return PyErr_Format(PyExc_RuntimeError, "%s", S.enabled ? "already recording" : "configure() was never called");
    discard_all();
    if (!(S.ring = PyList_New(0)) || !(S.live = PyDict_New())) {
        discard_all();
        return NULL;
    }
    S.events = S.sealed = S.evicted = S.dropped = S.stacks = 0;
    gen_open(1, now_ns());
    S.enabled = 1;
    Py_RETURN_NONE;
}

/* stop(): stops and discards everything (the counters stay readable); no-op when
 * stopped. RuntimeError if re-entered while busy. */
static PyObject *core_stop(PyObject *mod, PyObject *unused) {
    if (S.busy) return PyErr_Format(PyExc_RuntimeError, "pyflight core re-entered while busy");
    discard_all();
    Py_RETURN_NONE;
}

/* _after_fork_child(): in a forked child, discards the parent's recording (the other
 * threads' batches are just freed: those threads do not exist here), disables it and
 * zeroes the counters. */
static PyObject *core_after_fork_child(PyObject *mod, PyObject *unused) {
    S.busy = 0;
    discard_all();
    pending_head = NULL; /* nodes of threads that do not exist here */
    pending_fork_gen++;
    pending_flushing = 0;
    S.events = S.sealed = S.evicted = S.dropped = S.stacks = 0;
    Py_RETURN_NONE;
}

/* is_enabled() -> bool. */
static PyObject *core_is_enabled(PyObject *mod, PyObject *unused) {
    return PyBool_FromLong(S.enabled);
}

/* now() -> CLOCK_MONOTONIC nanoseconds. */
static PyObject *core_now(PyObject *mod, PyObject *unused) {
    return PyLong_FromUnsignedLongLong(now_ns());
}

/* thread_id() -> native id of the calling thread. */
static PyObject *core_thread_id(PyObject *mod, PyObject *unused) {
    return PyLong_FromUnsignedLong(PyThread_get_thread_native_id());
}

/* current_frames() -> {thread ident: frame} for the threads of the calling interpreter
 * only. sys._current_frames() also returns frames of other interpreters, and dropping
 * such a reference after that interpreter is gone frees its memory twice. Safe under
 * the GIL: a thread of this interpreter can only leave the list while holding it. */
static PyObject *core_current_frames(PyObject *mod, PyObject *unused) {
    PyObject *out = PyDict_New();
    if (!out) return NULL;
    /* held off as in collect_frames: a GC run by an allocation here could let a thread
     * exit (freeing the thread state this loop stands on) or pop the frame being wrapped */
    int gc_was_on = PyGC_Disable();
    PyThreadState *t = PyInterpreterState_ThreadHead(PyInterpreterState_Get());
    for (; t; t = PyThreadState_Next(t)) {
        PyFrameObject *f = PyThreadState_GetFrame(t);
        if (!f) continue;
        PyObject *key = PyLong_FromUnsignedLong(t->thread_id);
        int failed = !key || PyDict_SetItem(out, key, (PyObject *)f) < 0;
        Py_XDECREF(key);
        Py_DECREF(f);
        if (failed) {
            Py_CLEAR(out);
            break;
        }
    }
    if (gc_was_on) PyGC_Enable();
    return out;
}

/* ------------------------------------------------------------------ decoding */

/* One batch being decoded (the arguments of decode_events, checked). */
typedef struct {
    const uint8_t *data;
    Py_ssize_t pos, end, n_events;
    uint64_t t;
    PyObject *tid, *types, *kinds, *strings, *stacks;
    PyTypeObject *event_type;
} Batch;

/* Sets ValueError("<message> at byte <at>"); returns -1. */
static int bad_at(Py_ssize_t at, const char *message) {
    PyErr_Format(PyExc_ValueError, "%s at byte %zd", message, at);
    return -1;
}

/* Reads a varint at b->pos (bounded by b->end) into *out and advances: 0, or -1 with
 * ValueError (runs past the end, over 64 bits) and b->pos unchanged. */
static inline int get_varint(Batch *b, uint64_t *out) {
    Py_ssize_t p = b->pos;
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
        if (p >= b->end) return bad_at(b->pos, "truncated varint");
        uint8_t byte = b->data[p++];
        if (shift == 63 && byte > 1) return bad_at(b->pos, "varint over 64 bits");
        v |= (uint64_t)(byte & 0x7F) << shift;
        if (byte < 0x80) break;
    }
    *out = v;
    b->pos = p;
    return 0;
}

/* Decodes the events of b into list (whose length bounds the count): 0, or -1 with an
 * exception. Terminates: every iteration consumes at least two bytes. */
static int decode_into(Batch *b, PyObject *list) {
    Py_ssize_t count = 0, cap = PyList_GET_SIZE(list);
    Py_ssize_t n_strings = PyTuple_GET_SIZE(b->strings), n_stacks = PyTuple_GET_SIZE(b->stacks);
    PyObject *item;
    uint64_t v;
    for (; b->pos < b->end; count++) {
        Py_ssize_t at = b->pos;
        if (count >= cap) return bad_at(at, "bytes left over after the batch's events");
        uint8_t kind = b->data[b->pos++];
        PyObject *spec = kind < N_KINDS ? PyTuple_GET_ITEM(b->types, kind) : Py_None;
        if (spec == Py_None) return bad_at(at, "event kind not in the kind table");
        if (get_varint(b, &v) < 0) return -1;
        if (b->t + v < b->t) return bad_at(at, "event time over 64 bits");
        b->t += v;
        Py_ssize_t n_args = PyBytes_GET_SIZE(spec);
        const char *types = PyBytes_AS_STRING(spec);
        PyObject *ev = b->event_type->tp_alloc(b->event_type, 3 + n_args);
        if (!ev || !(item = PyLong_FromUnsignedLongLong(b->t))) {
            Py_XDECREF(ev);
            return -1;
        }
        PyList_SET_ITEM(list, count, ev);
        PyTuple_SET_ITEM(ev, 0, Py_NewRef(PyTuple_GET_ITEM(b->kinds, kind)));
        PyTuple_SET_ITEM(ev, 1, item);
        PyTuple_SET_ITEM(ev, 2, Py_NewRef(b->tid));
        for (Py_ssize_t i = 0; i < n_args; i++) {
            at = b->pos;
            if (get_varint(b, &v) < 0) return -1;
            if (types[i] == 'u')
                item = PyLong_FromUnsignedLongLong(v);
            else if (types[i] == 's' && v < (uint64_t)n_strings)
                item = Py_NewRef(PyTuple_GET_ITEM(b->strings, (Py_ssize_t)v));
            else if (types[i] == 'k' && v < (uint64_t)n_stacks)
                item = Py_NewRef(PyTuple_GET_ITEM(b->stacks, (Py_ssize_t)v));
            else
                return bad_at(at, types[i] == 's' ? "string id out of range"
                                  : types[i] == 'k' ? "stack id out of range" : "unknown argument type");
            if (!item) return -1;
            PyTuple_SET_ITEM(ev, 3 + i, item);
        }
    }
    return count == b->n_events ? 0 : bad_at(b->end, "event count does not match the batch's");
}

/* decode_events(data, offset, end, base_ns, tid, n_events, arg_types, kinds, strings,
 * stacks, event_type) -> list: see docs/internals.md. Never reads outside
 * data[offset:end], always terminates; malformed input raises ValueError ending
 * "at byte N". The cyclic GC is paused meanwhile (the new events are not garbage). */
static PyObject *core_decode_events(PyObject *mod, PyObject *const *a, Py_ssize_t nargs) {
    if (nargs != 11) return PyErr_Format(PyExc_TypeError, "decode_events() takes 11 arguments");
    if (!PyBytes_Check(a[0]) || !PyLong_Check(a[1]) || !PyLong_Check(a[2]) || !PyLong_Check(a[3])
        || !PyLong_Check(a[5]) || !PyTuple_Check(a[6]) || PyTuple_GET_SIZE(a[6]) != N_KINDS || !PyTuple_Check(a[7])
        || PyTuple_GET_SIZE(a[7]) != N_KINDS || !PyType_Check(a[10])
        || !PyType_IsSubtype((PyTypeObject *)a[10], &PyTuple_Type))
        return PyErr_Format(PyExc_TypeError, "decode_events() needs bytes, ints, 128-tuples and a tuple subclass");
    for (int k = 0; k < N_KINDS; k++)
        if (PyTuple_GET_ITEM(a[6], k) != Py_None && !PyBytes_Check(PyTuple_GET_ITEM(a[6], k)))
            return PyErr_Format(PyExc_TypeError, "decode_events() arg_types entries must be bytes or None");
    Batch b = {(const uint8_t *)PyBytes_AS_STRING(a[0]), PyLong_AsSsize_t(a[1]), PyLong_AsSsize_t(a[2]),
               PyLong_AsSsize_t(a[5]), PyLong_AsUnsignedLongLong(a[3]), a[4], a[6], a[7], NULL, NULL,
               (PyTypeObject *)a[10]};
    if (PyErr_Occurred()) return NULL;
    if (b.pos < 0 || b.pos > b.end || b.end > PyBytes_GET_SIZE(a[0]) || b.n_events < 0) {
        bad_at(b.pos < 0 ? 0 : b.pos, "bad batch bounds or event count");
        return NULL;
    }
    PyObject *list = NULL;
    b.strings = PySequence_Tuple(a[8]); /* our own reference: nothing can change it meanwhile */
    b.stacks = b.strings ? PySequence_Tuple(a[9]) : NULL;
    /* every event takes at least 2 bytes, so this bounds the list whatever n_events says */
    Py_ssize_t cap = b.n_events < (b.end - b.pos) / 2 ? b.n_events : (b.end - b.pos) / 2;
    if (b.stacks && (list = PyList_New(cap))) {
        int gc_was_enabled = PyGC_Disable();
        if (decode_into(&b, list) < 0)
            Py_CLEAR(list);
        if (gc_was_enabled)
            PyGC_Enable();
    }
    Py_XDECREF(b.strings);
    Py_XDECREF(b.stacks);
    return list;
}

/* expand_steps(events, rules, event_type) -> list: the reader's expansion of one-event
 * steps (docs/format.md, TASK_STEP and CALLBACK). rules: a tuple of (one, begin, end[,
 * mark]) kind objects. Each event e of `events` (a list of event_type tuples) whose kind
 * is some rule's `one` is replaced by event_type((end, e.time, tid, first arg)) (then
 * event_type((mark, e.time, tid, first arg)) if the rule has a mark), and
 * event_type((begin, e.time - last arg, tid, *args but the last)) goes before it and
 * before the events of the same thread just before it that are later than that (those
 * recorded during the step): each thread's run of events stays in time order. Times are
 * clamped at 0. Returns `events` itself when it holds none (the common case costs one
 * pass of pointer compares), else a new list. TypeError on arguments of the wrong shape. */
/* True if event `prev` is of thread `tid` and later than t0; never raises. */
static int recorded_during(PyObject *prev, PyObject *tid, uint64_t t0) {
    if (!PyTuple_Check(prev) || PyTuple_GET_SIZE(prev) < 3 || !PyLong_Check(PyTuple_GET_ITEM(prev, 1))) return 0;
    PyObject *ptid = PyTuple_GET_ITEM(prev, 2);
    if (ptid != tid
        && (!PyLong_CheckExact(ptid) || !PyLong_CheckExact(tid) || PyObject_RichCompareBool(ptid, tid, Py_EQ) != 1)) {
        PyErr_Clear();
        return 0;
    }
    uint64_t t = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(prev, 1));
    if (t == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return t > t0;
}

static PyObject *core_expand_steps(PyObject *mod, PyObject *const *a, Py_ssize_t nargs) {
    if (nargs != 3 || !PyList_Check(a[0]) || !PyTuple_Check(a[1]) || !PyType_Check(a[2])
        || !PyType_IsSubtype((PyTypeObject *)a[2], &PyTuple_Type))
        return PyErr_Format(PyExc_TypeError, "expand_steps() needs a list, a tuple of rules and a tuple subclass");
    PyObject *events = a[0], *rules = a[1];
    PyTypeObject *type = (PyTypeObject *)a[2];
    Py_ssize_t n_rules = PyTuple_GET_SIZE(rules), n = PyList_GET_SIZE(events), found = 0, room = 0;
    for (Py_ssize_t r = 0; r < n_rules; r++) {
        PyObject *rule = PyTuple_GET_ITEM(rules, r);
        if (!PyTuple_Check(rule) || PyTuple_GET_SIZE(rule) < 3 || PyTuple_GET_SIZE(rule) > 4)
            return PyErr_Format(PyExc_TypeError, "expand_steps() rules must be (one, begin, end[, mark]) tuples");
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PyList_GET_ITEM(events, i);
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) < 3) continue;
        for (Py_ssize_t r = 0; r < n_rules; r++)
            if (PyTuple_GET_ITEM(e, 0) == PyTuple_GET_ITEM(PyTuple_GET_ITEM(rules, r), 0)) {
                found++;
                room += PyTuple_GET_SIZE(PyTuple_GET_ITEM(rules, r)) - 2; /* END, BEGIN[, mark] for one */
            }
    }
    if (!found) return Py_NewRef(events);
    PyObject *out = PyList_New(n + room);
    if (!out) return NULL;
    int gc_was_enabled = PyGC_Disable();
    Py_ssize_t o = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = PyList_GET_ITEM(events, i), *rule = NULL;
        Py_ssize_t size = PyTuple_Check(e) ? PyTuple_GET_SIZE(e) : 0;
        for (Py_ssize_t r = 0; size >= 3 && r < n_rules && !rule; r++)
            if (PyTuple_GET_ITEM(e, 0) == PyTuple_GET_ITEM(PyTuple_GET_ITEM(rules, r), 0))
                rule = PyTuple_GET_ITEM(rules, r);
        /* a one-event step has at least an id and a duration (int) after kind, time, tid */
        if (!rule || size < 5 || !PyLong_Check(PyTuple_GET_ITEM(e, size - 1))) {
            PyList_SET_ITEM(out, o++, Py_NewRef(e));
            continue;
        }
        uint64_t t = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(e, 1));
        uint64_t d = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(e, size - 1));
        int marked = PyTuple_GET_SIZE(rule) == 4;
        PyObject *begin = type->tp_alloc(type, size - 1), *end = type->tp_alloc(type, 4);
        PyObject *mark = marked ? type->tp_alloc(type, 4) : NULL;
        PyObject *t0 = PyErr_Occurred() ? NULL : PyLong_FromUnsignedLongLong(t > d ? t - d : 0);
        if (!begin || !end || !t0 || (marked && !mark)) {
            Py_XDECREF(begin);
            Py_XDECREF(end);
            Py_XDECREF(mark);
            Py_XDECREF(t0);
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(begin, 0, Py_NewRef(PyTuple_GET_ITEM(rule, 1)));
        PyTuple_SET_ITEM(begin, 1, t0);
        for (Py_ssize_t k = 2; k < size - 1; k++)
            PyTuple_SET_ITEM(begin, k, Py_NewRef(PyTuple_GET_ITEM(e, k)));
        PyTuple_SET_ITEM(end, 0, Py_NewRef(PyTuple_GET_ITEM(rule, 2)));
        for (Py_ssize_t k = 1; k < 4; k++)
            PyTuple_SET_ITEM(end, k, Py_NewRef(PyTuple_GET_ITEM(e, k)));
        /* back over the thread's events recorded during the step (later than its start) */
        Py_ssize_t j = o;
        PyObject *tid = PyTuple_GET_ITEM(e, 2);
        for (; j > 0 && recorded_during(PyList_GET_ITEM(out, j - 1), tid, t > d ? t - d : 0); j--)
            PyList_SET_ITEM(out, j, PyList_GET_ITEM(out, j - 1));
        PyList_SET_ITEM(out, j, begin);
        o++;
        PyList_SET_ITEM(out, o++, end);
        if (marked) {
            PyTuple_SET_ITEM(mark, 0, Py_NewRef(PyTuple_GET_ITEM(rule, 3)));
            for (Py_ssize_t k = 1; k < 4; k++)
                PyTuple_SET_ITEM(mark, k, Py_NewRef(PyTuple_GET_ITEM(e, k)));
            PyList_SET_ITEM(out, o++, mark);
        }
    }
    if (out && o < n + room && PyList_SetSlice(out, o, n + room, NULL) < 0) /* rules that matched twice */
        Py_CLEAR(out);
    if (gc_was_enabled) PyGC_Enable();
    return out;
}

/* ------------------------------------------------------------------ module */

#define FASTCALL(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL
static PyMethodDef core_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))core_configure, METH_VARARGS | METH_KEYWORDS, "Set kind table and window."},
    {"start", core_start, METH_NOARGS, "Start recording into a fresh ring."},
    {"stop", core_stop, METH_NOARGS, "Stop and discard everything."},
    {"is_enabled", core_is_enabled, METH_NOARGS, "True while recording."},
    {"now", core_now, METH_NOARGS, "CLOCK_MONOTONIC nanoseconds."},
    {"thread_id", core_thread_id, METH_NOARGS, "Native id of the calling thread."},
    {"current_frames", core_current_frames, METH_NOARGS, "Frames of this interpreter's threads by ident."},
    {"record", FASTCALL(core_record), "record(kind, *args): append one event."},
    {"record_at", FASTCALL(core_record_at), "record_at(t, kind, *args): record() dated t (monotonic ns)."},
    {"set_live", FASTCALL(core_set_live), "set_live(key, kind, *args): record now and in every new generation."},
    {"clear_live", core_clear_live, METH_O, "clear_live(key): forget a live entry."},
    {"seal", core_seal, METH_NOARGS, "Seal the open generation."},
    {"maybe_seal", core_maybe_seal, METH_NOARGS, "Seal if due, then evict by age."},
    {"snapshot", core_snapshot, METH_NOARGS, "Seal, then return the ring's generations, oldest first."},
    {"stats", core_stats, METH_NOARGS, "Counters as a dict."},
    {"decode_events", FASTCALL(core_decode_events), "Decode one batch (for the reader)."},
    {"expand_steps", FASTCALL(core_expand_steps), "Expand one-event steps into their pairs (for the reader)."},
    {"_after_fork_child", core_after_fork_child, METH_NOARGS, "Discard everything in a forked child."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, .m_name = "pyflight._core", .m_doc = "pyflight's C recording core.", .m_size = -1,
    .m_methods = core_methods,
};

/* Module init (single-phase: the recorder is a process-wide singleton). */
PyMODINIT_FUNC PyInit__core(void) {
    crc_init();
    PyObject *mod = PyModule_Create(&core_module);
    if (!mod) return NULL;
    if ((!S.here && !(S.here = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type)))
        || PyModule_AddObjectRef(mod, "HERE", S.here) < 0 || PyModule_AddStringConstant(mod, "BACKEND", "c") < 0
        || pyfl_asyncio_init(mod) < 0 || pyfl_lock_init(mod) < 0 || pyfl_annotate_init(mod) < 0
        || pyfl_stackreader_init(mod) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
