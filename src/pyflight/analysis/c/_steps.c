/* pyflight.analysis._steps: the model builder's two most frequent handlers in C.
 *
 * TASK_STEP_BEGIN and TASK_STEP_END are half the events of asyncio code (730,000 of a
 * 1.5 M-event trace) and, in Python, ~1.5 us each (two intervals, their columns, a Step,
 * a loop busy entry per step): ~1.1 s of the build that `pyflight view` waits for. This
 * file does exactly what builder.py's task_step_begin / task_step_end and machines.py's
 * TaskMachine.add do, on the same Python objects (the builder's TaskMachine and
 * ThreadMachine, the model's Interval and Step), for the common case only: a known live
 * task, a step begun in the window. Anything else (and any object not as the builder
 * makes it) is handed, before anything is changed, to the Python handler. builder.py is
 * the reference; PYFLIGHT_PURE_PYTHON=1 or a missing extension uses it alone, and
 * tests/test_analysis_model.py checks that both give the same model.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* attribute names, interned once */
static PyObject *s_done, *s_steps, *s_step_open, *s_thread, *s_open, *s_pending, *s_open_step, *s_intervals,
    *s_columns, *s_idle_ends_of, *s_idle_delays, *s_delays, *s_busy;

typedef struct {
    PyObject_HEAD
    PyObject *tasks;      /* the builder's dict: task id -> TaskMachine */
    PyObject *begin_py;   /* the Python handlers, for everything but the common case */
    PyObject *end_py;
    PyTypeObject *interval; /* model.Interval, model.Step: tuple subclasses */
    PyTypeObject *step;
    PyObject *running, *ready, *blocked, *await_; /* State.RUNNING, READY, BLOCKED; BlockReason.AWAIT */
    PyObject *zero, *empty_tuple, *empty_str;
} Steps;

/* a new instance of the tuple subclass `type` holding n borrowed items (tuple.__new__(type, items)) */
static PyObject *new_tuple(PyTypeObject *type, Py_ssize_t n, PyObject **items) {
    PyObject *out = type->tp_alloc(type, n);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_INCREF(items[i]);
        PyTuple_SET_ITEM(out, i, items[i]);
    }
    return out;
}

static int append_new(PyObject *list, PyObject *item) { /* steals item */
    if (!item) return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

/* o[:] = items (o: the machine's open list of 7) */
static void set_open(PyObject *o, PyObject **items) {
    for (Py_ssize_t i = 0; i < 7; i++) {
        Py_INCREF(items[i]);
        PyObject *old = PyList_GET_ITEM(o, i);
        PyList_SET_ITEM(o, i, items[i]);
        Py_DECREF(old);
    }
}

/* the attribute, or NULL with an AttributeError (new reference) */
#define GET(obj, name) PyObject_GetAttr((obj), (name))

/* The four column lists of a TaskMachine (borrowed from `columns`), or -1. */
static int column_lists(PyObject *columns, PyObject **cols) {
    if (!PyTuple_Check(columns) || PyTuple_GET_SIZE(columns) != 4) {
        PyErr_SetString(PyExc_TypeError, "TaskMachine.columns is not an IntervalColumns");
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        cols[i] = PyTuple_GET_ITEM(columns, i);
        if (!PyList_Check(cols[i])) {
            PyErr_SetString(PyExc_TypeError, "TaskMachine.columns holds a non-list");
            return -1;
        }
    }
    return 0;
}

/* bisect_left(ends, x): -1 on error */
static Py_ssize_t bisect_left(PyObject *list, PyObject *x) {
    Py_ssize_t lo = 0, hi = PyList_GET_SIZE(list);
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        int lt = PyObject_RichCompareBool(PyList_GET_ITEM(list, mid), x, Py_LT);
        if (lt < 0) return -1;
        if (lt) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* The wait `prev` (intervals[n - 1]) that ends in a step, split where its loop last woke
 * from idle in it (TaskMachine.add): 0 (split or not) or -1. */
static int split_wait(Steps *self, PyObject *tk, PyObject *intervals, Py_ssize_t n, PyObject *prev, PyObject **cols) {
    int rc = -1;
    PyObject *ends_of = NULL, *thread = NULL, *idle_delays = NULL, *cut = NULL, *rest = NULL, *delay = NULL;
    if (!(ends_of = GET(tk, s_idle_ends_of)) || !(thread = GET(tk, s_thread))) goto done;
    if (!PyDict_Check(ends_of)) {
        PyErr_SetString(PyExc_TypeError, "TaskMachine.idle_ends_of is not a dict");
        goto done;
    }
    PyObject *ends = PyDict_GetItemWithError(ends_of, thread); /* borrowed */
    if (!ends) {
        rc = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    if (!PyList_Check(ends)) {
        PyErr_SetString(PyExc_TypeError, "idle ends are not a list");
        goto done;
    }
    if (!PyList_GET_SIZE(ends)) {
        rc = 0;
        goto done;
    }
    PyObject *start = PyTuple_GET_ITEM(prev, 0), *end = PyTuple_GET_ITEM(prev, 1);
    Py_ssize_t j = bisect_left(ends, end);
    if (j < 0) goto done;
    if (--j < 0) {
        rc = 0;
        goto done;
    }
    PyObject *woke = PyList_GET_ITEM(ends, j);
    int after = PyObject_RichCompareBool(woke, start, Py_GT);
    if (after <= 0) {
        rc = after;
        goto done;
    }
    PyObject *cut_items[7] = {start, woke, PyTuple_GET_ITEM(prev, 2), PyTuple_GET_ITEM(prev, 3),
                              PyTuple_GET_ITEM(prev, 4), PyTuple_GET_ITEM(prev, 5), PyTuple_GET_ITEM(prev, 6)};
    PyObject *rest_items[7] = {woke, end, self->ready, Py_None, self->zero, PyTuple_GET_ITEM(prev, 5),
                               PyTuple_GET_ITEM(prev, 6)};
    if (!(cut = new_tuple(self->interval, 7, cut_items)) || !(rest = new_tuple(self->interval, 7, rest_items))) goto done;
    Py_ssize_t m = PyList_GET_SIZE(cols[1]);
    if (!m) {
        PyErr_SetString(PyExc_IndexError, "list assignment index out of range");
        goto done;
    }
    if (!(idle_delays = GET(tk, s_idle_delays)) || !(delay = PyNumber_Subtract(end, woke))) goto done;
    /* intervals[-1] = cut; intervals.append(rest); columns.ends[-1] = woke; the columns of rest */
    Py_INCREF(woke); /* woke, start and end may be held by prev alone: keep them while it goes */
    Py_INCREF(end);
    PyObject *old = PyList_GET_ITEM(intervals, n - 1);
    PyList_SET_ITEM(intervals, n - 1, cut);
    cut = NULL;
    Py_DECREF(old);
    PyObject *old_end = PyList_GET_ITEM(cols[1], m - 1);
    Py_INCREF(woke);
    PyList_SET_ITEM(cols[1], m - 1, woke);
    int bad = PyList_Append(intervals, rest) < 0 || PyList_Append(cols[0], woke) < 0 || PyList_Append(cols[1], end) < 0
              || PyList_Append(cols[2], self->ready) < 0 || PyList_Append(cols[3], Py_None) < 0
              || PyList_Append(idle_delays, delay) < 0;
    Py_DECREF(old_end);
    Py_DECREF(woke);
    Py_DECREF(end);
    rc = bad ? -1 : 0;
done:
    Py_XDECREF(ends_of);
    Py_XDECREF(thread);
    Py_XDECREF(idle_delays);
    Py_XDECREF(cut);
    Py_XDECREF(rest);
    Py_XDECREF(delay);
    return rc;
}

/* TaskMachine.add(tk, iv) (machines.py): 0 or -1 */
static int add(Steps *self, PyObject *tk, PyObject *iv) {
    int rc = -1;
    PyObject *intervals = NULL, *columns = NULL, *cols[4], *idle_delays = NULL, *delay = NULL;
    if (!(intervals = GET(tk, s_intervals)) || !(columns = GET(tk, s_columns))) goto done;
    if (!PyList_Check(intervals)) {
        PyErr_SetString(PyExc_TypeError, "TaskMachine.intervals is not a list");
        goto done;
    }
    if (column_lists(columns, cols) < 0) goto done;
    Py_ssize_t n = PyList_GET_SIZE(intervals);
    if (PyTuple_GET_ITEM(iv, 2) == self->running && n) {
        PyObject *prev = PyList_GET_ITEM(intervals, n - 1);
        if (!PyTuple_Check(prev) || PyTuple_GET_SIZE(prev) != 7) {
            PyErr_SetString(PyExc_TypeError, "TaskMachine.intervals holds a non-Interval");
            goto done;
        }
        Py_INCREF(prev);
        PyObject *state = PyTuple_GET_ITEM(prev, 2);
        int bad = 0;
        if (state == self->blocked)
            bad = split_wait(self, tk, intervals, n, prev, cols) < 0;
        else if (state == self->ready)
            bad = !(delay = PyNumber_Subtract(PyTuple_GET_ITEM(prev, 1), PyTuple_GET_ITEM(prev, 0)))
                  || !(idle_delays = GET(tk, s_idle_delays)) || PyList_Append(idle_delays, delay) < 0;
        Py_DECREF(prev);
        if (bad) goto done;
    }
    if (PyList_Append(intervals, iv) < 0 || PyList_Append(cols[0], PyTuple_GET_ITEM(iv, 0)) < 0
        || PyList_Append(cols[1], PyTuple_GET_ITEM(iv, 1)) < 0 || PyList_Append(cols[2], PyTuple_GET_ITEM(iv, 2)) < 0
        || PyList_Append(cols[3], PyTuple_GET_ITEM(iv, 3)) < 0)
        goto done;
    rc = 0;
done:
    Py_XDECREF(intervals);
    Py_XDECREF(columns);
    Py_XDECREF(idle_delays);
    Py_XDECREF(delay);
    return rc;
}

/* Close the open interval at t if t > o[0]: add(Interval(o[0], t, *o[1:6])). 1 if closed, 0 if not, -1. */
static int close_open(Steps *self, PyObject *tk, PyObject *o, PyObject *t) {
    int later = PyObject_RichCompareBool(t, PyList_GET_ITEM(o, 0), Py_GT);
    if (later <= 0) return later;
    PyObject *items[7] = {PyList_GET_ITEM(o, 0), t, PyList_GET_ITEM(o, 1), PyList_GET_ITEM(o, 2),
                          PyList_GET_ITEM(o, 3), PyList_GET_ITEM(o, 4), PyList_GET_ITEM(o, 5)};
    PyObject *iv = new_tuple(self->interval, 7, items);
    if (!iv) return -1;
    int rc = add(self, tk, iv);
    Py_DECREF(iv);
    return rc < 0 ? -1 : 1;
}

/* The live task of `task_id` and its open list, or 0 (not the common case: the Python
 * handler decides) or -1. On 1, *tk and *o are new references. */
static int common_task(Steps *self, PyObject *task_id, PyObject **tk, PyObject **o) {
    *tk = *o = NULL;
    PyObject *found = PyDict_GetItemWithError(self->tasks, task_id);
    if (!found) return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(found);
    PyObject *done = GET(found, s_done);
    if (!done) goto fail;
    int live = done == Py_None;
    Py_DECREF(done);
    if (!live) goto no;
    PyObject *open = GET(found, s_open);
    if (!open) goto fail;
    if (!PyList_CheckExact(open) || PyList_GET_SIZE(open) != 7) {
        Py_DECREF(open);
        goto no;
    }
    *tk = found;
    *o = open;
    return 1;
no:
    Py_DECREF(found);
    return 0;
fail:
    Py_DECREF(found);
    return -1;
}

static PyObject *fallback(PyObject *handler, PyObject *const *args) { return PyObject_Vectorcall(handler, args, 2, NULL); }

/* builder.task_step_begin(e, th) */
static PyObject *steps_begin(Steps *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "begin(event, thread) takes 2 arguments");
    PyObject *e = args[0], *th = args[1];
    if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 4) return fallback(self->begin_py, args);
    PyObject *t = PyTuple_GET_ITEM(e, 1), *tid = PyTuple_GET_ITEM(e, 2), *task_id = PyTuple_GET_ITEM(e, 3);
    PyObject *tk, *o, *steps = NULL, *step_open = NULL, *delays = NULL, *open_step = NULL, *result = NULL;
    int common = common_task(self, task_id, &tk, &o);
    if (common <= 0) return common < 0 ? NULL : fallback(self->begin_py, args);
    if (!(steps = GET(tk, s_steps)) || !(step_open = GET(tk, s_step_open))) goto done;
    int has_steps = PyObject_IsTrue(steps);
    if (has_steps < 0) goto done;
    if (!has_steps && step_open == Py_None && PyObject_SetAttr(tk, s_thread, tid) < 0) goto done;
    PyObject *was = PyList_GET_ITEM(o, 1), *since = PyList_GET_ITEM(o, 0);
    Py_INCREF(was);
    Py_INCREF(since);
    int closed = close_open(self, tk, o, t);
    if (closed > 0 && was == self->ready) {
        PyObject *delay = PyNumber_Subtract(t, since);
        closed = delay && (delays = GET(tk, s_delays)) && PyList_Append(delays, delay) == 0 ? 1 : -1;
        Py_XDECREF(delay);
    }
    Py_DECREF(was);
    Py_DECREF(since);
    if (closed < 0) goto done;
    PyObject *items[7] = {t, self->running, Py_None, self->zero, self->empty_tuple, self->empty_str, Py_False};
    set_open(o, items);
    if (PyObject_SetAttr(tk, s_pending, Py_None) < 0 || PyObject_SetAttr(tk, s_step_open, t) < 0) goto done;
    if (!(open_step = PyTuple_Pack(2, t, task_id)) || PyObject_SetAttr(th, s_open_step, open_step) < 0) goto done;
    result = Py_NewRef(Py_None);
done:
    Py_DECREF(tk);
    Py_DECREF(o);
    Py_XDECREF(steps);
    Py_XDECREF(step_open);
    Py_XDECREF(delays);
    Py_XDECREF(open_step);
    return result;
}

/* builder.task_step_end(e, th) */
static PyObject *steps_end(Steps *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "end(event, thread) takes 2 arguments");
    PyObject *e = args[0], *th = args[1];
    if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 4) return fallback(self->end_py, args);
    PyObject *t = PyTuple_GET_ITEM(e, 1), *tid = PyTuple_GET_ITEM(e, 2), *task_id = PyTuple_GET_ITEM(e, 3);
    PyObject *tk, *o, *step_open = NULL, *pending = NULL, *open_step = NULL, *steps = NULL, *busy = NULL,
                      *result = NULL;
    int common = common_task(self, task_id, &tk, &o);
    if (common <= 0) return common < 0 ? NULL : fallback(self->end_py, args);
    if (!(step_open = GET(tk, s_step_open)) || !(pending = GET(tk, s_pending)) || !(open_step = GET(th, s_open_step)))
        goto done;
    if (step_open == Py_None || (pending != Py_None && (!PyTuple_Check(pending) || PyTuple_GET_SIZE(pending) != 4))
        || (open_step != Py_None && (!PyTuple_Check(open_step) || PyTuple_GET_SIZE(open_step) != 2))) {
        result = fallback(self->end_py, args); /* nothing changed yet */
        goto done;
    }
    PyObject *step_items[3] = {step_open, t, tid};
    if (!(steps = GET(tk, s_steps)) || append_new(steps, new_tuple(self->step, 3, step_items)) < 0) goto done;
    if (PyObject_SetAttr(tk, s_step_open, Py_None) < 0 || close_open(self, tk, o, t) < 0) goto done;
    if (pending == Py_None) {
        PyObject *items[7] = {t, self->blocked, self->await_, self->zero, self->empty_tuple, self->empty_str, Py_True};
        set_open(o, items);
    } else {
        if (PyObject_SetAttr(tk, s_pending, Py_None) < 0) goto done;
        PyObject *items[7] = {t, self->blocked, PyTuple_GET_ITEM(pending, 0), PyTuple_GET_ITEM(pending, 1),
                              PyTuple_GET_ITEM(pending, 2), PyTuple_GET_ITEM(pending, 3), Py_False};
        set_open(o, items);
    }
    if (open_step != Py_None) {
        int same = PyObject_RichCompareBool(PyTuple_GET_ITEM(open_step, 1), task_id, Py_EQ);
        if (same < 0) goto done;
        if (same) {
            PyObject *entry = PyTuple_Pack(4, PyTuple_GET_ITEM(open_step, 0), t, task_id, self->empty_str);
            if (!(busy = GET(th, s_busy)) || append_new(busy, entry) < 0 || PyObject_SetAttr(th, s_open_step, Py_None) < 0)
                goto done;
        }
    }
    result = Py_NewRef(Py_None);
done:
    Py_DECREF(tk);
    Py_DECREF(o);
    Py_XDECREF(step_open);
    Py_XDECREF(pending);
    Py_XDECREF(open_step);
    Py_XDECREF(steps);
    Py_XDECREF(busy);
    return result;
}

static int steps_traverse(Steps *self, visitproc visit, void *arg) {
    Py_VISIT(self->tasks);
    Py_VISIT(self->begin_py);
    Py_VISIT(self->end_py);
    Py_VISIT(self->interval);
    Py_VISIT(self->step);
    Py_VISIT(self->running);
    Py_VISIT(self->ready);
    Py_VISIT(self->blocked);
    Py_VISIT(self->await_);
    return 0;
}

static int steps_clear(Steps *self) {
    Py_CLEAR(self->tasks);
    Py_CLEAR(self->begin_py);
    Py_CLEAR(self->end_py);
    Py_CLEAR(self->interval);
    Py_CLEAR(self->step);
    Py_CLEAR(self->running);
    Py_CLEAR(self->ready);
    Py_CLEAR(self->blocked);
    Py_CLEAR(self->await_);
    Py_CLEAR(self->zero);
    Py_CLEAR(self->empty_tuple);
    Py_CLEAR(self->empty_str);
    return 0;
}

static void steps_dealloc(Steps *self) {
    PyObject_GC_UnTrack(self);
    steps_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Steps(tasks, begin_py, end_py, Interval, Step, RUNNING, READY, BLOCKED, AWAIT) */
static PyObject *steps_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *tasks, *begin_py, *end_py, *interval, *step, *running, *ready, *blocked, *await_;
    if (kw && PyDict_GET_SIZE(kw)) return PyErr_Format(PyExc_TypeError, "Steps() takes no keyword arguments");
    if (!PyArg_ParseTuple(args, "O!OOO!O!OOOO:Steps", &PyDict_Type, &tasks, &begin_py, &end_py, &PyType_Type,
                          &interval, &PyType_Type, &step, &running, &ready, &blocked, &await_))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)interval, &PyTuple_Type) || !PyType_IsSubtype((PyTypeObject *)step, &PyTuple_Type))
        return PyErr_Format(PyExc_TypeError, "Interval and Step must be tuple subclasses");
    Steps *self = (Steps *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->tasks = Py_NewRef(tasks);
    self->begin_py = Py_NewRef(begin_py);
    self->end_py = Py_NewRef(end_py);
    self->interval = (PyTypeObject *)Py_NewRef(interval);
    self->step = (PyTypeObject *)Py_NewRef(step);
    self->running = Py_NewRef(running);
    self->ready = Py_NewRef(ready);
    self->blocked = Py_NewRef(blocked);
    self->await_ = Py_NewRef(await_);
    self->zero = PyLong_FromLong(0);
    self->empty_tuple = PyTuple_New(0);
    self->empty_str = PyUnicode_FromStringAndSize("", 0);
    if (!self->zero || !self->empty_tuple || !self->empty_str) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

#define FASTCALL(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL
static PyMethodDef steps_methods[] = {
    {"begin", FASTCALL(steps_begin), "begin(event, thread): builder.task_step_begin."},
    {"end", FASTCALL(steps_end), "end(event, thread): builder.task_step_end."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject StepsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pyflight.analysis._steps.Steps",
    .tp_basicsize = sizeof(Steps),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "TASK_STEP_BEGIN / TASK_STEP_END handlers of one model build (see builder.py).",
    .tp_new = steps_new,
    .tp_dealloc = (destructor)steps_dealloc,
    .tp_traverse = (traverseproc)steps_traverse,
    .tp_clear = (inquiry)steps_clear,
    .tp_methods = steps_methods,
};

static struct PyModuleDef steps_module = {
    PyModuleDef_HEAD_INIT, .m_name = "pyflight.analysis._steps",
    .m_doc = "The model builder's task step handlers in C (see builder.py).", .m_size = -1,
};

PyMODINIT_FUNC PyInit__steps(void) {
    struct {
        PyObject **slot;
        const char *name;
    } names[] = {{&s_done, "done"}, {&s_steps, "steps"}, {&s_step_open, "step_open"}, {&s_thread, "thread"},
                 {&s_open, "open"}, {&s_pending, "pending"}, {&s_open_step, "open_step"}, {&s_intervals, "intervals"},
                 {&s_columns, "columns"}, {&s_idle_ends_of, "idle_ends_of"}, {&s_idle_delays, "idle_delays"},
                 {&s_delays, "delays"}, {&s_busy, "busy"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!*names[i].slot && !(*names[i].slot = PyUnicode_InternFromString(names[i].name))) return NULL;
    if (PyType_Ready(&StepsType) < 0) return NULL;
    PyObject *mod = PyModule_Create(&steps_module);
    if (!mod) return NULL;
    if (PyModule_AddObjectRef(mod, "Steps", (PyObject *)&StepsType) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
