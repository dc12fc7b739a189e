/*
 * slow_fsync.c: an LD_PRELOAD shim that makes this machine's disk look slow to one process.
 *
 * Every call of fsync(), fdatasync() and sync_file_range() first sleeps SLOW_FSYNC_MS
 * milliseconds (default 20, fractions allowed), then does the real call: an SD card, a busy
 * NAS or a cloud volume, where one durable commit costs 10-30 ms. Only the process started
 * with LD_PRELOAD=<this .so> (and its children) is slowed; the sleep holds no lock, so two
 * threads that sync at once wait side by side, as they would on a real device.
 *
 * SQLite (libsqlite3) calls fdatasync() and Python's os.fsync() calls fsync(), both through
 * the dynamic linker, so this wrapper sees them (`nm -D --undefined-only` on libsqlite3 and
 * libpython lists which sync functions they import: bench/README.md). sync_file_range()
 * is wrapped too in case a build uses it.
 *
 * When SLOW_FSYNC_REPORT names a file, the counts of calls are appended to it at exit as
 * one line "fsync=N fdatasync=N sync_file_range=N": the bench's proof that the shim was
 * loaded and how often the process waited.
 *
 * Built by bench/fsync_shim.py: gcc -O2 -shared -fPIC -o slow_fsync.so slow_fsync.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static atomic_long n_fsync, n_fdatasync, n_sync_file_range;

static long delay_ns(void)
{
    static atomic_long cached = -1;
    long ns = atomic_load(&cached);
    if (ns < 0) {
        const char *text = getenv("SLOW_FSYNC_MS");
        double ms = text != NULL ? atof(text) : 20.0;
        ns = ms > 0 ? (long)(ms * 1e6) : 0;
        atomic_store(&cached, ns);
    }
    return ns;
}

/* Sleeps the whole delay (resumed after a signal), leaving errno as it was. */
static void slow_down(void)
{
    int saved = errno;
    long ns = delay_ns();
    struct timespec left = {ns / 1000000000L, ns % 1000000000L};
    while (nanosleep(&left, &left) == -1 && errno == EINTR) {
    }
    errno = saved;
}

static void *real(const char *name)
{
    void *fn = dlsym(RTLD_NEXT, name);
    if (fn == NULL) {
        fprintf(stderr, "slow_fsync: %s not found\n", name);
        abort();
    }
    return fn;
}

int fsync(int fd)
{
    static int (*next)(int);
    if (next == NULL)
        next = (int (*)(int))real("fsync");
    atomic_fetch_add(&n_fsync, 1);
    slow_down();
    return next(fd);
}

int fdatasync(int fd)
{
    static int (*next)(int);
    if (next == NULL)
        next = (int (*)(int))real("fdatasync");
    atomic_fetch_add(&n_fdatasync, 1);
    slow_down();
    return next(fd);
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags)
{
    static int (*next)(int, off_t, off_t, unsigned int);
    if (next == NULL)
        next = (int (*)(int, off_t, off_t, unsigned int))real("sync_file_range");
    atomic_fetch_add(&n_sync_file_range, 1);
    slow_down();
    return next(fd, offset, nbytes, flags);
}

__attribute__((destructor)) static void report(void)
{
    const char *path = getenv("SLOW_FSYNC_REPORT");
    if (path == NULL || *path == '\0')
        return;
    FILE *out = fopen(path, "a");
    if (out == NULL)
        return;
    fprintf(out, "fsync=%ld fdatasync=%ld sync_file_range=%ld\n", atomic_load(&n_fsync),
            atomic_load(&n_fdatasync), atomic_load(&n_sync_file_range));
    fclose(out);
}
