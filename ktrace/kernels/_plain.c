/* The packets most captures are made of, decoded in one C loop: Ethernet (up to two VLAN
 * tags), Linux cooked (SLL, SLL2) or raw IP, then IPv4 (options allowed, not a later fragment)
 * or IPv6 without extension headers, then TCP or UDP that is not a tunnel. Every field is
 * the one the numpy layers (link.py, ip.py, transport.py, rows.py, lead.py) would give; rows
 * this loop does not take — anything else, or a header not wholly in the window and the
 * capture — are left for them. tests/test_plain.py requires identical columns both ways.
 *
 * decode(window, skip, width, caplen, link, known, l3, proto, src, dst, sport, dport,
 *        tcp_flags, seq, ack, win, ipid, ipflags, paylen, payoff, phash, src6, dst6, done) -> int
 *
 * window: n rows of (skip + width) bytes, packet bytes from column `skip`; caplen: uint32 per
 * row; link: 0 Ethernet, 1 SLL, 2 SLL2, 3 raw IP; known: the sorted uint32 words that start
 * an HTTP message (lead.py). The outputs are the index columns (numpy arrays, written where
 * `done` is set to 1), src6/dst6 (n, 16) bytes for IPv6 rows. Returns the IPv6 rows taken.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MORE_FRAGMENTS 1
#define DONT_FRAGMENT 4
#define APP_START 32
#define TCP 6
#define UDP 17
#define UNKNOWN_HASH 0xFFFF /* rows.py's UNKNOWN_HASH */

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* UDP ports the numpy layers look into (tunnels) or count (undecoded encapsulations). */
static int special_port(uint16_t port) {
    switch (port) {
    case 4789: case 8472: case 6081: case 4790: case 2152: case 51820: case 4500: case 1701:
        return 1;
    }
    return 0;
}

static int known_word(uint32_t w, const uint32_t *known, Py_ssize_t nknown) {
    Py_ssize_t lo = 0, hi = nknown;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (known[mid] < w)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < nknown && known[lo] == w)
        return 1;
    /* a TLS handshake or alert record, version 3.0-3.4 */
    uint32_t kind = w >> 16;
    if ((kind == 0x1603 || kind == 0x1503) && ((w >> 8) & 0xFF) <= 4)
        return 1;
    /* a request of another method (http1.method_like): A-Z, then A-Z - _, the fourth a space
     * too */
    uint8_t b0 = w >> 24, b1 = w >> 16, b2 = w >> 8, b3 = w;
#define TOKEN_UPPER(c) (((c) >= 'A' && (c) <= 'Z') || (c) == '-' || (c) == '_')
    if (b0 >= 'A' && b0 <= 'Z' && TOKEN_UPPER(b1) && TOKEN_UPPER(b2) &&
        (TOKEN_UPPER(b3) || b3 == ' '))
        return 1;
#undef TOKEN_UPPER
    /* an HTTP/2 frame (h2.frame_like): a length up to 0x40ff, one of the ten types */
    return b0 == 0 && b1 <= 0x40 && b3 <= 9;
}

#define NOUT 18
static const char *names[NOUT] = {"l3", "proto", "src", "dst", "sport", "dport", "tcp_flags",
                                  "seq", "ack", "win", "ipid", "ipflags", "paylen", "payoff",
                                  "phash", "src6", "dst6", "done"};

static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer window, known, caplen_b, wirelen_b, out[NOUT];
    Py_ssize_t skip, width;
    int link;
    memset(out, 0, sizeof(out));
    if (!PyArg_ParseTuple(args, "y*nny*y*iy*w*w*w*w*w*w*w*w*w*w*w*w*w*w*w*w*w*w*", &window, &skip,
                          &width, &caplen_b, &wirelen_b, &link, &known, &out[0], &out[1], &out[2], &out[3], &out[4],
                          &out[5], &out[6], &out[7], &out[8], &out[9], &out[10], &out[11],
                          &out[12], &out[13], &out[14], &out[15], &out[16], &out[17]))
        return NULL;
    Py_ssize_t rowlen = skip + width;
    Py_ssize_t n = caplen_b.len / 4;
    static const Py_ssize_t sizes[NOUT] = {1, 1, 4, 4, 2, 2, 1, 4, 4, 2, 2, 1, 4, 2, 2, 16, 16, 1};
    int bad = window.len != n * rowlen || known.len % 4 || wirelen_b.len != caplen_b.len;
    for (int k = 0; k < NOUT && !bad; k++)
        if (out[k].len != n * sizes[k]) {
            PyErr_Format(PyExc_ValueError, "%s: %zd bytes for %zd rows", names[k], out[k].len, n);
            bad = 2;
        }
    long taken6 = 0;
    if (!bad) {
        const uint8_t *rows = window.buf;
        const uint32_t *caplen = caplen_b.buf, *wirelen = wirelen_b.buf, *words = known.buf;
        Py_ssize_t nknown = known.len / 4;
        uint8_t *l3 = out[0].buf, *proto = out[1].buf, *tcp_flags = out[6].buf;
        uint32_t *src = out[2].buf, *dst = out[3].buf, *seq = out[7].buf, *ack = out[8].buf;
        uint16_t *sport = out[4].buf, *dport = out[5].buf, *win = out[9].buf, *ipid = out[10].buf;
        uint8_t *ipflags = out[11].buf, *src6 = out[15].buf, *dst6 = out[16].buf, *done = out[17].buf;
        uint32_t *paylen = out[12].buf;
        uint16_t *payoff = out[13].buf, *phash = out[14].buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            const uint8_t *p = rows + i * rowlen + skip;
            int64_t limit = caplen[i];
            /* the frame as it was on the wire: what the length fields must fit in */
            int64_t wire = wirelen[i] > caplen[i] ? wirelen[i] : caplen[i];
            int64_t room = limit < width ? limit : width; /* bytes both captured and in window */
            int64_t pos;
            uint16_t etype;
            if (link == 0) {
                if (room < 14)
                    continue;
                etype = be16(p + 12);
                pos = 14;
                for (int tag = 0; tag < 2; tag++) {
                    if (etype != 0x8100 && etype != 0x88A8 && etype != 0x9100)
                        break;
                    if (pos + 4 > room)
                        break;
                    etype = be16(p + pos + 2);
                    pos += 4;
                }
            } else if (link == 1) {
                if (room < 16)
                    continue;
                etype = be16(p + 14);
                pos = 16;
            } else if (link == 2) {
                if (room < 20)
                    continue;
                etype = be16(p);
                pos = 20;
            } else {
                if (room < 1)
                    continue;
                etype = (p[0] >> 4) == 4 ? 0x0800 : (p[0] >> 4) == 6 ? 0x86DD : 0;
                pos = 0;
            }
            int64_t l4, end;
            uint8_t version, nxt, flags = 0;
            uint16_t id = 0;
            if (etype == 0x0800) {
                if (pos + 20 > room || (p[pos] >> 4) != 4)
                    continue;
                int64_t ihl = (int64_t)(p[pos] & 15) * 4;
                if (ihl < 20)
                    continue;
                uint16_t total = be16(p + pos + 2), frag = be16(p + pos + 6);
                if (frag & 0x1FFF) /* a later fragment: no transport header */
                    continue;
                flags = (frag & 0x2000 ? MORE_FRAGMENTS : 0) | (frag & 0x4000 ? DONT_FRAGMENT : 0);
                id = be16(p + pos + 4);
                nxt = p[pos + 9];
                l4 = pos + ihl;
                if (total == 0) /* what TSO/GRO leave in captures: the frame's own length */
                    end = wire;
                else if (total < ihl || pos + total > wire)
                    continue; /* malformed: the numpy layers count it */
                else
                    end = pos + total;
                version = 4;
            } else if (etype == 0x86DD) {
                if (pos + 40 > room || (p[pos] >> 4) != 6)
                    continue;
                uint16_t plen = be16(p + pos + 4);
                if (plen == 0)
                    continue;
                nxt = p[pos + 6];
                l4 = pos + 40;
                end = pos + 40 + plen;
                if (end > wire)
                    continue; /* malformed: the numpy layers count it */
                version = 6;
            } else {
                continue;
            }
            int64_t header;
            if (nxt == TCP) {
                if (l4 + 20 > room)
                    continue;
                header = (int64_t)(p[l4 + 12] >> 4) * 4;
                if (header < 20)
                    continue;
            } else if (nxt == UDP) {
                if (l4 + 8 > room || special_port(be16(p + l4)) || special_port(be16(p + l4 + 2)))
                    continue;
                header = 8;
            } else {
                continue;
            }
            int64_t payload = l4 + header;
            /* the payload's length by the headers: a snap length cuts what was captured of
             * it, not what it was */
            int64_t size = end - payload > 0 ? end - payload : 0;
            /* the payload's first bytes: the fingerprint hash (rows.payload_prefix) and, for
             * TCP, whether it starts like HTTP or TLS (lead.py) */
            int64_t have = size < 8 ? size : 8;
            if (limit - payload < have)
                have = limit - payload;
            if (width - payload < have)
                have = width - payload;
            uint8_t block[8] = {0};
            if (payload < width)
                memcpy(block, p + payload, (size_t)(width - payload < 8 ? width - payload : 8));
            int app = 0;
            if (nxt == TCP) {
                int64_t captured = limit - payload < size ? limit - payload : size;
                if (captured >= 4) {
                    if (payload + 4 > width)
                        continue; /* read from the file by the numpy path */
                    app = known_word(be32(block), words, nknown);
                }
            }
            uint16_t hash = 0;
            int64_t wanted = size < 8 ? size : 8;
            if (have < wanted) {
                hash = UNKNOWN_HASH; /* cut by the snap length: another point may hold them */
            } else if (have > 0) {
                uint64_t word = 0;
                for (int k = 7; k >= 0; k--) /* read little-endian, as rows.py does */
                    word = word << 8 | block[k];
                if (have < 8)
                    word &= ((uint64_t)1 << (have * 8)) - 1;
                hash = (uint16_t)(((word ^ (uint64_t)have) * 0x9E3779B97F4A7C15ULL) >> 48);
                if (hash == UNKNOWN_HASH)
                    hash = UNKNOWN_HASH - 1;
            }
            l3[i] = version;
            proto[i] = nxt;
            if (version == 4) {
                src[i] = be32(p + pos + 12);
                dst[i] = be32(p + pos + 16);
            } else {
                src[i] = dst[i] = 0;
                memcpy(src6 + i * 16, p + pos + 8, 16);
                memcpy(dst6 + i * 16, p + pos + 24, 16);
                taken6++;
            }
            sport[i] = be16(p + l4);
            dport[i] = be16(p + l4 + 2);
            if (nxt == TCP) {
                seq[i] = be32(p + l4 + 4);
                ack[i] = be32(p + l4 + 8);
                tcp_flags[i] = p[l4 + 13];
                win[i] = be16(p + l4 + 14);
            } else {
                seq[i] = ack[i] = 0;
                tcp_flags[i] = 0;
                win[i] = 0;
            }
            ipid[i] = id;
            ipflags[i] = flags | (app ? APP_START : 0);
            paylen[i] = (uint32_t)size;
            payoff[i] = (uint16_t)(payload < 0xFFFF ? payload : 0xFFFF);
            phash[i] = hash;
            done[i] = 1;
        }
        Py_END_ALLOW_THREADS
    } else if (bad == 1) {
        PyErr_SetString(PyExc_ValueError, "window or known words of the wrong size");
    }
    PyBuffer_Release(&window);
    PyBuffer_Release(&known);
    PyBuffer_Release(&caplen_b);
    PyBuffer_Release(&wirelen_b);
    for (int k = 0; k < NOUT; k++)
        if (out[k].obj)
            PyBuffer_Release(&out[k]);
    return bad ? NULL : PyLong_FromLong(taken6);
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS, "Decode the common packets of a batch into its columns."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_plain", NULL, -1, methods};

PyMODINIT_FUNC PyInit__plain(void) { return PyModule_Create(&module); }
