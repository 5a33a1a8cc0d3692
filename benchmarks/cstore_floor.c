/* The durable C-STORE floor: the least a C-STORE SCP that answers only once the data set is on
 * stable storage can do per instance on this machine.
 *
 * One thread per association. The upper layer (PS3.8 §9.3): an A-ASSOCIATE-AC accepting every
 * presentation context with the first transfer syntax proposed; P-DATA-TF PDVs; A-RELEASE-RP;
 * an A-ABORT or a closed connection ends the association. Per C-STORE-RQ (PS3.7 §9.3.1): the
 * command set's PDVs are kept, the data set's written to a new file as they arrive, each write
 * followed by sync_file_range(SYNC_FILE_RANGE_WRITE) so the disk takes the data while the rest
 * arrives (without it, a 100 MB instance waits for all of its writeback at the end, and the
 * floor would be slower than a server that starts it early); after the last fragment,
 * fdatasync the file and fsync its directory (so the name is durable too), then answer a
 * C-STORE-RSP with Status 0000. A C-ECHO-RQ gets its C-ECHO-RSP. No parsing of the data
 * set, no index, no batching: what benchmarks/floor.c is to STOW-RS. The benchmark runner
 * compiles it and measures storescu into it beside the servers (benchmarks/peers.py
 * CStoreFloorPeer).
 *
 * usage: cstore_floor DIRECTORY   (listens on 127.0.0.1, ephemeral port; prints "port N")
 */
#include "floor_server.h"

#define MAX_PDU 131072 /* the Maximum Length we announce: the same as the storescp --ignore ceiling */
#define MAX_RQ 65536   /* the largest A-ASSOCIATE-RQ we read: storescu proposing every storage class fits */
#define IMPLEMENTATION_CLASS_UID "2.25.329800735698586629295641978511506172918" /* PS3.5 B.2 UUID-derived */

static int read_all(int fd, uint8_t *p, size_t n) {
    while (n) {
        ssize_t k = read(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k; n -= (size_t)k;
    }
    return 0;
}

static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }
static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void put_be32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static void put_be16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
static void put_le16(uint8_t *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }
static void put_le32(uint8_t *p, uint32_t v) { p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24; }

/* Append a PS3.8 item (type, reserved, 2-byte length) holding `len` bytes of `value`. */
static size_t item(uint8_t *out, uint8_t type, const void *value, size_t len) {
    out[0] = type; out[1] = 0; put_be16(out + 2, (uint16_t)len);
    memcpy(out + 4, value, len);
    return 4 + len;
}

/* The A-ASSOCIATE-AC for the A-ASSOCIATE-RQ body `rq` of `n` bytes (PS3.8 §9.3.3). */
static size_t associate_ac(const uint8_t *rq, size_t n, uint8_t *ac) {
    size_t o = 6;
    if (n < 68) return 0;
    memcpy(ac + o, rq, 68); /* protocol version, AE titles, reserved: echoed (PS3.8 §9.3.3.2) */
    put_be16(ac + o, 1);
    o += 68;
    for (size_t i = 68; i + 4 <= n;) {
        uint8_t type = rq[i];
        size_t len = be16(rq + i + 2);
        if (i + 4 + len > n) return 0;
        const uint8_t *v = rq + i + 4;
        if (type == 0x10) {
            o += item(ac + o, 0x10, v, len);
        } else if (type == 0x20 && len >= 4) { /* a presentation context: accept its first syntax */
            const uint8_t *ts = NULL;
            size_t ts_len = 0;
            for (size_t j = 4; j + 4 <= len;) {
                size_t sub = be16(v + j + 2);
                if (j + 4 + sub > len) return 0;
                if (v[j] == 0x40 && !ts) { ts = v + j + 4; ts_len = sub; }
                j += 4 + sub;
            }
            if (!ts) return 0;
            uint8_t body[4 + 4 + 256];
            if (ts_len > 256) return 0;
            body[0] = v[0]; body[1] = 0; body[2] = 0; body[3] = 0; /* ID, reserved, result 0 (acceptance) */
            size_t m = 4 + item(body + 4, 0x40, ts, ts_len);
            o += item(ac + o, 0x21, body, m);
        }
        i += 4 + len;
    }
    uint8_t user[64], max[4];
    put_be32(max, MAX_PDU);
    size_t u = item(user, 0x51, max, 4);
    u += item(user + u, 0x52, IMPLEMENTATION_CLASS_UID, sizeof IMPLEMENTATION_CLASS_UID - 1);
    o += item(ac + o, 0x50, user, u);
    ac[0] = 0x02; ac[1] = 0;
    put_be32(ac + 2, (uint32_t)(o - 6));
    return o;
}

/* An element of an Implicit VR Little Endian command set (PS3.7 §6.3.1): its value and length. */
static const uint8_t *command_element(const uint8_t *cmd, size_t n, uint16_t element, uint32_t *len) {
    for (size_t i = 0; i + 8 <= n;) {
        uint16_t group = cmd[i] | cmd[i + 1] << 8, elem = cmd[i + 2] | cmd[i + 3] << 8;
        uint32_t l = cmd[i + 4] | cmd[i + 5] << 8 | cmd[i + 6] << 16 | (uint32_t)cmd[i + 7] << 24;
        if (l > n - i - 8) return NULL;
        if (group == 0 && elem == element) { *len = l; return cmd + i + 8; }
        i += 8 + l;
    }
    return NULL;
}

static size_t element(uint8_t *out, uint16_t elem, const void *value, uint32_t len) {
    out[0] = 0; out[1] = 0; out[2] = elem; out[3] = elem >> 8;
    put_le32(out + 4, len);
    memcpy(out + 8, value, len);
    return 8 + len;
}

/* Send the response to the request command set `cmd` (C-STORE-RSP or C-ECHO-RSP, Status 0000)
 * as one P-DATA-TF with one command PDV on presentation context `pc`. */
static int respond(int s, const uint8_t *cmd, size_t n, uint8_t pc) {
    uint32_t cls_len = 0, sop_len = 0, id_len = 0, field_len = 0;
    const uint8_t *cls = command_element(cmd, n, 0x0002, &cls_len);
    const uint8_t *sop = command_element(cmd, n, 0x1000, &sop_len);
    const uint8_t *id = command_element(cmd, n, 0x0110, &id_len);
    const uint8_t *field = command_element(cmd, n, 0x0100, &field_len);
    if (!cls || !id || id_len != 2 || !field || field_len != 2 || cls_len > 64 || sop_len > 64) return -1;
    uint8_t rsp_field[2], none[2], ok[2], group[4];
    put_le16(rsp_field, (uint16_t)((field[0] | field[1] << 8) | 0x8000)); /* C-STORE-RSP 8001, C-ECHO-RSP 8030 */
    put_le16(none, 0x0101); /* Command Data Set Type: no data set */
    put_le16(ok, 0x0000);   /* Status: Success */
    uint8_t pdu[512], *c = pdu + 12 + 12; /* PDU and PDV headers, then the group length element */
    size_t m = 0;
    m += element(c + m, 0x0002, cls, cls_len);
    m += element(c + m, 0x0100, rsp_field, 2);
    m += element(c + m, 0x0120, id, 2);
    m += element(c + m, 0x0800, none, 2);
    m += element(c + m, 0x0900, ok, 2);
    if (sop) m += element(c + m, 0x1000, sop, sop_len);
    put_le32(group, (uint32_t)m);
    element(pdu + 12, 0x0000, group, 4);
    size_t pdv = 2 + 12 + m;
    pdu[0] = 0x04; pdu[1] = 0;
    put_be32(pdu + 2, (uint32_t)(4 + pdv));
    put_be32(pdu + 6, (uint32_t)pdv);
    pdu[10] = pc; pdu[11] = 0x03; /* command, last fragment */
    return write_all(s, pdu, 12 + 12 + m);
}

static void *serve(void *arg) {
    int s = (int)(long)arg, fd = -1;
    off_t written = 0;
    uint8_t head[6], *body = malloc(MAX_PDU > MAX_RQ ? MAX_PDU : MAX_RQ), *ac = malloc(MAX_RQ + 256), cmd[4096];
    size_t cmd_len = 0;
    int cmd_done = 0;
    uint8_t pc = 0;
    if (read_all(s, head, 6) || head[0] != 0x01 || be32(head + 2) > MAX_RQ || read_all(s, body, be32(head + 2)))
        goto done;
    size_t n = associate_ac(body, be32(head + 2), ac);
    if (!n || write_all(s, ac, n)) goto done;
    for (;;) {
        if (read_all(s, head, 6)) goto done;
        uint32_t len = be32(head + 2);
        if (len > MAX_PDU || read_all(s, body, len)) goto done;
        if (head[0] == 0x05) { /* A-RELEASE-RQ -> A-RELEASE-RP */
            static const uint8_t rp[10] = {0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0};
            write_all(s, rp, sizeof rp);
            goto done;
        }
        if (head[0] != 0x04) goto done; /* A-ABORT, or anything else */
        for (size_t i = 0; i + 6 <= len;) {
            uint32_t pdv = be32(body + i);
            if (pdv < 2 || pdv > len - i - 4) goto done;
            uint8_t mch = body[i + 5];
            const uint8_t *frag = body + i + 6;
            size_t frag_len = pdv - 2;
            pc = body[i + 4];
            if (mch & 1) { /* command */
                if (cmd_len + frag_len > sizeof cmd) goto done;
                memcpy(cmd + cmd_len, frag, frag_len);
                cmd_len += frag_len;
                if (mch & 2) {
                    cmd_done = 1;
                    uint32_t t_len;
                    const uint8_t *type = command_element(cmd, cmd_len, 0x0800, &t_len);
                    if (type && t_len == 2 && (type[0] | type[1] << 8) == 0x0101) { /* no data set */
                        if (respond(s, cmd, cmd_len, pc)) goto done;
                        cmd_len = 0; cmd_done = 0;
                    }
                }
            } else {
                if (!cmd_done) goto done;
                if (fd < 0) {
                    char name[64];
                    snprintf(name, sizeof name, "%ld.dcm", atomic_fetch_add(&counter, 1));
                    fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL, 0600);
                    if (fd < 0) { perror("create"); goto done; }
                    written = 0;
                }
                if (write_all(fd, frag, frag_len)) { perror("write"); goto done; }
                sync_file_range(fd, written, (off_t)frag_len, SYNC_FILE_RANGE_WRITE);
                written += (off_t)frag_len;
                if (mch & 2) {
                    if (fdatasync(fd) || close(fd) || fsync(dir_fd)) { perror("flush"); fd = -1; goto done; }
                    fd = -1;
                    if (respond(s, cmd, cmd_len, pc)) goto done;
                    cmd_len = 0; cmd_done = 0;
                }
            }
            i += 4 + pdv;
        }
    }
done:
    if (fd >= 0) close(fd);
    free(body);
    free(ac);
    close(s);
    return NULL;
}

int main(int argc, char **argv) {
    return serve_forever(argc, argv, "cstore_floor", serve);
}
