/* The one sequential step of TCP health, in C: walk each direction's segments in file order,
 * keeping the highest sequence end sent so far. numpy does it with running maxima over packed
 * keys, a dozen passes; this is one.
 *
 * ktrace/kernels/sequence.py holds each function's twin in numpy; it is used when this module
 * was not built, and the tests run both and require identical results.
 *
 * behind(tcp_flags, paylen, seq, rows, start, behind, rel, carries)
 *   tcp_flags (uint8), paylen (uint32), seq (uint32): packet columns; rows: int32 or int64,
 *   the packets in walking order; start: uint8 per row, 1 where a direction begins (the first
 *   row always does). Filled per row: behind (uint8), 1 when the segment ends at or below
 *   what its direction already sent and is not a keep-alive; rel (uint32), its sequence
 *   relative to the direction's first; carries (uint8), 1 when it takes sequence space.
 *
 * resent(start, rel, carries, behind, suspects, again, late)
 *   start, rel, carries, behind: per row, as behind() gives them; suspects: sorted int64 keys
 *   (direction << 34 | rel) of the rows behind, the direction counted from 0 at each start.
 *   Filled per row: again (uint8), 1 for a row behind with a segment starting at its key
 *   earlier in the walk (a retransmission); late (uint8), 1 for the other rows behind (a
 *   gap filled late). tcp_sequence._resent does the same by binary search a chunk at a time.
 *
 * handshakes(flow, point, forward, flags, proto, ts, points, t_syn, t_synack, t_ack)
 *   Packet columns: flow (int32, -1 outside any: the spare last flow), point (uint16, below
 *   `points`), forward (uint8), flags, proto (uint8), ts (int64). The tables: int64 per (flow,
 *   point), flat, (flows + 1) x points, given filled with the largest int64; lowered to the
 *   earliest SYN from the initiator, SYN/ACK to it, and ACK from it at or after the SYN/ACK.
 *   sequence._handshakes_numpy does the same with ufunc.at.
 *
 * unrecorded(flags, paylen, ts, point, rows, start, rel, late, tail_ns, out)
 *   Packet columns flags (uint8), paylen (uint32), ts (int64), point (uint16); per row in
 *   walking order: rows (int32 or int64), start, rel and late (as behind() and resent() give
 *   them). Adds to out (int64 per point) the data segments each point did not record: per
 *   direction, the bytes of the gaps a data segment opened beyond what had been sent (judged
 *   only more than tail_ns before the point's last row), less the bytes late segments brought,
 *   in segments of the direction's largest. sequence._unrecorded_numpy does it in chunks.
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

#define KEY_SHIFT 34

/* The position of key among n sorted keys, -1 when absent. */
static Py_ssize_t find(const int64_t *keys, Py_ssize_t n, int64_t key) {
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (keys[mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && keys[lo] == key ? lo : -1;
}

static PyObject *resent(PyObject *self, PyObject *args) {
    Py_buffer startb, relb, carriesb, behindb, suspectsb, againb, lateb;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*w*", &startb, &relb, &carriesb, &behindb,
                          &suspectsb, &againb, &lateb))
        return NULL;
    PyObject *result = NULL;
    uint8_t *seen = NULL;
    Py_ssize_t n = startb.len, m = suspectsb.len / 8;
    if (relb.len != 4 * n || carriesb.len != n || behindb.len != n || suspectsb.len != 8 * m ||
        againb.len != n || lateb.len != n) {
        PyErr_SetString(PyExc_ValueError, "resent: columns of different lengths or types");
        goto done;
    }
    seen = PyMem_Calloc(m ? (size_t)m : 1, 1);
    if (seen == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const uint8_t *start = startb.buf, *carries = carriesb.buf, *behind_ = behindb.buf;
    const uint32_t *rel = relb.buf;
    const int64_t *suspects = suspectsb.buf;
    uint8_t *again = againb.buf, *late = lateb.buf;
    Py_BEGIN_ALLOW_THREADS
    int64_t direction = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        direction += start[i] != 0;
        int repeated = 0;
        if (carries[i]) {
            Py_ssize_t k = find(suspects, m, (direction << KEY_SHIFT) | (int64_t)rel[i]);
            if (k >= 0) {
                repeated = seen[k];
                seen[k] = 1;
            }
        }
        again[i] = (uint8_t)(behind_[i] && repeated);
        late[i] = (uint8_t)(behind_[i] && !repeated);
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(seen);
    PyBuffer_Release(&startb);
    PyBuffer_Release(&relb);
    PyBuffer_Release(&carriesb);
    PyBuffer_Release(&behindb);
    PyBuffer_Release(&suspectsb);
    PyBuffer_Release(&againb);
    PyBuffer_Release(&lateb);
    return result;
}

#define TCP 6
#define TCP_RST 0x04
#define TCP_ACK 0x10

static PyObject *handshakes(PyObject *self, PyObject *args) {
    Py_buffer flowb, pointb, fwb, flagsb, protob, tsb, synb, synackb, ackb;
    Py_ssize_t points;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*nw*w*w*", &flowb, &pointb, &fwb, &flagsb, &protob,
                          &tsb, &points, &synb, &synackb, &ackb))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = flowb.len / 4, size = synb.len / 8;
    if (flowb.len != 4 * n || pointb.len != 2 * n || fwb.len != n || flagsb.len != n ||
        protob.len != n || tsb.len != 8 * n || synackb.len != synb.len || ackb.len != synb.len ||
        points < 1 || size % points || size / points < 1) {
        PyErr_SetString(PyExc_ValueError, "handshakes: columns of different lengths or types");
        goto done;
    }
    const int32_t *flow = flowb.buf;
    const uint16_t *point = pointb.buf;
    const uint8_t *fw = fwb.buf, *flags = flagsb.buf, *proto = protob.buf;
    const int64_t *ts = tsb.buf;
    int64_t *t_syn = synb.buf, *t_synack = synackb.buf, *t_ack = ackb.buf;
    int bad = 0;
    Py_ssize_t flows = size / points - 1; /* and the spare last, for the rows of none */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t pass = 0; pass < 2 && !bad; pass++) {
        for (Py_ssize_t i = 0; i < n; i++) {
            if (proto[i] != TCP)
                continue;
            int64_t f = flow[i] < 0 ? flows : flow[i];
            if (f > flows || point[i] >= points) {
                bad = 1;
                break;
            }
            Py_ssize_t at = (Py_ssize_t)f * points + point[i];
            uint8_t g = flags[i];
            if (pass == 0) {
                uint8_t kind = g & (TCP_SYN | TCP_ACK);
                if (kind == TCP_SYN && fw[i] && ts[i] < t_syn[at])
                    t_syn[at] = ts[i];
                else if (kind == (TCP_SYN | TCP_ACK) && !fw[i] && ts[i] < t_synack[at])
                    t_synack[at] = ts[i];
            } else if ((g & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_ACK && fw[i] &&
                       ts[i] >= t_synack[at] && ts[i] < t_ack[at])
                t_ack[at] = ts[i];
        }
    }
    Py_END_ALLOW_THREADS
    if (bad)
        PyErr_SetString(PyExc_ValueError, "handshakes: a flow or point outside the tables");
    else
        result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&flowb);
    PyBuffer_Release(&pointb);
    PyBuffer_Release(&fwb);
    PyBuffer_Release(&flagsb);
    PyBuffer_Release(&protob);
    PyBuffer_Release(&tsb);
    PyBuffer_Release(&synb);
    PyBuffer_Release(&synackb);
    PyBuffer_Release(&ackb);
    return result;
}

static void flush_gaps(int64_t opened, int64_t filled, int64_t largest, int64_t at,
                       int64_t *out) {
    int64_t lost = opened - filled;
    if (lost > 0)
        out[at] += (lost + (largest > 1 ? largest : 1) - 1) / (largest > 1 ? largest : 1);
}

static PyObject *unrecorded(PyObject *self, PyObject *args) {
    Py_buffer flagsb, paylenb, tsb, pointb, rowsb, startb, relb, lateb, outb;
    long long tail;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*Lw*", &flagsb, &paylenb, &tsb, &pointb, &rowsb,
                          &startb, &relb, &lateb, &tail, &outb))
        return NULL;
    PyObject *result = NULL;
    int64_t *ends = NULL;
    Py_ssize_t packets = flagsb.len, n = startb.len, points = outb.len / 8;
    Py_ssize_t width = n ? rowsb.len / n : 4;
    if (paylenb.len != 4 * packets || tsb.len != 8 * packets || pointb.len != 2 * packets ||
        (width != 4 && width != 8) || rowsb.len != width * n || relb.len != 4 * n ||
        lateb.len != n || outb.len != 8 * points || points < 1) {
        PyErr_SetString(PyExc_ValueError, "unrecorded: columns of different lengths or types");
        goto done;
    }
    ends = PyMem_Malloc(points * sizeof(int64_t));
    if (!ends) {
        PyErr_NoMemory();
        goto done;
    }
    const uint8_t *flags = flagsb.buf, *start = startb.buf, *late = lateb.buf;
    const uint32_t *paylen = paylenb.buf, *rel = relb.buf;
    const int64_t *ts = tsb.buf;
    const uint16_t *point = pointb.buf;
    int64_t *out = outb.buf;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t p = 0; p < points; p++)
        ends[p] = INT64_MIN;
    for (Py_ssize_t i = 0; i < n && !bad; i++) {
        int64_t r = width == 4 ? ((const int32_t *)rowsb.buf)[i] : ((const int64_t *)rowsb.buf)[i];
        if (r < 0 || r >= packets || point[r] >= points)
            bad = 1;
        else if (ts[r] > ends[point[r]])
            ends[point[r]] = ts[r];
    }
    /* per direction: gap bytes opened, bytes filled late, its largest segment, its point */
    int64_t opened = 0, filled = 0, largest = 0, at = 0, reach = 0;
    for (Py_ssize_t i = 0; i < n && !bad; i++) {
        int64_t r = width == 4 ? ((const int32_t *)rowsb.buf)[i] : ((const int64_t *)rowsb.buf)[i];
        int same = !start[i];
        if (!same) {
            if (i)
                flush_gaps(opened, filled, largest, at, out);
            opened = filled = largest = 0;
            at = point[r];
        }
        int64_t size = paylen[r], first = rel[i];
        int64_t syn_fin = ((flags[r] & TCP_SYN) != 0) + ((flags[r] & TCP_FIN) != 0);
        int ahead = first < ((int64_t)1 << 31); /* else before the direction's first row */
        int judged = ts[r] + tail <= ends[point[r]];
        if (ahead && same && size > 0 && judged && first > reach)
            opened += first - reach;
        if (late[i])
            filled += size;
        if (size > largest)
            largest = size;
        /* what was sent so far: a pure ACK's number is where the next byte goes, sent or not */
        int64_t sent = ahead && (size > 0 || syn_fin > 0) ? first + size + syn_fin : 0;
        if (!same || sent > reach)
            reach = same ? sent : (sent > 0 ? sent : 0);
    }
    if (n && !bad)
        flush_gaps(opened, filled, largest, at, out);
    Py_END_ALLOW_THREADS
    if (bad)
        PyErr_SetString(PyExc_ValueError, "unrecorded: a row or point outside the columns");
    else
        result = Py_NewRef(Py_None);
done:
    PyMem_Free(ends);
    PyBuffer_Release(&flagsb);
    PyBuffer_Release(&paylenb);
    PyBuffer_Release(&tsb);
    PyBuffer_Release(&pointb);
    PyBuffer_Release(&rowsb);
    PyBuffer_Release(&startb);
    PyBuffer_Release(&relb);
    PyBuffer_Release(&lateb);
    PyBuffer_Release(&outb);
    return result;
}

static PyMethodDef methods[] = {
    {"handshakes", handshakes, METH_VARARGS, "Earliest SYN, SYN/ACK and ACK per flow and point."},
    {"behind", behind, METH_VARARGS, "Walk TCP directions for segments already sent."},
    {"resent", resent, METH_VARARGS, "Tell retransmissions from late segments, in one pass."},
    {"unrecorded", unrecorded, METH_VARARGS, "Count the data segments each point missed."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sequence", NULL, -1, methods};

PyMODINIT_FUNC PyInit__sequence(void) { return PyModule_Create(&module); }
