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
#include "floor_server.h"

static int store(const char *body, size_t length) {
    char name[64];
    snprintf(name, sizeof name, "%ld.dcm", atomic_fetch_add(&counter, 1));
    int fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || write_all(fd, body, length) || fdatasync(fd) || close(fd) || fsync(dir_fd)) {
        perror("store");
        return -1;
    }
    return 0;
}

static void *serve(void *arg) {
    return serve_http((int)(long)arg, store);
}

int main(int argc, char **argv) {
    return serve_forever(argc, argv, "floor", serve);
}
