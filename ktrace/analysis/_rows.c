/* Rows of JSON objects laid out from their columns, in C: one pass to size the output, one to
 * copy every piece into it. In Python the pieces are interleaved into one list of
 * rows x columns entries and joined; that list and the per-row lookups into a column's
 * vocabulary were most of the time of a --json DNS section.
 *
 * ktrace/analysis/row_columns.py holds the same layout in Python (json_rows_python); it is
 * used when this module was not built, and the tests run both and require identical results.
 *
 * json_rows(columns, n) -> bytes
 *   columns: a sequence of (kind, a, b), one a column, whose row i is written as
 *     kind 0: a[i], a list of bytes;
 *     kind 1: a[b[i]], a list of bytes and b an int64 buffer of codes into it;
 *     kind 2: a then b[i] in decimal, a bytes and b an int64 buffer;
 *     kind 3: b bytes from a + i * b, a buffer of n rows of b bytes each.
 *   Each piece holds a key and a value ('"name":value', the columns after the first starting
 *   with a comma). The result is n objects, '{' + the row's pieces + '}', separated by
 *   commas.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { PER_ROW, CODED, INTEGERS, FIXED };

typedef struct {
    int kind;
    PyObject *pieces; /* PER_ROW, CODED: a list; INTEGERS: the key, bytes */
    Py_buffer data;   /* CODED: codes; INTEGERS: values; FIXED: the rows. Zeroed if none */
    Py_ssize_t width; /* FIXED */
} Column;

static int error(PyObject *type, const char *message) {
    PyErr_SetString(type, message);
    return -1;
}

static int int64s(PyObject *obj, Py_ssize_t n, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view->len != 8 * n)
        return error(PyExc_ValueError, "json_rows: numbers are not int64, one a row");
    return 0;
}

static int column_of(PyObject *item, Py_ssize_t n, Column *c) {
    PyObject *a, *b;
    if (!PyArg_ParseTuple(item, "iOO", &c->kind, &a, &b))
        return -1;
    c->pieces = a;
    switch (c->kind) {
    case PER_ROW:
        if (!PyList_Check(a) || PyList_GET_SIZE(a) != n)
            return error(PyExc_ValueError, "json_rows: a column of pieces is not one a row");
        return 0;
    case CODED: {
        if (!PyList_Check(a))
            return error(PyExc_TypeError, "json_rows: a vocabulary is not a list");
        if (int64s(b, n, &c->data) < 0)
            return -1;
        const int64_t *code = c->data.buf;
        for (Py_ssize_t i = 0; i < n; i++)
            if (code[i] < 0 || code[i] >= PyList_GET_SIZE(a))
                return error(PyExc_ValueError, "json_rows: a code outside its vocabulary");
        return 0;
    }
    case INTEGERS:
        if (!PyBytes_Check(a))
            return error(PyExc_TypeError, "json_rows: a key is not bytes");
        return int64s(b, n, &c->data);
    case FIXED:
        c->width = PyLong_AsSsize_t(b);
        if (c->width < 0)
            return PyErr_Occurred() ? -1 : error(PyExc_ValueError, "json_rows: a width < 0");
        if (PyObject_GetBuffer(a, &c->data, PyBUF_C_CONTIGUOUS) < 0)
            return -1;
        if (c->data.len != c->width * n)
            return error(PyExc_ValueError, "json_rows: fixed rows are not one a row");
        return 0;
    default:
        return error(PyExc_ValueError, "json_rows: no such kind of column");
    }
}

/* The decimal digits of v, written backwards from `end`; returns where they start. */
static char *decimal(int64_t v, char *end) {
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        *--end = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--end = '-';
    return end;
}

/* Row i's piece of a column of pieces (PER_ROW, CODED): a borrowed bytes object */
static PyObject *piece(const Column *c, Py_ssize_t i) {
    Py_ssize_t k = c->kind == CODED ? (Py_ssize_t)((const int64_t *)c->data.buf)[i] : i;
    return PyList_GET_ITEM(c->pieces, k);
}

/* Bytes of row i's piece; -1 (an error set) when a piece is not bytes. */
static Py_ssize_t piece_size(const Column *c, Py_ssize_t i) {
    char digits[24];
    switch (c->kind) {
    case INTEGERS: {
        char *end = digits + sizeof digits;
        char *at = decimal(((const int64_t *)c->data.buf)[i], end);
        return PyBytes_GET_SIZE(c->pieces) + (end - at);
    }
    case FIXED:
        return c->width;
    default: {
        PyObject *p = piece(c, i);
        if (!PyBytes_Check(p))
            return error(PyExc_TypeError, "json_rows: a piece is not bytes");
        return PyBytes_GET_SIZE(p);
    }
    }
}

static char *write_piece(const Column *c, Py_ssize_t i, char *out) {
    switch (c->kind) {
    case INTEGERS: {
        char digits[24], *end = digits + sizeof digits;
        char *at = decimal(((const int64_t *)c->data.buf)[i], end);
        memcpy(out, PyBytes_AS_STRING(c->pieces), (size_t)PyBytes_GET_SIZE(c->pieces));
        out += PyBytes_GET_SIZE(c->pieces);
        memcpy(out, at, (size_t)(end - at));
        return out + (end - at);
    }
    case FIXED:
        memcpy(out, (const char *)c->data.buf + i * c->width, (size_t)c->width);
        return out + c->width;
    default: {
        PyObject *p = piece(c, i);
        memcpy(out, PyBytes_AS_STRING(p), (size_t)PyBytes_GET_SIZE(p));
        return out + PyBytes_GET_SIZE(p);
    }
    }
}

static PyObject *json_rows(PyObject *self, PyObject *args) {
    PyObject *seq;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "On", &seq, &n))
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "json_rows: columns must be a sequence");
    if (fast == NULL)
        return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(fast);
    Column *columns = PyMem_Calloc(k ? (size_t)k : 1, sizeof(Column));
    PyObject *result = NULL;
    if (columns == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < k; j++)
        if (column_of(PySequence_Fast_GET_ITEM(fast, j), n, &columns[j]) < 0)
            goto done;
    /* braces and separating commas, then every piece */
    Py_ssize_t size = n ? 3 * n - 1 : 0;
    for (Py_ssize_t j = 0; j < k; j++) {
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t got = piece_size(&columns[j], i);
            if (got < 0)
                goto done;
            size += got;
        }
    }
    result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL)
        goto done;
    char *out = PyBytes_AS_STRING(result);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i)
            *out++ = ',';
        *out++ = '{';
        for (Py_ssize_t j = 0; j < k; j++)
            out = write_piece(&columns[j], i, out);
        *out++ = '}';
    }
done:
    for (Py_ssize_t j = 0; columns != NULL && j < k; j++)
        if (columns[j].data.obj) /* zeroed where never taken */
            PyBuffer_Release(&columns[j].data);
    PyMem_Free(columns);
    Py_DECREF(fast);
    return result;
}

static PyMethodDef methods[] = {
    {"json_rows", json_rows, METH_VARARGS, "JSON objects laid out from their columns' pieces."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rows", NULL, -1, methods};

PyMODINIT_FUNC PyInit__rows(void) { return PyModule_Create(&module); }
