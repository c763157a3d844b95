/* Grouping equal 64-bit values with a hash table, in C: numpy can only group by sorting, and
 * argsort of millions of values costs a second where one pass over a table costs milliseconds.
 *
 * ktrace/analysis/sorting.py holds the same function in numpy; it is used when this module
 * was not built, and the tests run both and require identical results.
 *
 * factorize(values, ids, limit) -> firsts or None
 *   values: buffer of n uint64; ids: writable buffer of n int32, filled with each value's
 *   number in order of first appearance; firsts: bytes of int64, the position of each
 *   number's first value. None as soon as there are more than `limit` distinct values: a
 *   table that large is slower than sorting (each lookup a cache miss).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint64_t *keys;
    int32_t *slots; /* id + 1, 0 = empty */
    size_t mask;
} Table;

static inline size_t slot_of(uint64_t key, size_t mask) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (size_t)key & mask;
}

static int table_init(Table *t, size_t size) {
    t->keys = PyMem_RawMalloc(size * sizeof(uint64_t));
    t->slots = PyMem_RawCalloc(size, sizeof(int32_t));
    t->mask = size - 1;
    return (t->keys && t->slots) ? 0 : -1;
}

static void table_free(Table *t) {
    PyMem_RawFree(t->keys);
    PyMem_RawFree(t->slots);
}

/* Double the table, re-placing every key (ids stay). */
static int table_grow(Table *t) {
    Table bigger;
    if (table_init(&bigger, (t->mask + 1) * 2) < 0) {
        table_free(&bigger);
        return -1;
    }
    for (size_t i = 0; i <= t->mask; i++) {
        if (!t->slots[i])
            continue;
        size_t s = slot_of(t->keys[i], bigger.mask);
        while (bigger.slots[s])
            s = (s + 1) & bigger.mask;
        bigger.keys[s] = t->keys[i];
        bigger.slots[s] = t->slots[i];
    }
    table_free(t);
    *t = bigger;
    return 0;
}

static PyObject *factorize(PyObject *self, PyObject *args) {
    Py_buffer values, ids;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "y*w*n", &values, &ids, &limit))
        return NULL;
    Py_ssize_t n = values.len / (Py_ssize_t)sizeof(uint64_t);
    PyObject *result = NULL;
    int64_t *firsts = NULL;
    Table t = {NULL, NULL, 0};
    int failed = 0, overflow = 0;
    size_t count = 0, cap = 1024;
    if (ids.len < n * (Py_ssize_t)sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "ids is shorter than values");
        goto done;
    }
    const uint64_t *v = values.buf;
    int32_t *out = ids.buf;
    Py_BEGIN_ALLOW_THREADS
    firsts = PyMem_RawMalloc(cap * sizeof(int64_t));
    if (!firsts || table_init(&t, 1024) < 0)
        failed = 1;
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        size_t s = slot_of(v[i], t.mask);
        while (t.slots[s] && t.keys[s] != v[i])
            s = (s + 1) & t.mask;
        if (t.slots[s]) {
            out[i] = t.slots[s] - 1;
            continue;
        }
        if ((Py_ssize_t)count >= limit || count >= INT32_MAX - 1) {
            overflow = 1;
            break;
        }
        if (count == cap) {
            int64_t *grown = PyMem_RawRealloc(firsts, cap * 2 * sizeof(int64_t));
            if (!grown) {
                failed = 1;
                break;
            }
            firsts = grown;
            cap *= 2;
        }
        t.keys[s] = v[i];
        t.slots[s] = (int32_t)count + 1;
        out[i] = (int32_t)count;
        firsts[count++] = i;
        if (count * 2 > t.mask + 1 && table_grow(&t) < 0)
            failed = 1;
    }
    Py_END_ALLOW_THREADS
    if (overflow)
        result = Py_NewRef(Py_None);
    else if (failed)
        PyErr_NoMemory();
    else
        result = PyBytes_FromStringAndSize((const char *)firsts, (Py_ssize_t)(count * sizeof(int64_t)));
done:
    table_free(&t);
    PyMem_RawFree(firsts);
    PyBuffer_Release(&values);
    PyBuffer_Release(&ids);
    return result;
}

static PyMethodDef methods[] = {
    {"factorize", factorize, METH_VARARGS, "Number equal uint64 values by first appearance."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_group", NULL, -1, methods};

PyMODINIT_FUNC PyInit__group(void) { return PyModule_Create(&module); }
