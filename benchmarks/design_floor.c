/* The design floor: dicomaccel's per-request STOW-RS work, in C, without the interpreter.
 *
 * Where floor.c makes each body a durable file and nothing more, this server does what the
 * archive does for one instance (dicomaccel.archive: store, commit, index), in the same order,
 * with the same system calls and the same SQLite statements, minus every line of Python and
 * the parsing:
 *
 *   1. the body goes to a new temp file in tmp/, its writeback started (sync_file_range);
 *   2. published: renamed to a "pending" marker in tmp/ that names its destination, then
 *      hard-linked into instances/<study>/<series>/<uid>.<token>.dcm;
 *   3. indexed: one SQLite transaction (WAL, synchronous=NORMAL) of the statements the
 *      archive's index ran for a real instance of the same series, read from design.sql, with
 *      this request's SOP Instance UID and path bound in; one connection, one transaction at
 *      a time (the archive's committer thread); a checkpoint every 160 commits on a thread of
 *      its own (the archive's _Checkpointer);
 *   4. syncfs of the file system, then the marker dropped and 200 answered.
 *
 * No header scan, no validation, no batching across connections (one thread per connection).
 * The benchmark runner prepares ROOT with dicomaccel's own archive and points the same STOW-RS
 * clients at it: what dicomaccel's design reaches on this machine when no Python runs
 * (benchmarks/machine.py design_floor).
 *
 * ROOT holds tmp/, index.sqlite3 and design.sql: its first line is the series directory
 * (instances/<study>/<series>, which exists), each further line one SQL statement, ?1 the SOP
 * Instance UID, ?2 the file's path relative to ROOT.
 *
 * usage: design_floor ROOT   (listens on 127.0.0.1, ephemeral port; prints "port N")
 */
#include "floor_server.h"

#include <sqlite3.h>

#define CHECKPOINT_EVERY 160
#define MAX_STATEMENTS 32

static int tmp_fd;
static char series_dir[512], db_path[4096];
static sqlite3 *db;
static sqlite3_stmt *begin, *commit, *statements[MAX_STATEMENTS];
static int n_statements;
static long commits;
static pthread_mutex_t db_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t checkpoint_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t checkpoint_due = PTHREAD_COND_INITIALIZER;
static int checkpoint_wanted;

static void fail(const char *what) {
    fprintf(stderr, "design_floor: %s: %s\n", what, db ? sqlite3_errmsg(db) : strerror(errno));
    exit(1);
}

static int run(sqlite3_stmt *statement) {
    int rc = sqlite3_step(statement);
    sqlite3_reset(statement);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

static void *checkpointer(void *arg) {
    (void)arg;
    sqlite3 *conn;
    if (sqlite3_open(db_path, &conn) != SQLITE_OK) fail("checkpointer connection");
    sqlite3_busy_timeout(conn, 30000);
    for (;;) {
        pthread_mutex_lock(&checkpoint_lock);
        while (!checkpoint_wanted) pthread_cond_wait(&checkpoint_due, &checkpoint_lock);
        checkpoint_wanted = 0;
        pthread_mutex_unlock(&checkpoint_lock);
        sqlite3_exec(conn, "PRAGMA wal_checkpoint(PASSIVE)", NULL, NULL, NULL);
    }
    return NULL;
}

/* The index transaction of one instance; 0 once committed. */
static int index_instance(const char *uid, const char *path) {
    int rc = 0;
    pthread_mutex_lock(&db_lock);
    if (run(begin)) rc = -1;
    for (int i = 0; !rc && i < n_statements; i++) {
        sqlite3_stmt *statement = statements[i];
        int n = sqlite3_bind_parameter_count(statement);
        if (n >= 1) sqlite3_bind_text(statement, 1, uid, -1, SQLITE_STATIC);
        if (n >= 2) sqlite3_bind_text(statement, 2, path, -1, SQLITE_STATIC);
        rc = run(statement);
    }
    if (!rc) rc = run(commit);
    else sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    if (!rc && ++commits % CHECKPOINT_EVERY == 0) {
        pthread_mutex_lock(&checkpoint_lock);
        checkpoint_wanted = 1;
        pthread_cond_signal(&checkpoint_due);
        pthread_mutex_unlock(&checkpoint_lock);
    }
    if (rc) fprintf(stderr, "design_floor: index: %s\n", sqlite3_errmsg(db));
    pthread_mutex_unlock(&db_lock);
    return rc;
}

static int store(const char *body, size_t length) {
    long n = atomic_fetch_add(&counter, 1);
    char uid[65], path[700], temp[64], marker[800];
    snprintf(uid, sizeof uid, "2.25.%d%09ld", (int)getpid(), n);
    snprintf(path, sizeof path, "%s/%s.%016lx.dcm", series_dir, uid, (unsigned long)random());
    snprintf(temp, sizeof temp, "%d-%ld.part", (int)getpid(), n);
    int at = snprintf(marker, sizeof marker, "%d-%ld.pending!%s", (int)getpid(), n, path);
    for (char *p = marker + at - strlen(path); *p; p++)
        if (*p == '/') *p = '!';
    int fd = openat(tmp_fd, temp, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || write_all(fd, body, length)) { perror("design_floor: write"); return -1; }
    sync_file_range(fd, 0, (off64_t)length, SYNC_FILE_RANGE_WRITE);
    if (renameat(tmp_fd, temp, tmp_fd, marker) || linkat(tmp_fd, marker, dir_fd, path, 0)) {
        perror("design_floor: publish");
        return -1;
    }
    if (index_instance(uid, path)) return -1;
    if (syncfs(dir_fd)) { perror("design_floor: syncfs"); return -1; }
    close(fd);
    unlinkat(tmp_fd, marker, 0);
    return 0;
}

static void *serve(void *arg) {
    return serve_http((int)(long)arg, store);
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: design_floor ROOT\n"); return 2; }
    snprintf(db_path, sizeof db_path, "%s/index.sqlite3", argv[1]);
    char script[4096];
    snprintf(script, sizeof script, "%s/design.sql", argv[1]);
    FILE *f = fopen(script, "r");
    if (!f || !fgets(series_dir, sizeof series_dir, f)) fail(script);
    series_dir[strcspn(series_dir, "\n")] = 0;
    if (sqlite3_open(db_path, &db) != SQLITE_OK) fail("open index");
    sqlite3_busy_timeout(db, 30000);
    if (sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0",
                     NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "BEGIN IMMEDIATE", -1, &begin, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "COMMIT", -1, &commit, NULL) != SQLITE_OK) fail("index");
    static char line[1 << 16];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!*line) continue;
        if (n_statements == MAX_STATEMENTS) fail("too many statements");
        if (sqlite3_prepare_v2(db, line, -1, &statements[n_statements++], NULL) != SQLITE_OK) fail(line);
    }
    fclose(f);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s/tmp", argv[1]);
    tmp_fd = open(tmp, O_RDONLY | O_DIRECTORY);
    if (tmp_fd < 0) fail(tmp);
    pthread_t t;
    pthread_create(&t, NULL, checkpointer, NULL);
    return serve_forever(argc, argv, "design_floor", serve);
}
