/* Several integer columns mixed into one 64-bit key per row, in C: the columns are read at
 * the rows asked for and mixed in one pass, where numpy gathers each column into a temporary
 * and makes three passes a column.
 *
 * ktrace/decode/mix.py holds the same mix in numpy; it is used when this module was not
 * built, and the tests run both and require identical results.
 *
 * mix_rows(columns, rows, out, k, last)
 *   columns: a tuple of unsigned integer buffers of 1, 2, 4 or 8 bytes an element, of equal
 *   length; rows: int32 or int64 positions into them; out: uint64 per row. Per column,
 *   h ^= value, h *= k, h ^= h >> 29; at the end h *= last.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define MAX_COLUMNS 16

/* Rows are mixed a block at a time, one column after another over the whole block: each
 * row's mix is a chain of multiplies that must wait for each other, and rows side by side
 * are independent chains the processor runs at once (row by row, the chain of one row was
 * the whole time: 15.5 against 8.4 ms, one thread, for seven columns of 1.1M rows). */
#define BLOCK 256

#define MIX_COLUMN(type)                                                                       \
    do {                                                                                       \
        const type *v = (const type *)cols[c].buf;                                             \
        for (Py_ssize_t j = 0; j < m; j++) {                                                   \
            uint64_t x = (h[j] ^ v[at[j]]) * k;                                                \
            h[j] = x ^ (x >> 29);                                                              \
        }                                                                                      \
    } while (0)

static PyObject *mix_rows(PyObject *self, PyObject *args) {
    PyObject *columns;
    Py_buffer rowsb, outb;
    unsigned long long k, last;
    if (!PyArg_ParseTuple(args, "O!y*w*KK", &PyTuple_Type, &columns, &rowsb, &outb, &k, &last))
        return NULL;
    Py_buffer cols[MAX_COLUMNS];
    int widths[MAX_COLUMNS];
    Py_ssize_t ncols = PyTuple_GET_SIZE(columns), got = 0, length = -1;
    Py_ssize_t n = outb.len / 8;
    Py_ssize_t width = n ? rowsb.len / n : 4;
    PyObject *result = NULL;
    if (ncols > MAX_COLUMNS || outb.len != 8 * n || (width != 4 && width != 8) ||
        rowsb.len != width * n) {
        PyErr_SetString(PyExc_ValueError, "mix_rows: rows and out of different lengths");
        goto done;
    }
    for (; got < ncols; got++) {
        PyObject *column = PyTuple_GET_ITEM(columns, got);
        if (PyObject_GetBuffer(column, &cols[got], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            goto done;
        Py_ssize_t size = cols[got].itemsize;
        if ((size != 1 && size != 2 && size != 4 && size != 8) ||
            (length >= 0 && cols[got].len / size != length)) {
            got++; /* acquired: released below */
            PyErr_SetString(PyExc_ValueError, "mix_rows: columns of different lengths or types");
            goto done;
        }
        widths[got] = (int)size;
        length = cols[got].len / size;
    }
    int bad = 0;
    uint64_t *out = outb.buf;
    Py_BEGIN_ALLOW_THREADS
    int64_t at[BLOCK];
    uint64_t h[BLOCK];
    for (Py_ssize_t base = 0; base < n && !bad; base += BLOCK) {
        Py_ssize_t m = n - base < BLOCK ? n - base : BLOCK;
        for (Py_ssize_t j = 0; j < m; j++) {
            int64_t r = width == 4 ? ((const int32_t *)rowsb.buf)[base + j]
                                   : ((const int64_t *)rowsb.buf)[base + j];
            if (r < 0 || r >= length) {
                bad = 1;
                break;
            }
            at[j] = r;
            h[j] = 0;
        }
        if (bad)
            break;
        for (Py_ssize_t c = 0; c < ncols; c++) {
            switch (widths[c]) {
            case 1:
                MIX_COLUMN(uint8_t);
                break;
            case 2:
                MIX_COLUMN(uint16_t);
                break;
            case 4:
                MIX_COLUMN(uint32_t);
                break;
            default:
                MIX_COLUMN(uint64_t);
            }
        }
        for (Py_ssize_t j = 0; j < m; j++)
            out[base + j] = h[j] * last;
    }
    Py_END_ALLOW_THREADS
    if (bad)
        PyErr_SetString(PyExc_IndexError, "mix_rows: a row outside the columns");
    else
        result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t c = 0; c < got; c++)
        PyBuffer_Release(&cols[c]);
    PyBuffer_Release(&rowsb);
    PyBuffer_Release(&outb);
    return result;
}

static PyMethodDef methods[] = {
    {"mix_rows", mix_rows, METH_VARARGS, "Mix integer columns, read at rows, into uint64 keys."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_mix", NULL, -1, methods};

PyMODINIT_FUNC PyInit__mix(void) { return PyModule_Create(&module); }
