/* What the floor servers (floor.c and design_floor.c for STOW-RS, cstore_floor.c for C-STORE)
 * share: the data directory, writing all of a buffer, reading HTTP requests, and a thread per
 * connection on an ephemeral 127.0.0.1 port. Included first by each; the benchmark runner compiles each as one file. */
#ifndef FLOOR_SERVER_H
#define FLOOR_SERVER_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* first, before any system header: memmem, sync_file_range */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

static int dir_fd;            /* the directory the stored files go to */
static atomic_long counter;   /* names them: 0.dcm, 1.dcm, ... */

static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0) { if (errno == EINTR) continue; return -1; }
        p += k; n -= (size_t)k;
    }
    return 0;
}

/* One HTTP/1.1 request with a Content-Length body from socket s into *buf (*cap bytes, *have
 * of them read, possibly past this request: the caller moves those down once done). Sets
 * *body and *length; returns 0, or -1 once the peer closed or the header block overflowed. */
static inline int read_request(int s, char **buf, size_t *cap, size_t *have, size_t *body, size_t *length) {
    char *end;
    while (!(end = memmem(*buf, *have, "\r\n\r\n", 4))) {
        if (*have == *cap) return -1;
        ssize_t k = read(s, *buf + *have, *cap - *have);
        if (k <= 0) return -1;
        *have += (size_t)k;
    }
    *body = (size_t)(end - *buf) + 4;
    *length = 0;
    for (char *line = *buf; line < end; line = strstr(line, "\r\n") + 2)
        if (!strncasecmp(line, "content-length:", 15)) *length = strtoul(line + 15, NULL, 10);
    if (*body + *length > *cap) {
        *cap = *body + *length;
        *buf = realloc(*buf, *cap);
    }
    while (*have < *body + *length) {
        ssize_t k = read(s, *buf + *have, *cap - *have);
        if (k <= 0) return -1;
        *have += (size_t)k;
    }
    return 0;
}

/* A STOW-RS floor's connection: each request's body goes to store(body, length), then 200 with
 * an empty JSON object; the connection ends when store() fails or the peer closes. */
static inline void *serve_http(int s, int (*store)(const char *body, size_t length)) {
    static const char response[] =
        "HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: 2\r\n\r\n{}";
    size_t cap = 1 << 20, have = 0, body, length;
    char *buf = malloc(cap);
    while (!read_request(s, &buf, &cap, &have, &body, &length)) {
        if (store(buf + body, length) || write_all(s, response, sizeof response - 1)) break;
        memmove(buf, buf + body + length, have - body - length);
        have -= body + length;
    }
    free(buf);
    close(s);
    return NULL;
}

/* Open DIRECTORY (argv[1]), listen on 127.0.0.1 (ephemeral port, printed as "port N"), and
 * run serve(socket) on a thread of its own for every connection, TCP_NODELAY on. */
static int serve_forever(int argc, char **argv, const char *name, void *(*serve)(void *)) {
    if (argc != 2) { fprintf(stderr, "usage: %s DIRECTORY\n", name); return 2; }
    dir_fd = open(argv[1], O_RDONLY | O_DIRECTORY);
    if (dir_fd < 0) { perror(argv[1]); return 1; }
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 128) ||
        getsockname(ls, (struct sockaddr *)&a, &alen)) { perror("listen"); return 1; }
    printf("port %d\n", ntohs(a.sin_port));
    fflush(stdout);
    for (;;) {
        int s = accept(ls, NULL, NULL);
        if (s < 0) continue;
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t t;
        pthread_create(&t, NULL, serve, (void *)(long)s);
        pthread_detach(t);
    }
}

#endif
