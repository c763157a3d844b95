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
 *
 * flow_ids(l3, proto, src, dst, sport, dport, ids, swap, limit) -> firsts or None
 *   The packet columns (uint8, uint8, uint32, uint32, uint16, uint16) grouped into flows in
 *   one pass: both directions of a flow share a key, (IPv6?, protocol, lower port, lower
 *   address; higher port, higher address), the lower endpoint ordered by address, then port.
 *   ids: writable int32 per packet, the flow's number in order of first appearance, -1 for
 *   packets that are not IP; swap: writable uint8 per packet, 1 when the higher endpoint sent
 *   it. firsts and None as for factorize. flows.py holds the same grouping in numpy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Keys of one or two 64-bit words (seconds is NULL for one). */
typedef struct {
    uint64_t *keys, *seconds;
    int32_t *slots; /* id + 1, 0 = empty */
    size_t mask;
} Table;

static inline size_t slot_of(uint64_t key, uint64_t second, size_t mask) {
    key ^= second * 0x9e3779b97f4a7c15ULL;
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (size_t)key & mask;
}

static int table_init(Table *t, size_t size, int pairs) {
    t->keys = PyMem_RawMalloc(size * sizeof(uint64_t));
    t->seconds = pairs ? PyMem_RawMalloc(size * sizeof(uint64_t)) : NULL;
    t->slots = PyMem_RawCalloc(size, sizeof(int32_t));
    t->mask = size - 1;
    return (t->keys && t->slots && (t->seconds || !pairs)) ? 0 : -1;
}

static void table_free(Table *t) {
    PyMem_RawFree(t->keys);
    PyMem_RawFree(t->seconds);
    PyMem_RawFree(t->slots);
}

/* Double the table, re-placing every key (ids stay). */
static int table_grow(Table *t) {
    Table bigger;
    if (table_init(&bigger, (t->mask + 1) * 2, t->seconds != NULL) < 0) {
        table_free(&bigger);
        return -1;
    }
    for (size_t i = 0; i <= t->mask; i++) {
        if (!t->slots[i])
            continue;
        uint64_t second = t->seconds ? t->seconds[i] : 0;
        size_t s = slot_of(t->keys[i], second, bigger.mask);
        while (bigger.slots[s])
            s = (s + 1) & bigger.mask;
        bigger.keys[s] = t->keys[i];
        if (t->seconds)
            bigger.seconds[s] = second;
        bigger.slots[s] = t->slots[i];
    }
    table_free(t);
    *t = bigger;
    return 0;
}

typedef struct {
    Table t;
    int64_t *firsts;
    size_t count, cap;
    Py_ssize_t limit;
} Numbering;

enum { FOUND, ADDED, OVERFLOW, NO_MEMORY }; /* below OVERFLOW: go on */

static int numbering_init(Numbering *n, Py_ssize_t limit, int pairs) {
    n->count = 0;
    n->cap = 1024;
    n->limit = limit;
    n->firsts = PyMem_RawMalloc(n->cap * sizeof(int64_t));
    return (table_init(&n->t, 1024, pairs) < 0 || !n->firsts) ? -1 : 0;
}

static void numbering_free(Numbering *n) {
    table_free(&n->t);
    PyMem_RawFree(n->firsts);
}

/* The number of the key (key, second) seen at position i, given a new one if unseen. */
static inline int number_of(Numbering *n, uint64_t key, uint64_t second, Py_ssize_t i,
                            int32_t *id) {
    Table *t = &n->t;
    size_t s = slot_of(key, second, t->mask);
    while (t->slots[s] && (t->keys[s] != key || (t->seconds && t->seconds[s] != second)))
        s = (s + 1) & t->mask;
    if (t->slots[s]) {
        *id = t->slots[s] - 1;
        return FOUND;
    }
    if ((Py_ssize_t)n->count >= n->limit || n->count >= INT32_MAX - 1)
        return OVERFLOW;
    if (n->count == n->cap) {
        int64_t *grown = PyMem_RawRealloc(n->firsts, n->cap * 2 * sizeof(int64_t));
        if (!grown)
            return NO_MEMORY;
        n->firsts = grown;
        n->cap *= 2;
    }
    t->keys[s] = key;
    if (t->seconds)
        t->seconds[s] = second;
    t->slots[s] = (int32_t)n->count + 1;
    *id = (int32_t)n->count;
    n->firsts[n->count++] = i;
    if (n->count * 2 > t->mask + 1 && table_grow(t) < 0)
        return NO_MEMORY;
    return ADDED;
}

/* None on overflow, else the first positions as bytes of int64 (sets MemoryError itself). */
static PyObject *numbering_result(Numbering *n, int status) {
    if (status == OVERFLOW)
        return Py_NewRef(Py_None);
    if (status == NO_MEMORY)
        return PyErr_NoMemory();
    return PyBytes_FromStringAndSize((const char *)n->firsts,
                                     (Py_ssize_t)(n->count * sizeof(int64_t)));
}

static PyObject *factorize(PyObject *self, PyObject *args) {
    Py_buffer values, ids;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "y*w*n", &values, &ids, &limit))
        return NULL;
    Py_ssize_t n = values.len / (Py_ssize_t)sizeof(uint64_t);
    PyObject *result = NULL;
    if (ids.len < n * (Py_ssize_t)sizeof(int32_t)) {
        PyErr_SetString(PyExc_ValueError, "ids is shorter than values");
        goto done;
    }
    const uint64_t *v = values.buf;
    int32_t *out = ids.buf;
    Numbering numbering;
    int status = FOUND;
    Py_BEGIN_ALLOW_THREADS
    if (numbering_init(&numbering, limit, 0) < 0)
        status = NO_MEMORY;
    for (Py_ssize_t i = 0; i < n && status < OVERFLOW; i++)
        status = number_of(&numbering, v[i], 0, i, &out[i]);
    Py_END_ALLOW_THREADS
    result = numbering_result(&numbering, status);
    numbering_free(&numbering);
done:
    PyBuffer_Release(&values);
    PyBuffer_Release(&ids);
    return result;
}

static PyObject *flow_ids(PyObject *self, PyObject *args) {
    Py_buffer l3b, protob, srcb, dstb, sportb, dportb, idsb, swapb;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*w*w*n", &l3b, &protob, &srcb, &dstb, &sportb,
                          &dportb, &idsb, &swapb, &limit))
        return NULL;
    Py_ssize_t n = l3b.len;
    PyObject *result = NULL;
    if (protob.len != n || srcb.len != 4 * n || dstb.len != 4 * n || sportb.len != 2 * n ||
        dportb.len != 2 * n || idsb.len != 4 * n || swapb.len != n) {
        PyErr_SetString(PyExc_ValueError, "flow_ids: columns of different lengths or types");
        goto done;
    }
    const uint8_t *l3 = l3b.buf, *proto = protob.buf;
    const uint32_t *src = srcb.buf, *dst = dstb.buf;
    const uint16_t *sport = sportb.buf, *dport = dportb.buf;
    int32_t *ids = idsb.buf;
    uint8_t *swap = swapb.buf;
    Numbering numbering;
    int status = FOUND;
    Py_BEGIN_ALLOW_THREADS
    if (numbering_init(&numbering, limit, 1) < 0)
        status = NO_MEMORY;
    for (Py_ssize_t i = 0; i < n && status < OVERFLOW; i++) {
        uint64_t a = src[i], b = dst[i], pa = sport[i], pb = dport[i];
        int up = a > b || (a == b && pa > pb);
        swap[i] = (uint8_t)up;
        if (!l3[i]) {
            ids[i] = -1;
            continue;
        }
        uint64_t lo_a = up ? b : a, hi_a = up ? a : b, lo_p = up ? pb : pa, hi_p = up ? pa : pb;
        uint64_t key = ((uint64_t)(l3[i] == 6) << 56) | ((uint64_t)proto[i] << 48) |
                       (lo_p << 32) | lo_a;
        status = number_of(&numbering, key, (hi_p << 32) | hi_a, i, &ids[i]);
    }
    Py_END_ALLOW_THREADS
    result = numbering_result(&numbering, status);
    numbering_free(&numbering);
done:
    PyBuffer_Release(&l3b);
    PyBuffer_Release(&protob);
    PyBuffer_Release(&srcb);
    PyBuffer_Release(&dstb);
    PyBuffer_Release(&sportb);
    PyBuffer_Release(&dportb);
    PyBuffer_Release(&idsb);
    PyBuffer_Release(&swapb);
    return result;
}

static PyMethodDef methods[] = {
    {"factorize", factorize, METH_VARARGS, "Number equal uint64 values by first appearance."},
    {"flow_ids", flow_ids, METH_VARARGS, "Number the flows of packet columns in one pass."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_group", NULL, -1, methods};

PyMODINIT_FUNC PyInit__group(void) { return PyModule_Create(&module); }
