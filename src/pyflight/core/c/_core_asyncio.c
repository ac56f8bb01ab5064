/* pyflight._core: asyncio support, the C replacement of asyncio.events.Handle._run.
 *
 * `handle_run` does what Handle._run of CPython 3.11-3.13 does:
 *
 *     try:
 *         self._context.run(self._callback, *self._args)
 *     except (SystemExit, KeyboardInterrupt):
 *         raise
 *     except BaseException as exc:
 *         <call the loop's exception handler>   (a Python helper given at install time)
 *
 * and records around it: TASK_STEP_BEGIN/END when the callback is the step of an asyncio
 * Task (`Task.__step`/`__wakeup` of the pure-Python Task, `TaskStepMethWrapper` or the
 * bound `task_wakeup` of the C Task), else CALLBACK_BEGIN/END with the callback's
 * qualname. After a task step: TASK_WAIT (what the task waits on), or the task-done hook.
 * While a step runs, its thread, loop, task and start time sit in a small table that the
 * stall watchdog reads with running_steps().
 *
 * Never raises anything the original would not: every lookup made only for recording
 * swallows Exception subclasses (a BaseException such as KeyboardInterrupt arriving in a
 * Python hook propagates, as it would from the callback). All of it runs with the GIL.
 */
#include "_core.h"
#include <string.h>
#include <time.h>
#if PY_VERSION_HEX < 0x030C0000
#include <structmember.h> /* PyMemberDef (in Python.h since 3.12) */
#endif

#define N_SLOTS 256          /* steps tracked at once (one per thread running a loop) */
#define MAX_AWAIT_DEPTH 64   /* coroutine chain walked for TASK_WAIT's stack */
#define MAX_TYPE_NAMES 1024  /* cached type names for TASK_WAIT */
/* A callback that is a builtin (C) function or method, e.g. `set.discard` as a task's done
 * callback (uvicorn: one per request) or a C Future's `set_result`, takes ~100 ns and runs
 * no Python code: recorded only if it lasted this long (a C call that blocks the loop is
 * still seen; the stall watchdog sees it either way). The pure-Python _run does the same
 * (sources/asyncio_loop.py BUILTIN_CALLBACK_MIN_NS). */
#define BUILTIN_CALLBACK_MIN_NS 100000

typedef struct {
    unsigned long ident; /* Python ident of the thread running the step; 0 = free */
    uint64_t loop, task, start_ns;
} Slot;

static struct {
    int active;         /* recording (between asyncio_install and asyncio_uninstall) */
    uint64_t epoch;     /* installs so far: invalidates every thread's loop cache */
    int wait_mode;      /* after a task step: 0 nothing, 1 TASK_WAIT, 2 TASK_WAIT with stack */
    int k_begin, k_end, k_cb_begin_int, k_cb_end, k_wait_int, reason;
    int k_step, k_callback; /* the one-event kinds (TASK_STEP, CALLBACK); -1: BEGIN/END pairs */
    int k_step_sent, k_sent; /* TASK_STEP_SENT (a step that sent on a socket), TASK_SENT; -1: not recorded */
    PyObject *exc_helper;   /* helper(handle, exc): the original's except-branch */
    PyObject *slow_call;    /* slow_call(context, callback, args): context.run(callback, *args) */
    PyObject *on_loop;      /* on_loop(loop): a thread runs a step of a loop it did not just run */
    PyObject *on_task_done; /* on_task_done(task): a step finished its task */
    PyObject *task_types;   /* tuple of the Task classes */
    PyTypeObject *plain_future; /* asyncio.Future (C): recorded as "" */
    PyObject *py_step, *py_wakeup;  /* pure-Python Task.__step / __wakeup functions */
    PyTypeObject *step_wrapper;     /* _asyncio's TaskStepMethWrapper, once seen */
    int step_wrapper_direct;        /* its first field is the task (checked against __self__) */
    PyCFunction wakeup_meth;        /* _asyncio's task_wakeup, once seen */
    PyObject *type_names;   /* dict: type -> __name__ */
    PyObject *empty;        /* "" */
    Slot slots[N_SLOTS];
} A;

/* Per thread: its ident, its slot in A.slots, and the loop of its last step (identity
 * only, never dereferenced) with the install epoch it was seen in. */
typedef struct {
    unsigned long ident;
    int slot;
    const void *loop;
    uint64_t epoch;
} ThreadCache;
static PYFL_TLS ThreadCache T = {0, -1, NULL, 0};

static PyObject *str_context, *str_callback, *str_args, *str_loop, *str_self, *str_fut_waiter, *str_done,
    *str_coro, *str_cr_await, *str_cr_frame, *str_gi_yieldfrom, *str_gi_frame, *str_qualname, *str_func;

/* ------------------------------------------------------------------ helpers */

/* After a failed lookup made for recording: forget an Exception (0); leave anything else
 * (KeyboardInterrupt, SystemExit, ...) set for the caller to propagate (-1). */
static int swallow(void) {
    if (!PyErr_Occurred()) return 0;
    if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* Takes the raised exception (normalized, with its traceback) out of the error indicator. */
static PyObject *take_exception(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value && tb)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

/* Raises `exc` again (steals the reference); no-op for NULL. */
static void give_exception(PyObject *exc) {
    if (!exc) return;
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
#endif
}

static int is_task(PyObject *o) {
    PyObject *types = A.task_types;
    if (!types) return 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(types); i++)
        if (PyObject_TypeCheck(o, (PyTypeObject *)PyTuple_GET_ITEM(types, i))) return 1;
    return 0;
}

/* The layout of _asyncio's TaskStepMethWrapper in CPython 3.11-3.13; used only after
 * checking, on the first one seen, that `task` is what __self__ returns. */
typedef struct {
    PyObject_HEAD
    PyObject *task;
} StepWrapper;

/* True if tp's name, without its module, is `name` ("_asyncio.X" on 3.12+, "X" on 3.11). */
static int type_named(PyTypeObject *tp, const char *name) {
    const char *dot = strrchr(tp->tp_name, '.');
    return strcmp(dot ? dot + 1 : tp->tp_name, name) == 0;
}

/* The Task whose step `cb` is (new reference), or NULL if it is a plain callback. */
static PyObject *step_task(PyObject *cb) {
    PyTypeObject *tp = Py_TYPE(cb);
    if (tp == &PyMethod_Type) {
        PyObject *f = PyMethod_GET_FUNCTION(cb);
        if (f && (f == A.py_step || f == A.py_wakeup)) return Py_NewRef(PyMethod_GET_SELF(cb));
        return NULL;
    }
    if (tp == A.step_wrapper && A.step_wrapper_direct) {
        PyObject *task = ((StepWrapper *)cb)->task;
        return task ? Py_NewRef(task) : NULL;
    }
    /* (a plain function or a builtin is no step wrapper: spares the name check per callback) */
    if (tp == A.step_wrapper
        || (tp != &PyCFunction_Type && tp != &PyFunction_Type && type_named(tp, "TaskStepMethWrapper"))) {
        /* or a fresh _asyncio's */
        PyObject *task = PyObject_GetAttr(cb, str_self);
        if (!task) {
            PyErr_Clear();
            return NULL;
        }
        if (!is_task(task)) {
            Py_DECREF(task);
            return NULL;
        }
        if (!A.step_wrapper) {
            A.step_wrapper = (PyTypeObject *)Py_NewRef(tp); /* kept: the layout check holds for it */
            A.step_wrapper_direct = tp->tp_basicsize >= (Py_ssize_t)sizeof(StepWrapper)
                && ((StepWrapper *)cb)->task == task;
        }
        return task;
    }
    if (PyCFunction_Check(cb)) {
        PyObject *self = PyCFunction_GET_SELF(cb);
        PyCFunction meth = PyCFunction_GET_FUNCTION(cb);
        if (self && meth
            && (meth == A.wakeup_meth
                || (!A.wakeup_meth && strcmp(((PyCFunctionObject *)cb)->m_ml->ml_name, "task_wakeup") == 0))
            && is_task(self)) {
            A.wakeup_meth = meth;
            return Py_NewRef(self);
        }
    }
    return NULL;
}

#define NAME_CACHE 64
/* Names of builtin-method callbacks ("Future.set_result"): their __qualname__ is built
 * anew at each lookup. Keyed by method table entry and type of self (never dereferenced). */
static struct {
    const PyMethodDef *ml;
    const PyTypeObject *tp;
    PyObject *name;
} name_cache[NAME_CACHE];

/* The callback's qualname as an exact str (new reference; "" if none). Functions and
 * bound methods: read from the function; functools.partial: its func's; else
 * __qualname__, else the type's qualname. Swallows lookup errors. */
static PyObject *callback_name(PyObject *cb) {
    PyObject *f = Py_NewRef(cb), *name = NULL;
    for (int hops = 0; hops < 4; hops++) {
        if (PyMethod_Check(f))
            Py_SETREF(f, Py_NewRef(PyMethod_GET_FUNCTION(f)));
        if (PyFunction_Check(f)) {
            name = Py_XNewRef(((PyFunctionObject *)f)->func_qualname);
            break;
        }
        if (PyCFunction_Check(f)) {
            const PyMethodDef *ml = ((PyCFunctionObject *)f)->m_ml;
            PyObject *self = PyCFunction_GET_SELF(f);
            const PyTypeObject *tp = self ? Py_TYPE(self) : NULL;
            size_t h = (((uintptr_t)ml >> 4) ^ ((uintptr_t)tp >> 4)) % NAME_CACHE;
            if (name_cache[h].ml == ml && name_cache[h].tp == tp && name_cache[h].name) {
                name = Py_NewRef(name_cache[h].name);
                break;
            }
            name = PyObject_GetAttr(f, str_qualname);
            if (name && PyUnicode_CheckExact(name)) {
                name_cache[h].ml = ml;
                name_cache[h].tp = tp;
                Py_XSETREF(name_cache[h].name, Py_NewRef(name));
                break;
            }
            Py_CLEAR(name);
            PyErr_Clear();
        }
        if (strcmp(Py_TYPE(f)->tp_name, "functools.partial") == 0) {
            PyObject *inner = PyObject_GetAttr(f, str_func);
            if (inner) {
                Py_SETREF(f, inner);
                continue;
            }
            PyErr_Clear();
        }
        name = PyObject_GetAttr(f, str_qualname);
        if (!name || !PyUnicode_CheckExact(name)) {
            PyErr_Clear();
            Py_XSETREF(name, PyType_GetQualName(Py_TYPE(f)));
        }
        break;
    }
    Py_DECREF(f);
    if (!name || !PyUnicode_CheckExact(name)) {
        PyErr_Clear();
        Py_XSETREF(name, Py_NewRef(A.empty));
    }
    return name;
}

/* __name__ of type tp, cached (borrowed reference; "" if unavailable). */
static PyObject *type_name(PyTypeObject *tp) {
    static PyTypeObject *last_tp;
    static PyObject *last_name;
    if (tp == last_tp) return last_name;
    PyObject *name = PyDict_GetItemWithError(A.type_names, (PyObject *)tp);
    if (name) {
        last_tp = tp; /* the dict keeps both alive */
        last_name = name;
        return name;
    }
    PyErr_Clear();
    name = PyType_GetName(tp);
    if (!name || !PyUnicode_CheckExact(name) || PyDict_GET_SIZE(A.type_names) >= MAX_TYPE_NAMES
        || PyDict_SetItem(A.type_names, (PyObject *)tp, name) < 0) {
        Py_XDECREF(name);
        PyErr_Clear();
        return A.empty;
    }
    Py_DECREF(name); /* the dict holds it */
    return name;
}

/* The frame of the innermost coroutine/generator of task's await chain (new reference),
 * or NULL. Swallows lookup errors. */
static PyObject *awaiting_frame(PyObject *task) {
    PyObject *c = PyObject_GetAttr(task, str_coro);
    if (!c) {
        PyErr_Clear();
        return NULL;
    }
    for (int depth = 0; depth < MAX_AWAIT_DEPTH; depth++) {
        int coro = PyCoro_CheckExact(c);
        if (!coro && !PyGen_CheckExact(c)) break;
        PyObject *next = PyObject_GetAttr(c, coro ? str_cr_await : str_gi_yieldfrom);
        if (!next) break;
        if (PyCoro_CheckExact(next) || PyGen_CheckExact(next)) {
            Py_SETREF(c, next);
            continue;
        }
        Py_DECREF(next);
        PyObject *frame = PyObject_GetAttr(c, coro ? str_cr_frame : str_gi_frame);
        Py_DECREF(c);
        if (frame && PyFrame_Check(frame)) return frame;
        Py_XDECREF(frame);
        PyErr_Clear();
        return NULL;
    }
    Py_DECREF(c);
    PyErr_Clear();
    return NULL;
}

/* ------------------------------------------------------------------ fast attribute reads
 *
 * Generic getattr costs ~190 instructions; the original (bytecode) reads the handle's
 * slots with specialized LOAD_ATTRs. For each type seen, the data descriptors of the
 * fields are looked up once and read directly afterwards (a slot's offset, a getset's
 * getter): what PyObject_GenericGetAttr would end up doing. The type's version tag,
 * changed by CPython whenever the type or a base is modified, says when to look again. */

#define MAX_FIELDS 4
#define N_LAYOUTS 4
#define MEMBER_OBJECT 6      /* T_OBJECT: NULL reads as None */
#define MEMBER_OBJECT_EX 16  /* T_OBJECT_EX: NULL raises AttributeError */
#define MEMBER_AUDIT_READ 2  /* PY_AUDIT_READ: reads are audited */

typedef struct {
    char how; /* 0: PyObject_GetAttr; 'm': slot at offset; 'g': getset getter */
    char member_type;
    Py_ssize_t offset;
    getter get;
    void *closure;
} Field;

typedef struct {
    PyTypeObject *tp; /* strong reference */
    unsigned int version;
    Field f[MAX_FIELDS];
} Layout;

typedef struct {
    int n_fields, next;
    PyObject **names;
    Layout entries[N_LAYOUTS];
} LayoutCache;

static PyObject *handle_fields[4], *task_fields[1];
static LayoutCache handle_layouts = {4, 0, handle_fields, {{0}}};
static LayoutCache task_layouts = {1, 0, task_fields, {{0}}};

/* How to read each field of cache `c` on instances of exactly tp (NULL: use getattr). */
static const Layout *layout_of(LayoutCache *c, PyTypeObject *tp) {
    Layout *e = NULL;
    for (int i = 0; i < N_LAYOUTS; i++) {
        if (c->entries[i].tp == tp) {
            e = &c->entries[i];
            if (e->version == tp->tp_version_tag) return e->version ? e : NULL;
            break;
        }
    }
    if (!e) {
        e = &c->entries[c->next];
        c->next = (c->next + 1) % N_LAYOUTS;
        Py_XSETREF(e->tp, (PyTypeObject *)Py_NewRef(tp));
    }
    for (int i = 0; i < c->n_fields; i++) {
        Field *f = &e->f[i];
        f->how = 0;
        if (tp->tp_getattro != PyObject_GenericGetAttr || !Py_IS_TYPE(tp, &PyType_Type)) continue;
        PyObject *d = PyObject_GetAttr((PyObject *)tp, c->names[i]);
        if (!d) {
            PyErr_Clear();
        } else if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
            if ((m->type == MEMBER_OBJECT || m->type == MEMBER_OBJECT_EX) && !(m->flags & MEMBER_AUDIT_READ)) {
                f->how = 'm';
                f->member_type = (char)m->type;
                f->offset = m->offset;
            }
        } else if (Py_IS_TYPE(d, &PyGetSetDescr_Type)) {
            PyGetSetDef *g = ((PyGetSetDescrObject *)d)->d_getset;
            if (g->get) {
                f->how = 'g';
                f->get = g->get;
                f->closure = g->closure;
            }
        }
        Py_XDECREF(d);
    }
    e->version = tp->tp_version_tag; /* assigned by the lookups above, unless the type can't have one */
    return e->version ? e : NULL;
}

/* obj.<field i of layout L> (new reference), or NULL with the exception getattr raises. */
static inline PyObject *get_field(PyObject *obj, const Layout *L, int i, PyObject *name) {
    if (L) {
        const Field *f = &L->f[i];
        if (f->how == 'm') {
            PyObject *v = *(PyObject **)((char *)obj + f->offset);
            if (v) return Py_NewRef(v);
            if (f->member_type == MEMBER_OBJECT) return Py_NewRef(Py_None);
        } else if (f->how == 'g') {
            return f->get(obj, f->closure);
        }
    }
    return PyObject_GetAttr(obj, name);
}

/* Calls hook(arg) holding a reference to the hook (uninstalling drops the module's). */
static PyObject *call_hook(PyObject *hook, PyObject *arg) {
    if (!hook) Py_RETURN_NONE;
    Py_INCREF(hook);
    PyObject *r = PyObject_CallOneArg(hook, arg);
    Py_DECREF(hook);
    return r;
}

static inline uint64_t coarse_now_ns(void);

/* ------------------------------------------------------------------ task lifetimes in C
 *
 * loop.create_task and the end of a task are recorded here, without a Python frame: the
 * Python wrapper this replaces cost ~4.5 us per task created (bench_overhead tasks_10000).
 * The state is shared with the Python source through `live_tasks` (task id -> parent id:
 * what a later rename needs, and what uninstall clears). Live keys are the task ids
 * themselves and the values ints: no GC-tracked object per task beyond the core's entry
 * (GC passes over such tuples were most of the cost of a created task). */

static struct {
    PyObject *current_task;          /* asyncio.current_task(loop) */
    PyObject *live_tasks;            /* dict shared with the Python source, task id -> parent id
                                      * (the task id is also its live key); NULL: not set up */
    PyObject *on_fault;              /* on_fault(exc): a recording error, the source reports it */
    PyObject *describe;              /* describe(exc) -> "Type: message" (TASK_DONE's error) */
    PyObject *k_info;
    int k_create_int, k_info_int, k_done_int, k_block_int; /* recorded with pyfl_record_typed */
    PyObject *ok, *cancelled, *failed; /* TaskOutcome values */
} TK;

static PyObject *str_get_name, *str_get_coro, *str_cancelled, *str_exception, *str_coro_kw;

/* After a failed recording step: an Exception is handed to on_fault (the source reports
 * it and disables itself) and cleared, 0; anything else (KeyboardInterrupt, ...) stays set
 * for the caller to propagate, -1. Never leaves an Exception set. */
static int fault(void) {
    if (!PyErr_Occurred()) return 0;
    if (!PyErr_ExceptionMatches(PyExc_Exception)) return -1;
    PyObject *exc = take_exception();
    PyObject *r = call_hook(TK.on_fault, exc ? exc : Py_None);
    Py_XDECREF(exc);
    if (!r) return swallow();
    Py_DECREF(r);
    return 0;
}

/* TASK_INFO(task, name, coro, parent 0) for a task that create_task never saw (made with
 * asyncio.Task(...) directly: aiohttp's request handlers on 3.12+), recorded once, at its
 * end: without it the task has neither name nor coroutine. 0, or -1 with an exception set. */
static int announce_unseen(PyObject *task) {
    PyObject *name = PyObject_CallMethodNoArgs(task, str_get_name), *coro = NULL, *coro_name = NULL;
    if (!name) { /* a task-like object without the Task API: nothing to say */
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1;
        PyErr_Clear();
        return 0;
    }
    if (!PyUnicode_CheckExact(name)) {
        Py_SETREF(name, PyObject_Str(name));
        if (!name) return -1;
    }
    coro = PyObject_CallMethodNoArgs(task, str_get_coro);
    if (coro) {
        coro_name = callback_name(coro);
    } else if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        coro_name = Py_NewRef(A.empty);
    }
    if (coro_name) {
        uint64_t vals[4] = {(uint64_t)(uintptr_t)task, 0, 0, 0};
        PyObject *objs[4] = {NULL, name, coro_name, NULL};
        pyfl_record_typed(TK.k_info_int, 4, "ussu", vals, objs);
    }
    Py_DECREF(name);
    Py_XDECREF(coro);
    Py_XDECREF(coro_name);
    return coro_name ? 0 : -1;
}

/* Records TASK_DONE(task, outcome, error) for a task that a step just finished (error read
 * from `_exception`, never through exception(): that would mark it retrieved) and forgets
 * its live TASK_INFO. 0, or -1 with a non-Exception exception set (Exceptions go to
 * fault()). */
static int record_task_done(PyObject *task) {
    PyObject *tid = PyLong_FromVoidPtr(task), *outcome = TK.ok, *error = Py_NewRef(A.empty), *live = NULL;
    if (!tid || !TK.live_tasks) goto out;
    live = Py_NewRef(TK.live_tasks); /* held: a hook below may run a re-install */
    int seen = PyDict_Contains(live, tid);
    if (seen < 0 || (!seen && announce_unseen(task) < 0)) goto out;
    PyObject *c = PyObject_CallMethodNoArgs(task, str_cancelled);
    if (!c) goto out;
    int is_cancelled = PyObject_IsTrue(c);
    Py_DECREF(c);
    if (is_cancelled < 0) goto out;
    if (is_cancelled) {
        outcome = TK.cancelled;
    } else {
        PyObject *exc = PyObject_GetAttr(task, str_exception);
        if (!exc) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) goto out;
            PyErr_Clear();
        } else if (PyExceptionInstance_Check(exc)) {
            outcome = TK.failed;
            PyObject *text = call_hook(TK.describe, exc); /* the rare path: Python formats it */
            Py_DECREF(exc);
            if (!text) goto out;
            if (PyUnicode_CheckExact(text))
                Py_SETREF(error, text);
            else
                Py_DECREF(text);
        } else {
            Py_DECREF(exc);
        }
    }
    {
        uint64_t vals[3] = {(uint64_t)(uintptr_t)task, PyLong_AsUnsignedLongLong(outcome), 0};
        PyObject *objs[3] = {NULL, NULL, error};
        pyfl_record_typed(TK.k_done_int, 3, "uus", vals, objs);
    }
    PyObject *known = PyDict_GetItemWithError(live, tid); /* borrowed; looked up again:
                                                            * the calls above run Python code */
    if (known) {
        if (PyDict_DelItem(live, tid) < 0 || pyfl_clear_live(tid) < 0) goto out;
    } else if (PyErr_Occurred()) {
        goto out;
    }
out: /* done or failed: fault() tells (0 when nothing was raised) */
    Py_XDECREF(tid);
    Py_XDECREF(error);
    Py_XDECREF(live);
    return fault();
}

/* The task is done: record it in C once set up, else through the Python hook. 0, or -1
 * with a non-Exception exception set. */
static int task_done(PyObject *task) {
    if (TK.live_tasks) return record_task_done(task);
    PyObject *r = call_hook(A.on_task_done, task);
    if (!r) return swallow();
    Py_DECREF(r);
    return 0;
}

/* The task this thread is stepping for `loop` (the innermost step's slot, valid from
 * claim_slot until the step ends), or 0 if the step is not a task's or unknown: then
 * asyncio.current_task says (a call, ~60 ns with 3.11's getpid check). */
static inline uint64_t stepping_task(uint64_t loop) { /* inline: unused from 3.12 */
    ThreadCache *t = &T;
    int i = t->slot;
    if (i < 0 || !t->ident || A.slots[i].ident != t->ident || A.slots[i].loop != loop) return 0;
    return A.slots[i].task;
}

/* *id = the task running on `loop` now (0: none): the step's slot, else
 * asyncio.current_task(loop). From 3.12 always the latter: an eager task's first step
 * (asyncio.Task(..., eager_start=True), eager_task_factory: aiohttp's request handlers)
 * runs inside its creator's step, whose slot names the creator; asyncio's current task is
 * the eager one. Only the slower paths ask (a wait that blocks, a task created). 0, or -1
 * with the call's exception set. */
static int current_task_id(PyObject *loop, uint64_t *id) {
#if PY_VERSION_HEX < 0x030C0000
    *id = stepping_task((uint64_t)(uintptr_t)loop);
    if (*id) return 0;
#endif
    PyObject *task = PyObject_CallOneArg(TK.current_task, loop);
    if (!task) return -1;
    *id = task == Py_None ? 0 : (uint64_t)(uintptr_t)task;
    Py_DECREF(task); /* identity only from here */
    return 0;
}

/* Records TASK_CREATE(task, name, coro, parent) and the live TASK_INFO of a task that
 * loop.create_task just returned, remembers it in live_tasks, and records TASK_DONE at
 * once for an eager task that already finished. `coro` may be NULL (not found in the
 * arguments). 0, or -1 with a non-Exception exception set (Exceptions go to fault()). */
static int note_created(PyObject *loop, PyObject *coro, PyObject *task) {
    PyObject *tid = NULL, *name = NULL, *coro_name = NULL, *pid = NULL, *tasks = NULL;
    int rc = -1;
    if (!(tid = PyLong_FromVoidPtr(task))) goto out;
    name = PyObject_CallMethodNoArgs(task, str_get_name); /* a task factory may return anything */
    if (!name) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) goto out;
        PyErr_Clear();
        name = Py_NewRef(A.empty);
    } else if (!PyUnicode_CheckExact(name)) {
        Py_SETREF(name, PyObject_Str(name));
        if (!name) goto out;
    }
    coro_name = coro ? callback_name(coro) : Py_NewRef(A.empty);
    uint64_t parent_id;
    if (current_task_id(loop, &parent_id) < 0) goto out;
    if (parent_id == (uint64_t)(uintptr_t)task) parent_id = 0;
    if (!(pid = PyLong_FromUnsignedLongLong(parent_id))) goto out;
    {
        uint64_t vals[4] = {(uint64_t)(uintptr_t)task, 0, 0, parent_id};
        PyObject *objs[4] = {NULL, name, coro_name, NULL};
        pyfl_record_typed(TK.k_create_int, 4, "ussu", vals, objs);
    }
    /* remembered for later generations, not recorded now: TASK_CREATE just said the same */
    PyObject *live[6] = {tid, TK.k_info, tid, name, coro_name, pid}; /* key: the id (no tuple to track) */
    if (pyfl_set_live(live, 6, 0) < 0) goto out;
    if (!TK.live_tasks || !(tasks = Py_NewRef(TK.live_tasks)) || PyDict_SetItem(tasks, tid, pid) < 0) goto out;
    if (is_task(task)) { /* an eager task (3.12+ eager_task_factory) may be done already */
        PyObject *done = PyObject_CallMethodNoArgs(task, str_done);
        if (!done) goto out;
        int is_done = PyObject_IsTrue(done);
        Py_DECREF(done);
        if (is_done < 0 || (is_done && task_done(task) < 0)) goto out;
    }
    rc = 0;
out:
    Py_XDECREF(tid);
    Py_XDECREF(name);
    Py_XDECREF(coro_name);
    Py_XDECREF(pid);
    Py_XDECREF(tasks);
    return rc == 0 ? 0 : fault();
}

/* The C BaseEventLoop.create_task: m_self is the original (bound per install, so a
 * wrapper left behind by an uninstall still calls its own original). Calls it with the
 * same arguments (args[0] is the loop) and returns what it returns or raises what it
 * raises; then, while recording, note_created(). */
static PyObject *create_task(PyObject *original, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    PyObject *task = PyObject_Vectorcall(original, args, nargsf, kwnames);
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (!task || nargs < 1 || !A.active || !TK.live_tasks || !pyfl_enabled()) return task;
    PyObject *coro = nargs >= 2 ? args[1] : NULL;
    for (Py_ssize_t i = 0; !coro && kwnames && i < PyTuple_GET_SIZE(kwnames); i++)
        if (PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, i), str_coro_kw) == 0) coro = args[nargs + i];
    PyErr_Clear(); /* PyUnicode_Compare cannot fail on str; nothing else set here */
    if (note_created(args[0], coro, task) < 0) {
        Py_DECREF(task);
        return NULL;
    }
    return task;
}

static PyMethodDef create_task_def = {
    "create_task", (PyCFunction)(void (*)(void))create_task, METH_FASTCALL | METH_KEYWORDS,
    "Schedule a coroutine as a Task (BaseEventLoop.create_task, recorded by pyflight).",
};

/* ------------------------------------------------------------------ asyncio lock/queue waits in C
 *
 * asyncio's Lock/Semaphore/Event/Condition/Queue call self._get_loop() only on the path
 * that blocks (to make the waiter future); the C _get_loop below records TASK_BLOCK there.
 * See the Python source's docstring for what is recorded; this is the same, without a
 * Python frame. */

#define MAX_SYNC_SITES 8
#define SITE_TABLE 16384            /* power of two */
#define MAX_SITES 10000             /* waiting lines remembered before the table is cleared */
#define SITE_STACK_INTERVAL 1000000000u /* ns between two full stacks of one waiting line */

#define MAX_CHAIN 24                /* library frames walked past a waiting line */
#define CODE_KIND_CACHE 1024         /* power of two */

typedef struct {
    const void *code; /* identity only (the code may be gone: a stale entry costs a stack) */
    int lasti;
    uint64_t chain; /* the library callers up to the program's own frame (pyfl_caller_chain) */
    uint32_t site;
    uint64_t stack_ns; /* when its stack was last recorded */
} SiteEntry;

static struct {
    int n_sites, n_outer;
    PyObject *site_code[MAX_SYNC_SITES], *site_what[MAX_SYNC_SITES];
    uint64_t site_reason[MAX_SYNC_SITES];
    int site_refine[MAX_SYNC_SITES];
    PyObject *outer_code[MAX_SYNC_SITES], *outer_what[MAX_SYNC_SITES];
    PyObject *own[2]; /* globals of asyncio.locks and asyncio.queues */
    SiteEntry table[SITE_TABLE];
    int used;
    uint32_t next_site;
    /* code -> 1 library (stdlib, site-packages), 0 the program's own (is_library_code) */
    struct {
        const void *code;
        int library;
    } kinds[CODE_KIND_CACHE];
} SW;

/* 1 if `code` is the standard library's or an installed package's (its file under
 * lib/pythonX.Y/, site-packages or dist-packages, or "<frozen ...>"), else 0; the
 * analysis's user_frame() draws the same line (see pyfl_caller_chain for its use).
 * Cached per code object (a stale entry,
 * a code freed and another allocated there, costs a coarser site, nothing else). Never
 * fails. */
static int is_library_code(PyCodeObject *code) {
    size_t h = (((uintptr_t)code) >> 4) & (CODE_KIND_CACHE - 1);
    if (SW.kinds[h].code == code) return SW.kinds[h].library;
    Py_ssize_t n;
    const char *file = PyUnicode_Check(code->co_filename) ? PyUnicode_AsUTF8AndSize(code->co_filename, &n) : NULL;
    int library = 0;
    if (!file)
        PyErr_Clear(); /* not text we can read: the program's own */
    else
        library = file[0] == '<' || strstr(file, "/lib/python3.") || strstr(file, "/site-packages/")
                  || strstr(file, "/dist-packages/");
    SW.kinds[h].code = code;
    SW.kinds[h].library = library;
    return library;
}

/* The entry of waiting line (code, lasti) reached through `chain`, added (fresh
 * stack_ns 0) if new; the table is cleared when MAX_SITES lines are known. Never fails. */
static SiteEntry *site_entry(const void *code, int lasti, uint64_t chain) {
    if (SW.used >= MAX_SITES) {
        memset(SW.table, 0, sizeof SW.table);
        SW.used = 0;
    }
    size_t h = ((((uintptr_t)code) >> 4) * 31u + (size_t)lasti + (size_t)(chain ^ (chain >> 29))) & (SITE_TABLE - 1);
    while (SW.table[h].code
           && !(SW.table[h].code == code && SW.table[h].lasti == lasti && SW.table[h].chain == chain))
        h = (h + 1) & (SITE_TABLE - 1);
    SiteEntry *e = &SW.table[h];
    if (!e->code) {
        *e = (SiteEntry){code, lasti, chain, ++SW.next_site, 0};
        SW.used++;
    }
    return e;
}

/* Records TASK_BLOCK for the blocking path of the asyncio method running in `caller`, if
 * it is one of the known sites and a task of `loop` is running. Made without Python
 * objects (the task from the step's slot, ints and borrowed strings to the core): it runs
 * on every wait that blocks. 0, or -1 with a non-Exception exception set (Exceptions go
 * to fault()). */
static int note_sync_wait(PyObject *obj, PyObject *loop, PyFrameObject *caller) {
    PyCodeObject *code = PyFrame_GetCode(caller);
    int i = 0;
    while (i < SW.n_sites && (PyObject *)code != SW.site_code[i])
        i++;
    Py_DECREF(code); /* SW keeps the site codes alive: the comparison stays valid */
    if (i == SW.n_sites) return 0;
    /* held: current_task may run Python code (a patched one) that re-installs the tables */
    PyObject *what = Py_NewRef(SW.site_what[i]);
    uint64_t reason = SW.site_reason[i];
    int refine = SW.site_refine[i];
    uint64_t task_id;
    PyFrameObject *f = NULL;
    if (current_task_id(loop, &task_id) < 0) goto failed;
    if (!task_id) goto out;
    /* out of asyncio (__aenter__, wait_for, Barrier, Queue.join): the user's line innermost */
    f = PyFrame_GetBack(caller);
    while (f) {
        PyObject *g = PyFrame_GetGlobals(f);
        int own = g == SW.own[0] || g == SW.own[1];
        Py_XDECREF(g);
        if (!own) break;
        if (refine) { /* Event/Condition waits inside Queue.join, Barrier.wait */
            PyCodeObject *fc = PyFrame_GetCode(f);
            for (int j = 0; j < SW.n_outer; j++)
                if ((PyObject *)fc == SW.outer_code[j]) {
                    Py_SETREF(what, Py_NewRef(SW.outer_what[j]));
                    refine = 0;
                    break;
                }
            Py_DECREF(fc);
        }
        Py_SETREF(f, PyFrame_GetBack(f));
    }
    uint64_t site_id = 0;
    int with_stack = 0;
    if (f) {
        PyCodeObject *fc = PyFrame_GetCode(f);
        SiteEntry *e = site_entry(fc, PyFrame_GetLasti(f), pyfl_caller_chain(f, is_library_code, MAX_CHAIN));
        Py_DECREF(fc);
        uint64_t t = coarse_now_ns();
        site_id = e->site;
        if (!e->stack_ns || t - e->stack_ns >= SITE_STACK_INTERVAL) { /* the walk is most of the cost */
            e->stack_ns = t ? t : 1;
            with_stack = 1;
        }
    }
    {
        uint64_t vals[6] = {task_id, reason, (uint64_t)(uintptr_t)obj, 0, site_id, 0};
        PyObject *objs[6] = {NULL, NULL, NULL, what, NULL, with_stack ? (PyObject *)f : NULL};
        pyfl_record_typed(TK.k_block_int, 6, "uuusuk", vals, objs);
    }
out:
    Py_DECREF(what);
    Py_XDECREF(f);
    return 0;
failed:
    Py_DECREF(what);
    return fault();
}

/* The C asyncio.mixins._LoopBoundMixin._get_loop: m_self is the original. Returns what
 * the original returns (or raises what it raises, before anything is recorded); then,
 * while recording, note_sync_wait() for its caller. */
static PyObject *get_loop(PyObject *original, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    PyObject *loop = PyObject_Vectorcall(original, args, nargsf, kwnames);
    if (!loop || loop == Py_None || PyVectorcall_NARGS(nargsf) != 1 || kwnames || !A.active || !SW.n_sites
        || !TK.live_tasks || !pyfl_enabled())
        return loop;
    PyFrameObject *caller = PyEval_GetFrame(); /* borrowed: the Python frame that called us */
    if (caller && note_sync_wait(args[0], loop, caller) < 0) {
        Py_DECREF(loop);
        return NULL;
    }
    return loop;
}

static PyMethodDef get_loop_def = {
    "_get_loop", (PyCFunction)(void (*)(void))get_loop, METH_FASTCALL | METH_KEYWORDS,
    "The loop this object is bound to (asyncio's _LoopBoundMixin._get_loop, recorded by pyflight).",
};

/* After a task step that returned: TASK_WAIT (what it awaits), or on_task_done(task) if
 * the step finished it. 0, or -1 with a non-Exception exception to propagate. */
static int after_step(PyObject *task) {
    PyObject *waiter = get_field(task, layout_of(&task_layouts, Py_TYPE(task)), 0, str_fut_waiter), *what;
    if (!waiter) return swallow();
    if (waiter == Py_None) {
        Py_DECREF(waiter);
        PyObject *done = PyObject_CallMethodNoArgs(task, str_done);
        if (!done) return swallow();
        int is_done = PyObject_IsTrue(done);
        Py_DECREF(done);
        if (is_done < 0) return swallow();
        if (is_done) return task_done(task);
        what = A.empty; /* yielded to the loop without a future: ready again */
    } else {
        /* a plain Future (most waits: sleep, Queue, Event, streams) says nothing its stack
         * would not: recorded as "" without a string, ~2.5x cheaper */
        what = Py_TYPE(waiter) == A.plain_future ? A.empty : type_name(Py_TYPE(waiter));
        Py_DECREF(waiter);
    }
    /* Mode 1 ("what") records only waits that say more than the step's end does: a wait
     * on a plain Future or a bare yield ("") is what TASK_STEP_END already implies. */
    if (A.wait_mode <= 0 || (A.wait_mode == 1 && what == A.empty)) return 0;
    PyObject *frame = A.wait_mode >= 2 ? awaiting_frame(task) : NULL;
    uint64_t vals[4] = {(uint64_t)(uintptr_t)task, (uint64_t)A.reason, 0, 0};
    PyObject *objs[4] = {NULL, NULL, what, frame};
    pyfl_record_typed(A.k_wait_int, 4, "uusk", vals, objs);
    Py_XDECREF(frame);
    return 0;
}

/* CLOCK_MONOTONIC in ns at the resolution of a scheduler tick (a few ms), about 4x
 * cheaper than the exact clock: precise enough for a stall threshold of tens of ms. */
static inline uint64_t coarse_now_ns(void) {
#ifdef CLOCK_MONOTONIC_COARSE
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0)
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
    return pyfl_now_ns();
}

/* Claims a slot of A.slots for this thread's step (saving what was there: an outer step
 * of the same thread, or a free slot), started at start_ns (the begin event's time; 0:
 * none was recorded, read the coarse clock); its index, or -1 if the table is full. */
static int claim_slot(ThreadCache *t, uint64_t loop, uint64_t task, uint64_t start_ns, Slot *saved) {
    if (!t->ident) t->ident = PyThread_get_thread_ident();
    int i = t->slot;
    if (i < 0 || (A.slots[i].ident && A.slots[i].ident != t->ident)) {
        for (i = 0; i < N_SLOTS && A.slots[i].ident; i++) {
        }
        if (i == N_SLOTS) return -1;
        t->slot = i;
    }
    *saved = A.slots[i];
    A.slots[i] = (Slot){t->ident, loop, task, start_ns ? start_ns : coarse_now_ns()};
    return i;
}

/* The except-branch of Handle._run for the raised exception: re-raise SystemExit and
 * KeyboardInterrupt, hand anything else to exc_helper(handle, exc) with `exc` as the
 * handled exception (sys.exception(), implicit chaining), as inside `except ... as exc:`.
 * Returns what the helper returns, or NULL with the exception to propagate. */
static PyObject *except_branch(PyObject *self) {
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) return NULL;
    if (!A.exc_helper) return NULL;
    PyObject *exc = take_exception();
    if (!exc) return NULL;
    _PyErr_StackItem *info = PyThreadState_Get()->exc_info;
    PyObject *outer = info->exc_value;
    info->exc_value = Py_NewRef(exc);
    PyObject *helper = Py_NewRef(A.exc_helper);
    PyObject *r = PyObject_CallFunctionObjArgs(helper, self, exc, NULL);
    Py_DECREF(helper);
    Py_XSETREF(info->exc_value, outer);
    Py_DECREF(exc);
    return r;
}

/* ------------------------------------------------------------------ Handle._run */

/* Handle._run, recorded. With the one-event kinds installed, a step is a PyflStep: its
 * begin only noted, one TASK_STEP/CALLBACK event at its end (a BEGIN and an END if a
 * generation was sealed meanwhile). */
static PyObject *handle_run(PyObject *self, PyObject *unused) {
    PyObject *ctx = NULL, *cb = NULL, *args = NULL, *res = NULL, *task = NULL, *name = NULL;
    uint64_t loop_id = 0, task_id = 0;
    int begun = 0, slot = -1, one = 0, outer_sent = pyfl_tls_sent;
    Slot saved = {0, 0, 0, 0};
    PyflStep step;
    const Layout *L = layout_of(&handle_layouts, Py_TYPE(self));

    if (!(ctx = get_field(self, L, 0, str_context)) || !(cb = get_field(self, L, 1, str_callback))
        || !(args = get_field(self, L, 2, str_args)))
        goto ran;
    if (A.active && pyfl_enabled()) {
        ThreadCache *t = &T; /* one TLS lookup */
        PyObject *loop = get_field(self, L, 3, str_loop);
        if (!loop) {
            if (swallow() < 0) goto ran;
        } else {
            loop_id = (uint64_t)(uintptr_t)loop;
            if ((const void *)loop != t->loop || t->epoch != A.epoch) {
                t->loop = loop;
                t->epoch = A.epoch;
                PyObject *r = call_hook(A.on_loop, loop);
                Py_XDECREF(r);
                if (!r && swallow() < 0) {
                    Py_DECREF(loop);
                    goto ran;
                }
            }
            Py_DECREF(loop);
        }
        if (A.active) {
            begun = 1;
            task = step_task(cb);
            uint64_t began = 0; /* the begin event's time is the step's start (no second clock read) */
            if (task) task_id = (uint64_t)(uintptr_t)task;
            else name = callback_name(cb); /* held until the end: the noted begin borrows it */
            if (A.k_step >= 0) {
                one = 1;
                step = task ? (PyflStep){A.k_begin, A.k_end, A.k_step, {task_id}, NULL, 0}
                            : (PyflStep){A.k_cb_begin_int, A.k_cb_end, A.k_callback, {loop_id}, name, 0};
                if (!task && PyCFunction_Check(cb)) step.min_ns = BUILTIN_CALLBACK_MIN_NS;
                began = pyfl_step_begin(&step);
            } else if (task) {
                began = pyfl_record_ints(A.k_begin, 1, &task_id);
            } else {
                PyObject *objs[2] = {NULL, name};
                uint64_t vals[2] = {loop_id, 0};
                began = pyfl_record_typed(A.k_cb_begin_int, 2, "us", vals, objs);
            }
            slot = claim_slot(t, loop_id, task_id, began, &saved);
        }
    }
    pyfl_tls_sent = 0;
    if (PyContext_CheckExact(ctx) && PyTuple_CheckExact(args)) {
        /* what Context.run does */
        if (PyContext_Enter(ctx) == 0) {
            res = PyObject_Vectorcall(cb, ((PyTupleObject *)args)->ob_item, PyTuple_GET_SIZE(args), NULL);
            if (PyContext_Exit(ctx) < 0)
                Py_CLEAR(res);
        }
    } else {
        PyObject *slow = Py_XNewRef(A.slow_call);
        res = slow ? PyObject_CallFunctionObjArgs(slow, ctx, cb, args, NULL) : NULL;
        Py_XDECREF(slow);
    }
ran:
    if (!res)
        res = except_branch(self);
    if (begun) {
        PyObject *exc = res ? NULL : take_exception();
        if (slot >= 0)
            A.slots[slot] = saved;
        /* a task's step that sent on a socket: TASK_STEP_SENT for TASK_STEP, or TASK_SENT
         * after its END (the step was written as a pair) */
        int sent = task && pyfl_tls_sent && A.k_sent >= 0, wrote_one = 0;
        if (one) {
            if (sent) step.one_kind = A.k_step_sent;
            wrote_one = pyfl_step_end(&step);
        } else {
            pyfl_record_ints(task ? A.k_end : A.k_cb_end, 1, task ? &task_id : &loop_id);
        }
        if (sent && !wrote_one) pyfl_record_ints(A.k_sent, 1, &task_id);
        if (task && res && A.active && after_step(task) < 0)
            Py_CLEAR(res);
        give_exception(exc);
    }
    pyfl_tls_sent |= outer_sent; /* a step run inside another (a nested loop) sends for both */
    Py_XDECREF(name);
    Py_XDECREF(task);
    Py_XDECREF(ctx);
    Py_XDECREF(cb);
    Py_XDECREF(args);
    if (!res) return NULL;
    Py_DECREF(res);
    Py_RETURN_NONE;
}

static PyMethodDef handle_run_def = {
    "_run", handle_run, METH_NOARGS,
    "Run the handle's callback in its context (asyncio.events.Handle._run, recorded by pyflight).",
};

/* asyncio_stall_wait(threshold_ns, max_wait_s, poll_s) -> bool: sleeps without the GIL
 * until a running step has run for threshold_ns or more (True), or max_wait_s passed or
 * the hooks were removed or re-installed (False). The stall watchdog waits here, so that
 * it takes the GIL from the program only when there may be a stall to record. Each nap
 * lasts until the oldest running step would reach the threshold (a whole threshold when
 * none runs: a step that begins later cannot reach it sooner), at least STALL_MIN_NAP_NS
 * and at most poll_s: on a busy loop of short steps that is one wake-up per threshold,
 * not one per poll (each costs ~50 us of CPU on a VM), and a stall is seen when it
 * reaches the threshold, not up to a poll later. The slots are read without the GIL (a
 * step may begin or end meanwhile): True is a hint the caller checks with
 * running_steps() under the GIL, and a missed step is seen at the next wake-up. */
#define STALL_MIN_NAP_NS 1000000ULL
static PyObject *asyncio_stall_wait(PyObject *mod, PyObject *args) {
    unsigned long long threshold;
    double max_wait, poll;
    if (!PyArg_ParseTuple(args, "Kdd:asyncio_stall_wait", &threshold, &max_wait, &poll)) return NULL;
    if (!(poll > 0) || !(max_wait >= 0)) return PyErr_Format(PyExc_ValueError, "asyncio_stall_wait(): bad times");
    const volatile Slot *slots = A.slots;
    const volatile uint64_t *epoch_now = &A.epoch;
    const volatile int *active = &A.active;
    uint64_t epoch = A.epoch;
    int found = 0;
    uint64_t longest = (uint64_t)(poll * 1e9);
    if (longest < STALL_MIN_NAP_NS) longest = STALL_MIN_NAP_NS;
    Py_BEGIN_ALLOW_THREADS
    uint64_t end = pyfl_now_ns() + (uint64_t)(max_wait * 1e9);
    for (;;) {
        uint64_t now = pyfl_now_ns();
        uint64_t nap = threshold;  /* until the oldest running step reaches the threshold */
        for (int i = 0; i < N_SLOTS && !found; i++) {
            uint64_t start = slots[i].start_ns;
            if (!slots[i].ident || !start || start >= now) continue;
            found = now - start >= threshold;
            if (!found && threshold - (now - start) < nap) nap = threshold - (now - start);
        }
        if (found || *epoch_now != epoch || !*active || now >= end) break;
        if (nap > longest) nap = longest;
        if (nap < STALL_MIN_NAP_NS) nap = STALL_MIN_NAP_NS;
        if (nap > end - now) nap = end - now;
        struct timespec ts = {(time_t)(nap / 1000000000ULL), (long)(nap % 1000000000ULL)};
        nanosleep(&ts, NULL);
    }
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(found);
}

/* ------------------------------------------------------------------ the loop's select */

static int k_idle_begin = -1, k_idle_end = -1;
static PyMethodDef idle_select_def;

/* The event loop selector's select(timeout=None), set on the selector instance:
 * LOOP_IDLE_BEGIN(loop) / LOOP_IDLE_END(loop, number ready) around a call that may block
 * while the asyncio hooks record; a poll, or a call it cannot read, is passed through.
 * Returns what the real select returns and raises what it raises (an exception is kept
 * aside while the end is recorded). m_self: (select, loop id, previous attribute). */
static PyObject *idle_select(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    PyObject *select = PyTuple_GET_ITEM(self, 0);
    if (!A.active || !pyfl_enabled() || k_idle_begin < 0
        || !pyfl_timeout_may_block(args, PyVectorcall_NARGS(nargsf), kwnames))
        return PyObject_Vectorcall(select, args, nargsf, kwnames);
    uint64_t vals[2] = {PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(self, 1)), 0};
    pyfl_record_ints(k_idle_begin, 1, vals);
    PyObject *ready = PyObject_Vectorcall(select, args, nargsf, kwnames);
    PyObject *exc = ready ? NULL : take_exception();
    if (ready) {
        Py_ssize_t n = PyList_CheckExact(ready) ? PyList_GET_SIZE(ready) : PyObject_Length(ready);
        if (n < 0) PyErr_Clear();
        vals[1] = n > 0 ? (uint64_t)n : 0;
    }
    pyfl_record_ints(k_idle_end, 2, vals);
    give_exception(exc);
    return ready;
}

static PyMethodDef idle_select_def = {
    "select", (PyCFunction)(void (*)(void))idle_select, METH_FASTCALL | METH_KEYWORDS,
    "The selector's select(timeout=None), recording the event loop's idle waits (pyflight).",
};

/* asyncio_idle_select(select, loop_id, previous, begin_kind, end_kind) -> the recording
 * select for one loop's selector; `previous` is kept for asyncio_idle_previous(). */
static PyObject *asyncio_idle_select(PyObject *mod, PyObject *args) {
    PyObject *select, *loop_id, *previous;
    int begin, end;
    if (!PyArg_ParseTuple(args, "OO!Oii:asyncio_idle_select", &select, &PyLong_Type, &loop_id, &previous, &begin, &end))
        return NULL;
    if (!PyCallable_Check(select)) return PyErr_Format(PyExc_TypeError, "asyncio_idle_select(): select must be callable");
    if (begin < 0 || begin > 255 || end < 0 || end > 255) return PyErr_Format(PyExc_ValueError, "asyncio_idle_select(): bad kind");
    k_idle_begin = begin;
    k_idle_end = end;
    PyObject *self = PyTuple_Pack(3, select, loop_id, previous);
    if (!self) return NULL;
    PyObject *f = PyCFunction_NewEx(&idle_select_def, self, NULL);
    Py_DECREF(self);
    return f;
}

/* asyncio_idle_previous(obj) -> (True, previous) for a select made by
 * asyncio_idle_select, else (False, None). */
static PyObject *asyncio_idle_previous(PyObject *mod, PyObject *obj) {
    if (PyCFunction_Check(obj) && ((PyCFunctionObject *)obj)->m_ml == &idle_select_def) {
        PyObject *self = PyCFunction_GET_SELF(obj);
        return Py_BuildValue("(OO)", Py_True, PyTuple_GET_ITEM(self, 2));
    }
    return Py_BuildValue("(OO)", Py_False, Py_None);
}

/* ------------------------------------------------------------------ module functions */

/* asyncio_install(handle_cls, exc_helper, slow_call, on_loop, on_task_done, task_types,
 *                 step_funcs, future_cls, kinds, wait_mode) -> method descriptor for handle_cls._run
 * future_cls: the plain Future class, awaited futures of exactly that class are "".
 * kinds: (TASK_STEP_BEGIN, TASK_STEP_END, TASK_WAIT, CALLBACK_BEGIN, CALLBACK_END, AWAIT[,
 * TASK_STEP, CALLBACK[, TASK_STEP_SENT, TASK_SENT]]): with TASK_STEP and CALLBACK, a short
 * step is one event (see handle_run); with the last two, a task's step that sent on a
 * socket says so (needs the one-event kinds).
 * step_funcs: (pure-Python Task.__step, Task.__wakeup), None for unknown. */
static PyObject *asyncio_install(PyObject *mod, PyObject *args) {
    PyObject *handle_cls, *exc_helper, *slow_call, *on_loop, *on_task_done, *task_types, *step_funcs, *future_cls,
        *kinds;
    int wait_mode;
    if (!PyArg_ParseTuple(args, "O!OOOOO!O!OO!i:asyncio_install", &PyType_Type, &handle_cls, &exc_helper, &slow_call,
                          &on_loop, &on_task_done, &PyTuple_Type, &task_types, &PyTuple_Type, &step_funcs,
                          &future_cls, &PyTuple_Type, &kinds, &wait_mode))
        return NULL;
    if (future_cls != Py_None && !PyType_Check(future_cls))
        return PyErr_Format(PyExc_TypeError, "asyncio_install() future_cls must be a class or None");
    if (!PyCallable_Check(exc_helper) || !PyCallable_Check(slow_call) || !PyCallable_Check(on_loop)
        || !PyCallable_Check(on_task_done))
        return PyErr_Format(PyExc_TypeError, "asyncio_install() hooks must be callable");
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(task_types); i++)
        if (!PyType_Check(PyTuple_GET_ITEM(task_types, i)))
            return PyErr_Format(PyExc_TypeError, "asyncio_install() task_types must be classes");
    if (PyTuple_GET_SIZE(step_funcs) != 2)
        return PyErr_Format(PyExc_TypeError, "asyncio_install() step_funcs must be (step, wakeup)");
    long k[10] = {0, 0, 0, 0, 0, 0, -1, -1, -1, -1};
    Py_ssize_t n_kinds = PyTuple_GET_SIZE(kinds);
    if (n_kinds != 6 && n_kinds != 8 && n_kinds != 10)
        return PyErr_Format(PyExc_TypeError, "asyncio_install() kinds must have 6, 8 or 10 ints");
    for (int i = 0; i < n_kinds; i++) {
        k[i] = PyLong_AsLong(PyTuple_GET_ITEM(kinds, i));
        if (k[i] == -1 && PyErr_Occurred()) return NULL;
        if (k[i] < 0 || k[i] > 127) return PyErr_Format(PyExc_ValueError, "asyncio_install(): bad kind %ld", k[i]);
    }
    PyObject *descr = PyDescr_NewMethod((PyTypeObject *)handle_cls, &handle_run_def);
    if (!descr) return NULL;
    if (!A.type_names && !(A.type_names = PyDict_New())) {
        Py_DECREF(descr);
        return NULL;
    }
    A.k_begin = (int)k[0];
    A.k_end = (int)k[1];
    A.k_cb_begin_int = (int)k[3];
    A.k_cb_end = (int)k[4];
    A.k_wait_int = (int)k[2];
    A.reason = (int)k[5];
    A.k_step = (int)k[6];
    A.k_callback = (int)k[7];
    A.k_step_sent = (int)k[8];
    A.k_sent = (int)k[9];
    Py_XSETREF(A.exc_helper, Py_NewRef(exc_helper));
    Py_XSETREF(A.slow_call, Py_NewRef(slow_call));
    Py_XSETREF(A.on_loop, Py_NewRef(on_loop));
    Py_XSETREF(A.on_task_done, Py_NewRef(on_task_done));
    Py_XSETREF(A.task_types, Py_NewRef(task_types));
    PyObject *step = PyTuple_GET_ITEM(step_funcs, 0), *wakeup = PyTuple_GET_ITEM(step_funcs, 1);
    Py_XSETREF(A.py_step, step == Py_None ? NULL : Py_NewRef(step));
    Py_XSETREF(A.py_wakeup, wakeup == Py_None ? NULL : Py_NewRef(wakeup));
    Py_XSETREF(A.plain_future, future_cls == Py_None ? NULL : (PyTypeObject *)Py_NewRef(future_cls));
    A.wait_mode = wait_mode;
    A.epoch++;
    A.active = 1;
    return descr;
}

/* asyncio_uninstall(): stop recording steps and drop the hooks. A descriptor still
 * referenced somewhere keeps working, without recording. */
static PyObject *asyncio_uninstall(PyObject *mod, PyObject *unused) {
    A.active = 0;
    A.epoch++;
    Py_CLEAR(A.on_loop);
    Py_CLEAR(A.on_task_done);
    Py_RETURN_NONE;
}

/* running_steps() -> [(thread_ident, loop_id, task_id, start_ns)]: the steps and
 * callbacks running now (task_id 0 for a plain callback), innermost per thread. */
static PyObject *running_steps(PyObject *mod, PyObject *unused) {
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    for (int i = 0; i < N_SLOTS; i++) {
        Slot s = A.slots[i];
        if (!s.ident) continue;
        PyObject *item = Py_BuildValue("(kKKK)", s.ident, (unsigned long long)s.loop, (unsigned long long)s.task,
                                       (unsigned long long)s.start_ns);
        if (!item || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
    }
    return list;
}

/* Reads n small ints (event kinds, outcomes) from a tuple into new int objects; 0, or -1
 * with TypeError/ValueError (out[] then holds nothing). */
static int int_tuple(PyObject *t, int n, PyObject **out, const char *what) {
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != n) {
        PyErr_Format(PyExc_TypeError, "%s must be a tuple of %d ints", what, n);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        long v = PyLong_AsLong(PyTuple_GET_ITEM(t, i));
        if ((v == -1 && PyErr_Occurred()) || v < 0 || v > 255 || !(out[i] = PyLong_FromLong(v))) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "%s: bad value %ld", what, v);
            while (--i >= 0)
                Py_CLEAR(out[i]);
            return -1;
        }
    }
    return 0;
}

/* asyncio_tasks_setup(current_task, live_tasks, on_fault, describe, kinds, outcomes):
 * what the C create_task, task-done and _get_loop hooks need (call before
 * asyncio_install, which turns recording on). kinds: (TASK_CREATE, TASK_INFO, TASK_DONE,
 * TASK_BLOCK); outcomes: (OK, CANCELLED, FAILED). live_tasks: the source's dict, task id
 * -> parent id, kept up to date from C. */
static PyObject *asyncio_tasks_setup(PyObject *mod, PyObject *args) {
    PyObject *current_task, *live_tasks, *on_fault, *describe, *kinds, *outcomes;
    PyObject *k[4] = {NULL}, *o[3] = {NULL};
    if (!PyArg_ParseTuple(args, "OO!OOOO:asyncio_tasks_setup", &current_task, &PyDict_Type, &live_tasks, &on_fault,
                          &describe, &kinds, &outcomes))
        return NULL;
    if (!PyCallable_Check(current_task) || !PyCallable_Check(on_fault) || !PyCallable_Check(describe))
        return PyErr_Format(PyExc_TypeError, "asyncio_tasks_setup() hooks must be callable");
    if (int_tuple(kinds, 4, k, "asyncio_tasks_setup() kinds") < 0) return NULL;
    if (int_tuple(outcomes, 3, o, "asyncio_tasks_setup() outcomes") < 0) goto fail;
    Py_XSETREF(TK.current_task, Py_NewRef(current_task));
    Py_XSETREF(TK.on_fault, Py_NewRef(on_fault));
    Py_XSETREF(TK.describe, Py_NewRef(describe));
    Py_DECREF(k[0]);
    Py_XSETREF(TK.k_info, k[1]);
    Py_DECREF(k[2]);
    TK.k_create_int = (int)PyLong_AsLong(k[0]); /* int_tuple checked them */
    TK.k_info_int = (int)PyLong_AsLong(TK.k_info);
    TK.k_done_int = (int)PyLong_AsLong(k[2]);
    TK.k_block_int = (int)PyLong_AsLong(k[3]);
    Py_DECREF(k[3]);
    Py_XSETREF(TK.ok, o[0]);
    Py_XSETREF(TK.cancelled, o[1]);
    Py_XSETREF(TK.failed, o[2]);
    Py_XSETREF(TK.live_tasks, Py_NewRef(live_tasks)); /* last: non-NULL means set up */
    Py_RETURN_NONE;
fail:
    for (int i = 0; i < 4; i++)
        Py_XDECREF(k[i]);
    for (int i = 0; i < 3; i++)
        Py_XDECREF(o[i]);
    return NULL;
}

/* A method for a class attribute from a C function bound to `original` (instancemethod:
 * binds the instance like a Python function does). New reference, or NULL. */
static PyObject *wrap_method(PyMethodDef *def, PyObject *original) {
    if (!PyCallable_Check(original)) return PyErr_Format(PyExc_TypeError, "%s: the original must be callable", def->ml_name);
    PyObject *f = PyCFunction_NewEx(def, original, NULL);
    if (!f) return NULL;
    PyObject *m = PyInstanceMethod_New(f);
    Py_DECREF(f);
    return m;
}

/* asyncio_create_task(original) -> a BaseEventLoop.create_task that records from C. */
static PyObject *asyncio_create_task(PyObject *mod, PyObject *original) {
    return wrap_method(&create_task_def, original);
}

/* asyncio_get_loop(original, sites, outer, own) -> a _LoopBoundMixin._get_loop that
 * records TASK_BLOCK from C. sites: ((code, reason, what, refine), ...) of the blocking
 * methods; outer: ((code, what), ...) of the callers that name a wait better; own: the
 * globals dicts of the modules whose frames are asyncio's. Replaces the previous tables. */
static PyObject *asyncio_get_loop(PyObject *mod, PyObject *args) {
    PyObject *original, *sites, *outer, *own;
    if (!PyArg_ParseTuple(args, "OO!O!O!:asyncio_get_loop", &original, &PyTuple_Type, &sites, &PyTuple_Type, &outer,
                          &PyTuple_Type, &own))
        return NULL;
    if (PyTuple_GET_SIZE(sites) > MAX_SYNC_SITES || PyTuple_GET_SIZE(outer) > MAX_SYNC_SITES
        || PyTuple_GET_SIZE(own) > 2)
        return PyErr_Format(PyExc_ValueError, "asyncio_get_loop(): too many sites");
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(sites); i++) {
        PyObject *e = PyTuple_GET_ITEM(sites, i);
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 4 || !PyCode_Check(PyTuple_GET_ITEM(e, 0))
            || !PyLong_CheckExact(PyTuple_GET_ITEM(e, 1)) || !PyUnicode_CheckExact(PyTuple_GET_ITEM(e, 2)))
            return PyErr_Format(PyExc_TypeError, "asyncio_get_loop(): sites are (code, reason, what, refine)");
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(outer); i++) {
        PyObject *e = PyTuple_GET_ITEM(outer, i);
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 2 || !PyCode_Check(PyTuple_GET_ITEM(e, 0))
            || !PyUnicode_CheckExact(PyTuple_GET_ITEM(e, 1)))
            return PyErr_Format(PyExc_TypeError, "asyncio_get_loop(): outer entries are (code, what)");
    }
    PyObject *method = wrap_method(&get_loop_def, original);
    if (!method) return NULL;
    int n_sites = SW.n_sites;
    SW.n_sites = 0; /* off while the tables change */
    for (int i = 0; i < n_sites; i++) {
        Py_CLEAR(SW.site_code[i]);
        Py_CLEAR(SW.site_what[i]);
    }
    for (int i = 0; i < SW.n_outer; i++) {
        Py_CLEAR(SW.outer_code[i]);
        Py_CLEAR(SW.outer_what[i]);
    }
    SW.n_outer = 0;
    for (int i = 0; i < 2; i++)
        Py_CLEAR(SW.own[i]);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(own); i++)
        SW.own[i] = Py_NewRef(PyTuple_GET_ITEM(own, i));
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(outer); i++) {
        PyObject *e = PyTuple_GET_ITEM(outer, i);
        SW.outer_code[i] = Py_NewRef(PyTuple_GET_ITEM(e, 0));
        SW.outer_what[i] = Py_NewRef(PyTuple_GET_ITEM(e, 1));
    }
    SW.n_outer = (int)PyTuple_GET_SIZE(outer);
    memset(SW.table, 0, sizeof SW.table);
    SW.used = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(sites); i++) {
        PyObject *e = PyTuple_GET_ITEM(sites, i);
        SW.site_code[i] = Py_NewRef(PyTuple_GET_ITEM(e, 0));
        SW.site_reason[i] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(e, 1));
        SW.site_what[i] = Py_NewRef(PyTuple_GET_ITEM(e, 2));
        SW.site_refine[i] = PyObject_IsTrue(PyTuple_GET_ITEM(e, 3)) == 1;
    }
    PyErr_Clear(); /* a refine flag whose truth failed reads as false; a bad reason as 0 */
    SW.n_sites = (int)PyTuple_GET_SIZE(sites);
    return method;
}

static PyMethodDef asyncio_methods[] = {
    {"asyncio_install", asyncio_install, METH_VARARGS, "Set the asyncio hooks; return the C Handle._run."},
    {"asyncio_uninstall", asyncio_uninstall, METH_NOARGS, "Stop recording asyncio steps."},
    {"asyncio_tasks_setup", asyncio_tasks_setup, METH_VARARGS, "Set what the C task and sync-wait hooks need."},
    {"asyncio_create_task", asyncio_create_task, METH_O, "A BaseEventLoop.create_task recording from C."},
    {"asyncio_get_loop", asyncio_get_loop, METH_VARARGS, "A _LoopBoundMixin._get_loop recording TASK_BLOCK from C."},
    {"asyncio_stall_wait", asyncio_stall_wait, METH_VARARGS, "Sleep without the GIL until a step may be stalled."},
    {"asyncio_idle_select", asyncio_idle_select, METH_VARARGS, "A loop selector's select recording idle waits."},
    {"asyncio_idle_previous", asyncio_idle_previous, METH_O, "(is an asyncio_idle_select, its previous attribute)."},
    {"running_steps", running_steps, METH_NOARGS,
     "[(thread_ident, loop_id, task_id, start_ns)] of the asyncio steps running now."},
    {NULL, NULL, 0, NULL},
};

int pyfl_asyncio_init(PyObject *mod) {
#define INTERN(var, text) \
    if (!(var) && !((var) = PyUnicode_InternFromString(text))) return -1
    INTERN(str_context, "_context");
    INTERN(str_callback, "_callback");
    INTERN(str_args, "_args");
    INTERN(str_loop, "_loop");
    INTERN(str_self, "__self__");
    INTERN(str_fut_waiter, "_fut_waiter");
    INTERN(str_done, "done");
    INTERN(str_coro, "_coro");
    INTERN(str_cr_await, "cr_await");
    INTERN(str_cr_frame, "cr_frame");
    INTERN(str_gi_yieldfrom, "gi_yieldfrom");
    INTERN(str_gi_frame, "gi_frame");
    INTERN(str_qualname, "__qualname__");
    INTERN(str_func, "func");
    INTERN(A.empty, "");
    INTERN(str_get_name, "get_name");
    INTERN(str_get_coro, "get_coro");
    INTERN(str_cancelled, "cancelled");
    INTERN(str_exception, "_exception");
    INTERN(str_coro_kw, "coro");
    handle_fields[0] = str_context;
    handle_fields[1] = str_callback;
    handle_fields[2] = str_args;
    handle_fields[3] = str_loop;
    task_fields[0] = str_fut_waiter;
#undef INTERN
    return PyModule_AddFunctions(mod, asyncio_methods);
}
