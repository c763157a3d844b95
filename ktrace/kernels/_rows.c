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
 *     kind 3: a then the time b[i] (int64 ns since the epoch) as an ISO 8601 string to the
 *       nearest microsecond, UTC: "2024-01-02T03:04:05.678901+00:00";
 *     kind 4: a then the milliseconds of b[i] (int64 microseconds) as the shortest decimal
 *       that reads back as the float b[i] / 1000 (2.22, 1.0, -0.005), or null for INT64_MIN;
 *       row_columns.py keeps values of 2**50 and more from it.
 *   Each piece holds a key and a value ('"name":value', the columns after the first starting
 *   with a comma). The result is n objects, '{' + the row's pieces + '}', separated by
 *   commas.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { PER_ROW, CODED, INTEGERS, TIMES, MILLIS };

#define TIME_WIDTH 34 /* '"' + 26 + "+00:00" + '"' */
#define DAY_US 86400000000LL

typedef struct {
    int kind;
    PyObject *pieces; /* PER_ROW, CODED: a list; INTEGERS, TIMES, MILLIS: the key, bytes */
    Py_buffer data;   /* CODED: codes; else the values. Zeroed if none */
    /* CODED: each piece of the vocabulary, read once: its bytes and size (-1: not bytes) */
    const char **text;
    Py_ssize_t *size;
} Column;

/* Bytes a number's piece can take past its key: 20 for an int64 in decimal, 22 for
 * milliseconds ("-9223372036854775.808") or "null". The size pass counts these instead of
 * writing each number twice; the result is cut to what was written. */
#define INTEGER_MAX 20
#define MILLIS_MAX 22

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
        Py_ssize_t words = PyList_GET_SIZE(a);
        for (Py_ssize_t i = 0; i < n; i++)
            if (code[i] < 0 || code[i] >= words)
                return error(PyExc_ValueError, "json_rows: a code outside its vocabulary");
        c->text = PyMem_Calloc(words ? (size_t)words : 1, sizeof(char *));
        c->size = PyMem_Calloc(words ? (size_t)words : 1, sizeof(Py_ssize_t));
        if (c->text == NULL || c->size == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t w = 0; w < words; w++) {
            PyObject *p = PyList_GET_ITEM(a, w);
            c->text[w] = PyBytes_Check(p) ? PyBytes_AS_STRING(p) : NULL;
            c->size[w] = PyBytes_Check(p) ? PyBytes_GET_SIZE(p) : -1;
        }
        return 0;
    }
    case INTEGERS:
    case TIMES:
    case MILLIS:
        if (!PyBytes_Check(a))
            return error(PyExc_TypeError, "json_rows: a key is not bytes");
        return int64s(b, n, &c->data);
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

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static void two_digits(char *at, int64_t v) {
    at[0] = (char)('0' + v / 10);
    at[1] = (char)('0' + v % 10);
}

/* The date of the last time written: a column's times nearly all fall on a few days, and
 * the date is most of a time's arithmetic. */
typedef struct {
    int64_t day;
    char text[10]; /* YYYY-MM-DD */
} Day;

/* The date of a day number, by Howard Hinnant's civil_from_days. */
static void date_of(int64_t day, char *out) {
    int64_t z = day + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t month = mp < 10 ? mp + 3 : mp - 9;
    int64_t year = yoe + era * 400 + (month <= 2);
    two_digits(out, year / 100);
    two_digits(out + 2, year % 100);
    out[4] = '-';
    two_digits(out + 5, month);
    out[7] = '-';
    two_digits(out + 8, doy - (153 * mp + 2) / 5 + 1);
}

/* TIME_WIDTH bytes: the time as a JSON string, rounded to the microsecond (halves up, and
 * wrapping past the largest int64 as numpy does). */
static void iso_time(int64_t ts, char *out, Day *last) {
    int64_t micros = floor_div((int64_t)((uint64_t)ts + 500u), 1000);
    int64_t day = floor_div(micros, DAY_US), rest = micros - day * DAY_US;
    if (day != last->day) {
        date_of(day, last->text);
        last->day = day;
    }
    int64_t seconds = rest / 1000000, fraction = rest % 1000000;
    out[0] = '"';
    memcpy(out + 1, last->text, 10);
    out[11] = 'T';
    two_digits(out + 12, seconds / 3600);
    out[14] = ':';
    two_digits(out + 15, seconds / 60 % 60);
    out[17] = ':';
    two_digits(out + 18, seconds % 60);
    out[20] = '.';
    two_digits(out + 21, fraction / 10000);
    two_digits(out + 23, fraction / 100 % 100);
    two_digits(out + 25, fraction % 100);
    memcpy(out + 27, "+00:00\"", 7);
}

/* Milliseconds of v microseconds, written backwards from `end`: the whole part, a point and
 * the thousandths without their trailing zeros (one digit at least), as Python and orjson
 * write v / 1000 where it is below 2**50. */
static char *millis(int64_t v, char *end) {
    if (v == INT64_MIN) {
        end -= 4;
        memcpy(end, "null", 4);
        return end;
    }
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    unsigned fraction = (unsigned)(u % 1000);
    int digits = 3;
    for (; digits > 1 && fraction % 10 == 0; digits--)
        fraction /= 10;
    for (int k = 0; k < digits; k++, fraction /= 10)
        *--end = (char)('0' + fraction % 10);
    *--end = '.';
    end = decimal((int64_t)(u / 1000), end);
    if (v < 0)
        *--end = '-';
    return end;
}

/* Bytes row i's piece takes at most (numbers) or exactly (the rest); -1 when a piece is not
 * bytes. Reads only what the caller holds alive (its lists, their bytes, the buffers):
 * called without the GIL, it sets no error. */
static Py_ssize_t piece_size(const Column *c, Py_ssize_t i) {
    switch (c->kind) {
    case INTEGERS:
        return PyBytes_GET_SIZE(c->pieces) + INTEGER_MAX;
    case MILLIS:
        return PyBytes_GET_SIZE(c->pieces) + MILLIS_MAX;
    case TIMES:
        return PyBytes_GET_SIZE(c->pieces) + TIME_WIDTH;
    case CODED:
        return c->size[((const int64_t *)c->data.buf)[i]];
    default: {
        PyObject *p = PyList_GET_ITEM(c->pieces, i);
        return PyBytes_Check(p) ? PyBytes_GET_SIZE(p) : -1;
    }
    }
}

/* n bytes from src to dst, returning dst + n. Most pieces are a key and a short value of
 * under 32 bytes: copied by fixed-size moves the compiler inlines (two that may overlap),
 * where a call into memcpy per piece cost as much as the rest of the layout. */
static inline char *put(char *dst, const char *src, size_t n) {
    if (n <= 16) {
        if (n >= 8) {
            uint64_t a, b;
            memcpy(&a, src, 8);
            memcpy(&b, src + n - 8, 8);
            memcpy(dst, &a, 8);
            memcpy(dst + n - 8, &b, 8);
        } else if (n >= 4) {
            uint32_t a, b;
            memcpy(&a, src, 4);
            memcpy(&b, src + n - 4, 4);
            memcpy(dst, &a, 4);
            memcpy(dst + n - 4, &b, 4);
        } else {
            for (size_t k = 0; k < n; k++)
                dst[k] = src[k];
        }
        return dst + n;
    }
    if (n <= 32) {
        char a[16], b[16];
        memcpy(a, src, 16);
        memcpy(b, src + n - 16, 16);
        memcpy(dst, a, 16);
        memcpy(dst + n - 16, b, 16);
        return dst + n;
    }
    memcpy(dst, src, n);
    return dst + n;
}

static char *write_piece(const Column *c, Py_ssize_t i, char *out, Day *last) {
    switch (c->kind) {
    case INTEGERS:
    case MILLIS: {
        char digits[24], *end = digits + sizeof digits;
        int64_t v = ((const int64_t *)c->data.buf)[i];
        char *at = c->kind == MILLIS ? millis(v, end) : decimal(v, end);
        out = put(out, PyBytes_AS_STRING(c->pieces), (size_t)PyBytes_GET_SIZE(c->pieces));
        return put(out, at, (size_t)(end - at));
    }
    case TIMES:
        out = put(out, PyBytes_AS_STRING(c->pieces), (size_t)PyBytes_GET_SIZE(c->pieces));
        iso_time(((const int64_t *)c->data.buf)[i], out, last);
        return out + TIME_WIDTH;
    case CODED: {
        int64_t k = ((const int64_t *)c->data.buf)[i];
        return put(out, c->text[k], (size_t)c->size[k]);
    }
    default: {
        PyObject *p = PyList_GET_ITEM(c->pieces, i);
        return put(out, PyBytes_AS_STRING(p), (size_t)PyBytes_GET_SIZE(p));
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
    /* Braces and separating commas, then every piece; then the copies. Both passes read
     * only what this call holds alive and write only its own new bytes: they run without
     * the GIL, so that rows are laid out on one thread while another makes the next. */
    Py_ssize_t size = n ? 3 * n - 1 : 0;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < k && !bad; j++) {
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t got = piece_size(&columns[j], i);
            if (got < 0) {
                bad = 1;
                break;
            }
            size += got;
        }
    }
    Py_END_ALLOW_THREADS
    if (bad) {
        error(PyExc_TypeError, "json_rows: a piece is not bytes");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL)
        goto done;
    char *start = PyBytes_AS_STRING(result), *out = start;
    Day last = {INT64_MIN, {0}};
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i)
            *out++ = ',';
        *out++ = '{';
        for (Py_ssize_t j = 0; j < k; j++)
            out = write_piece(&columns[j], i, out, &last);
        *out++ = '}';
    }
    Py_END_ALLOW_THREADS
    if (out - start < size)
        _PyBytes_Resize(&result, out - start); /* numbers took less than their most */
done:
    for (Py_ssize_t j = 0; columns != NULL && j < k; j++) {
        if (columns[j].data.obj) /* zeroed where never taken */
            PyBuffer_Release(&columns[j].data);
        PyMem_Free(columns[j].text);
        PyMem_Free((void *)columns[j].size);
    }
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
