/* The one sequential step of TCP health, in C: walk each direction's segments in file order,
 * keeping the highest sequence end sent so far. numpy does it with running maxima over packed
 * keys, a dozen passes; this is one.
 *
 * ktrace/analysis/tcp_sequence.py holds the same walk in numpy (_behind_numpy); it is used
 * when this module was not built, and the tests run both and require identical results.
 *
 * behind(tcp_flags, paylen, seq, rows, start, behind, rel, carries)
 *   tcp_flags (uint8), paylen (uint32), seq (uint32): packet columns; rows: int32 or int64,
 *   the packets in walking order; start: uint8 per row, 1 where a direction begins (the first
 *   row always does). Filled per row: behind (uint8), 1 when the segment ends at or below
 *   what its direction already sent and is not a keep-alive; rel (uint32), its sequence
 *   relative to the direction's first; carries (uint8), 1 when it takes sequence space.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define TCP_FIN 0x01
#define TCP_SYN 0x02

static PyObject *behind(PyObject *self, PyObject *args) {
    Py_buffer flagsb, paylenb, seqb, rowsb, startb, behindb, relb, carriesb;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*w*w*", &flagsb, &paylenb, &seqb, &rowsb, &startb,
                          &behindb, &relb, &carriesb))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t packets = flagsb.len, n = startb.len;
    Py_ssize_t width = n ? rowsb.len / n : 4;
    if (paylenb.len != 4 * packets || seqb.len != 4 * packets || (width != 4 && width != 8) ||
        rowsb.len != width * n || behindb.len != n || relb.len != 4 * n || carriesb.len != n) {
        PyErr_SetString(PyExc_ValueError, "behind: columns of different lengths or types");
        goto done;
    }
    const uint8_t *flags = flagsb.buf, *start = startb.buf;
    const uint32_t *paylen = paylenb.buf, *seq = seqb.buf;
    uint8_t *out_behind = behindb.buf, *out_carries = carriesb.buf;
    uint32_t *out_rel = relb.buf;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    int64_t base = 0, sent = -1; /* the direction's first sequence, the highest end so far */
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t r = width == 4 ? ((const int32_t *)rowsb.buf)[i] : ((const int64_t *)rowsb.buf)[i];
        if (r < 0 || r >= packets) {
            bad = 1;
            break;
        }
        int64_t syn = (flags[r] & TCP_SYN) != 0, fin = (flags[r] & TCP_FIN) != 0;
        int64_t length = paylen[r];
        int same = !start[i];
        if (!same) {
            base = seq[r];
            sent = -1;
        }
        int64_t rel = ((int64_t)seq[r] - base) & 0xFFFFFFFF;
        int64_t end = rel + length + syn + fin;
        int carries = length > 0 || syn || fin;
        int keepalive = length <= 1 && rel + 1 == sent && !syn && !fin;
        out_behind[i] = (uint8_t)(carries && same && end <= sent && !keepalive);
        out_rel[i] = (uint32_t)rel;
        out_carries[i] = (uint8_t)carries;
        if (end > sent)
            sent = end;
    }
    Py_END_ALLOW_THREADS
    if (bad)
        PyErr_SetString(PyExc_IndexError, "behind: a row outside the columns");
    else
        result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&flagsb);
    PyBuffer_Release(&paylenb);
    PyBuffer_Release(&seqb);
    PyBuffer_Release(&rowsb);
    PyBuffer_Release(&startb);
    PyBuffer_Release(&behindb);
    PyBuffer_Release(&relb);
    PyBuffer_Release(&carriesb);
    return result;
}

static PyMethodDef methods[] = {
    {"behind", behind, METH_VARARGS, "Walk TCP directions for segments already sent."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sequence", NULL, -1, methods};

PyMODINIT_FUNC PyInit__sequence(void) { return PyModule_Create(&module); }
