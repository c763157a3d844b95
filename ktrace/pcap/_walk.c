/* The one sequential step of reading a capture, in C: follow record lengths and copy each
 * record's header window into one contiguous buffer. Everything after it is vectorised numpy.
 *
 * ktrace/pcap/hot.py holds the same loop in Python; it is used when this module was not
 * built, and the tests run both and require identical results.
 *
 * walk(buffer, start, stop, budget, mode, swap, window, max_caplen)
 *   -> (data_offsets: bytes of int64, rows: bytes, end: int, reason: int)
 *
 * mode 16 or 24: classic pcap record header length (24: Kuznetzov's variant). A row is the
 *   record header + `window` packet bytes; the data offset is record + header.
 * mode 0: pcapng, consecutive Enhanced Packet Blocks only. A row is the 24 bytes from the
 *   block length field on (length, interface, ts high, ts low, caplen, original length) +
 *   `window` packet bytes; the data offset is block + 28.
 * Rows past the end of the buffer are zero padded. The walk stops at `stop`, after `budget`
 * bytes, at the end of the buffer, or at a record it does not take (reason 1: a classic caplen
 * over max_caplen; a pcapng block that is not a well-formed EPB): the caller deals with that
 * record from `end`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* rows fetched ahead of the copy: their addresses are known from the first pass */
#define AHEAD 8
/* The first pass reads each record's length to find the next: a chain of loads that waited
 * on every new page of the mapping (88% of the pass on one instruction). Touching the file
 * this far ahead of the record being read, every PREFETCH_STEP bytes, has the pages and
 * lines there by the time the chain reaches them (1.1 GB bench: indexing 0.24 -> 0.18 s,
 * 0.42 -> 0.31 CPU seconds; from one touch a page to every line, and 4 to 32 KB ahead, all
 * gave most of it). */
#define PREFETCH_BYTES 16384
#define PREFETCH_STEP 256

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : (Py_ssize_t)1 << 16;
    while (cap < b->len + extra)
        cap *= 2;
    /* Raw allocator: this runs without the GIL. */
    char *grown = PyMem_RawRealloc(b->data, (size_t)cap);
    if (grown == NULL)
        return -1;
    b->data = grown;
    b->cap = cap;
    return 0;
}

static inline uint32_t read32(const unsigned char *p, int swap) {
    uint32_t v;
    memcpy(&v, p, 4);
    return swap ? __builtin_bswap32(v) : v;
}

/* Copy [from, from + size) of the buffer, zero padding what lies past its end. */
static inline void copy_row(char *dst, const unsigned char *buf, Py_ssize_t len,
                            Py_ssize_t from, Py_ssize_t size) {
    Py_ssize_t have = len - from;
    if (have >= size) {
        memcpy(dst, buf + from, (size_t)size);
    } else {
        if (have > 0)
            memcpy(dst, buf + from, (size_t)have);
        else
            have = 0;
        memset(dst + have, 0, (size_t)(size - have));
    }
}

/* Two passes without the GIL: the record lengths first, then the header windows copied
 * straight into a bytes object of the size the first pass found (growing a buffer and
 * copying it into bytes cost two more copies of every window, the last one holding the GIL). */
static PyObject *walk(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start, stop, budget, window;
    int mode, swap;
    unsigned long max_caplen;
    if (!PyArg_ParseTuple(args, "y*nnniink", &view, &start, &stop, &budget, &mode, &swap,
                          &window, &max_caplen))
        return NULL;
    const unsigned char *buf = view.buf;
    Py_ssize_t len = view.len;
    Py_ssize_t limit = start + budget < stop ? start + budget : stop;
    /* a row starts `head` bytes before the data: at the classic record header, or at the
     * EPB's length field */
    Py_ssize_t head = mode == 0 ? 24 : mode;
    Py_ssize_t row = head + window;
    Buf offsets = {0};
    Py_ssize_t off = start;
    int reason = 0;
    PyObject *result = NULL, *rows = NULL, *data_offsets = NULL;

    const unsigned char *ahead = buf + off; /* touched up to here */
    Py_BEGIN_ALLOW_THREADS
    while (off < limit) {
        Py_ssize_t data, next;
        while (ahead < buf + off + PREFETCH_BYTES && ahead < buf + len) {
            __builtin_prefetch(ahead);
            ahead += PREFETCH_STEP;
        }
        if (mode == 0) {
            if (off + 12 > len)
                break;
            uint32_t type = read32(buf + off, swap), blen = read32(buf + off + 4, swap);
            if (type != 6 || blen < 32 || (blen & 3)) {
                reason = 1;
                break;
            }
            data = off + 28;
            next = off + (Py_ssize_t)blen;
        } else {
            if (off + mode > len)
                break;
            uint32_t caplen = read32(buf + off + 8, swap);
            if (caplen > max_caplen) {
                reason = 1;
                break;
            }
            data = off + mode;
            next = data + (Py_ssize_t)caplen;
        }
        if (reserve(&offsets, 8) < 0) {
            reason = -1;
            break;
        }
        int64_t d = data;
        memcpy(offsets.data + offsets.len, &d, 8);
        offsets.len += 8;
        off = next;
    }
    Py_END_ALLOW_THREADS

    Py_ssize_t n = offsets.len / 8;
    if (reason < 0)
        PyErr_NoMemory();
    else if ((rows = PyBytes_FromStringAndSize(NULL, n * row)) != NULL &&
             (data_offsets = PyBytes_FromStringAndSize(offsets.data ? offsets.data : "",
                                                       offsets.len)) != NULL) {
        char *out = PyBytes_AS_STRING(rows);
        const int64_t *at = (const int64_t *)offsets.data;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            if (i + AHEAD < n) {
                const unsigned char *next = buf + at[i + AHEAD] - head;
                for (Py_ssize_t line = 0; line < row; line += 64)
                    if (next + line < buf + len)
                        __builtin_prefetch(next + line);
            }
            copy_row(out + i * row, buf, len, (Py_ssize_t)at[i] - head, row);
        }
        Py_END_ALLOW_THREADS
        result = Py_BuildValue("OOni", data_offsets, rows, off, reason);
    }
    Py_XDECREF(rows);
    Py_XDECREF(data_offsets);
    PyMem_RawFree(offsets.data);
    PyBuffer_Release(&view);
    return result;
}

/* forget(buffer): drop a file mapping's pages from the process's page tables without the
 * GIL (MADV_DONTNEED: the file's pages stay cached, and a later read maps them again).
 * Unmapping 1 GB of mapped pages is 20 ms of kernel work; done beforehand, on a core the
 * analysis leaves idle, it is not done when the output wants both. Advice only: refused,
 * the unmap does the work as before. */
static PyObject *forget(PyObject *self, PyObject *args) {
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "y*", &view))
        return NULL;
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t from = ((uintptr_t)view.buf) & ~(uintptr_t)(page - 1);
    uintptr_t to = (uintptr_t)view.buf + (uintptr_t)view.len;
    Py_BEGIN_ALLOW_THREADS
    if (to > from)
        (void)madvise((void *)from, to - from, MADV_DONTNEED);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS, "Follow record lengths and copy header windows."},
    {"forget", forget, METH_VARARGS, "Drop a file mapping's pages, without the GIL."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_walk", NULL, -1, methods};

PyMODINIT_FUNC PyInit__walk(void) { return PyModule_Create(&module); }
