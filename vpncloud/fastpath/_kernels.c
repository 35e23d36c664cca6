/* Data-plane kernels: seal and open the rows of one buffer with OpenSSL's EVP (issue 21).
 *
 * Also the single-packet AEAD and the handshake's Ed25519 and X25519 through the same libcrypto, so
 * a daemon with these kernels never loads cryptography's own OpenSSL (about 8 MiB resident).
 *
 * Also the TCP segmentation of a TSO super-packet into such rows, with its checksums
 * (vpncloud/fastpath/offload.py decides the layout and the flags, the kernel only writes them), and
 * the merge of a decrypted train's rows into one GSO device write (the GRO rules of gro.py).
 *
 * Pure functions over buffers: no I/O, no clock, no protocol state. The only state is the pair of
 * cipher contexts an Aead object owns, created once per key because setting up a context (key
 * schedule, GHASH tables) costs more than sealing a 1400-byte packet. The frame layout is the one
 * of vpncloud/core/crypto_core.py (spec 4.3), the Python twin is vpncloud/fastpath/_python.py:
 *
 *     [slot id][nonce bytes 5..11][ciphertext][16-byte tag]
 *
 * Every length is checked at entry, before any byte is touched; the one exception is KernelError
 * (a ValueError). A frame that does not authenticate is not an error: its length is reported -1.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define TAG_LEN 16
#define HEADER_LEN 8
#define NONCE_LEN 12
#define OVERHEAD (HEADER_LEN + TAG_LEN)
#define NUM_SLOTS 4
/* One UDP datagram or one super-packet at most: anything larger is a caller's bug. */
#define MAX_CHUNK (1 << 20)
/* Rows of one buffer: a GRO/GSO train has at most 64, a super-packet cut small a few hundred. */
#define MAX_ROWS 65536

static PyObject *KernelError;

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
} AeadObject;

static const EVP_CIPHER *cipher_for(int alg, Py_ssize_t key_len)
{
    /* wire ids of core/primitives.py Algorithm */
    if (alg == 1 && key_len == 16)
        return EVP_aes_128_gcm();
    if (alg == 2 && key_len == 32)
        return EVP_aes_256_gcm();
    if (alg == 3 && key_len == 32)
        return EVP_chacha20_poly1305();
    return NULL;
}

static int Aead_init(AeadObject *self, PyObject *args, PyObject *kwargs)
{
    int alg;
    Py_buffer key;
    if (!PyArg_ParseTuple(args, "iy*", &alg, &key))
        return -1;
    const EVP_CIPHER *cipher = cipher_for(alg, key.len);
    if (cipher == NULL) {
        PyBuffer_Release(&key);
        PyErr_SetString(KernelError, "unknown algorithm or wrong key length");
        return -1;
    }
    /* __init__ may run twice on one object: never leak the first pair of contexts */
    EVP_CIPHER_CTX_free(self->enc);
    EVP_CIPHER_CTX_free(self->dec);
    self->enc = EVP_CIPHER_CTX_new();
    self->dec = EVP_CIPHER_CTX_new();
    int ok = self->enc != NULL && self->dec != NULL &&
             EVP_EncryptInit_ex(self->enc, cipher, NULL, key.buf, NULL) == 1 &&
             EVP_DecryptInit_ex(self->dec, cipher, NULL, key.buf, NULL) == 1;
    PyBuffer_Release(&key);
    if (!ok) {
        PyErr_SetString(KernelError, "OpenSSL could not set up the cipher");
        return -1;
    }
    return 0;
}

static void Aead_dealloc(AeadObject *self)
{
    EVP_CIPHER_CTX_free(self->enc);
    EVP_CIPHER_CTX_free(self->dec);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The nonce as a 96-bit big-endian counter: hi holds bytes 0..3, lo bytes 4..11. */
static void put_nonce(unsigned char *out, uint32_t hi, uint64_t lo)
{
    for (int i = 3; i >= 0; i--, hi >>= 8)
        out[i] = (unsigned char)hi;
    for (int i = 11; i >= 4; i--, lo >>= 8)
        out[i] = (unsigned char)lo;
}

/* One frame body: ciphertext of prefix + data (prefix may be absent) followed by the tag. */
static int seal_one(EVP_CIPHER_CTX *ctx, const unsigned char *nonce, int prefix, const unsigned char *data,
                    int len, unsigned char *out)
{
    int n;
    unsigned char p = (unsigned char)prefix;
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1)
        return 0;
    if (prefix >= 0) {
        if (EVP_EncryptUpdate(ctx, out, &n, &p, 1) != 1)
            return 0;
        out += n;
    }
    if (EVP_EncryptUpdate(ctx, out, &n, data, len) != 1)
        return 0;
    out += n;
    if (EVP_EncryptFinal_ex(ctx, out, &n) != 1)
        return 0;
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, out + n) == 1;
}

/* 1 when the body (ciphertext + tag) authenticates, 0 when it does not. */
static int open_one(EVP_CIPHER_CTX *ctx, const unsigned char *nonce, const unsigned char *body, int len,
                    unsigned char *out)
{
    int n;
    int ct_len = len - TAG_LEN;
    /* the tag argument is not const in OpenSSL's prototype; it is only read */
    return EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) == 1 &&
           EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, (void *)(body + ct_len)) == 1 &&
           EVP_DecryptUpdate(ctx, out, &n, body, ct_len) == 1 && EVP_DecryptFinal_ex(ctx, out + n, &n) == 1;
}

PyDoc_STRVAR(seal_rows_doc,
             "seal_rows(prefix, src, stride, count, length, last, slot_id, nonce_hi, nonce_lo) -> bytes\n\n"
             "Frames for prefix byte + packet of each of count rows of src (row i at i * stride: one\n"
             "free byte, then length bytes, last bytes for the last row), back to back. The first frame\n"
             "uses the nonce nonce_hi << 64 | nonce_lo, each next one the nonce plus one.");

static PyObject *Aead_seal_rows(AeadObject *self, PyObject *args)
{
    int prefix, slot_id;
    Py_buffer src;
    Py_ssize_t stride, count, length, last;
    PyObject *hi_obj, *lo_obj;
    if (!PyArg_ParseTuple(args, "iy*nnnniO!O!", &prefix, &src, &stride, &count, &length, &last, &slot_id,
                          &PyLong_Type, &hi_obj, &PyLong_Type, &lo_obj))
        return NULL;
    PyObject *result = NULL;
    /* the nonce halves are range-checked here rather than silently masked by the parser */
    unsigned long long nonce_hi = PyLong_AsUnsignedLongLong(hi_obj);
    unsigned long long nonce_lo = PyErr_Occurred() ? 0 : PyLong_AsUnsignedLongLong(lo_obj);
    if (PyErr_Occurred() || nonce_hi > 0xFFFFFFFFull) {
        PyErr_Clear();
        PyErr_SetString(KernelError, "rows do not fit the buffer");
        goto done;
    }
    if (self->enc == NULL) {
        PyErr_SetString(KernelError, "Aead was not initialised");
        goto done;
    }
    /* bounds first: each product below is at most MAX_ROWS * MAX_CHUNK, far from overflow */
    if (prefix < 0 || prefix > 255 || slot_id < 0 || slot_id > 255 || count < 1 || count > MAX_ROWS ||
        length < 0 || length >= MAX_CHUNK || last < 0 || last > length || stride < length + 1 ||
        stride > MAX_CHUNK || src.len < stride * (count - 1) + 1 + last) {
        PyErr_SetString(KernelError, "rows do not fit the buffer");
        goto done;
    }
    Py_ssize_t seg = length + 1 + OVERHEAD;
    result = PyBytes_FromStringAndSize(NULL, seg * (count - 1) + last + 1 + OVERHEAD);
    if (result == NULL)
        goto done;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    const unsigned char *in = src.buf;
    unsigned char nonce[NONCE_LEN];
    uint64_t lo = nonce_lo;
    uint32_t hi = (uint32_t)nonce_hi;
    for (Py_ssize_t i = 0; i < count; i++) {
        put_nonce(nonce, hi, lo);
        out[0] = (unsigned char)slot_id;
        memcpy(out + 1, nonce + 5, 7);
        int len = (int)(i == count - 1 ? last : length);
        if (!seal_one(self->enc, nonce, prefix, in + i * stride + 1, len, out + HEADER_LEN)) {
            Py_CLEAR(result);
            PyErr_SetString(KernelError, "OpenSSL failed to seal");
            goto done;
        }
        out += seg;
        if (++lo == 0)
            hi++;
    }
done:
    PyBuffer_Release(&src);
    return result;
}

PyDoc_STRVAR(open_doc, "open(nonce, body) -> bytes or None\n\n"
                       "Plaintext of body (ciphertext + 16-byte tag); None when it does not authenticate.");

static PyObject *Aead_open(AeadObject *self, PyObject *args)
{
    Py_buffer nonce, body;
    if (!PyArg_ParseTuple(args, "y*y*", &nonce, &body))
        return NULL;
    PyObject *result = NULL;
    if (self->dec == NULL || nonce.len != NONCE_LEN || body.len > MAX_CHUNK + TAG_LEN) {
        PyErr_SetString(KernelError, "uninitialised Aead, nonce not 12 bytes or body over 1 MiB");
        goto done;
    }
    if (body.len < TAG_LEN) {
        /* no room for a tag: not authentic, like a wrong tag */
        result = Py_NewRef(Py_None);
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, body.len - TAG_LEN);
    if (result != NULL &&
        !open_one(self->dec, nonce.buf, body.buf, (int)body.len, (unsigned char *)PyBytes_AS_STRING(result))) {
        /* the bytes object never escapes, so its unauthenticated plaintext is freed unseen */
        Py_SETREF(result, Py_NewRef(Py_None));
    }
done:
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&body);
    return result;
}

PyDoc_STRVAR(seal_doc, "seal(nonce, plaintext) -> bytes\n\nCiphertext followed by the 16-byte tag.");

static PyObject *Aead_seal(AeadObject *self, PyObject *args)
{
    Py_buffer nonce, data;
    if (!PyArg_ParseTuple(args, "y*y*", &nonce, &data))
        return NULL;
    PyObject *result = NULL;
    if (self->enc == NULL || nonce.len != NONCE_LEN || data.len > MAX_CHUNK) {
        PyErr_SetString(KernelError, "uninitialised Aead, nonce not 12 bytes or data over 1 MiB");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, data.len + TAG_LEN);
    if (result != NULL &&
        !seal_one(self->enc, nonce.buf, -1, data.buf, (int)data.len, (unsigned char *)PyBytes_AS_STRING(result))) {
        Py_CLEAR(result);
        PyErr_SetString(KernelError, "OpenSSL failed to seal");
    }
done:
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef Aead_methods[] = {
    {"seal_rows", (PyCFunction)Aead_seal_rows, METH_VARARGS, seal_rows_doc},
    {"seal", (PyCFunction)Aead_seal, METH_VARARGS, seal_doc},
    {"open", (PyCFunction)Aead_open, METH_VARARGS, open_doc},
    {NULL}};

static PyTypeObject AeadType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "vpncloud.fastpath._kernels.Aead",
    .tp_doc = "Aead(algorithm, key): one key with one encrypt and one decrypt context, reused.",
    .tp_basicsize = sizeof(AeadObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Aead_init,
    .tp_dealloc = (destructor)Aead_dealloc,
    .tp_methods = Aead_methods,
};

PyDoc_STRVAR(open_train_doc,
             "open_train(slots, floors, half, data, seg) -> (rows, lengths)\n\n"
             "Open each seg-byte frame of data (the last may be shorter) into a row of seg - 24 bytes\n"
             "of one new bytearray. slots: 4 Aead objects by slot id; a frame's nonce is half << 88 |\n"
             "its 7 header bytes, and a frame whose 56-bit nonce is below floors[slot] is not opened.\n"
             "lengths: each plaintext's length, -1 for a frame that is too short, not a session frame\n"
             "(header byte > 3), below the floor or not authentic.");

static PyObject *open_train(PyObject *module, PyObject *args)
{
    PyObject *slots, *floors_obj;
    int half;
    Py_buffer data;
    Py_ssize_t seg;
    if (!PyArg_ParseTuple(args, "O!O!iy*n", &PyTuple_Type, &slots, &PyTuple_Type, &floors_obj, &half, &data,
                          &seg))
        return NULL;
    PyObject *rows = NULL, *lengths = NULL, *result = NULL;
    AeadObject *aead[NUM_SLOTS];
    unsigned long long floors[NUM_SLOTS];
    if (PyTuple_GET_SIZE(slots) != NUM_SLOTS || PyTuple_GET_SIZE(floors_obj) != NUM_SLOTS || half < 0 ||
        half > 255 || seg <= OVERHEAD || seg > MAX_CHUNK || data.len < 1 ||
        (data.len + seg - 1) / seg > MAX_ROWS) {
        PyErr_SetString(KernelError, "open_train: bad slots, floors, half or train layout");
        goto done;
    }
    for (int s = 0; s < NUM_SLOTS; s++) {
        PyObject *a = PyTuple_GET_ITEM(slots, s);
        if (!PyObject_TypeCheck(a, &AeadType) || ((AeadObject *)a)->dec == NULL) {
            PyErr_SetString(KernelError, "open_train: slots must be 4 initialised Aead objects");
            goto done;
        }
        aead[s] = (AeadObject *)a;
        floors[s] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(floors_obj, s));
        if (PyErr_Occurred()) {
            /* a negative or too large floor is a bad call like any other: the one exception */
            PyErr_Clear();
            PyErr_SetString(KernelError, "open_train: floors must be 4 integers in 0..2**64-1");
            goto done;
        }
    }
    Py_ssize_t stride = seg - OVERHEAD;
    Py_ssize_t n = (data.len + seg - 1) / seg;
    rows = PyByteArray_FromStringAndSize(NULL, stride * n);
    lengths = PyList_New(n);
    if (rows == NULL || lengths == NULL)
        goto done;
    unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(rows);
    /* the Python twin's rows start zeroed; unused bytes must not leak old heap contents */
    memset(out, 0, stride * n);
    const unsigned char *in = data.buf;
    unsigned char nonce[NONCE_LEN] = {0};
    nonce[0] = (unsigned char)half;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t pos = i * seg;
        Py_ssize_t len = i == n - 1 ? data.len - pos : seg;
        long size = -1;
        int slot = in[pos];
        if (len >= OVERHEAD && slot < NUM_SLOTS) {
            unsigned long long low = 0;
            for (int b = 1; b < HEADER_LEN; b++)
                low = low << 8 | in[pos + b];
            memcpy(nonce + 5, in + pos + 1, 7);
            if (low >= floors[slot] &&
                open_one(aead[slot]->dec, nonce, in + pos + HEADER_LEN, (int)(len - HEADER_LEN), out + i * stride)) {
                size = (long)(len - OVERHEAD);
            } else {
                /* never hand out plaintext that did not authenticate */
                memset(out + i * stride, 0, len - OVERHEAD);
            }
        }
        PyObject *v = PyLong_FromLong(size);
        if (v == NULL)
            goto done;
        PyList_SET_ITEM(lengths, i, v);
        if (len < OVERHEAD)
            break; /* a too-short last frame ends the train, as in the Python twin */
    }
    result = PyTuple_Pack(2, rows, lengths);
done:
    Py_XDECREF(rows);
    Py_XDECREF(lengths);
    PyBuffer_Release(&data);
    return result;
}


/* Sum of data as big-endian 16-bit words, an odd last byte padded with zero (RFC 1071); the
 * caller reduces mod 0xFFFF, as the Python twin does with its integers. */
static uint64_t be_sum(const unsigned char *data, Py_ssize_t len)
{
    /* The ones' complement sum of 16-bit big-endian words. It does not depend on the byte order
     * (RFC 1071, 2.B), so the words are summed 32 bits at a time in the machine's order and the folded
     * result swapped once: a byte pair at a time took most of the segmentation's time. */
    uint64_t sum = 0;
    Py_ssize_t i = 0;
    for (; i + 4 <= len; i += 4) {
        uint32_t w;
        memcpy(&w, data + i, 4);
        sum += w;
    }
    if (i < len) {
        uint32_t w = 0; /* the odd bytes, padded with zeros as if the data went on */
        memcpy(&w, data + i, (size_t)(len - i));
        sum += w;
    }
    sum = (sum & 0xFFFFFFFFu) + (sum >> 32);
    sum = (sum & 0xFFFFFFFFu) + (sum >> 32);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
#if PY_LITTLE_ENDIAN
    sum = (sum >> 8 | sum << 8) & 0xFFFF;
#endif
    return sum;
}

/* The checksum field for a sum: its ones' complement, 0 for a sum of 0 mod 0xFFFF (offload.finish). */
static unsigned finish(uint64_t total)
{
    total %= 0xFFFF;
    return total ? (unsigned)(0xFFFF - total) : 0;
}

static void put16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

PyDoc_STRVAR(tcp_rows_doc,
             "tcp_rows(packet, prefix, iphl, hl, mss, ipv4, ip_id, ip_base, tcp_base, seq0, flags) -> bytearray\n\n"
             "The TCP segments of a TSO super-packet as rows of 1 + len(prefix) + hl + mss bytes: a zero\n"
             "byte, prefix, then the first hl bytes of packet (IP + TCP header) with the per-segment fields\n"
             "set, then mss payload bytes (fewer in the last row, zero padded). ip_base / tcp_base: the\n"
             "sums of the header templates (offload._tcp_template); flags: (first, middle, last) segment.");

static PyObject *tcp_rows(PyObject *module, PyObject *args)
{
    Py_buffer packet, prefix;
    Py_ssize_t iphl, hl, mss;
    int ipv4, first, mid, lastf;
    unsigned long ip_id, seq0;
    unsigned long long ip_base, tcp_base;
    if (!PyArg_ParseTuple(args, "y*y*nnnpkKKk(iii)", &packet, &prefix, &iphl, &hl, &mss, &ipv4, &ip_id, &ip_base,
                          &tcp_base, &seq0, &first, &mid, &lastf))
        return NULL;
    PyObject *rows = NULL;
    Py_ssize_t total = packet.len - hl;
    /* total > mss: a packet that needs no cutting never comes here (the caller's rule) */
    if (iphl < 20 || hl < iphl + 20 || hl > packet.len || hl > 1024 || mss < 1 || mss > MAX_CHUNK ||
        total <= mss || (total + mss - 1) / mss > MAX_ROWS || prefix.len > 64 || ip_id > 0xFFFF ||
        seq0 > 0xFFFFFFFFul || ip_base > 0xFFFFFFFFull || tcp_base > 0xFFFFFFFFull || (first | mid | lastf) < 0 ||
        (first | mid | lastf) > 255) {
        PyErr_SetString(KernelError, "tcp_rows: the layout does not fit the packet");
        goto done;
    }
    Py_ssize_t count = (total + mss - 1) / mss;
    Py_ssize_t ip0 = 1 + prefix.len;
    Py_ssize_t stride = ip0 + hl + mss;
    rows = PyByteArray_FromStringAndSize(NULL, stride * count);
    if (rows == NULL)
        goto done;
    unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(rows);
    const unsigned char *pkt = packet.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        unsigned char *row = out + i * stride;
        unsigned char *ip = row + ip0;
        unsigned char *tcp = ip + iphl;
        Py_ssize_t seglen = i < count - 1 ? mss : total - (count - 1) * mss;
        row[0] = 0;
        memcpy(row + 1, prefix.buf, prefix.len);
        memcpy(ip, pkt, hl);
        memcpy(ip + hl, pkt + hl + i * mss, seglen);
        memset(ip + hl + seglen, 0, mss - seglen);
        uint32_t seq = (uint32_t)(seq0 + (uint64_t)i * mss);
        unsigned flags = (unsigned)(i == 0 ? first : i == count - 1 ? lastf : mid);
        if (ipv4) {
            unsigned ip_len = (unsigned)(hl + seglen);
            unsigned ident = (unsigned)((ip_id + i) & 0xFFFF);
            put16(ip + 2, ip_len);
            put16(ip + 4, ident);
            put16(ip + 10, finish(ip_base + ip_len + ident));
        } else {
            put16(ip + 4, (unsigned)(hl - iphl + seglen));
        }
        tcp[4] = (unsigned char)(seq >> 24);
        tcp[5] = (unsigned char)(seq >> 16);
        tcp[6] = (unsigned char)(seq >> 8);
        tcp[7] = (unsigned char)seq;
        tcp[13] = (unsigned char)flags;
        uint64_t sum = tcp_base + (uint64_t)seglen + (seq >> 16) + (seq & 0xFFFF) + flags + be_sum(ip + hl, seglen);
        put16(tcp + 16, finish(sum));
    }
done:
    PyBuffer_Release(&packet);
    PyBuffer_Release(&prefix);
    return rows;
}

/* --- GRO: merging the rows of a decrypted train (offload.py's rules, gro.py's Python twin) --------
 * The decisions are the coalescer's, only made here over the rows in place: which rows are segments
 * of one TCP flow that the kernel's GRO would merge, and the one device write (virtio-net GSO header,
 * the first segment's headers with the merged lengths, all payloads) that carries them. */

#define VNET_HDR_LEN 10
#define MAX_COALESCED 65535
#define MAX_SEGMENTS 64
/* gro.FAST_MIN: fewer equal rows go packet by packet in the caller, as in the Python twin */
#define FAST_MIN 4

typedef struct {
    Py_ssize_t iphl, hl, plen;
    uint32_t seq;
    unsigned flags;
    int v6;
} TcpInfo;

static unsigned get16(const unsigned char *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* gro.tcp_info: 1 when the packet may take part in coalescing (an unfragmented TCP segment with a
 * payload, plain IPv4 header or IPv6 without extension headers, ACK with at most PSH). */
static int tcp_info(const unsigned char *p, Py_ssize_t n, TcpInfo *t)
{
    if (n < 40)
        return 0;
    if (p[0] == 0x45) {
        if (p[9] != 6 || (Py_ssize_t)get16(p + 2) != n || (get16(p + 6) & 0x3FFF))
            return 0;
        t->iphl = 20;
        t->v6 = 0;
    } else if (p[0] >> 4 == 6) {
        if (n < 60 || p[6] != 6 || (Py_ssize_t)get16(p + 4) != n - 40)
            return 0;
        t->iphl = 40;
        t->v6 = 1;
    } else {
        return 0;
    }
    Py_ssize_t doff = (p[t->iphl + 12] >> 4) * 4;
    t->hl = t->iphl + doff;
    if (doff < 20 || t->hl > n)
        return 0;
    t->flags = p[t->iphl + 13];
    if ((t->flags & ~0x18u) || !(t->flags & 0x10))
        return 0;
    t->plen = n - t->hl;
    t->seq = get32(p + t->iphl + 4);
    return t->plen > 0;
}

static int same_range(const unsigned char *a, const unsigned char *b, Py_ssize_t from, Py_ssize_t to)
{
    return memcmp(a + from, b + from, (size_t)(to - from)) == 0;
}

/* The flow key of gro.tcp_info compared in place: the same version and TCP header length, then
 * TOS, DF, TTL, protocol and addresses (IPv4) or the first word and the rest of the header (IPv6),
 * ports, ack, data offset, window, urgent pointer and options. */
static int same_flow(const unsigned char *a, const TcpInfo *ta, const unsigned char *b, const TcpInfo *tb)
{
    if (ta->v6 != tb->v6 || ta->hl != tb->hl)
        return 0;
    Py_ssize_t i = ta->iphl;
    int ip = ta->v6 ? same_range(a, b, 0, 4) && same_range(a, b, 7, 40)
                    : same_range(a, b, 1, 2) && same_range(a, b, 6, 9) && same_range(a, b, 12, 20);
    return ip && same_range(a, b, i, i + 4) && same_range(a, b, i + 8, i + 13) && same_range(a, b, i + 14, i + 16) &&
           same_range(a, b, i + 18, ta->hl);
}

/* gro.invariant_columns: every header byte of a follow-on segment equals the first one's except the
 * IPv4 id and header checksum, the sequence number and the TCP checksum. */
static int same_header(const unsigned char *a, const unsigned char *b, Py_ssize_t iphl, Py_ssize_t hl)
{
    int ip = iphl == 20 ? same_range(a, b, 0, 4) && same_range(a, b, 6, 10) && same_range(a, b, 12, iphl + 4)
                        : same_range(a, b, 0, iphl + 4);
    return ip && same_range(a, b, iphl + 8, iphl + 16) && same_range(a, b, iphl + 18, hl);
}

static void put16le(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

PyDoc_STRVAR(coalesce_rows_doc,
             "coalesce_rows(buf, stride, lengths) -> (write, taken) or None\n\n"
             "The rows of one decrypted GRO train (row i at i * stride + 1, lengths[i] bytes): the longest\n"
             "prefix of equal-sized segments of one TCP flow, in sequence, with the shorter or PSH segment\n"
             "that may end it, as one device write (virtio-net GSO header + merged packet, checksum\n"
             "NEEDS_CSUM with the pseudo-header sum) and the number of rows it took. None when the first\n"
             "rows do not merge: the caller goes packet by packet.");

static PyObject *coalesce_rows(PyObject *module, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t stride;
    PyObject *lengths_obj;
    if (!PyArg_ParseTuple(args, "y*nO", &buf, &stride, &lengths_obj))
        return NULL;
    PyObject *result = NULL, *seq_obj = NULL;
    Py_ssize_t *lengths = NULL;
    seq_obj = PySequence_Fast(lengths_obj, "coalesce_rows: lengths must be a sequence");
    if (seq_obj == NULL)
        goto done;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq_obj);
    if (n < 1 || n > MAX_ROWS || stride < 1 || stride > MAX_CHUNK) {
        PyErr_SetString(KernelError, "coalesce_rows: rows do not fit the buffer");
        goto done;
    }
    lengths = PyMem_New(Py_ssize_t, n);
    if (lengths == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq_obj, i);
        if (!PyLong_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "coalesce_rows: lengths must be integers");
            goto done;
        }
        /* an integer too large for Py_ssize_t is out of range like any other */
        lengths[i] = PyLong_AsSsize_t(item);
        if (lengths[i] == -1 && PyErr_Occurred())
            PyErr_Clear();
        if (lengths[i] < 0 || lengths[i] >= stride) {
            PyErr_SetString(KernelError, "coalesce_rows: rows do not fit the buffer");
            goto done;
        }
    }
    /* stride and rows are bounded above, so this product does not overflow */
    if (buf.len < stride * (n - 1) + 1 + lengths[n - 1]) {
        PyErr_SetString(KernelError, "coalesce_rows: rows do not fit the buffer");
        goto done;
    }
    const unsigned char *rows = (const unsigned char *)buf.buf + 1;
    Py_ssize_t size = lengths[0];
    Py_ssize_t k = lengths[n - 1] == size ? n : n - 1;
    Py_ssize_t equal = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        equal += lengths[i] == size;
    TcpInfo t;
    if (k < FAST_MIN || equal != k || !tcp_info(rows, size, &t) || (t.flags & 0x08)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    Py_ssize_t iphl = t.iphl, hl = t.hl, plen = t.plen;
    Py_ssize_t limit = (MAX_COALESCED - hl) / plen;
    if (limit > MAX_SEGMENTS)
        limit = MAX_SEGMENTS;
    if (limit > k)
        limit = k;
    Py_ssize_t m = limit;
    for (Py_ssize_t i = 1; i < limit; i++) {
        const unsigned char *row = rows + i * stride;
        if (!same_header(rows, row, iphl, hl) ||
            (uint32_t)(get32(row + iphl + 4) - get32(row - stride + iphl + 4)) != (uint32_t)plen) {
            m = i;
            break;
        }
    }
    if (m < 2) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    Py_ssize_t total = hl + m * plen;
    unsigned last_flags = rows[(m - 1) * stride + iphl + 13];
    Py_ssize_t taken = m, tail = 0;
    if (m < n && m < MAX_SEGMENTS) {
        /* the segment that may end the run, as the kernel's GRO takes it: the PSH one at the end of
         * every TSO super-packet, or the shorter last one of the train */
        const unsigned char *nxt = rows + m * stride;
        TcpInfo u;
        if (tcp_info(nxt, lengths[m], &u) && same_flow(rows, &t, nxt, &u) &&
            u.seq == (uint32_t)(t.seq + (uint32_t)(m * plen)) && u.plen <= plen &&
            (u.plen < plen || (u.flags & 0x08)) && total + u.plen <= MAX_COALESCED) {
            tail = u.plen;
            total += tail;
            last_flags = u.flags;
            taken = m + 1;
        }
    }
    result = PyBytes_FromStringAndSize(NULL, VNET_HDR_LEN + total);
    if (result == NULL)
        goto done;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    unsigned char *head = out + VNET_HDR_LEN;
    Py_ssize_t tcp_len = total - iphl;
    out[0] = 1; /* NEEDS_CSUM */
    out[1] = t.v6 ? 4 : 1; /* GSO_TCPV6, GSO_TCPV4 */
    put16le(out + 2, (unsigned)hl);
    put16le(out + 4, (unsigned)plen);
    put16le(out + 6, (unsigned)iphl);
    put16le(out + 8, 16);
    memcpy(head, rows, hl);
    head[iphl + 13] = (unsigned char)last_flags;
    const unsigned char *src, *dst;
    Py_ssize_t alen;
    if (t.v6) {
        put16(head + 4, (unsigned)tcp_len);
        src = head + 8, dst = head + 24, alen = 16;
    } else {
        put16(head + 2, (unsigned)total);
        put16(head + 10, 0);
        put16(head + 10, finish(be_sum(head, iphl)));
        src = head + 12, dst = head + 16, alen = 4;
    }
    /* the pseudo-header sum, folded but not inverted (gro.fold): the kernel completes it */
    uint64_t pseudo = (be_sum(src, alen) + be_sum(dst, alen) + 6 + (uint64_t)tcp_len) % 0xFFFF;
    put16(head + iphl + 16, pseudo ? (unsigned)pseudo : 0xFFFF);
    unsigned char *pos = head + hl;
    for (Py_ssize_t i = 0; i < m; i++, pos += plen)
        memcpy(pos, rows + i * stride + hl, plen);
    if (tail)
        memcpy(pos, rows + m * stride + hl, tail);
    result = Py_BuildValue("(Nn)", result, taken);
done:
    PyMem_Free(lengths);
    Py_XDECREF(seq_obj);
    PyBuffer_Release(&buf);
    return result;
}

/* --- Ed25519 and X25519 (spec 5 and 6.6) ---------------------------------------------------------
 * A private key is an object that keeps its EVP_PKEY: OpenSSL derives the public key when it takes a
 * raw private one, a base-point multiplication that each signature or exchange would otherwise pay
 * once more. Verification takes raw bytes. OpenSSL's error queue is emptied after every failure so
 * that a refused signature or point leaves nothing behind for a later call. */

#define KEY_LEN 32
#define SIG_LEN 64

static int check_key(const Py_buffer *key, const char *what)
{
    if (key->len == KEY_LEN)
        return 1;
    PyErr_Format(KernelError, "%s must be 32 bytes", what);
    return 0;
}

/* One private key of either curve; the type object says which. */
typedef struct {
    PyObject_HEAD
    EVP_PKEY *pkey;
    PyObject *public;
} KeyObject;

static int key_init(KeyObject *self, PyObject *args, int type, const char *what)
{
    Py_buffer private;
    if (!PyArg_ParseTuple(args, "y*", &private))
        return -1;
    EVP_PKEY *pkey = NULL;
    PyObject *public = NULL;
    unsigned char pub[KEY_LEN];
    size_t len = sizeof(pub);
    if (!check_key(&private, what))
        goto fail;
    pkey = EVP_PKEY_new_raw_private_key(type, NULL, private.buf, KEY_LEN);
    if (pkey == NULL || EVP_PKEY_get_raw_public_key(pkey, pub, &len) != 1 || len != KEY_LEN) {
        ERR_clear_error();
        PyErr_SetString(KernelError, "OpenSSL refused the private key");
        goto fail;
    }
    public = PyBytes_FromStringAndSize((const char *)pub, KEY_LEN);
    if (public == NULL)
        goto fail;
    PyBuffer_Release(&private);
    /* __init__ may run twice on one object: never leak the first key */
    EVP_PKEY_free(self->pkey);
    self->pkey = pkey;
    Py_XSETREF(self->public, public);
    return 0;
fail:
    EVP_PKEY_free(pkey);
    PyBuffer_Release(&private);
    return -1;
}

static void Key_dealloc(KeyObject *self)
{
    EVP_PKEY_free(self->pkey);
    Py_XDECREF(self->public);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Key_get_public(KeyObject *self, void *closure)
{
    if (self->public == NULL) {
        PyErr_SetString(KernelError, "key was not initialised");
        return NULL;
    }
    return Py_NewRef(self->public);
}

static PyGetSetDef Key_getset[] = {{"public", (getter)Key_get_public, NULL, "The 32-byte public key.", NULL},
                                   {NULL}};

static int Ed25519_init(KeyObject *self, PyObject *args, PyObject *kwargs)
{
    return key_init(self, args, EVP_PKEY_ED25519, "an Ed25519 seed");
}

PyDoc_STRVAR(ed25519_sign_doc, "sign(data) -> bytes\n\nThe deterministic 64-byte signature of data.");

static PyObject *Ed25519_sign(KeyObject *self, PyObject *args)
{
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data))
        return NULL;
    PyObject *result = NULL;
    EVP_MD_CTX *ctx = NULL;
    unsigned char sig[SIG_LEN];
    size_t len = sizeof(sig);
    if (self->pkey == NULL) {
        PyErr_SetString(KernelError, "key was not initialised");
        goto done;
    }
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL || EVP_DigestSignInit(ctx, NULL, NULL, NULL, self->pkey) != 1 ||
        EVP_DigestSign(ctx, sig, &len, data.buf, (size_t)data.len) != 1 || len != SIG_LEN) {
        ERR_clear_error();
        PyErr_SetString(KernelError, "OpenSSL failed to sign");
        goto done;
    }
    result = PyBytes_FromStringAndSize((const char *)sig, SIG_LEN);
done:
    EVP_MD_CTX_free(ctx);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef Ed25519_methods[] = {{"sign", (PyCFunction)Ed25519_sign, METH_VARARGS, ed25519_sign_doc},
                                        {NULL}};

static PyTypeObject Ed25519Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "vpncloud.fastpath._kernels.Ed25519",
    .tp_doc = "Ed25519(seed): a 32-byte seed, its public key and signatures with it.",
    .tp_basicsize = sizeof(KeyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ed25519_init,
    .tp_dealloc = (destructor)Key_dealloc,
    .tp_methods = Ed25519_methods,
    .tp_getset = Key_getset,
};

PyDoc_STRVAR(ed25519_verify_doc,
             "ed25519_verify(public, signature, data) -> bool\n\n"
             "Whether signature is a valid signature of data by public; False, never an exception, for a\n"
             "signature or key that is wrong in any way (lengths included).");

static PyObject *ed25519_verify(PyObject *module, PyObject *args)
{
    Py_buffer pub, sig, data;
    if (!PyArg_ParseTuple(args, "y*y*y*", &pub, &sig, &data))
        return NULL;
    int ok = 0;
    if (pub.len == KEY_LEN && sig.len == SIG_LEN) {
        EVP_PKEY *pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub.buf, KEY_LEN);
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        ok = pkey != NULL && ctx != NULL && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pkey) == 1 &&
             EVP_DigestVerify(ctx, sig.buf, SIG_LEN, data.buf, (size_t)data.len) == 1;
        EVP_MD_CTX_free(ctx);
        EVP_PKEY_free(pkey);
        ERR_clear_error();
    }
    PyBuffer_Release(&pub);
    PyBuffer_Release(&sig);
    PyBuffer_Release(&data);
    return PyBool_FromLong(ok);
}

static int X25519_init(KeyObject *self, PyObject *args, PyObject *kwargs)
{
    return key_init(self, args, EVP_PKEY_X25519, "an X25519 private key");
}

PyDoc_STRVAR(x25519_exchange_doc,
             "exchange(peer_public) -> bytes or None\n\n"
             "The raw 32-byte shared secret; None when it is all zero (a small-order peer point).");

static PyObject *X25519_exchange(KeyObject *self, PyObject *args)
{
    Py_buffer peer;
    if (!PyArg_ParseTuple(args, "y*", &peer))
        return NULL;
    PyObject *result = NULL;
    EVP_PKEY *other = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    unsigned char secret[KEY_LEN];
    size_t len = sizeof(secret);
    if (self->pkey == NULL) {
        PyErr_SetString(KernelError, "key was not initialised");
        goto done;
    }
    if (!check_key(&peer, "an X25519 public key"))
        goto done;
    other = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, peer.buf, KEY_LEN);
    ctx = EVP_PKEY_CTX_new(self->pkey, NULL);
    if (ctx == NULL || other == NULL || EVP_PKEY_derive_init(ctx) != 1) {
        ERR_clear_error();
        PyErr_SetString(KernelError, "OpenSSL could not set up the X25519 exchange");
        goto done;
    }
    /* OpenSSL refuses to derive an all-zero secret (RFC 7748 section 6.1): the one way it fails here */
    if (EVP_PKEY_derive_set_peer(ctx, other) == 1 && EVP_PKEY_derive(ctx, secret, &len) == 1 && len == KEY_LEN) {
        result = PyBytes_FromStringAndSize((const char *)secret, KEY_LEN);
    } else {
        ERR_clear_error();
        result = Py_NewRef(Py_None);
    }
    OPENSSL_cleanse(secret, sizeof(secret));
done:
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(other);
    PyBuffer_Release(&peer);
    return result;
}

static PyMethodDef X25519_methods[] = {
    {"exchange", (PyCFunction)X25519_exchange, METH_VARARGS, x25519_exchange_doc},
    {NULL}};

static PyTypeObject X25519Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "vpncloud.fastpath._kernels.X25519",
    .tp_doc = "X25519(private): a 32-byte private key, its public key and exchanges with peers.",
    .tp_basicsize = sizeof(KeyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)X25519_init,
    .tp_dealloc = (destructor)Key_dealloc,
    .tp_methods = X25519_methods,
    .tp_getset = Key_getset,
};

static PyMethodDef module_methods[] = {
    {"open_train", open_train, METH_VARARGS, open_train_doc},
    {"tcp_rows", tcp_rows, METH_VARARGS, tcp_rows_doc},
    {"coalesce_rows", coalesce_rows, METH_VARARGS, coalesce_rows_doc},
    {"ed25519_verify", ed25519_verify, METH_VARARGS, ed25519_verify_doc},
    {NULL}};

static struct PyModuleDef kernels_module = {
    PyModuleDef_HEAD_INIT, "vpncloud.fastpath._kernels", "Data-plane kernels (C twin of _python.py).", -1,
    module_methods};

PyMODINIT_FUNC PyInit__kernels(void)
{
    if (PyType_Ready(&AeadType) < 0 || PyType_Ready(&Ed25519Type) < 0 || PyType_Ready(&X25519Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&kernels_module);
    if (m == NULL)
        return NULL;
    KernelError = PyErr_NewException("vpncloud.fastpath._kernels.KernelError", PyExc_ValueError, NULL);
    if (KernelError == NULL || PyModule_AddObjectRef(m, "KernelError", KernelError) < 0 ||
        PyModule_AddObjectRef(m, "Aead", (PyObject *)&AeadType) < 0 ||
        PyModule_AddObjectRef(m, "Ed25519", (PyObject *)&Ed25519Type) < 0 ||
        PyModule_AddObjectRef(m, "X25519", (PyObject *)&X25519Type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
