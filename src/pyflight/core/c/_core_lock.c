/* pyflight._core: the hot hooks of the "blocking" source (sources/blocking.py).
 *
 * - TracedLock / TracedRLock wrap a real _thread.lock / _thread.RLock. An uncontended
 *   acquire (the wrapper knows nobody holds the lock and nobody waits) is just the inner
 *   acquire, which then cannot block; otherwise acquire() first tries a non-blocking
 *   acquire of the inner lock, and only when that fails and the call may block does it
 *   record BLOCK_BEGIN(LOCK, id(wrapper), caller's stack), do the real blocking acquire
 *   with the caller's own arguments, and record BLOCK_END(LOCK, id, waker). `waker` is
 *   the native tid of the last thread that released the lock while somebody was blocked
 *   on it (kept in the wrapper; only contended releases pay for it), 0 if unknown.
 * - BlockingHook replaces threading.Condition.wait at class level: it records
 *   BLOCK_BEGIN(CONDITION, id(cond), stack) .. BLOCK_END(CONDITION, id(cond), notifier
 *   tid) around the original. The wake-up is seen where it happens: the waiter lock the
 *   original wait blocks on is made by threading._allocate_lock, replaced by
 *   waiter_allocate_lock, which inside a wait hook wraps it in a WaiterLock; notify
 *   releases that lock, and the release records WAKE(waiter tid, 0, CONDITION,
 *   id(cond)). notify itself is not hooked: with nobody waiting it costs nothing.
 * - BlockingHook also stands in for time.sleep, select.select, the selectors' select
 *   the socket methods that block, os.fsync and os.fdatasync (roles HOOK_SLEEP ..
 *   HOOK_FILE_SYNC): a call that may
 *   block (the same tests as the pure-Python wrappers) is recorded as BLOCK(SLEEP / SELECT
 *   / IO); one that cannot costs an argument check and the call.
 *
 * Lock blocks inside Condition.wait (re-acquiring the condition's lock after the
 * notification) are part of the CONDITION block and not recorded again (tls_in_wait);
 * a socket hook inside another (ssl.SSLSocket's methods calling each other) is part of
 * the outer IO block (tls_in_io).
 *
 * Rules kept everywhere: the caller's arguments, return values and exceptions are
 * passed through untouched (an argument we do not fully understand means "call the
 * original and record nothing"); recording never raises into the caller: a fault calls
 * the source's handler (which uninstalls the source) and recording stops (L.active = 0),
 * while the hooks keep working as plain pass-throughs. Everything runs with the GIL held.
 */
#include "_core.h"
#include <float.h>
#include <stddef.h>
#include <string.h>
#ifndef _WIN32
#include <pthread.h>
#endif

/* Must match pyflight.core.events (checked by the source at install, _BLOCKING_CONSTANTS). */
#define K_BLOCK_BEGIN 30
#define K_BLOCK_END 31
#define K_WAKE 32
#define K_LOCK_HELD 33
#define R_LOCK 1
#define R_CONDITION 2
#define R_SLEEP 3
#define R_IO 5
#define R_SELECT 6

/* BlockingHook roles: what the hook stands in for. */
#define HOOK_CONDITION_WAIT 1 /* threading.Condition.wait(self, timeout=None) */
#define HOOK_SLEEP 2          /* time.sleep(secs) */
#define HOOK_SELECT 3         /* select.select(r, w, x[, timeout]) */
#define HOOK_SELECTOR 4       /* <a selectors class>.select(self, timeout=None) */
#define HOOK_SOCKET 5         /* socket.socket.<recv, send, accept, ...>(self, ...) */
#define HOOK_FILE_SYNC 6      /* os.fsync(fd), os.fdatasync(fd): waits for the disk */
#define HOOK_SOCKET_SEND 7    /* as HOOK_SOCKET, for the calls that send or open (send, connect, ...) */

/* The low bit of a socket block's obj (id(socket): objects are aligned, so it is free)
 * says the call sends: the analysis tells a wait for an answer from a wait for a push. */
#define IO_SENDS 1
#define IO_TIMED_OUT 2 /* on BLOCK_END: the socket call raised TimeoutError (events.py) */

static struct {
    int active;               /* the source is installed: hooks record (when the core records) */
    int inject_fault;         /* tests: the next LOCK BLOCK_BEGIN fails as if recording had failed */
    PyObject *allocate_lock;  /* _thread.allocate_lock: makes TracedLock's inner lock */
    PyObject *rlock_factory;  /* threading.RLock as found at setup (default _thread.RLock) */
    PyObject *on_fault;       /* the source's fault handler, called with the exception */
    PyObject *s_release_save, *s_acquire_restore, *s_is_owned, *s_recursion_count;
    PyObject *s_at_fork_reinit, *s_locked, *s_timeout, *s_blocking, *s_acquire, *s_release;
    PyObject *s_loop_mark;    /* "_pyflight_loop_selector": the asyncio source's mark */
    double timeout_max;       /* _thread.TIMEOUT_MAX */
    uint64_t stack_min_ns;    /* blocks shorter than this are recorded without a stack */
    /* While the CPU budget sheds stacks: a block has its stack past stack_min_ns with
     * probability 1/stack_every (stack_turn: the draw's state), else only past
     * shed_min_ns. stack_every 1: nothing shed. */
    uint64_t stack_every, stack_turn, shed_min_ns;
} L;

/* Set while this thread is inside a Condition.wait hook. */
static PYFL_TLS int tls_in_wait;

/* Set while this thread is inside a recording socket hook: a socket hook called from
 * another (ssl.SSLSocket.recv -> read, sendall -> send, recv -> socket.recv on an
 * unwrapped one) passes through, so that one call is one IO block. */
static PYFL_TLS int tls_in_io;

/* ------------------------------------------------------------------ helpers */

/* How long the block ending now must have lasted for its BLOCK_BEGIN to carry a stack:
 * L.stack_min_ns, but while the budget sheds stacks a block gets that threshold only with
 * probability 1/L.stack_every (the others L.shed_min_ns), so short blocks keep a sample of
 * their sites. Drawn at random (a 64-bit LCG's high bits), not every n-th: threads that
 * block in turn at two sites would otherwise always land on the same side of the count.
 * Called with the GIL held. */
static uint64_t stack_min_now(void) {
    if (L.stack_every <= 1) return L.stack_min_ns;
    L.stack_turn = L.stack_turn * 6364136223846793005ULL + 1442695040888963407ULL;
    return (L.stack_turn >> 33) % L.stack_every == 0 ? L.stack_min_ns : L.shed_min_ns;
}

/* Native thread id, cached per thread; the cache is invalidated in a forked child (the
 * forking thread's id changes there). */
static uint64_t fork_generation = 1;
static PYFL_TLS uint64_t tls_tid, tls_tid_generation;

#ifndef _WIN32
/* pthread_atfork child handler: every cached thread id is stale now. Async-signal-safe. */
static void lock_after_fork_child(void) { fork_generation++; }
#endif

/* The calling thread's native id (what the core records as an event's thread). */
static inline uint64_t my_tid(void) {
    if (tls_tid_generation != fork_generation) {
        tls_tid = (uint64_t)PyThread_get_thread_native_id();
        tls_tid_generation = fork_generation;
    }
    return tls_tid;
}

/* True if hooks should record now: the source is installed and the core is recording. */
static inline int recording(void) { return L.active && pyfl_enabled(); }

/* The exception being raised, taken out of the thread state (NULL if none), and back. */
typedef struct {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc;
#else
    PyObject *type, *value, *tb;
#endif
} SavedExc;

/* Takes the pending exception (if any) so that recording cannot see or clear it. */
static inline void exc_save(SavedExc *s) {
#if PY_VERSION_HEX >= 0x030C0000
    s->exc = PyErr_GetRaisedException();
#else
    PyErr_Fetch(&s->type, &s->value, &s->tb);
#endif
}

/* Puts back what exc_save took (discarding anything raised in between). */
static inline void exc_restore(SavedExc *s) {
    if (PyErr_Occurred()) PyErr_Clear();
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(s->exc);
#else
    PyErr_Restore(s->type, s->value, s->tb);
#endif
}

/* Called with an exception set by failed recording code: stops all recording by these
 * hooks and hands the exception to the source's fault handler (which uninstalls the
 * source and records SOURCE_DISABLED). Returns with no exception set; never raises. */
static void fault(void) {
    L.active = 0;
    PyObject *exc;
#if PY_VERSION_HEX >= 0x030C0000
    exc = PyErr_GetRaisedException();
#else
    PyObject *type, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
#endif
    if (!exc) exc = Py_NewRef(Py_None);
    if (L.on_fault) {
        PyObject *handler = Py_NewRef(L.on_fault), *r = PyObject_CallOneArg(handler, exc);
        Py_DECREF(handler);
        if (r) Py_DECREF(r);
        else PyErr_Clear();
    }
    Py_DECREF(exc);
}

/* Records BLOCK_BEGIN(reason, obj, stack of the calling Python frame) straight into the
 * core (no int objects, no argument parsing). Must be called with no exception set;
 * returns with none set (the test-injected failure goes to fault()). */
static void record_block_begin(uint64_t reason, const void *obj) {
    if (L.inject_fault && reason == R_LOCK) {
        L.inject_fault = 0;
        PyErr_SetString(PyExc_RuntimeError, "injected fault (pyflight test)");
        fault();
        return;
    }
    uint64_t v[3] = {reason, (uint64_t)(uintptr_t)obj, 0};
    pyfl_record_stack(K_BLOCK_BEGIN, 3, v, 2, PyEval_GetFrame());
}

/* Records LOCK_HELD(obj, holder): the lock this thread is about to wait for is held by
 * the thread of Python ident `holder` (the deadlock rule follows these). Must be called
 * with no exception set; returns with none set. */
static void record_lock_held(const void *obj, unsigned long holder) {
    uint64_t v[2] = {(uint64_t)(uintptr_t)obj, (uint64_t)holder};
    pyfl_record_ints(K_LOCK_HELD, 2, v);
}

/* Records BLOCK_END(reason, obj, waker). Safe with an exception pending (kept as is);
 * never raises. */
static void record_block_end(uint64_t reason, const void *obj, uint64_t waker) {
    SavedExc saved;
    exc_save(&saved);
    uint64_t v[3] = {reason, (uint64_t)(uintptr_t)obj, waker};
    pyfl_record_ints(K_BLOCK_END, 3, v);
    exc_restore(&saved);
}

/* Finds keyword `name` among a vectorcall's keyword names: 1 and *value set (borrowed)
 * if present, 0 if not. Never raises. */
static int find_kw(PyObject *kwnames, PyObject *const *kwvalues, PyObject *name, PyObject **value) {
    if (!kwnames) return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (k == name || (PyUnicode_Check(k) && PyUnicode_Compare(k, name) == 0)) {
            *value = kwvalues[i];
            return 1;
        }
    }
    return 0;
}

/* Seconds in an exact int or float, in *out: 1, or 0 (no exception set) if `obj` is
 * anything else or does not fit a double. Runs no Python code. */
static int exact_seconds(PyObject *obj, double *out) {
    if (PyFloat_CheckExact(obj)) {
        *out = PyFloat_AS_DOUBLE(obj);
        return 1;
    }
    if (PyLong_CheckExact(obj)) {
        double d = PyLong_AsDouble(obj);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        *out = d;
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ TracedLock / TracedRLock */

typedef struct {
    PyObject_HEAD
    PyObject *inner;      /* the real lock */
    PyObject *acquire;    /* inner.acquire (bound) */
    PyObject *release;    /* inner.release (bound) */
    PyObject *weakrefs;
    Py_ssize_t held;      /* acquisitions minus releases made through the wrapper (RLock: depth) */
    Py_ssize_t blocked;   /* threads between a failed try and the end of their blocking acquire */
    uint64_t waker;       /* tid of the last thread that released while blocked > 0 */
    uint64_t wakes;       /* how many such releases: tells a blocked thread whether `waker` is news */
    unsigned long owner;  /* Python ident of the thread that acquired it last, 0 once released:
                           * pthread_self(), a few instructions on every acquire (the native tid
                           * is a TLS lookup); the trace's THREAD_INFO/START map it to the tid */
} TracedLock;

static PyTypeObject TracedLockType, TracedRLockType;

/* A new wrapper of type `type` around `inner` (a new reference is taken); NULL with an
 * exception if inner lacks acquire/release or memory is short. */
static PyObject *traced_wrap(PyTypeObject *type, PyObject *inner) {
    TracedLock *self = (TracedLock *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->inner = Py_NewRef(inner);
    if (!(self->acquire = PyObject_GetAttrString(inner, "acquire"))
        || !(self->release = PyObject_GetAttrString(inner, "release"))) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* A new traced plain lock around a new _thread lock; NULL with an exception. */
static PyObject *new_traced_lock(void) {
    PyObject *inner = PyObject_CallNoArgs(L.allocate_lock);
    if (!inner) return NULL;
    PyObject *self = traced_wrap(&TracedLockType, inner);
    Py_DECREF(inner);
    return self;
}

/* allocate_lock(): the replacement of threading.Lock before 3.13, where that is the
 * function _thread.allocate_lock (and the lock type cannot be instantiated). */
static PyObject *traced_allocate_lock(PyObject *unused, PyObject *noargs) { return new_traced_lock(); }

static PyMethodDef traced_allocate_lock_def = {
    "Lock", traced_allocate_lock, METH_NOARGS,
    "Lock() -> lock\n\nA new lock that records when acquiring it blocks (pyflight's threading.Lock).",
};

#if PY_VERSION_HEX >= 0x030D0000
/* TracedLock(): a new traced plain lock; from 3.13 threading.Lock is a type, so this
 * type replaces it (TypeError on any argument, like _thread.lock). */
static PyObject *tl_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_Format(PyExc_TypeError, "%s() takes no arguments", type->tp_name);
        return NULL;
    }
    return new_traced_lock();
}
#endif

/* TracedRLock(*args, **kwargs): a traced wrapper around threading.RLock(*args, **kwargs)
 * (the original factory: same arguments, same warnings and errors). */
static PyObject *trl_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *inner = PyObject_Call(L.rlock_factory, args, kwds);
    if (!inner) return NULL;
    PyObject *self = traced_wrap(type, inner);
    Py_DECREF(inner);
    return self;
}

/* Frees the wrapper; the inner lock goes with its last reference. Runs no Python code
 * beyond clearing weak references (their callbacks). */
static void tl_dealloc(TracedLock *self) {
    if (self->weakrefs) PyObject_ClearWeakRefs((PyObject *)self);
    Py_XDECREF(self->inner);
    Py_XDECREF(self->acquire);
    Py_XDECREF(self->release);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* How an acquire() call may be handled: 0 = pass it through as is (non-blocking, a zero
 * timeout, or arguments we do not fully understand: the inner lock validates them), 1 =
 * it may block: try first, then record around the real call. Never raises. */
static int acquire_may_block(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *blocking = NULL, *timeout = NULL;
    if (nargs > 2) return 0;
    if (nargs >= 1) blocking = args[0];
    if (nargs >= 2) timeout = args[1];
    if (kwnames) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *k = PyTuple_GET_ITEM(kwnames, i);
            if (PyUnicode_Check(k) && PyUnicode_Compare(k, L.s_blocking) == 0 && !blocking)
                blocking = args[nargs + i];
            else if (PyUnicode_Check(k) && PyUnicode_Compare(k, L.s_timeout) == 0 && !timeout)
                timeout = args[nargs + i];
            else
                return 0;
        }
    }
    if (blocking && blocking != Py_True) {
        if (blocking == Py_False || !PyLong_CheckExact(blocking)) return 0;
        int truth = PyObject_IsTrue(blocking); /* exact int: no Python code */
        if (truth <= 0) {
            if (truth < 0) PyErr_Clear();
            return 0;
        }
    }
    if (timeout) {
        double d;
        if (!exact_seconds(timeout, &d)) return 0;
        if (d == -1.0) return 1;
        /* a valid finite timeout; zero never blocks; invalid ones raise in the inner lock */
        return d > 0 && d <= L.timeout_max;
    }
    return 1;
}

/* After an inner acquire call: counts a successful acquisition; returns r. */
static inline PyObject *acquired(TracedLock *self, PyObject *r) {
    if (r == Py_True) {
        self->held++;
        self->owner = PyThread_get_thread_ident();
    }
    return r;
}

/* acquire(blocking=True, timeout=-1): exactly the inner lock's acquire (called with the
 * caller's own arguments, so timeouts, interruption and errors are the inner lock's).
 * Uncontended (nobody holds it through this wrapper and nobody waits): just that call,
 * which cannot block (it tries without releasing the GIL first and no other thread can
 * take the lock meanwhile); nothing recorded. Otherwise a non-blocking try first, and if
 * that fails and the call may block: BLOCK_BEGIN/BLOCK_END(LOCK) around the real call.
 * Should `held` ever be wrong, the only effect is a block not recorded or an extra try. */
static PyObject *tl_acquire(TracedLock *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    if ((self->held == 0 && self->blocked == 0) || !recording() || !acquire_may_block(args, nargs, kwnames))
        return acquired(self, PyObject_Vectorcall(self->acquire, args, (size_t)nargs, kwnames));
    PyObject *no[1] = {Py_False};
    PyObject *r = PyObject_Vectorcall(self->acquire, no, 1, NULL);
    if (r != Py_False) return acquired(self, r); /* got it (True), or an error from the inner lock */
    Py_DECREF(r);
    /* contended: from here until the end of the real acquire, releases note their tid */
    self->blocked++;
    uint64_t wakes = self->wakes;
    int record = !tls_in_wait;
    if (record) {
        if (self->owner) record_lock_held(self, self->owner);
        record_block_begin(R_LOCK, self);
    }
    r = acquired(self, PyObject_Vectorcall(self->acquire, args, (size_t)nargs, kwnames));
    self->blocked--;
    if (record && recording())
        record_block_end(R_LOCK, self, r == Py_True && self->wakes != wakes ? self->waker : 0);
    return r;
}

/* __enter__(): acquire() with no arguments; returns its result. */
static PyObject *tl_enter(TracedLock *self, PyObject *unused) { return tl_acquire(self, NULL, 0, NULL); }

/* After a successful release: one acquisition less, and if a thread is blocked on this
 * lock, remember who released it. */
static inline void note_release(TracedLock *self) {
    if (self->held > 0 && --self->held == 0) self->owner = 0;
    if (self->blocked > 0) {
        self->waker = my_tid();
        self->wakes++;
    }
}

/* release(): the inner lock's release (same errors); notes the releaser for blocked threads. */
static PyObject *tl_release(TracedLock *self, PyObject *unused) {
    PyObject *r = PyObject_CallNoArgs(self->release);
    if (r) note_release(self);
    return r;
}

/* __exit__(*exc_info): release(); returns None (never swallows the exception). */
static PyObject *tl_exit(TracedLock *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *r = PyObject_CallNoArgs(self->release);
    if (!r) return NULL;
    note_release(self);
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* Calls inner.<name>(*args) and returns its result (same errors). */
static PyObject *delegate(TracedLock *self, PyObject *name, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *stack[4];
    if (nargs > 3) {
        PyObject *meth = PyObject_GetAttr(self->inner, name);
        if (!meth) return NULL;
        PyObject *r = PyObject_Vectorcall(meth, args, (size_t)nargs, NULL);
        Py_DECREF(meth);
        return r;
    }
    stack[0] = self->inner;
    for (Py_ssize_t i = 0; i < nargs; i++)
        stack[i + 1] = args[i];
    return PyObject_VectorcallMethod(name, stack, (size_t)(nargs + 1), NULL);
}

/* _release_save(): RLock's full release for Condition.wait; notes the releaser. */
static PyObject *tl_release_save(TracedLock *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *r = delegate(self, L.s_release_save, args, nargs);
    if (r) {
        note_release(self);
        self->held = 0;
        self->owner = 0;
    }
    return r;
}

/* _acquire_restore(state): the inner lock's, unrecorded (Condition.wait records the wait);
 * counted as a waiter while it blocks, and afterwards held as deep as the state says. */
static PyObject *tl_acquire_restore(TracedLock *self, PyObject *const *args, Py_ssize_t nargs) {
    self->blocked++;
    PyObject *r = delegate(self, L.s_acquire_restore, args, nargs);
    self->blocked--;
    if (r) {
        Py_ssize_t depth = 1;
        if (nargs == 1 && PyTuple_CheckExact(args[0]) && PyTuple_GET_SIZE(args[0]) >= 1
            && PyLong_CheckExact(PyTuple_GET_ITEM(args[0], 0))) {
            depth = PyLong_AsSsize_t(PyTuple_GET_ITEM(args[0], 0));
            if (depth < 1) {
                PyErr_Clear();
                depth = 1;
            }
        }
        self->held = depth;
        self->owner = PyThread_get_thread_ident();
    }
    return r;
}

/* _is_owned(): the inner lock's. */
static PyObject *tl_is_owned(TracedLock *self, PyObject *const *args, Py_ssize_t nargs) {
    return delegate(self, L.s_is_owned, args, nargs);
}

/* _recursion_count(): the inner lock's. */
static PyObject *tl_recursion_count(TracedLock *self, PyObject *const *args, Py_ssize_t nargs) {
    return delegate(self, L.s_recursion_count, args, nargs);
}

/* locked(): the inner lock's. */
static PyObject *tl_locked(TracedLock *self, PyObject *const *args, Py_ssize_t nargs) {
    return delegate(self, L.s_locked, args, nargs);
}

/* _at_fork_reinit(): the inner lock's; forgets blocked threads (they do not exist in the child). */
static PyObject *tl_at_fork_reinit(TracedLock *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *r = delegate(self, L.s_at_fork_reinit, args, nargs);
    if (r) {
        self->held = self->blocked = 0;
        self->waker = self->wakes = 0;
    }
    return r;
}

/* repr(): the inner lock's repr (shows its state). */
static PyObject *tl_repr(TracedLock *self) { return PyObject_Repr(self->inner); }

/* __reduce__: locks cannot be pickled or copied (TypeError, like _thread.lock). */
static PyObject *tl_reduce(TracedLock *self, PyObject *unused) {
    return PyErr_Format(PyExc_TypeError, "cannot pickle '%s' object", Py_TYPE(self->inner)->tp_name);
}

#define FASTKW(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL | METH_KEYWORDS
#define FAST(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL

static PyMethodDef tl_methods[] = {
    {"acquire", FASTKW(tl_acquire), "acquire(blocking=True, timeout=-1) -> bool"},
    {"acquire_lock", FASTKW(tl_acquire), "An obsolete synonym of acquire()."},
    {"release", (PyCFunction)tl_release, METH_NOARGS, "release()"},
    {"release_lock", (PyCFunction)tl_release, METH_NOARGS, "An obsolete synonym of release()."},
    {"locked", FAST(tl_locked), "locked() -> bool"},
    {"locked_lock", FAST(tl_locked), "An obsolete synonym of locked()."},
    {"__enter__", (PyCFunction)tl_enter, METH_NOARGS, "acquire()"},
    {"__exit__", FAST(tl_exit), "release()"},
    {"_at_fork_reinit", FAST(tl_at_fork_reinit), NULL},
    {"__reduce__", (PyCFunction)tl_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef trl_methods[] = {
    {"acquire", FASTKW(tl_acquire), "acquire(blocking=True, timeout=-1) -> bool"},
    {"release", (PyCFunction)tl_release, METH_NOARGS, "release()"},
    {"__enter__", (PyCFunction)tl_enter, METH_NOARGS, "acquire()"},
    {"__exit__", FAST(tl_exit), "release()"},
    {"_is_owned", FAST(tl_is_owned), NULL},
    {"_release_save", FAST(tl_release_save), NULL},
    {"_acquire_restore", FAST(tl_acquire_restore), NULL},
    {"_recursion_count", FAST(tl_recursion_count), NULL},
    {"_at_fork_reinit", FAST(tl_at_fork_reinit), NULL},
    {"__reduce__", (PyCFunction)tl_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* The types (and the pre-3.13 Lock function) carry the names they stand in for,
 * threading.Lock and threading.RLock: pickle finds them by those names (a spawned child
 * then gets its own threading.Lock), and threading's own __all__ check expects them. */
static PyTypeObject TracedLockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "threading.Lock",
    .tp_doc = "A threading.Lock that records when acquiring it blocks (pyflight).",
    .tp_basicsize = sizeof(TracedLock),
#if PY_VERSION_HEX >= 0x030D0000
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = tl_new,
#else
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
#endif
    .tp_dealloc = (destructor)tl_dealloc,
    .tp_repr = (reprfunc)tl_repr,
    .tp_methods = tl_methods,
    .tp_weaklistoffset = offsetof(TracedLock, weakrefs),
};

static PyTypeObject TracedRLockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "threading.RLock",
    .tp_doc = "A threading.RLock that records when acquiring it blocks (pyflight).",
    .tp_basicsize = sizeof(TracedLock),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = trl_new,
    .tp_dealloc = (destructor)tl_dealloc,
    .tp_repr = (reprfunc)tl_repr,
    .tp_methods = trl_methods,
    .tp_weaklistoffset = offsetof(TracedLock, weakrefs),
};

/* ------------------------------------------------------------------ Condition hooks */

struct WaiterLock;

/* One Condition.wait that may block, on the C stack of its wait hook (nothing is
 * allocated per wait): the waiter's tid, the condition, the waiter lock made for it
 * (borrowed; NULL once that lock is gone) and, once the waiter lock is released (the
 * notification), the notifier's tid. The hook and the lock unlink each other when
 * either ends, so the lock never writes to a slot whose wait has returned. */
typedef struct {
    uint64_t tid, waker;
    const void *cond;
    struct WaiterLock *lock;
} WaitSlot;

/* The slot of the Condition.wait this thread is entering, until its waiter lock takes
 * it. */
static PYFL_TLS WaitSlot *tls_wait_slot;

/* The private lock Condition.wait blocks on and notify releases ("waiter"), made by
 * threading._allocate_lock while a wait hook runs on this thread. It is the inner
 * _thread.lock plus a pointer to the wait's slot: the release that wakes the waiter
 * records WAKE(waiter tid, 0, CONDITION, id(cond)) and leaves its tid in the slot. So
 * notify itself is not hooked, and a notify with nobody to wake costs nothing. It has
 * every method of _thread.lock as its own (no __getattr__ fallback), so `waiter.acquire()`
 * in Python takes the method-call fast path (no bound method per call). */
typedef struct WaiterLock {
    PyObject_HEAD
    PyObject *inner;        /* the real _thread.lock */
    WaitSlot *slot;         /* the live wait's slot until the waking release, else NULL */
    uint64_t fork_gen;      /* fork_generation when made: a slot from before a fork is never touched */
} WaiterLock;

static PyTypeObject WaiterLockType;

/* Calls inner.<name>(*args, **kw) as a method (no bound method when the arguments fit a
 * small array: every call Condition.wait makes); same result and errors. */
static PyObject *wl_forward(WaiterLock *self, PyObject *name, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    if (total < 4) {
        PyObject *stack[4] = {self->inner, NULL, NULL, NULL};
        for (Py_ssize_t i = 0; i < total; i++)
            stack[i + 1] = args[i];
        return PyObject_VectorcallMethod(name, stack, (size_t)(nargs + 1), kwnames);
    }
    PyObject *method = PyObject_GetAttr(self->inner, name);
    if (!method) return NULL;
    PyObject *r = PyObject_Vectorcall(method, args, nargsf, kwnames);
    Py_DECREF(method);
    return r;
}

/* acquire(*args, **kwargs) / acquire_lock / __enter__: the inner lock's acquire, untouched. */
static PyObject *wl_acquire(WaiterLock *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    return wl_forward(self, L.s_acquire, args, nargsf, kwnames);
}

/* locked(): the inner lock's. */
static PyObject *wl_locked(WaiterLock *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    return wl_forward(self, L.s_locked, args, nargsf, kwnames);
}

/* _at_fork_reinit(): the inner lock's; the wait it served does not exist in the child. */
static PyObject *wl_at_fork_reinit(WaiterLock *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    self->slot = NULL;
    return wl_forward(self, L.s_at_fork_reinit, args, nargsf, kwnames);
}

/* release(): the inner lock's; if it succeeded and is the first since the wait began,
 * the waker's WAKE edge and tid (never raises for recording). */
static PyObject *wl_release(WaiterLock *self, PyObject *unused) {
    PyObject *r = wl_forward(self, L.s_release, NULL, 0, NULL);
    WaitSlot *slot = self->slot;
    if (r && slot) {
        self->slot = NULL;
        if (self->fork_gen == fork_generation) {
            slot->lock = NULL;
            if (recording()) {
                slot->waker = my_tid();
                uint64_t v[4] = {slot->tid, 0, R_CONDITION, (uint64_t)(uintptr_t)slot->cond};
                pyfl_record_ints(K_WAKE, 4, v);
            }
        }
    }
    return r;
}

/* __exit__(*exc): release(), returning None (like _thread.lock). */
static PyObject *wl_exit(WaiterLock *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *r = wl_release(self, NULL);
    if (!r) return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* repr(): the inner lock's. */
static PyObject *wl_repr(WaiterLock *self) { return PyObject_Repr(self->inner); }

/* Frees the lock (no cycles: it holds only a lock); unlinks its wait's slot. */
static void wl_dealloc(WaiterLock *self) {
    if (self->slot && self->fork_gen == fork_generation) self->slot->lock = NULL;
    Py_XDECREF(self->inner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef wl_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))wl_acquire, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"acquire_lock", (PyCFunction)(void (*)(void))wl_acquire, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"__enter__", (PyCFunction)(void (*)(void))wl_acquire, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"release", (PyCFunction)wl_release, METH_NOARGS, NULL},
    {"release_lock", (PyCFunction)wl_release, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))wl_exit, METH_FASTCALL, NULL},
    {"locked", (PyCFunction)(void (*)(void))wl_locked, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"locked_lock", (PyCFunction)(void (*)(void))wl_locked, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"_at_fork_reinit", (PyCFunction)(void (*)(void))wl_at_fork_reinit, METH_FASTCALL | METH_KEYWORDS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WaiterLockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyflight._core._WaiterLock",
    .tp_doc = "Condition.wait's waiter lock: records the wake-up when released (pyflight).",
    .tp_basicsize = sizeof(WaiterLock),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)wl_dealloc,
    .tp_repr = (reprfunc)wl_repr,
    .tp_methods = wl_methods,
};

/* threading._allocate_lock(): a new _thread.lock; inside a wait hook (the waiter lock of
 * the wait being entered: the first lock made there), a WaiterLock around it. */
static PyObject *waiter_allocate_lock(PyObject *unused, PyObject *noargs) {
    PyObject *lock = PyObject_CallNoArgs(L.allocate_lock);
    WaitSlot *slot = tls_wait_slot;
    if (!lock || !slot) return lock;
    tls_wait_slot = NULL;
    WaiterLock *w = PyObject_New(WaiterLock, &WaiterLockType);
    if (!w) {  /* cannot track this wait: the plain lock still works */
        PyErr_Clear();
        return lock;
    }
    w->inner = lock;
    w->slot = slot;
    w->fork_gen = fork_generation;
    slot->lock = w;
    return (PyObject *)w;
}

static PyMethodDef waiter_allocate_lock_def = {
    "allocate_lock", waiter_allocate_lock, METH_NOARGS,
    "allocate_lock() -> lock\n\nA new lock (pyflight: Condition.wait's waiter records its wake-up).",
};

/* A timeout that lets a call block: None, or an exact int/float above 0. Never raises. */
static inline int may_block(PyObject *timeout) {
    double d;
    return timeout == Py_None || (exact_seconds(timeout, &d) && d > 0);
}

/* For a call f(timeout=None) (vectorcall arguments, keywords after the positionals): 1 if
 * the arguments are exactly that and the timeout lets it block, else 0 (call the original
 * and record nothing). Never raises. Also the asyncio loop selector's select (_core.h). */
int pyfl_timeout_may_block(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *timeout = NULL;
    if (nargs > 1) return 0;
    if (nargs == 1) timeout = args[0];
    if (kwnames && (PyTuple_GET_SIZE(kwnames) > 1 || timeout || !find_kw(kwnames, args + nargs, L.s_timeout, &timeout)))
        return 0;
    return !timeout || may_block(timeout);
}

/* The same for a method(self, timeout=None) call (Condition.wait, a selector's select). */
static int method_timeout_may_block(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    return nargs >= 1 && pyfl_timeout_may_block(args + 1, nargs - 1, kwnames);
}

/* A replacement for a Python method (Condition.wait) that calls the original. */
typedef struct {
    PyObject_HEAD
    PyObject *func;       /* the original function */
    PyObject *dict;       /* __dict__: __wrapped__, __name__, ... (functools.update_wrapper) */
    vectorcallfunc vectorcall;
    PyObject *helper;     /* HOOK_SOCKET(_SEND): the socket type's gettimeout; else NULL */
    PyObject *weakrefs;   /* weak references to it (a function takes them: a WeakKeyDictionary keyed by time.sleep) */
    int role;
} Hook;

/* Condition.wait(self, timeout=None): the original, inside BLOCK_BEGIN/END(CONDITION)
 * when it may block (no timeout, or an exact int/float > 0), with the notifier's tid as
 * the waker (see WaiterLock; needs threading._allocate_lock = waiter_allocate_lock).
 * Arguments, result and exceptions are the original's. */
static PyObject *hook_wait(Hook *h, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    if (!recording() || !method_timeout_may_block(args, PyVectorcall_NARGS(nargsf), kwnames)) goto passthrough;

    PyObject *cond = args[0];
    WaitSlot slot = {my_tid(), 0, cond, NULL};
    /* BLOCK_BEGIN is written when the wait ends (or before a seal), its stack only for a
     * wait that lasted at least L.stack_min_ns: the waiter's frames are the same then */
    PyflPending begin = {.tid = slot.tid, .vals = {R_CONDITION, (uint64_t)(uintptr_t)cond, 0, 0},
                         .kind = K_BLOCK_BEGIN, .n = 3, .stack_at = 2, .frame = PyEval_GetFrame()};
    pyfl_pending_begin(&begin);

    WaitSlot *outer_slot = tls_wait_slot;
    int outer = tls_in_wait;
    tls_wait_slot = &slot;
    tls_in_wait = 1;
    PyObject *r = PyObject_Vectorcall(h->func, args, nargsf, kwnames);
    tls_in_wait = outer;
    tls_wait_slot = outer_slot;
    if (slot.lock) slot.lock->slot = NULL; /* the waiter lock outlived the wait: unlink it */

    SavedExc saved;
    exc_save(&saved);
    pyfl_pending_end(&begin, stack_min_now());
    exc_restore(&saved);
    if (recording()) record_block_end(R_CONDITION, cond, slot.waker);
    return r;

passthrough:
    return PyObject_Vectorcall(h->func, args, nargsf, kwnames);
}

/* True if `sel` carries the asyncio source's mark (its loop's idle time is recorded
 * there) or cannot be asked: such a selector's select is not recorded. Never raises. */
static int is_loop_selector(PyObject *sel) {
    PyObject *mark = NULL;
#if PY_VERSION_HEX >= 0x030D0000
    int found = PyObject_GetOptionalAttr(sel, L.s_loop_mark, &mark);
#else
    int found = _PyObject_LookupAttr(sel, L.s_loop_mark, &mark);
#endif
    if (found < 0) {
        PyErr_Clear();
        return 1;
    }
    int marked = found && mark == Py_True;
    Py_XDECREF(mark);
    return marked;
}

/* True if `sock`'s operations may block: its gettimeout() (h->helper) is not 0.0. A
 * failing call means "do not record" (the original will raise). Never raises. */
static int socket_may_block(Hook *h, PyObject *sock) {
    PyObject *timeout = PyObject_CallOneArg(h->helper, sock);
    if (!timeout) {
        PyErr_Clear();
        return 0;
    }
    int blocks = !(PyFloat_CheckExact(timeout) && PyFloat_AS_DOUBLE(timeout) == 0.0);
    Py_DECREF(timeout);
    return blocks;
}

/* time.sleep, select.select, a selector's select, a socket method or a file sync: the original,
 * inside BLOCK_BEGIN/END(reason, obj) when the call may block (the same tests as the
 * pure-Python wrappers of sources/blocking.py: a positive or no timeout, a socket whose
 * timeout is not 0, a selector without the loop mark). BLOCK_BEGIN is written when the
 * call returns, with the stack only if it lasted L.stack_min_ns (see hook_wait). A
 * sleep's obj is the time asked for in ns. Arguments, result and exceptions are the
 * original's. */
static PyObject *hook_call(Hook *h, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    uint64_t reason;
    PyObject *obj = NULL;
    uint64_t obj_id = 0; /* the event's obj: the object's address, or a sleep's length */
    double secs;
    if (h->role == HOOK_SOCKET_SEND) pyfl_tls_sent = 1; /* a task's step that sends: see _core.h */
    if (!recording()) goto passthrough;
    switch (h->role) {
    case HOOK_SLEEP:
        if (nargs != 1 || kwnames || !exact_seconds(args[0], &secs) || !(secs > 0)) goto passthrough;
        reason = R_SLEEP;
        /* the time asked for, in ns: what the sleep took beyond it was a wait for the
         * GIL (or a CPU), which the analysis tells apart (capped: a sleep of years) */
        obj_id = secs < 1e9 ? (uint64_t)(secs * 1e9) : (uint64_t)1e18;
        break;
    case HOOK_SELECT:
        if (kwnames || nargs < 3 || nargs > 4 || (nargs == 4 && !may_block(args[3]))) goto passthrough;
        reason = R_SELECT;
        break;
    case HOOK_SELECTOR:
        if (!method_timeout_may_block(args, nargs, kwnames) || is_loop_selector(args[0])) goto passthrough;
        reason = R_SELECT;
        obj = args[0];
        break;
    case HOOK_SOCKET:
    case HOOK_SOCKET_SEND:
        if (tls_in_io || nargs < 1 || !socket_may_block(h, args[0])) goto passthrough;
        reason = R_IO;
        obj = args[0];
        break;
    case HOOK_FILE_SYNC: /* always waits for the disk (obj 0: the fd says little) */
        if (kwnames || nargs != 1) goto passthrough;
        reason = R_IO;
        break;
    default:
        goto passthrough;
    }
    if (obj) obj_id = (uint64_t)(uintptr_t)obj | (h->role == HOOK_SOCKET_SEND ? IO_SENDS : 0);
    PyflPending begin = {.tid = my_tid(), .vals = {reason, obj_id, 0, 0},
                         .kind = K_BLOCK_BEGIN, .n = 3, .stack_at = 2, .frame = PyEval_GetFrame()};
    pyfl_pending_begin(&begin);
    int io = reason == R_IO;
    if (io) tls_in_io = 1;
    PyObject *r = PyObject_Vectorcall(h->func, args, nargsf, kwnames);
    if (io) tls_in_io = 0;
    /* a socket call that ended by its timeout: the END says so (socket.timeout is TimeoutError) */
    uint64_t end_obj = obj_id;
    if (!r && io && obj && PyErr_ExceptionMatches(PyExc_TimeoutError)) end_obj |= IO_TIMED_OUT;
    SavedExc saved;
    exc_save(&saved);
    pyfl_pending_end(&begin, stack_min_now());
    if (recording()) {
        uint64_t v[3] = {reason, end_obj, 0};
        pyfl_record_ints(K_BLOCK_END, 3, v);
    }
    exc_restore(&saved);
    return r;

passthrough:
    return PyObject_Vectorcall(h->func, args, nargsf, kwnames);
}

/* BlockingHook(func, role, helper=None): a replacement for `func` recording its blocking
 * (the HOOK_* roles above); HOOK_SOCKET needs the socket type's gettimeout as helper. */
static PyObject *hook_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *func, *helper = Py_None;
    int role;
    if (!PyArg_ParseTuple(args, "Oi|O:BlockingHook", &func, &role, &helper)) return NULL;
    if (!PyCallable_Check(func)) return PyErr_Format(PyExc_TypeError, "BlockingHook() needs a callable");
    if (role < HOOK_CONDITION_WAIT || role > HOOK_SOCKET_SEND)
        return PyErr_Format(PyExc_ValueError, "unknown BlockingHook role %d", role);
    int is_socket = role == HOOK_SOCKET || role == HOOK_SOCKET_SEND;
    if (is_socket && !PyCallable_Check(helper))
        return PyErr_Format(PyExc_TypeError, "a socket BlockingHook needs the socket's gettimeout");
    Hook *h = (Hook *)type->tp_alloc(type, 0);
    if (!h) return NULL;
    h->func = Py_NewRef(func);
    h->helper = is_socket ? Py_NewRef(helper) : NULL;
    h->role = role;
    h->vectorcall = role == HOOK_CONDITION_WAIT ? (vectorcallfunc)hook_wait : (vectorcallfunc)hook_call;
    return (PyObject *)h;
}

/* GC support: a hook references its function and __dict__. */
static int hook_traverse(Hook *h, visitproc visit, void *arg) {
    Py_VISIT(h->func);
    Py_VISIT(h->dict);
    Py_VISIT(h->helper);
    return 0;
}

/* Drops the references (GC). */
static int hook_clear(Hook *h) {
    Py_CLEAR(h->func);
    Py_CLEAR(h->dict);
    Py_CLEAR(h->helper);
    return 0;
}

/* Frees the hook. */
static void hook_dealloc(Hook *h) {
    PyObject_GC_UnTrack(h);
    if (h->weakrefs) PyObject_ClearWeakRefs((PyObject *)h);
    hook_clear(h);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

/* Binds like a function: from the class, the hook itself; from an instance, a method. */
static PyObject *hook_descr_get(PyObject *self, PyObject *obj, PyObject *type) {
    if (obj == NULL || obj == Py_None) return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

/* repr(): says what it wraps. */
static PyObject *hook_repr(Hook *h) { return PyUnicode_FromFormat("<pyflight hook of %R>", h->func); }

/* `__func__`: the original function. */
static PyObject *hook_get_func(Hook *h, void *unused) { return Py_NewRef(h->func); }

/* __reduce__(): the hook's qualified name, so pickle and copy treat it as the global it
 * stands in for (`pickle.dumps(time.sleep)`, `executor.submit(time.sleep, 1)` to a
 * process pool): found again by name in its module (__module__/__qualname__ come from
 * functools.update_wrapper, else from the original). */
static PyObject *hook_reduce(Hook *h, PyObject *unused) {
    PyObject *name = h->dict ? PyDict_GetItemString(h->dict, "__qualname__") : NULL; /* borrowed */
    if (name && PyUnicode_Check(name)) return Py_NewRef(name);
    return PyObject_GetAttrString(h->func, "__qualname__");
}

static PyMethodDef hook_methods[] = {
    {"__reduce__", (PyCFunction)hook_reduce, METH_NOARGS, "pickled by name, as the function it stands in for"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef hook_getset[] = {
    {"__func__", (getter)hook_get_func, NULL, "the original function", NULL},
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject HookType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyflight._core.BlockingHook",
    .tp_doc = "BlockingHook(func, role, helper=None): a blocking call that records its blocks (pyflight).",
    .tp_basicsize = sizeof(Hook),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_new = hook_new,
    .tp_dealloc = (destructor)hook_dealloc,
    .tp_traverse = (traverseproc)hook_traverse,
    .tp_clear = (inquiry)hook_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Hook, vectorcall),
    .tp_descr_get = hook_descr_get,
    .tp_dictoffset = offsetof(Hook, dict),
    .tp_weaklistoffset = offsetof(Hook, weakrefs),
    .tp_repr = (reprfunc)hook_repr,
    .tp_free = PyObject_GC_Del,
    .tp_getset = hook_getset,
    .tp_methods = hook_methods,
};

/* ------------------------------------------------------------------ control */

/* _blocking_setup(rlock_factory, on_fault, stack_min_ns=0): what TracedRLock() calls to
 * make its inner lock, the fault handler (None for none), and how long a hooked wait or
 * call must last for its BLOCK_BEGIN to carry a stack. */
static PyObject *blocking_setup(PyObject *mod, PyObject *args) {
    PyObject *factory, *handler;
    unsigned long long stack_min_ns = 0;
    if (!PyArg_ParseTuple(args, "OO|K:_blocking_setup", &factory, &handler, &stack_min_ns)) return NULL;
    L.stack_min_ns = (uint64_t)stack_min_ns;
    L.stack_every = 1; /* a new recorder starts with nothing shed */
    if (!PyCallable_Check(factory) || (handler != Py_None && !PyCallable_Check(handler)))
        return PyErr_Format(PyExc_TypeError, "_blocking_setup() needs callables");
    Py_XSETREF(L.rlock_factory, Py_NewRef(factory));
    Py_XSETREF(L.on_fault, handler == Py_None ? NULL : Py_NewRef(handler));
    Py_RETURN_NONE;
}

/* _blocking_control(active, inject_fault=False): turn recording by the hooks on or off;
 * inject_fault makes the next LOCK BLOCK_BEGIN fail (tests). Returns the previous `active`. */
static PyObject *blocking_control(PyObject *mod, PyObject *args) {
    int active, inject = 0, prev = L.active;
    if (!PyArg_ParseTuple(args, "p|p:_blocking_control", &active, &inject)) return NULL;
    L.active = active;
    L.inject_fault = inject;
    return PyBool_FromLong(prev);
}

/* _blocking_shed_stacks(every, min_ns): from now on a hooked wait or call keeps its stack
 * past stack_min_ns one time in `every` (at random), else only past min_ns (the CPU budget
 * sheds stack walks this way). every <= 1 restores the normal rule. */
static PyObject *blocking_shed_stacks(PyObject *mod, PyObject *args) {
    unsigned long long every, min_ns;
    if (!PyArg_ParseTuple(args, "KK:_blocking_shed_stacks", &every, &min_ns)) return NULL;
    L.stack_every = every;
    L.shed_min_ns = min_ns;
    L.stack_turn = 0x853c49e6748fea9bULL; /* any start: the sample only needs to be unbiased */
    Py_RETURN_NONE;
}

static PyMethodDef lock_functions[] = {
    {"_blocking_setup", blocking_setup, METH_VARARGS, "_blocking_setup(rlock_factory, on_fault, stack_min_ns=0)"},
    {"_blocking_control", blocking_control, METH_VARARGS, "_blocking_control(active, inject_fault=False)"},
    {"_blocking_shed_stacks", blocking_shed_stacks, METH_VARARGS, "_blocking_shed_stacks(every, min_ns)"},
    {NULL, NULL, 0, NULL},
};

/* Interns `text` into *slot: 0, or -1 with an exception. */
static int intern(PyObject **slot, const char *text) {
    if (!*slot) *slot = PyUnicode_InternFromString(text);
    return *slot ? 0 : -1;
}

/* Adds the types and functions above to the module: 0, or -1 with an exception. */
int pyfl_lock_init(PyObject *mod) {
    if (PyType_Ready(&TracedLockType) < 0 || PyType_Ready(&TracedRLockType) < 0
        || PyType_Ready(&WaiterLockType) < 0
        || PyType_Ready(&HookType) < 0)
        return -1;
    if (intern(&L.s_release_save, "_release_save") < 0 || intern(&L.s_acquire_restore, "_acquire_restore") < 0
        || intern(&L.s_is_owned, "_is_owned") < 0 || intern(&L.s_recursion_count, "_recursion_count") < 0
        || intern(&L.s_at_fork_reinit, "_at_fork_reinit") < 0 || intern(&L.s_locked, "locked") < 0
        || intern(&L.s_timeout, "timeout") < 0 || intern(&L.s_blocking, "blocking") < 0 || intern(&L.s_acquire, "acquire") < 0
        || intern(&L.s_release, "release") < 0 || intern(&L.s_loop_mark, "_pyflight_loop_selector") < 0)
        return -1;
    if (!L.allocate_lock) {
        PyObject *thread = PyImport_ImportModule("_thread");
        if (!thread) return -1;
        L.allocate_lock = PyObject_GetAttrString(thread, "allocate_lock");
        if (!L.rlock_factory) L.rlock_factory = PyObject_GetAttrString(thread, "RLock");
        PyObject *tmax = PyObject_GetAttrString(thread, "TIMEOUT_MAX");
        Py_DECREF(thread);
        if (!L.allocate_lock || !L.rlock_factory || !tmax) {
            Py_XDECREF(tmax);
            return -1;
        }
        L.timeout_max = PyFloat_AsDouble(tmax);
        Py_DECREF(tmax);
        if (L.timeout_max == -1.0 && PyErr_Occurred()) return -1;
#ifndef _WIN32
        if (pthread_atfork(NULL, NULL, lock_after_fork_child) != 0) {
            PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
            return -1;
        }
#endif
    }
    PyObject *constants =
        Py_BuildValue("(iiiiii)", K_BLOCK_BEGIN, K_BLOCK_END, K_WAKE, R_LOCK, R_CONDITION, K_LOCK_HELD);
    if (!constants) return -1;
    int added = PyModule_AddObjectRef(mod, "_BLOCKING_CONSTANTS", constants);
    Py_DECREF(constants);
    if (added < 0) return -1;
    if (PyModule_AddIntConstant(mod, "HOOK_CONDITION_WAIT", HOOK_CONDITION_WAIT) < 0
        || PyModule_AddIntConstant(mod, "HOOK_SLEEP", HOOK_SLEEP) < 0
        || PyModule_AddIntConstant(mod, "HOOK_SELECT", HOOK_SELECT) < 0
        || PyModule_AddIntConstant(mod, "HOOK_SELECTOR", HOOK_SELECTOR) < 0
        || PyModule_AddIntConstant(mod, "HOOK_SOCKET", HOOK_SOCKET) < 0
        || PyModule_AddIntConstant(mod, "HOOK_FILE_SYNC", HOOK_FILE_SYNC) < 0
        || PyModule_AddIntConstant(mod, "HOOK_SOCKET_SEND", HOOK_SOCKET_SEND) < 0
        || PyModule_AddObjectRef(mod, "TracedLock", (PyObject *)&TracedLockType) < 0
        || PyModule_AddObjectRef(mod, "TracedRLock", (PyObject *)&TracedRLockType) < 0
        || PyModule_AddObjectRef(mod, "BlockingHook", (PyObject *)&HookType) < 0)
        return -1;
    PyObject *module_name = PyUnicode_FromString("threading");
    PyObject *factory = module_name ? PyCFunction_NewEx(&traced_allocate_lock_def, NULL, module_name) : NULL;
    Py_XDECREF(module_name);
    if (!factory) return -1;
    added = PyModule_AddObjectRef(mod, "traced_allocate_lock", factory);
    Py_DECREF(factory);
    if (added < 0) return -1;
    module_name = PyUnicode_FromString("_thread");
    factory = module_name ? PyCFunction_NewEx(&waiter_allocate_lock_def, NULL, module_name) : NULL;
    Py_XDECREF(module_name);
    if (!factory) return -1;
    added = PyModule_AddObjectRef(mod, "waiter_allocate_lock", factory);
    Py_DECREF(factory);
    if (added < 0) return -1;
    return PyModule_AddFunctions(mod, lock_functions);
}
