/* Per-flow sums and extremes of the packet columns, in C: one pass over the packets where
 * numpy makes a bincount per chunk and per counter, and ufunc.at per extreme (a third of
 * the flow table's time on a 1M-packet capture).
 *
 * ktrace/analysis/flows.py holds the same in numpy (_time_spans_numpy, _counts_numpy); it is
 * used when this module was not built, and the tests run both and require identical results.
 *
 * spans(flow, ts, syn, first, last, first_syn)
 *   flow: int32 per packet, each in [0, m) where m is the length of the outputs; ts: int64
 *   per packet; syn: uint8 per packet (a SYN without ACK). first, last, first_syn: int64 of
 *   m, given filled with the identity of min or max, lowered or raised per flow to the
 *   earliest time, the latest, the earliest SYN.
 *
 * tally(flow, forward, wirelen, flags, win, proto, counts)
 *   flow as above; forward: uint8 per packet (sent by the flow's initiator); wirelen: uint32;
 *   flags, proto: uint8; win: uint16; counts: int64 of 10 * m, zeroed, one row of m per
 *   counter in the order of flows._COUNTS: packets and bytes each way, then over TCP
 *   segments: SYNs from the initiator, SYN-ACKs to it, RSTs each way, FINs, zero windows
 *   (a zero window on a segment without SYN, RST or FIN).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define TCP 6
#define FIN 0x01
#define SYN 0x02
#define RST 0x04
#define ACK 0x10
#define COUNTERS 10

static int sized(Py_buffer *b, Py_ssize_t n, Py_ssize_t width, const char *what) {
    if (b->len != n * width) {
        PyErr_Format(PyExc_ValueError, "%s: not %zd bytes a packet", what, width);
        return -1;
    }
    return 0;
}

/* Whether every flow number is in [0, m): checked before the pass writes by them. */
static int in_range(const int32_t *flow, Py_ssize_t n, Py_ssize_t m) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (flow[i] < 0 || flow[i] >= m) {
            PyErr_SetString(PyExc_ValueError, "a flow number outside the outputs");
            return -1;
        }
    return 0;
}

static PyObject *spans(PyObject *self, PyObject *args) {
    Py_buffer flowb, tsb, synb, firstb, lastb, synfb;
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*w*", &flowb, &tsb, &synb, &firstb, &lastb, &synfb))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = flowb.len / 4, m = firstb.len / 8;
    if (sized(&flowb, n, 4, "flow") < 0 || sized(&tsb, n, 8, "ts") < 0 ||
        sized(&synb, n, 1, "syn") < 0 || sized(&firstb, m, 8, "first") < 0 ||
        sized(&lastb, m, 8, "last") < 0 ||
        sized(&synfb, m, 8, "first_syn") < 0 || in_range(flowb.buf, n, m) < 0)
        goto done;
    const int32_t *flow = flowb.buf;
    const int64_t *ts = tsb.buf;
    const uint8_t *syn = synb.buf;
    int64_t *first = firstb.buf, *last = lastb.buf, *first_syn = synfb.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t f = flow[i];
        int64_t t = ts[i];
        if (t < first[f])
            first[f] = t;
        if (t > last[f])
            last[f] = t;
        if (syn[i] && t < first_syn[f])
            first_syn[f] = t;
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&flowb);
    PyBuffer_Release(&tsb);
    PyBuffer_Release(&synb);
    PyBuffer_Release(&firstb);
    PyBuffer_Release(&lastb);
    PyBuffer_Release(&synfb);
    return result;
}

static PyObject *tally(PyObject *self, PyObject *args) {
    Py_buffer flowb, fwb, wireb, flagsb, winb, protob, countsb;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*w*", &flowb, &fwb, &wireb, &flagsb, &winb, &protob,
                          &countsb))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = flowb.len / 4, m = countsb.len / (8 * COUNTERS);
    if (sized(&flowb, n, 4, "flow") < 0 || sized(&fwb, n, 1, "forward") < 0 ||
        sized(&wireb, n, 4, "wirelen") < 0 || sized(&flagsb, n, 1, "flags") < 0 ||
        sized(&winb, n, 2, "win") < 0 || sized(&protob, n, 1, "proto") < 0 ||
        sized(&countsb, m, 8 * COUNTERS, "counts") < 0 || in_range(flowb.buf, n, m) < 0)
        goto done;
    const int32_t *flow = flowb.buf;
    const uint8_t *fw = fwb.buf, *flags = flagsb.buf, *proto = protob.buf;
    const uint32_t *wirelen = wireb.buf;
    const uint16_t *win = winb.buf;
    int64_t *c = countsb.buf;
    int64_t *packets_ab = c, *packets_ba = c + m, *bytes_ab = c + 2 * m, *bytes_ba = c + 3 * m;
    int64_t *syns = c + 4 * m, *synacks = c + 5 * m, *rst_ab = c + 6 * m, *rst_ba = c + 7 * m;
    int64_t *fins = c + 8 * m, *zero = c + 9 * m;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t f = flow[i];
        int w = fw[i] != 0;
        if (w) {
            packets_ab[f]++;
            bytes_ab[f] += wirelen[i];
        } else {
            packets_ba[f]++;
            bytes_ba[f] += wirelen[i];
        }
        uint8_t g = flags[i];
        if (proto[i] != TCP || (!(g & (SYN | RST | FIN)) && win[i] != 0))
            continue;
        uint8_t kind = g & (SYN | ACK);
        syns[f] += kind == SYN && w;
        synacks[f] += kind == (SYN | ACK) && !w;
        if (g & RST)
            (w ? rst_ab : rst_ba)[f]++;
        fins[f] += (g & FIN) != 0;
        zero[f] += win[i] == 0 && !(g & (RST | SYN | FIN));
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&flowb);
    PyBuffer_Release(&fwb);
    PyBuffer_Release(&wireb);
    PyBuffer_Release(&flagsb);
    PyBuffer_Release(&winb);
    PyBuffer_Release(&protob);
    PyBuffer_Release(&countsb);
    return result;
}

static PyMethodDef methods[] = {
    {"spans", spans, METH_VARARGS, "Per flow: earliest and latest time, earliest SYN."},
    {"tally", tally, METH_VARARGS, "Per flow: packets and bytes each way, TCP flag counts."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tally", NULL, -1, methods};

PyMODINIT_FUNC PyInit__tally(void) { return PyModule_Create(&module); }
