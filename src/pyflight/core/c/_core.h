/* pyflight._core internal API shared by the C files of the extension (not a public API).
 *
 * _core.c owns the recorder state; _core_asyncio.c (the C Handle._run) and _core_lock.c
 * (the C lock wrapper) record through these functions. All of them need the GIL. */
#ifndef PYFLIGHT_CORE_H
#define PYFLIGHT_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* Thread-local storage read on every recorded event. initial-exec: a plain offset from
 * the thread pointer instead of a __tls_get_addr call per access (~1% of a hand-off's
 * cost); the ~80 bytes fit glibc's static TLS reserve for dlopen'ed modules. */
#if defined(__GNUC__) && defined(__linux__)
#define PYFL_TLS _Thread_local __attribute__((tls_model("initial-exec")))
#else
#define PYFL_TLS _Thread_local
#endif

/* Set (to 1) by the socket hooks of _core_lock.c whenever this thread sends on a socket
 * (send, sendall, sendto, connect: blocking or not); the C Handle._run clears it before a
 * task's step and reads it after, to record the step as one that sent (TASK_STEP_SENT):
 * the analysis tells a task waiting for an answer from one waiting for a push. */
extern PYFL_TLS int pyfl_tls_sent;

/* Nonzero while recording: the cheap check to make before building an event. */
int pyfl_enabled(void);

/* CLOCK_MONOTONIC nanoseconds, the clock of every event. */
uint64_t pyfl_now_ns(void);

/* Records `kind` with n unsigned integer arguments; returns the event's time, or 0 if it
 * was not recorded. Never raises and never runs Python code: an unknown kind, a wrong
 * count, re-entry or no memory drops the event (counted in dropped_events). No-op when
 * stopped. */
uint64_t pyfl_record_ints(int kind, int n, const uint64_t *vals);

/* Records `kind` with n unsigned integer arguments, except argument `stack_at`, which
 * is the stack from frame f outwards (no stack if f is NULL; vals[stack_at] is ignored).
 * Same guarantees as pyfl_record_ints; must be called with no exception set. */
void pyfl_record_stack(int kind, int n, const uint64_t *vals, int stack_at, PyFrameObject *f);

/* Records `kind` with n arguments typed by types[i]: 'u' the int vals[i]; 's' the exact str
 * objs[i] (interned in the open generation; NULL or a non-str is ""); 'k' the stack from
 * frame objs[i] outwards (none if NULL). objs are borrowed. No Python objects are made
 * for the event (the cheap way to record strings and stacks from C); same guarantees as
 * pyfl_record_ints (and its return value); must be called with no exception set. */
uint64_t pyfl_record_typed(int kind, int n, const char *types, const uint64_t *vals, PyObject *const *objs);

/* set_live(key, kind, *args) as called from Python (args[0] is the key), except that
 * with record == 0 the event is only remembered (re-recorded in every later generation),
 * not recorded now: for a caller that has just recorded the same facts in another event
 * (and whose arguments are then not checked: a bad entry is dropped when re-recorded).
 * 0, or -1 with an exception set on bad arguments. */
int pyfl_set_live(PyObject *const *args, Py_ssize_t nargs, int record);

/* clear_live(key): forgets a live entry (a missing key is fine); 0, or -1 with an
 * exception set. */
int pyfl_clear_live(PyObject *key);

/* A block whose BLOCK_BEGIN is written when it ends (or, if a generation is sealed
 * meanwhile, just before that seal), so that a short block can skip its stack. It lives
 * on the caller's C stack between pyfl_pending_begin and pyfl_pending_end; the caller
 * fills kind, n, vals (vals[stack_at] is ignored), stack_at, frame (borrowed: the blocked
 * thread's frame, alive while it blocks) and tid (the native id of the calling thread). */
typedef struct PyflPending {
    struct PyflPending *prev, *next;
    uint64_t tid, t0, epoch, fork_gen;
    uint64_t vals[4];
    int kind, n, stack_at, linked, flushed;
    PyFrameObject *frame;
} PyflPending;

/* Starts a pending block at now (nothing is written yet; a no-op when stopped). */
void pyfl_pending_begin(PyflPending *p);

/* Ends it: unless already written by a seal, writes its BLOCK_BEGIN at its start time,
 * with the stack only if it lasted at least stack_min_ns. Never raises; may run Python
 * code (frames are materialised), so the caller saves a pending exception. */
void pyfl_pending_end(PyflPending *p, uint64_t stack_min_ns);

/* A step or callback of an event loop recorded as ONE event, at its end, instead of a
 * BEGIN and an END: fewer trips into the core and fewer bytes per step. It lives on the
 * caller's C stack between pyfl_step_begin and pyfl_step_end; the caller fills begin_kind
 * and vals[0] (the task id for TASK_STEP_BEGIN(task), the loop id for
 * CALLBACK_BEGIN(loop, name)), name (borrowed, alive until pyfl_step_end: the callback's
 * name, NULL for a task step), end_kind and one_kind (the END kind with argument vals[0],
 * and the single kind with vals[0], then the name if any, then the duration). Until it
 * ends, its begin is only noted in the thread's batch. Events the thread records
 * meanwhile are written as usual, before the single event: the reader places the BEGIN
 * it stands for by time (docs/format.md). A seal (seal, maybe_seal, snapshot, or due
 * before any event) writes the noted begin as a plain BEGIN event at the step's own
 * start, in the generation being sealed; the step then ends with its END event. */
typedef struct PyflStep {
    int begin_kind, end_kind, one_kind;
    uint64_t vals[1];
    PyObject *name;
    uint64_t t0;             /* set by pyfl_step_begin: the step's start, 0 if nothing was noted */
    struct PyflStep *outer;  /* set by pyfl_step_begin: the noted step this one runs in */
    uint64_t min_ns;         /* 0, or: a step shorter than this whose begin is still only
                                noted ends without writing anything */
} PyflStep;

/* Notes the start of step s now (nothing is written; a no-op when stopped, and a
 * plain BEGIN event when the core is busy or out of memory); returns its start time, or 0
 * if not recording. Never raises, never runs Python code. */
uint64_t pyfl_step_begin(PyflStep *s);

/* Ends step s: if its begin is still only noted, writes one `one_kind` event dated now
 * with the duration since its start (nothing if it lasted under s->min_ns); else (its
 * BEGIN was written by a seal, or recording restarted) the END event. Seals the generation first if due, as any event does. Never
 * raises; may run Python code only where any record call may (a seal with pending
 * blocks), so the caller saves a pending exception. Returns 1 if it wrote the one event,
 * else 0 (an END, or nothing). */
int pyfl_step_end(PyflStep *s);

/* Exactly record(kind, *args) as called from Python (args[0] is the kind): 0, or -1
 * with an exception set on bad arguments. Use it for events with strings or stacks. */
int pyfl_record_args(PyObject *const *args, Py_ssize_t nargs);

/* For a call f(timeout=None) given as vectorcall arguments: 1 if they are exactly that and
 * the timeout may block (None, or an int/float > 0), else 0. Never raises (_core_lock.c). */
int pyfl_timeout_may_block(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);

/* Adds the asyncio helpers (defined in _core_asyncio.c) to the module: 0, or -1. */
int pyfl_asyncio_init(PyObject *mod);

/* Adds the lock wrapper (defined in _core_lock.c) to the module: 0, or -1. */
int pyfl_lock_init(PyObject *mod);

/* Adds the annotation types (defined in _core_annotate.c) to the module: 0, or -1. */
int pyfl_annotate_init(PyObject *mod);

/* Adds the native stack reader (defined in _core_stackreader.c) to the module: 0, or -1. */
int pyfl_stackreader_init(PyObject *mod);
/* A hash of the (code, instruction) of each caller of `f` (a frame of the current
 * thread, which holds the GIL) while the frames are a library's (is_library), the first
 * frame of the program's own included, at most max_depth; 0 when `f` is not a library's.
 * Reads the interpreter's frames in place (3.11-3.13): no frame object made, no
 * allocation. Never fails. (_core_stackreader.c: the file with the internal headers.) */
uint64_t pyfl_caller_chain(PyFrameObject *f, int (*is_library)(PyCodeObject *), int max_depth);

#endif
