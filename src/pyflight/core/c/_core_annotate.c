/* pyflight._core: the C side of pyflight.annotate (task, region and their decorator).
 *
 * - AnnotationTask / AnnotationRegion are pyflight.task / pyflight.region: an object
 *   holding a name, whose __enter__ / __exit__ make one pyfl_enabled() check and return
 *   when no recorder runs. When one runs they do what annotate.py's pure-Python classes
 *   do, with the same events, ids, contextvar (annotate.current_task_id) and live entry.
 * - Annotated is what decorating a sync function returns: a callable that forwards its
 *   call (vectorcall) and, only when recording, wraps it in a begin/end of a fresh task
 *   or region. annotate._decorate builds it and copies the function's metadata into its
 *   __dict__ (functools.update_wrapper); async functions keep a Python wrapper.
 *
 * Until annotate.py calls _annotate_setup (at its import), everything behaves as if no
 * recorder ran. Recording never raises into the caller: every failure is swallowed, as
 * the `except Exception: pass` of the Python version does. Everything runs with the GIL.
 */
#include "_core.h"
#include <stddef.h>
#if PY_VERSION_HEX < 0x030C0000
#include <structmember.h> /* PyMemberDef (in Python.h since 3.12) */
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif

static struct {
    PyObject *var;                                  /* annotate.current_task_id */
    PyObject *k_task_begin, *k_task_end, *k_task_info, *k_region_begin, *k_region_end;
    PyObject *set_live, *clear_live;                /* the core's module functions */
    PyObject *decorate;                             /* annotate._decorate(annotation, func) */
    PyObject *s_utask;                              /* "utask", the live key's tag */
    uint64_t last_id;                               /* ids of tasks: 1, 2, ... */
} N;

/* Set up and recording: the one check of the fast path. */
static inline int active(void) { return N.var != NULL && pyfl_enabled(); }

/* ------------------------------------------------------------------ begin / end */

/* If recording: gives the task a new id (*id), records USER_TASK_BEGIN(id, parent, name),
 * makes USER_TASK_INFO live under ("utask", id) and sets current_task_id to id, leaving
 * the token in *token. On any failure *token stays NULL (nothing to end) and no
 * exception is left set. Does nothing when not recording. */
static void task_begin(PyObject *name, uint64_t *id, PyObject **token) {
    if (!active()) return;
    Py_CLEAR(*token);
    *id = ++N.last_id;
    PyObject *idobj = PyLong_FromUnsignedLongLong(*id), *parent = NULL, *key = NULL, *r = NULL;
    if (idobj && name && PyContextVar_Get(N.var, NULL, &parent) == 0) {
        PyObject *begin[4] = {N.k_task_begin, idobj, parent, name};
        if (pyfl_record_args(begin, 4) == 0 && (key = PyTuple_Pack(2, N.s_utask, idobj))) {
            PyObject *live[5] = {key, N.k_task_info, idobj, parent, name};
            if ((r = PyObject_Vectorcall(N.set_live, live, 5, NULL))) *token = PyContextVar_Set(N.var, idobj);
        }
    }
    if (PyErr_Occurred()) PyErr_Clear();
    Py_XDECREF(r);
    Py_XDECREF(key);
    Py_XDECREF(parent);
    Py_XDECREF(idobj);
}

/* Ends what task_begin began (nothing if *token is NULL, and *token is NULL after):
 * resets current_task_id with the token (a failure, e.g. a token from another context,
 * is ignored), forgets the live entry, then records USER_TASK_END(id). Leaves no
 * exception set. */
static void task_end(uint64_t id, PyObject **token) {
    PyObject *tok = *token, *idobj = NULL, *key = NULL, *r = NULL;
    if (!tok) return;
    *token = NULL;
    if (PyContextVar_Reset(N.var, tok) < 0) PyErr_Clear();
    if ((idobj = PyLong_FromUnsignedLongLong(id)) && (key = PyTuple_Pack(2, N.s_utask, idobj))
        && (r = PyObject_CallOneArg(N.clear_live, key))) {
        PyObject *end[2] = {N.k_task_end, idobj};
        pyfl_record_args(end, 2);
    }
    if (PyErr_Occurred()) PyErr_Clear();
    Py_XDECREF(r);
    Py_XDECREF(key);
    Py_XDECREF(idobj);
    Py_DECREF(tok);
}

/* If recording: records REGION_BEGIN(current task, name) and keeps the task id in
 * *task (NULL if that failed). Leaves no exception set. Nothing when not recording. */
static void region_begin(PyObject *name, PyObject **task) {
    if (!active()) return;
    Py_CLEAR(*task);
    PyObject *t = NULL;
    if (name && PyContextVar_Get(N.var, NULL, &t) == 0) {
        PyObject *begin[3] = {N.k_region_begin, t, name};
        if (pyfl_record_args(begin, 3) == 0) *task = Py_NewRef(t);
    }
    if (PyErr_Occurred()) PyErr_Clear();
    Py_XDECREF(t);
}

/* Records REGION_END(*task, name) if region_begin recorded (even if the recorder stopped
 * since: then the core drops it); *task is NULL after. Leaves no exception set. */
static void region_end(PyObject *name, PyObject **task) {
    PyObject *t = *task;
    if (!t) return;
    *task = NULL;
    if (name) {
        PyObject *end[3] = {N.k_region_end, t, name};
        if (pyfl_record_args(end, 3) < 0) PyErr_Clear();
    }
    Py_DECREF(t);
}

/* ------------------------------------------------------------------ task and region objects */

/* One layout for both: state is the contextvar token (task) or the task id the region
 * began in (region); NULL when there is nothing to end. */
typedef struct {
    PyObject_HEAD
    PyObject *name;
    PyObject *state;
    uint64_t id; /* task only: its id, 0 if never entered while recording */
} Annot;

static PyTypeObject TaskType, RegionType;

/* tp_new: an empty object (name set by tp_init). */
static PyObject *annot_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    return type->tp_alloc(type, 0);
}

/* tp_init: __init__(self, name): stores name (any object, like the Python version). */
static int annot_init(PyObject *op, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"name", NULL};
    PyObject *name;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kwlist, &name)) return -1;
    Py_XSETREF(((Annot *)op)->name, Py_NewRef(name));
    return 0;
}

/* Calling the type itself: task(name) / region(name) with one positional argument
 * allocates directly; anything else (keywords, subclasses) goes through type.__call__,
 * i.e. tp_new then tp_init. */
static PyObject *annot_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    PyTypeObject *tp = (PyTypeObject *)type;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs == 1 && kwnames == NULL && (tp == &TaskType || tp == &RegionType)) {
        Annot *self = PyObject_New(Annot, tp);
        if (!self) return NULL;
        self->name = Py_NewRef(args[0]);
        self->state = NULL;
        self->id = 0;
        return (PyObject *)self;
    }
    PyObject *tuple = PyTuple_New(nargs), *kwargs = NULL, *result = NULL;
    if (!tuple) return NULL;
    for (Py_ssize_t i = 0; i < nargs; i++) PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nkw && !(kwargs = PyDict_New())) goto done;
    for (Py_ssize_t i = 0; i < nkw; i++)
        if (PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) goto done;
    result = PyType_Type.tp_call(type, tuple, kwargs);
done:
    Py_DECREF(tuple);
    Py_XDECREF(kwargs);
    return result;
}

/* Drops the references; an object never exited just forgets its token. */
static void annot_dealloc(PyObject *op) {
    Annot *self = (Annot *)op;
    Py_XDECREF(self->name);
    Py_XDECREF(self->state);
    Py_TYPE(op)->tp_free(op);
}

/* As a decorator: annotate._decorate(self, func) builds the wrapper. */
static PyObject *annot_call(PyObject *self, PyObject *args, PyObject *kwds) {
    if (!N.decorate) return PyErr_Format(PyExc_TypeError, "pyflight.annotate is not set up");
    if ((kwds && PyDict_GET_SIZE(kwds)) || PyTuple_GET_SIZE(args) != 1)
        return PyErr_Format(PyExc_TypeError, "%s() as a decorator takes one function", Py_TYPE(self)->tp_name);
    return PyObject_CallFunctionObjArgs(N.decorate, self, PyTuple_GET_ITEM(args, 0), NULL);
}

/* ------------------------------------------------------------------ __enter__ / __exit__
 *
 * A `with` statement looks both methods up on the type and binds them to the object.
 * Ordinary C methods make a new (GC-tracked) bound method object at each lookup, which
 * is most of what `with` costs; these Method descriptors bind to a small Bound object
 * recycled through a free list instead. Both are callable as usual: task.__enter__(t),
 * t.__enter__() (contextlib.ExitStack calls the unbound one). */

enum { OP_TASK_ENTER, OP_TASK_EXIT, OP_REGION_ENTER, OP_REGION_EXIT, N_OPS };
static const char *const op_names[N_OPS] = {"__enter__", "__exit__", "__enter__", "__exit__"};

/* Runs an __enter__ (no arguments: begins if recording, returns self) or an __exit__
 * (exc_type, exc, tb, ignored: ends what __enter__ began, returns None) on `self`, an
 * instance of the op's type. Only raises TypeError for a wrong argument count. */
static PyObject *run_op(int op, PyObject *self, Py_ssize_t nargs) {
    Annot *a = (Annot *)self;
    int is_exit = op == OP_TASK_EXIT || op == OP_REGION_EXIT;
    if (nargs != (is_exit ? 3 : 0))
        return PyErr_Format(PyExc_TypeError, "%s() takes %d arguments (%zd given)", op_names[op], is_exit ? 3 : 0,
                            nargs);
    switch (op) {
    case OP_TASK_ENTER: task_begin(a->name, &a->id, &a->state); break;
    case OP_TASK_EXIT: task_end(a->id, &a->state); break;
    case OP_REGION_ENTER: region_begin(a->name, &a->state); break;
    default: region_end(a->name, &a->state); break;
    }
    return is_exit ? Py_NewRef(Py_None) : Py_NewRef(self);
}

/* 0 if `obj` is an instance of the type the op belongs to, else -1 with TypeError. */
static int op_check(int op, PyObject *obj) {
    PyTypeObject *tp = op <= OP_TASK_EXIT ? &TaskType : &RegionType;
    if (obj && PyObject_TypeCheck(obj, tp)) return 0;
    PyErr_Format(PyExc_TypeError, "%s.%s() needs a '%s' object", tp->tp_name, op_names[op], tp->tp_name);
    return -1;
}

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    int op;
} Method; /* in the type's dict */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *self;
    int op;
} Bound; /* Method bound to an object */

static PyTypeObject MethodType, BoundType;

#define BOUND_POOL 16
static Bound *bound_pool[BOUND_POOL]; /* freed Bound objects, memory reused by bound_new */
static int bound_pooled;

/* Bound.__call__(*args): runs the op on the bound object (keyword arguments count as
 * arguments: __exit__(exc_type=None, exc=None, tb=None) works, as in Python). */
static PyObject *bound_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Bound *b = (Bound *)op;
    return run_op(b->op, b->self, PyVectorcall_NARGS(nargsf) + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0));
}

/* A new Bound of `op` to `self` (checked by the caller), from the free list if it can. */
static PyObject *bound_new(int op, PyObject *self) {
    Bound *b = bound_pooled ? bound_pool[--bound_pooled] : PyObject_Malloc(sizeof(Bound));
    if (!b) return PyErr_NoMemory();
    PyObject_Init((PyObject *)b, &BoundType);
    b->vectorcall = bound_vectorcall;
    b->self = Py_NewRef(self);
    b->op = op;
    return (PyObject *)b;
}

/* Returns the memory to the free list (or frees it), then drops the object. */
static void bound_dealloc(PyObject *op) {
    Bound *b = (Bound *)op;
    PyObject *self = b->self;
    if (bound_pooled < BOUND_POOL)
        bound_pool[bound_pooled++] = b;
    else
        PyObject_Free(b);
    Py_DECREF(self);
}

/* repr: <method __enter__ of <task ...>>. */
static PyObject *bound_repr(PyObject *op) {
    Bound *b = (Bound *)op;
    return PyUnicode_FromFormat("<method %s of %R>", op_names[b->op], b->self);
}

/* Method.__get__: itself on the class, a Bound on an instance. */
static PyObject *method_get(PyObject *descr, PyObject *obj, PyObject *type) {
    int op = ((Method *)descr)->op;
    if (obj == NULL) return Py_NewRef(descr);
    return op_check(op, obj) < 0 ? NULL : bound_new(op, obj);
}

/* Method.__call__(self, *args): the unbound call, task.__enter__(t) (keywords as above). */
static PyObject *method_vectorcall(PyObject *descr, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    int op = ((Method *)descr)->op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (op_check(op, nargs ? args[0] : NULL) < 0) return NULL;
    return run_op(op, args[0], nargs - 1 + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0));
}

/* repr: <method '__enter__' of 'task' objects>. */
static PyObject *method_repr(PyObject *descr) {
    int op = ((Method *)descr)->op;
    return PyUnicode_FromFormat("<method '%s' of '%s' objects>", op_names[op], op <= OP_TASK_EXIT ? "task" : "region");
}

static PyTypeObject MethodType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyflight._core._AnnotationMethod",
    .tp_basicsize = sizeof(Method),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_vectorcall_offset = offsetof(Method, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = method_get,
    .tp_repr = method_repr,
};

static PyTypeObject BoundType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyflight._core._AnnotationBoundMethod",
    .tp_basicsize = sizeof(Bound),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_vectorcall_offset = offsetof(Bound, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = bound_dealloc,
    .tp_repr = bound_repr,
};

/* Puts the Method descriptors of `enter` and `exit` into the (ready) type's dict: 0 or -1. */
static int add_methods(PyTypeObject *tp, int enter, int exit) {
    int ops[2] = {enter, exit};
    for (int i = 0; i < 2; i++) {
        Method *m = PyObject_New(Method, &MethodType);
        if (!m) return -1;
        m->vectorcall = method_vectorcall;
        m->op = ops[i];
        int rc = PyDict_SetItemString(tp->tp_dict, op_names[ops[i]], (PyObject *)m);
        Py_DECREF(m);
        if (rc < 0) return -1;
    }
    PyType_Modified(tp);
    return 0;
}

/* _fresh(): a new, not entered, object of the base type with the same name (what the
 * decorator of a subclass uses per call, as in the Python version). */
static PyObject *annot_fresh(PyObject *op, PyObject *unused) {
    PyTypeObject *base = PyObject_TypeCheck(op, &TaskType) ? &TaskType : &RegionType;
    PyObject *name = ((Annot *)op)->name;
    if (!name) return PyErr_Format(PyExc_AttributeError, "name");
    return annot_vectorcall((PyObject *)base, &name, 1, NULL);
}

/* task.id: the task's id in the trace, 0 if never entered while recording. */
static PyObject *task_get_id(PyObject *op, void *closure) { return PyLong_FromUnsignedLongLong(((Annot *)op)->id); }

static PyMemberDef annot_members[] = {
    {"name", Py_T_OBJECT_EX, offsetof(Annot, name), 0, "The annotation's name."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef task_getset[] = {
    {"id", task_get_id, NULL, "The task's id in the trace (0 if it was entered with no recorder running).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#define FASTCALL(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL
static PyMethodDef annot_methods[] = {
    {"_fresh", annot_fresh, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TaskType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyflight.annotate.task",
    .tp_doc = "A logical operation (a request, a job): ``with pyflight.task(\"GET /users\"): ...``.",
    .tp_basicsize = sizeof(Annot),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = annot_new,
    .tp_init = annot_init,
    .tp_vectorcall = annot_vectorcall,
    .tp_dealloc = annot_dealloc,
    .tp_call = annot_call,
    .tp_methods = annot_methods,
    .tp_members = annot_members,
    .tp_getset = task_getset,
};

static PyTypeObject RegionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyflight.annotate.region",
    .tp_doc = "A named stretch of work inside the current task: ``with pyflight.region(\"parse\"): ...``.",
    .tp_basicsize = sizeof(Annot),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = annot_new,
    .tp_init = annot_init,
    .tp_vectorcall = annot_vectorcall,
    .tp_dealloc = annot_dealloc,
    .tp_call = annot_call,
    .tp_methods = annot_methods,
    .tp_members = annot_members,
};

/* ------------------------------------------------------------------ the decorator's wrapper */

typedef struct {
    PyObject_HEAD
    PyObject *func;
    PyObject *annotation; /* the task/region that decorated: its name is read per call */
    PyObject *dict;       /* __name__, __doc__, __wrapped__, ... */
    vectorcallfunc vectorcall;
    int is_task;
} Wrapped;

static PyTypeObject WrappedType;

/* Calls func with the caller's arguments untouched. Not recording: just that. Recording:
 * begins a fresh task/region named after the decorator's current name, calls, ends it;
 * func's result or exception is returned unchanged (recording never adds one). */
static PyObject *wrapped_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Wrapped *w = (Wrapped *)op;
    if (!active()) return PyObject_Vectorcall(w->func, args, nargsf, kwnames);
    PyObject *name = Py_XNewRef(((Annot *)w->annotation)->name), *state = NULL;
    uint64_t id = 0;
    if (w->is_task)
        task_begin(name, &id, &state);
    else
        region_begin(name, &state);
    PyObject *result = PyObject_Vectorcall(w->func, args, nargsf, kwnames);
    if (state) {
#if PY_VERSION_HEX >= 0x030C0000
        PyObject *exc = PyErr_GetRaisedException();
#else
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
#endif
        if (w->is_task)
            task_end(id, &state);
        else
            region_end(name, &state);
#if PY_VERSION_HEX >= 0x030C0000
        PyErr_SetRaisedException(exc);
#else
        PyErr_Restore(type, exc, tb);
#endif
    }
    Py_XDECREF(name);
    return result;
}

/* _annotated(annotation, func): the wrapper of a sync function decorated by a task or
 * region object (exact C types). TypeError for anything else. */
static PyObject *core_annotated(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !(Py_IS_TYPE(args[0], &TaskType) || Py_IS_TYPE(args[0], &RegionType))
        || !PyCallable_Check(args[1]))
        return PyErr_Format(PyExc_TypeError, "_annotated(annotation, func): a task or region and a callable");
    Wrapped *w = PyObject_GC_New(Wrapped, &WrappedType);
    if (!w) return NULL;
    w->func = Py_NewRef(args[1]);
    w->annotation = Py_NewRef(args[0]);
    w->dict = NULL;
    w->vectorcall = wrapped_vectorcall;
    w->is_task = Py_IS_TYPE(args[0], &TaskType);
    PyObject_GC_Track(w);
    return (PyObject *)w;
}

/* Like a function: bound to an instance when looked up on one (obj.method). */
static PyObject *wrapped_get(PyObject *self, PyObject *obj, PyObject *type) {
    if (obj == NULL || obj == Py_None) return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

/* Pickled by reference, like the function it replaces (module + __qualname__). */
static PyObject *wrapped_reduce(PyObject *self, PyObject *unused) {
    return PyObject_GetAttrString(self, "__qualname__");
}

/* repr: <pyflight region wrapper of <function f ...>>. */
static PyObject *wrapped_repr(PyObject *self) {
    Wrapped *w = (Wrapped *)self;
    return PyUnicode_FromFormat("<pyflight %s wrapper of %R>", w->is_task ? "task" : "region", w->func);
}

/* GC: visits the function, the decorator and __dict__ (a module-level function is in a
 * cycle through its globals). */
static int wrapped_traverse(PyObject *self, visitproc visit, void *arg) {
    Wrapped *w = (Wrapped *)self;
    Py_VISIT(w->func);
    Py_VISIT(w->annotation);
    Py_VISIT(w->dict);
    return 0;
}

/* GC: drops those references. */
static int wrapped_clear(PyObject *self) {
    Wrapped *w = (Wrapped *)self;
    Py_CLEAR(w->func);
    Py_CLEAR(w->annotation);
    Py_CLEAR(w->dict);
    return 0;
}

/* Untracks, drops the references, frees. */
static void wrapped_dealloc(PyObject *self) {
    PyObject_GC_UnTrack(self);
    wrapped_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyMethodDef wrapped_methods[] = {
    {"__reduce__", wrapped_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef wrapped_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WrappedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyflight.annotate._Annotated",
    .tp_doc = "A function decorated by pyflight.task or pyflight.region.",
    .tp_basicsize = sizeof(Wrapped),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR
        | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_vectorcall_offset = offsetof(Wrapped, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = wrapped_get,
    .tp_dictoffset = offsetof(Wrapped, dict),
    .tp_traverse = wrapped_traverse,
    .tp_clear = wrapped_clear,
    .tp_dealloc = wrapped_dealloc,
    .tp_repr = wrapped_repr,
    .tp_methods = wrapped_methods,
    .tp_getset = wrapped_getset,
};

/* ------------------------------------------------------------------ module */

/* _annotate_setup(current_task_id, (USER_TASK_BEGIN, USER_TASK_END, USER_TASK_INFO,
 * REGION_BEGIN, REGION_END), set_live, clear_live, decorate): called by annotate.py at
 * import; from then on the types record when the core does. Replaces an earlier setup. */
static PyObject *core_annotate_setup(PyObject *mod, PyObject *args) {
    PyObject *var, *k[5], *set_live, *clear_live, *decorate;
    if (!PyArg_ParseTuple(args, "O!(OOOOO)OOO:_annotate_setup", &PyContextVar_Type, &var, &k[0], &k[1], &k[2], &k[3],
                          &k[4], &set_live, &clear_live, &decorate))
        return NULL;
    for (int i = 0; i < 5; i++)
        if (!PyLong_CheckExact(k[i])) return PyErr_Format(PyExc_TypeError, "_annotate_setup(): kinds must be ints");
    Py_XSETREF(N.k_task_begin, Py_NewRef(k[0]));
    Py_XSETREF(N.k_task_end, Py_NewRef(k[1]));
    Py_XSETREF(N.k_task_info, Py_NewRef(k[2]));
    Py_XSETREF(N.k_region_begin, Py_NewRef(k[3]));
    Py_XSETREF(N.k_region_end, Py_NewRef(k[4]));
    Py_XSETREF(N.set_live, Py_NewRef(set_live));
    Py_XSETREF(N.clear_live, Py_NewRef(clear_live));
    Py_XSETREF(N.decorate, Py_NewRef(decorate));
    Py_XSETREF(N.var, Py_NewRef(var)); /* last: it turns recording on */
    Py_RETURN_NONE;
}

static PyMethodDef annotate_functions[] = {
    {"_annotate_setup", core_annotate_setup, METH_VARARGS, "Connect the annotation types to pyflight.annotate."},
    {"_annotated", FASTCALL(core_annotated), "_annotated(annotation, func): the decorator's wrapper."},
    {NULL, NULL, 0, NULL},
};

/* See _core.h: readies the types, adds AnnotationTask, AnnotationRegion,
 * AnnotationWrapper, _annotate_setup and _annotated to the module: 0, or -1. */
int pyfl_annotate_init(PyObject *mod) {
    if (!N.s_utask && !(N.s_utask = PyUnicode_InternFromString("utask"))) return -1;
    if (PyType_Ready(&MethodType) < 0 || PyType_Ready(&BoundType) < 0 || PyType_Ready(&TaskType) < 0
        || PyType_Ready(&RegionType) < 0 || PyType_Ready(&WrappedType) < 0
        || add_methods(&TaskType, OP_TASK_ENTER, OP_TASK_EXIT) < 0
        || add_methods(&RegionType, OP_REGION_ENTER, OP_REGION_EXIT) < 0)
        return -1;
    if (PyModule_AddObjectRef(mod, "AnnotationTask", (PyObject *)&TaskType) < 0
        || PyModule_AddObjectRef(mod, "AnnotationRegion", (PyObject *)&RegionType) < 0
        || PyModule_AddObjectRef(mod, "AnnotationWrapper", (PyObject *)&WrappedType) < 0)
        return -1;
    return PyModule_AddFunctions(mod, annotate_functions);
}
