/* DNS questions read in one C loop, straight from the mapped capture: the same fields and the
 * same fast/slow split as the numpy path of dns_bulk.py (which is used where this module was
 * not built; tests/test_dns.py requires the same transactions both ways). The hashes are this
 * module's own: equal names and equal messages hash alike, which is all pairing asks.
 *
 * questions(buffer, starts, sizes, name_span, ident, flags, qtype, name, body, ok, slow)
 *
 * starts, sizes: int64 per message (bytes of the buffer); outputs per message: ident, flags
 * uint16, qtype int32, name and body 2 x uint64 (the lowercased question name; the whole
 * message but its id), ok and slow uint8. slow: the name is compressed or longer than
 * name_span bytes, or the message runs past the buffer: the caller reads it one by one (ok
 * is then 0 until it does).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HEADER 12
#define K1 0x9E3779B97F4A7C15ULL
#define K2 0xC2B2AE3D27D4EB4FULL

static inline uint64_t step(uint64_t h, uint64_t v, uint64_t k) {
    h ^= v;
    h *= k;
    return h ^ (h >> 29);
}

/* Eight bytes as a little-endian word, whatever the machine's order. */
static inline uint64_t word_at(const uint8_t *p) {
    uint64_t w;
    memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

/* The word with its bytes 'A'..'Z' lowercased, all eight at once: a byte's high bit after
 * adding 0x3f says it is 'A' or above, after adding 0x25 that it is past 'Z' (bytes of 0x80
 * and above left alone). */
static inline uint64_t lowered(uint64_t w) {
    uint64_t low7 = w & 0x7f7f7f7f7f7f7f7fULL;
    uint64_t upper = (low7 + 0x3f3f3f3f3f3f3f3fULL) & ~(low7 + 0x2525252525252525ULL) & ~w;
    return w | ((upper & 0x8080808080808080ULL) >> 2);
}

/* Two 64-bit hashes of `len` bytes (lowercased when asked) and a length, eight bytes a step
 * (the last step the bytes that are left, as a little-endian word). */
static void hash2(const uint8_t *p, Py_ssize_t len, int lower, uint64_t out[2]) {
    uint64_t a = step(0, (uint64_t)len, K1), b = step(0, (uint64_t)len, K2);
    Py_ssize_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w = word_at(p + i);
        if (lower)
            w = lowered(w);
        a = step(a, w, K1);
        b = step(b, w, K2);
    }
    if (i < len) {
        uint64_t w = 0;
        for (int k = 0; k < len - i; k++)
            w |= (uint64_t)p[i + k] << (8 * k);
        if (lower)
            w = lowered(w);
        a = step(a, w, K1);
        b = step(b, w, K2);
    }
    out[0] = a * K2;
    out[1] = b * K1;
}

static PyObject *questions(PyObject *self, PyObject *args) {
    Py_buffer buf, starts_b, sizes_b, out[7];
    Py_ssize_t span;
    memset(out, 0, sizeof(out));
    if (!PyArg_ParseTuple(args, "y*y*y*nw*w*w*w*w*w*w*", &buf, &starts_b, &sizes_b, &span,
                          &out[0], &out[1], &out[2], &out[3], &out[4], &out[5], &out[6]))
        return NULL;
    Py_ssize_t n = starts_b.len / 8;
    static const Py_ssize_t sizes[7] = {2, 2, 4, 16, 16, 1, 1};
    int bad = sizes_b.len != n * 8;
    for (int k = 0; k < 7; k++)
        bad |= out[k].len != n * sizes[k];
    if (!bad) {
        const uint8_t *data = buf.buf;
        const int64_t *starts = starts_b.buf, *lens = sizes_b.buf;
        uint16_t *ident = out[0].buf, *flags = out[1].buf;
        int32_t *qtype = out[2].buf;
        uint64_t *name = out[3].buf, *body = out[4].buf;
        uint8_t *ok = out[5].buf, *slow = out[6].buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            int64_t at = starts[i], size = lens[i];
            ok[i] = slow[i] = 0;
            if (at < 0 || size < 0 || at + size > buf.len) {
                slow[i] = 1; /* past the end of the capture: read it one by one */
                continue;
            }
            const uint8_t *m = data + at;
            if (size >= 2)
                hash2(m + 2, size - 2, 0, body + 2 * i);
            if (size >= HEADER && (m[4] << 8 | m[5]) == 0) {
                /* no question (dns.NO_QUESTION): the header alone pairs it */
                ok[i] = 1;
                ident[i] = (uint16_t)(m[0] << 8 | m[1]);
                flags[i] = (uint16_t)(m[2] << 8 | m[3]);
                qtype[i] = -1;
                continue;
            }
            if (size < 17)
                continue;
            int64_t off = HEADER;
            int state = 0; /* 1 done, 2 slow, 3 bad */
            while (!state) {
                uint8_t len = m[off];
                if (len == 0)
                    state = 1;
                else if (len & 0xC0)
                    state = 2;
                else {
                    off += len + 1;
                    if (off >= size)
                        state = 3;
                    else if (off >= HEADER + span)
                        state = 2;
                }
            }
            if (state == 2) {
                slow[i] = 1;
                continue;
            }
            if (state == 3 || off + 5 > size)
                continue;
            ok[i] = 1;
            ident[i] = (uint16_t)(m[0] << 8 | m[1]);
            flags[i] = (uint16_t)(m[2] << 8 | m[3]);
            qtype[i] = m[off + 1] << 8 | m[off + 2];
            hash2(m + HEADER, off - HEADER, 1, name + 2 * i);
        }
        Py_END_ALLOW_THREADS
    } else {
        PyErr_SetString(PyExc_ValueError, "questions: arrays of the wrong size");
    }
    PyBuffer_Release(&buf);
    PyBuffer_Release(&starts_b);
    PyBuffer_Release(&sizes_b);
    for (int k = 0; k < 7; k++)
        if (out[k].obj)
            PyBuffer_Release(&out[k]);
    if (bad)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"questions", questions, METH_VARARGS, "Read the question of many DNS messages."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_dns", NULL, -1, methods};

PyMODINIT_FUNC PyInit__dns(void) { return PyModule_Create(&module); }
