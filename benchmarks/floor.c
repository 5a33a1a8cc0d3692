/* The STOW-RS floor: the least a durable HTTP ingest server can do per request on this machine.
 *
 * One thread per connection; per request: read the header block, read Content-Length body
 * bytes, write them to a new file, fdatasync it, fsync its directory (so the name is durable
 * too), answer 200 with an empty JSON object. No parsing of the body, no index, no batching.
 * The benchmark runner compiles it, points the same STOW-RS clients at it and reports what it
 * reaches as a limit of the machine (benchmarks/machine.py stow_floor).
 *
 * usage: floor DIRECTORY   (listens on 127.0.0.1, ephemeral port; prints "port N")
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *dir;
static int dir_fd;
static atomic_long counter;

static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: 2\r\n\r\n{}";

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0) { if (errno == EINTR) continue; return -1; }
        p += k; n -= (size_t)k;
    }
    return 0;
}

static void *serve(void *arg) {
    int s = (int)(long)arg;
    size_t cap = 1 << 20, have = 0;
    char *buf = malloc(cap);
    for (;;) {
        /* Header block. */
        char *end;
        while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {
            if (have == cap) goto done;
            ssize_t k = read(s, buf + have, cap - have);
            if (k <= 0) goto done;
            have += (size_t)k;
        }
        size_t head = (size_t)(end - buf) + 4, length = 0;
        for (char *line = buf; line < end; line = strstr(line, "\r\n") + 2)
            if (!strncasecmp(line, "content-length:", 15)) length = strtoul(line + 15, NULL, 10);
        if (head + length > cap) {
            cap = head + length;
            buf = realloc(buf, cap);
        }
        while (have < head + length) {
            ssize_t k = read(s, buf + have, cap - have);
            if (k <= 0) goto done;
            have += (size_t)k;
        }
        char name[64];
        snprintf(name, sizeof name, "%ld.dcm", atomic_fetch_add(&counter, 1));
        int fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL, 0600);
        if (fd < 0 || write_all(fd, buf + head, length) || fdatasync(fd) || close(fd) || fsync(dir_fd)) {
            perror("store");
            goto done;
        }
        if (write_all(s, RESPONSE, sizeof RESPONSE - 1)) goto done;
        memmove(buf, buf + head + length, have - head - length);
        have -= head + length;
    }
done:
    free(buf);
    close(s);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: floor DIRECTORY\n"); return 2; }
    dir = argv[1];
    dir_fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dir_fd < 0) { perror(dir); return 1; }
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
