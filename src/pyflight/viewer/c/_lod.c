/* pyflight.viewer._lod: the passes over every slice of a row that the first view of a big
 * trace waits for, in C (lod.py's merge_raw, api.py's _ordered_durations and the state
 * codes of a row's intervals). In Python each is one interpreted step per slice: ~0.9 s
 * of the first slices of a 1.5 M-event trace. Same results as the Python code, which
 * stays the reference (PYFLIGHT_PURE_PYTHON=1 or no extension: used alone); a value
 * that does not fit 62 bits raises OverflowError and the caller falls back on Python.
 * tests/test_viewer.py compares both on random rows.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define LIMIT ((long long)1 << 62) /* times, grains: sums and differences stay in 64 bits */

/* the value of an int within +-LIMIT, or -1 with an exception (check PyErr_Occurred) */
static long long value(PyObject *obj) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow || v > LIMIT || v < -LIMIT) {
        PyErr_SetString(PyExc_OverflowError, "value out of the fast path's range");
        return -1;
    }
    return v;
}

/* out = the value of list[k], or goto done with the exception (read as needed: a copy of a
 * column in C would add 8 bytes a slice to the peak memory, 48 MB for a 5 M-event loop row) */
#define AT(list, k, out)                                                                                           \
    do {                                                                                                           \
        (out) = value(PyList_GET_ITEM((list), (k)));                                                               \
        if ((out) == -1 && PyErr_Occurred()) goto done;                                                            \
    } while (0)

static int append_new(PyObject *list, PyObject *item) { /* steals item */
    if (!item) return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

/* time per code of one run, in the order the codes were met (a dict's order) */
typedef struct {
    Py_ssize_t n, cap;
    long long *codes, *ns;
    PyObject **keys; /* the code objects (borrowed from the row) */
} Totals;

static int totals_add(Totals *t, long long code, PyObject *key, long long ns) {
    for (Py_ssize_t i = 0; i < t->n; i++)
        if (t->codes[i] == code) {
            t->ns[i] += ns;
            return 0;
        }
    if (t->n == t->cap) {
        Py_ssize_t cap = t->cap ? 2 * t->cap : 16;
        long long *codes = PyMem_Realloc(t->codes, (size_t)cap * sizeof(long long));
        if (codes) t->codes = codes;
        long long *ns_ = PyMem_Realloc(t->ns, (size_t)cap * sizeof(long long));
        if (ns_) t->ns = ns_;
        PyObject **keys = PyMem_Realloc(t->keys, (size_t)cap * sizeof(PyObject *));
        if (keys) t->keys = keys;
        if (!codes || !ns_ || !keys) {
            PyErr_NoMemory();
            return -1;
        }
        t->cap = cap;
    }
    t->codes[t->n] = code;
    t->ns[t->n] = ns;
    t->keys[t->n] = key;
    t->n++;
    return 0;
}

/* merge_raw(starts, ends, codes, grain) -> (starts, ends, codes, counts, raw, totals):
 * lod.merge_raw's lists (see there) */
static PyObject *lod_merge_raw(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_Check(args[0]) || !PyList_Check(args[1]) || !PyList_Check(args[2]))
        return PyErr_Format(PyExc_TypeError, "merge_raw(starts, ends, codes, grain) takes 3 lists and an int");
    PyObject *starts = args[0], *ends = args[1], *codes = args[2];
    Py_ssize_t n = PyList_GET_SIZE(starts);
    if (PyList_GET_SIZE(ends) != n || PyList_GET_SIZE(codes) != n)
        return PyErr_Format(PyExc_ValueError, "merge_raw: columns of different lengths");
    long long grain = value(args[3]);
    if (grain == -1 && PyErr_Occurred()) return NULL;
    Totals tot = {0, 0, NULL, NULL, NULL};
    PyObject *out[6] = {NULL, NULL, NULL, NULL, NULL, NULL}, *result = NULL;
    for (int i = 0; i < 6; i++)
        if (!(out[i] = PyList_New(0))) goto done;
    PyObject *o_starts = out[0], *o_ends = out[1], *o_codes = out[2], *o_counts = out[3], *o_raw = out[4],
             *o_totals = out[5];
    Py_ssize_t k = 0;
    while (k < n) {
        long long a, b, code;
        AT(starts, k, a);
        AT(ends, k, b);
        Py_ssize_t first = k++;
        if (b - a < grain) {
            long long run_end = b;
            Py_ssize_t last = first; /* the run's last slice: its end object is the summary's */
            tot.n = 0;
            AT(codes, first, code);
            if (totals_add(&tot, code, PyList_GET_ITEM(codes, first), b - a) < 0) goto done;
            while (k < n) {
                long long a2, b2;
                AT(starts, k, a2);
                AT(ends, k, b2);
                if (b2 - a2 >= grain || a2 - run_end >= grain || run_end - a >= grain) break;
                AT(codes, k, code);
                if (totals_add(&tot, code, PyList_GET_ITEM(codes, k), b2 - a2) < 0) goto done;
                run_end = b2;
                last = k++;
            }
            if (k - first > 1) {
                Py_ssize_t best = 0; /* max(tot, key=tot.__getitem__): the first of the largest */
                for (Py_ssize_t i = 1; i < tot.n; i++)
                    if (tot.ns[i] > tot.ns[best]) best = i;
                PyObject *dict = PyDict_New();
                if (!dict) goto done;
                for (Py_ssize_t i = 0; i < tot.n; i++) {
                    PyObject *ns = PyLong_FromLongLong(tot.ns[i]);
                    if (!ns || PyDict_SetItem(dict, tot.keys[i], ns) < 0) {
                        Py_XDECREF(ns);
                        Py_DECREF(dict);
                        goto done;
                    }
                    Py_DECREF(ns);
                }
                if (PyList_Append(o_starts, PyList_GET_ITEM(starts, first)) < 0
                    || PyList_Append(o_ends, PyList_GET_ITEM(ends, last)) < 0
                    || PyList_Append(o_codes, tot.keys[best]) < 0
                    || append_new(o_counts, PyLong_FromSsize_t(k - first)) < 0
                    || append_new(o_raw, PyLong_FromLong(-1)) < 0 || append_new(o_totals, dict) < 0)
                    goto done;
                continue;
            }
        }
        if (PyList_Append(o_starts, PyList_GET_ITEM(starts, first)) < 0
            || PyList_Append(o_ends, PyList_GET_ITEM(ends, first)) < 0
            || PyList_Append(o_codes, PyList_GET_ITEM(codes, first)) < 0
            || append_new(o_counts, PyLong_FromLong(1)) < 0 || append_new(o_raw, PyLong_FromSsize_t(first)) < 0
            || PyList_Append(o_totals, Py_None) < 0)
            goto done;
    }
    result = PyTuple_Pack(6, out[0], out[1], out[2], out[3], out[4], out[5]);
done:
    for (int i = 0; i < 6; i++) Py_XDECREF(out[i]);
    PyMem_Free(tot.codes);
    PyMem_Free(tot.ns);
    PyMem_Free(tot.keys);
    return result;
}

/* ordered_durations(starts, ends) -> list | None: api._ordered_durations (see there) */
static PyObject *lod_ordered_durations(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0]) || !PyList_Check(args[1]))
        return PyErr_Format(PyExc_TypeError, "ordered_durations(starts, ends) takes 2 lists");
    PyObject *starts = args[0], *ends = args[1];
    Py_ssize_t n = PyList_GET_SIZE(starts);
    if (PyList_GET_SIZE(ends) != n) return PyErr_Format(PyExc_ValueError, "ordered_durations: columns of different lengths");
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    int touching = 1, ordered = 1;
    long long prev_end = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *start = PyList_GET_ITEM(starts, k), *end = PyList_GET_ITEM(ends, k);
        long long a = value(start), b = a == -1 && PyErr_Occurred() ? -1 : value(end);
        if (b == -1 && PyErr_Occurred()) {
            Py_DECREF(out);
            return NULL;
        }
        PyObject *d = PyLong_FromLongLong(b - a);
        if (!d) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, k, d);
        if (b - a <= 0) { /* min(durations) <= 0 */
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        if (k) {
            touching = touching && PyList_GET_ITEM(ends, k - 1) == start;
            ordered = ordered && prev_end <= a;
        }
        prev_end = b;
    }
    if (touching || ordered) return out;
    Py_DECREF(out);
    Py_RETURN_NONE;
}

/* codes(states, reasons, table) -> list: table[(id(state), id(reason))] of each pair
 * (api._interval_columns); KeyError for a pair not in the table */
static PyObject *lod_codes(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyList_Check(args[0]) || !PyList_Check(args[1]) || !PyDict_Check(args[2]))
        return PyErr_Format(PyExc_TypeError, "codes(states, reasons, table) takes 2 lists and a dict");
    PyObject *states = args[0], *reasons = args[1], *table = args[2];
    Py_ssize_t n = PyList_GET_SIZE(states);
    if (PyList_GET_SIZE(reasons) != n) return PyErr_Format(PyExc_ValueError, "codes: columns of different lengths");
    enum { SEEN = 64 };
    PyObject *seen_state[SEEN], *seen_reason[SEEN], *seen_code[SEEN]; /* borrowed from the table */
    int n_seen = 0;
    PyObject *out = PyList_New(n);
    if (!out) return NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *state = PyList_GET_ITEM(states, k), *reason = PyList_GET_ITEM(reasons, k), *code = NULL;
        for (int i = 0; i < n_seen; i++)
            if (seen_state[i] == state && seen_reason[i] == reason) {
                code = seen_code[i];
                break;
            }
        if (!code) {
            PyObject *key = Py_BuildValue("(NN)", PyLong_FromVoidPtr(state), PyLong_FromVoidPtr(reason));
            if (!key) {
                Py_DECREF(out);
                return NULL;
            }
            code = PyDict_GetItemWithError(table, key);
            if (!code) {
                if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
                Py_DECREF(key);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(key);
            if (n_seen < SEEN) {
                seen_state[n_seen] = state;
                seen_reason[n_seen] = reason;
                seen_code[n_seen++] = code;
            }
        }
        Py_INCREF(code);
        PyList_SET_ITEM(out, k, code);
    }
    return out;
}

#define FASTCALL(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL
static PyMethodDef lod_methods[] = {
    {"merge_raw", FASTCALL(lod_merge_raw), "lod.merge_raw on columns: (starts, ends, codes, counts, raw, totals)."},
    {"ordered_durations", FASTCALL(lod_ordered_durations), "api._ordered_durations."},
    {"codes", FASTCALL(lod_codes), "table[(id(state), id(reason))] of each interval."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef lod_module = {
    PyModuleDef_HEAD_INIT, .m_name = "pyflight.viewer._lod",
    .m_doc = "The viewer's per-slice passes in C (see lod.py, api.py).", .m_size = -1, .m_methods = lod_methods,
};

PyMODINIT_FUNC PyInit__lod(void) { return PyModule_Create(&lod_module); }
