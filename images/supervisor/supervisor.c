/*
 * Cinch sandbox supervisor: PID 1 of every sandbox container.
 *
 * It starts the language loader (a warmed-up interpreter blocked reading one
 * byte from its stdin), tells the host it is ready, then runs exactly one
 * program and exits.  It never runs user code itself, so a program that dies
 * in any way is observed and reported; a program that kills this process too
 * is caught by the host through the container's own end.
 *
 * Frames on both directions: 1 type byte, 4-byte big-endian length, payload.
 *
 * host -> supervisor (fd 0, the attached stdin)
 *   'R' run:    nonce[16] | u32 output_limit | u32 code_len | code
 *               | u32 stdin_len | stdin | u32 out_max_files | u32 out_max_bytes
 *               | u32 files_len | files | u32 extra_len | extra
 *               files: { u16 path_len | path | u32 data_len | data }*, written
 *               under the working directory before the program starts;
 *               extra: the program's args and env, passed on to the loader as is
 *   'S' streamed run: the same; the host reads output as it comes, so the
 *               loader is told to flush the program's stdout at each line
 *   'K' signal: u8 signo   (sent to the program's whole process group)
 *
 * supervisor -> host (fd 1, the attached stdout)
 *   'Y' ready:  empty
 *   'O' stdout chunk, 'E' stderr chunk
 *   'X' exit:   nonce[16] | u8 kind ('e' exited, 's' killed by signal) | u32 value
 *               | u32 microseconds from the program's go to its end (the bill)
 *   'F' failure: message (a fault of ours, not of the program)
 *   'G' an output file, before 'X': u8 has_content | u64 size | u16 path_len
 *               | path | content (when has_content)
 *   'T' the list of output files was cut (more entries than we look at)
 *
 * loader -> supervisor (fd 3 in the loader, the status pipe)
 *   'r' once warm; later 'x' | u32 exit code | u32 tail_len | tail, when the
 *   program has finished (atexit done) but before the runtime's own teardown,
 *   so the result does not wait for it.  The tail is the program's last
 *   buffered stdout (at most TAIL_CAP bytes), which comes here instead of
 *   through the stdout pipe: one write and one read fewer.  Without that
 *   report, waitpid decides.
 *
 * supervisor -> loader (fd 4 in the loader, the code pipe)
 *   u32 code_len | code, written once the program file exists (the length's top
 *   bit set for a streamed run, which the loader strips; the next bit set when
 *   u32 extra_len | extra follows the code): it is the loader's signal to go, and the Python loader compiles these bytes instead
 *   of reading the file back (three syscalls fewer on the hot path).  The
 *   program's stdin (fd 0) carries only the program's stdin.
 *
 * For the first OUT_GRACE_MS of a run the output pipes are not watched: a short
 * program's output is then read once, after its exit report, instead of
 * waking us twice (a wake-up and each syscall cost ~0.3 ms under ptrace); a
 * program with more than a pipe's worth to say waits at most that long.
 * Output is not sent as it comes: it collects here and leaves with the exit
 * frame in one write (the host answers only at the end anyway), or when
 * FLUSH_MS have passed since the oldest unsent byte, or when the buffer is full.
 * Every write to the host costs a trip through the runtime, the shim and the
 * engine.
 *
 * Output files: when the program has ended, every regular file under out/ in
 * the working directory (created empty while idle) is read here, inside the
 * sandbox, after every other process is killed: opened relative to directory
 * descriptors with O_NOFOLLOW, checked with fstat, so symlinks, FIFOs and
 * anything else are skipped, never followed.  At most out_max_files files
 * and out_max_bytes in all carry their content; the next ones are listed
 * with their size only, and no more than LIST_FACTOR times out_max_files
 * entries are looked at (then 'T').
 *
 * usage: supervisor CODE_PATH LOADER [ARGS...]
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WORKDIR "/tmp/work"
#define MAX_RUN_FRAME (80u << 20) /* code + stdin + files, the API caps far below */
#define DRAIN_MS 30               /* leftover children may hold the pipes */
#define CHUNK 65536
#define FLUSH_MS 10               /* oldest unsent output waits at most this */
#define OUT_GRACE_MS 5            /* output pipes are left alone this long after the go */
#define PEND_CAP (2 * CHUNK)      /* output collected before it must be sent */
#define WARM_BYTES 16384          /* of each buffer, touched while idle */
#define TAIL_CAP CHUNK            /* stdout that may come with the exit report */
#define EXTRA_FLAG 0x40000000u    /* in the code length word: args/env follow */
#define LIST_FACTOR 4             /* output entries looked at, per file with content */
#define OUT_DEPTH 8               /* sub-directories of out/ followed at most */
#define OUT_DIR_CAP 4096          /* names read from one directory at most */
#define REAP_MS 200               /* leftover processes get this long to die */

/* Frames waiting to go to the host, in order. */
static unsigned char pend[PEND_CAP];
static size_t pend_len;
static long long pend_since;
/* The loader's exit report being read: 9-byte header, then the stdout tail. */
static unsigned char status_msg[9 + TAIL_CAP];

static int sigpipe_fds[2];

static void on_sigchld(int signo) {
    (void)signo;
    int saved = errno;
    ssize_t r = write(sigpipe_fds[1], "c", 1);
    (void)r;
    errno = saved;
}

static void write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            _exit(3); /* the host went away: nothing left to report to */
        }
        p += n;
        len -= (size_t)n;
    }
}

static void send_frame(char type, const void *payload, uint32_t len) {
    /* One writev per frame: every syscall is expensive under gVisor's ptrace platform. */
    unsigned char hdr[5] = {(unsigned char)type, len >> 24, len >> 16, len >> 8, len};
    struct iovec iov[2] = {{hdr, 5}, {(void *)payload, len}};
    ssize_t n;
    do {
        n = writev(1, iov, len ? 2 : 1);
    } while (n < 0 && errno == EINTR);
    if (n < 0) _exit(3); /* the host went away: nothing left to report to */
    size_t done = (size_t)n;
    if (done < 5) { /* a short write: finish with plain writes */
        write_all(1, hdr + done, 5 - done);
        done = 5;
    }
    if (done - 5 < len) write_all(1, (const char *)payload + (done - 5), len - (done - 5));
}

static void fail(const char *msg) {
    send_frame('F', msg, (uint32_t)strlen(msg));
    _exit(2);
}

static int read_full(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void flush_pending(void) {
    if (pend_len) write_all(1, pend, pend_len);
    pend_len = 0;
}

static void put_header(unsigned char *h, char type, uint32_t n) {
    h[0] = (unsigned char)type; h[1] = n >> 24; h[2] = n >> 16; h[3] = n >> 8; h[4] = n;
}

/* Add a whole frame (len <= PEND_CAP - 5) to the pending buffer. */
static void queue_frame(char type, const void *payload, size_t len) {
    if (PEND_CAP - pend_len < 5 + len) flush_pending();
    put_header(pend + pend_len, type, (uint32_t)len);
    memcpy(pend + pend_len + 5, payload, len);
    if (pend_len == 0) pend_since = now_ms();
    pend_len += 5 + len;
}

/* Read what fd holds into the pending buffer as one frame of the given type;
   returns what read() returned. */
static ssize_t collect(int fd, char type) {
    if (PEND_CAP - pend_len < 5 + 4096) flush_pending();
    size_t room = PEND_CAP - pend_len - 5;
    ssize_t got = read(fd, pend + pend_len + 5, room < CHUNK ? room : CHUNK);
    if (got > 0) {
        put_header(pend + pend_len, type, (uint32_t)got);
        if (pend_len == 0) pend_since = now_ms();
        pend_len += 5 + (size_t)got;
    }
    return got;
}

/* Write every iovec, however the kernel splits it (a blocking fd). */
static int writev_all(int fd, struct iovec *iov, int n) {
    while (n > 0) {
        ssize_t w = writev(fd, iov, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        size_t done = (size_t)w;
        while (n > 0 && done >= iov->iov_len) {
            done -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + done;
            iov->iov_len -= done;
        }
    }
    return 0;
}

/* A relative path without empty, "." or ".." components (the API checked it
   already; a second look costs nothing). */
static int safe_path(const char *p, size_t len) {
    if (len == 0 || len > 255 || p[0] == '/' || memchr(p, 0, len)) return 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || p[i] == '/') {
            size_t n = i - start;
            if (n == 0 || (n == 1 && p[start] == '.') ||
                (n == 2 && p[start] == '.' && p[start + 1] == '.'))
                return 0;
            start = i + 1;
        }
    }
    return 1;
}

/* The request's files, under the working directory, before the program starts. */
static void write_input_files(int work_fd, const unsigned char *p, size_t len) {
    char path[256];
    while (len > 0) {
        if (len < 2) fail("bad files block");
        size_t plen = ((size_t)p[0] << 8) | p[1];
        if (len < 2 + plen + 4) fail("bad files block");
        if (!safe_path((const char *)p + 2, plen)) fail("bad input file path");
        memcpy(path, p + 2, plen);
        path[plen] = 0;
        uint32_t dlen = be32(p + 2 + plen);
        const unsigned char *data = p + 2 + plen + 4;
        if (dlen > len - 2 - plen - 4) fail("bad files block");
        /* Parent directories first. */
        for (size_t i = 1; i < plen; i++) {
            if (path[i] != '/') continue;
            path[i] = 0;
            if (mkdirat(work_fd, path, 0755) < 0 && errno != EEXIST) fail("cannot create an input directory");
            path[i] = '/';
        }
        int fd = openat(work_fd, path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0) fail("cannot create an input file");
        write_all(fd, data, dlen);
        close(fd);
        p = data + dlen;
        len -= 2 + plen + 4 + dlen;
    }
}

struct out_walk {
    uint32_t max_files, files;   /* files sent with their content */
    uint64_t max_bytes, bytes;
    uint32_t seen, max_seen;     /* entries looked at */
    int cut;
};

struct entry {
    char *name;
    unsigned char type;
};

static int by_name(const void *a, const void *b) {
    return strcmp(((const struct entry *)a)->name, ((const struct entry *)b)->name);
}

static void send_out_file(const char *path, uint64_t size, const unsigned char *content, size_t n) {
    size_t plen = strlen(path);
    unsigned char head[1 + 8 + 2];
    head[0] = content != NULL;
    for (int i = 0; i < 8; i++) head[1 + i] = (unsigned char)(size >> (56 - 8 * i));
    head[9] = (unsigned char)(plen >> 8);
    head[10] = (unsigned char)plen;
    uint32_t total = (uint32_t)(sizeof head + plen + (content ? n : 0));
    unsigned char hdr[5];
    put_header(hdr, 'G', total);
    struct iovec iov[4] = {{hdr, 5}, {head, sizeof head}, {(void *)path, plen},
                           {(void *)content, content ? n : 0}};
    if (writev_all(1, iov, content && n ? 4 : 3) < 0) _exit(3);
}

/* One regular file of out/: with its content if it fits what is left. */
static void out_file(int dfd, const char *name, const char *path, struct out_walk *w) {
    struct stat st;
    if (w->files < w->max_files) {
        int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) return;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            close(fd);
            return;
        }
        uint64_t size = (uint64_t)st.st_size;
        if (size <= w->max_bytes - w->bytes) {
            unsigned char *buf = malloc(size ? size : 1);
            size_t got = 0;
            while (buf && got < size) {
                ssize_t r = read(fd, buf + got, size - got);
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0) break;
                got += (size_t)r;
            }
            close(fd);
            if (buf) {
                w->files++;
                w->bytes += got;
                send_out_file(path, got, buf, got);
                free(buf);
                return;
            }
        } else {
            close(fd);
        }
    } else if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode)) {
        return;
    }
    w->cut = 1;
    send_out_file(path, (uint64_t)st.st_size, NULL, 0);
}

/* Every regular file under the directory dfd (which this closes), by name. */
static void out_dir(int dfd, char *path, size_t plen, int depth, struct out_walk *w) {
    DIR *dir = fdopendir(dfd);
    if (!dir) {
        close(dfd);
        return;
    }
    struct entry *ents = NULL;
    size_t count = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (count == OUT_DIR_CAP) {
            w->cut = 1;
            break;
        }
        if (count == cap) {
            cap = cap ? 2 * cap : 64;
            struct entry *more = realloc(ents, cap * sizeof *ents);
            if (!more) fail("out of memory");
            ents = more;
        }
        ents[count].name = strdup(e->d_name);
        if (!ents[count].name) fail("out of memory");
        ents[count].type = e->d_type;
        count++;
    }
    if (count) qsort(ents, count, sizeof *ents, by_name);
    for (size_t i = 0; i < count; i++) {
        const char *name = ents[i].name;
        unsigned char type = ents[i].type;
        if (w->seen >= w->max_seen) {
            w->cut = 1;
            break;
        }
        size_t nlen = strlen(name);
        if (plen + 1 + nlen >= 4096) continue;
        path[plen] = '/';
        memcpy(path + plen + 1, name, nlen + 1);
        if (type == DT_UNKNOWN) {
            struct stat st;
            if (fstatat(dirfd(dir), name, &st, AT_SYMLINK_NOFOLLOW) < 0) continue;
            type = S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : DT_LNK;
        }
        if (type == DT_DIR) {
            if (depth >= OUT_DEPTH) {
                w->cut = 1;
            } else {
                int sub = openat(dirfd(dir), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (sub >= 0) out_dir(sub, path, plen + 1 + nlen, depth + 1, w);
            }
        } else if (type == DT_REG) {
            w->seen++;
            out_file(dirfd(dir), name, path, w);
        }
        path[plen] = 0;
    }
    for (size_t i = 0; i < count; i++) free(ents[i].name);
    free(ents);
    closedir(dir);
}

/* Kill every process but us (orphans are ours to reap), and give them a moment to go. */
static void kill_all_others(void) {
    kill(-1, SIGKILL);
    long long until = now_ms() + REAP_MS;
    for (;;) {
        pid_t p = waitpid(-1, NULL, WNOHANG);
        if (p < 0) return; /* ECHILD: nobody left */
        if (p == 0) {
            if (now_ms() >= until) return;
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
}

/* The files the program left under out/, sent as 'G' frames (and 'T' if cut). */
static void send_out_files(int work_fd, uint32_t max_files, uint64_t max_bytes) {
    int od = openat(work_fd, "out", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (od < 0) return; /* removed, or replaced by a symlink: nothing to collect */
    /* Usually empty: one look, before anything costlier. */
    DIR *probe = fdopendir(od);
    if (!probe) {
        close(od);
        return;
    }
    struct dirent *e;
    int any = 0;
    while ((e = readdir(probe)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) { any = 1; break; }
    closedir(probe);
    if (!any) return;
    /* Nothing may change the files while we read them. */
    kill_all_others();
    flush_pending();
    /* gVisor follows a symlink here despite O_NOFOLLOW (with O_DIRECTORY): look
       at the entry itself first, then make sure the open found that one.  Below
       out/, readdir's d_type says what each entry is, and only DT_DIR and DT_REG
       are opened (nothing can swap them now). */
    struct stat lst, ost;
    if (fstatat(work_fd, "out", &lst, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(lst.st_mode)) return;
    od = openat(work_fd, "out", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (od < 0) return;
    if (fstat(od, &ost) < 0 || ost.st_ino != lst.st_ino || ost.st_dev != lst.st_dev) {
        close(od);
        return;
    }
    struct out_walk w = {max_files, 0, max_bytes, 0, 0, 0, 0};
    uint64_t most = (uint64_t)max_files * LIST_FACTOR;
    w.max_seen = most < 64 ? 64 : most > 100000 ? 100000 : (uint32_t)most;
    static char path[4096];
    memcpy(path, "out", 4);
    out_dir(od, path, 3, 0, &w);
    if (w.cut) send_frame('T', NULL, 0);
}

int main(int argc, char **argv) {
    if (argc < 3) fail("usage: supervisor CODE_PATH LOADER [ARGS...]");
    /* Not dumpable: the program (same uid) cannot read our memory (the nonce)
       through /proc/1/mem or attach to us with ptrace. */
    prctl(PR_SET_DUMPABLE, 0);
    const char *code_path = argv[1];

    if (mkdir(WORKDIR, 0700) < 0 && errno != EEXIST) fail("cannot create " WORKDIR);
    if (chdir(WORKDIR) < 0) fail("cannot enter " WORKDIR);
    /* Held open: files go in and out relative to it, whatever the program
       renames or replaces later. */
    int work_fd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (work_fd < 0) fail("cannot open " WORKDIR);
    if (mkdirat(work_fd, "out", 0755) < 0 && errno != EEXIST) fail("cannot create out/");

    int in_p[2], out_p[2], err_p[2], ready_p[2], code_p[2];
    if (pipe2(in_p, O_CLOEXEC) || pipe2(out_p, O_CLOEXEC) || pipe2(err_p, O_CLOEXEC) ||
        pipe2(ready_p, O_CLOEXEC) || pipe2(code_p, O_CLOEXEC) ||
        pipe2(sigpipe_fds, O_CLOEXEC | O_NONBLOCK))
        fail("pipe failed");

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    pid_t child = fork();
    if (child < 0) fail("fork failed");
    if (child == 0) {
        setsid();
        signal(SIGPIPE, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        /* dup2 clears close-on-exec on the targets; the sources stay CLOEXEC. */
        if (dup2(in_p[0], 0) < 0 || dup2(out_p[1], 1) < 0 || dup2(err_p[1], 2) < 0 ||
            dup2(ready_p[1], 3) < 0 || dup2(code_p[0], 4) < 0)
            _exit(127);
        execv(argv[2], argv + 2);
        _exit(127);
    }
    close(in_p[0]);
    close(out_p[1]);
    close(err_p[1]);
    close(ready_p[1]);
    close(code_p[0]);

    /* Wait until the loader says it is warm (or dies trying). */
    char rb;
    if (read_full(ready_p[0], &rb, 1) < 0 || rb != 'r') fail("loader exited before it was ready");
    /* Everything the run needs is set up now, while idle: each syscall on the
       hot path costs tens to hundreds of microseconds under gVisor's ptrace. */
    set_nonblock(in_p[1]);
    set_nonblock(out_p[0]);
    set_nonblock(err_p[0]);
    set_nonblock(ready_p[0]);
    /* The loader's warm-up writes to its stdout and stderr (a first write costs
       a Node program 6-26 ms of lazily compiled code and page faults), all before
       its 'r': that output is not the program's, so it goes now. */
    static unsigned char warm_out[4096];
    int warm_fds[2] = {out_p[0], err_p[0]};
    for (int i = 0; i < 2; i++)
        while (read(warm_fds[i], warm_out, sizeof warm_out) > 0) {
        }
    static unsigned char first[65536];
    /* Touch the buffers now: a first-touch page fault costs a trip to gVisor's
       kernel, and the hot path should not pay it. */
    memset(first, 1, WARM_BYTES); /* the rest only for big programs and outputs */
    memset(pend, 1, WARM_BYTES);
    memset(status_msg, 1, WARM_BYTES);
    /* The program file exists, empty, from now on: only the code is left to write. */
    int cfd = open(code_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (cfd < 0) fail("cannot create the program file");
    send_frame('Y', NULL, 0);

    /* One run frame: usually a single read brings all of it. */
    ssize_t got0;
    do {
        got0 = read(0, first, sizeof first);
    } while (got0 < 0 && errno == EINTR);
    if (got0 <= 0) _exit(0); /* host closed: a drained pool sandbox */
    size_t have = (size_t)got0;
    while (have < 5) {
        ssize_t more = read(0, first + have, sizeof first - have);
        if (more <= 0) _exit(0);
        have += (size_t)more;
    }
    uint32_t len = be32(first + 1);
    if ((first[0] != 'R' && first[0] != 'S') || len < 44 || len > MAX_RUN_FRAME)
        fail("bad run frame");
    uint32_t streamed = first[0] == 'S' ? 0x80000000u : 0; /* MAX_RUN_FRAME < 2^31 */
    size_t in_first = have - 5 < len ? have - 5 : len;
    unsigned char *frame = first + 5; /* no allocation when it fits (usually) */
    if (in_first < len) {
        frame = malloc(len);
        if (!frame) fail("out of memory");
        memcpy(frame, first + 5, in_first);
    }
    if (in_first < len && read_full(0, frame + in_first, len - in_first) < 0)
        fail("short run frame");
    /* Bytes beyond the frame would be control frames sent very early; keep them. */
    size_t early = have - 5 - in_first;
    unsigned char nonce[16];
    memcpy(nonce, frame, 16);
    uint32_t output_limit = be32(frame + 16);
    uint32_t code_len = be32(frame + 20);
    /* Each section: a u32 length, then that many bytes, inside the frame. */
    size_t at = 24;
    if (code_len > len - at - 20) fail("bad code length");
    const unsigned char *code = frame + at;
    at += code_len;
    size_t stdin_len = be32(frame + at), stdin_off = 0;
    if (stdin_len > len - at - 16) fail("bad stdin length");
    const unsigned char *stdin_data = frame + at + 4;
    at += 4 + stdin_len;
    uint32_t out_max_files = be32(frame + at);
    uint64_t out_max_bytes = be32(frame + at + 4);
    size_t files_len = be32(frame + at + 8);
    if (files_len > len - at - 16) fail("bad files length");
    const unsigned char *files = frame + at + 12;
    at += 12 + files_len;
    size_t extra_len = be32(frame + at);
    if (extra_len != len - at - 4) fail("bad extra length");
    const unsigned char *extra = frame + at + 4;

    if (files_len) write_input_files(work_fd, files, files_len);
    /* One syscall: the file was opened while idle; it is never closed (we exit soon). */
    write_all(cfd, code, code_len);

    /* The code (the loader's go), then the program's stdin, then EOF.  The code
       pipe stays open: closing it is one more syscall on the hot path. */
    uint32_t cword = code_len | streamed | (extra_len ? EXTRA_FLAG : 0);
    unsigned char clen[4] = {cword >> 24, cword >> 16, cword >> 8, cword};
    unsigned char elen[4] = {extra_len >> 24, extra_len >> 16, extra_len >> 8, extra_len};
    struct iovec civ[4] = {{clen, 4}, {(void *)code, code_len}, {elen, 4}, {(void *)extra, extra_len}};
    /* Larger than the pipe: the loader is reading; this blocks until it has all. */
    if (writev_all(code_p[1], civ, extra_len ? 4 : 2) < 0) fail("loader is gone");
    long long go_at = now_ms();
    /* The program's own time, go to its end, for the bill: the host's clock would
       add whatever delays the host's reading of the report (its own load). */
    long long go_us = now_us(), end_us = 0;
    int in_fd = in_p[1];
    if (stdin_len == 0) {
        close(in_fd);
        in_fd = -1;
    }

    int out_fd = out_p[0], err_fd = err_p[0], ctl_fd = 0, status_fd = ready_p[0];
    size_t status_have = 0, tail_len = 0;
    int reported = 0;
    unsigned char ctl_buf[5 + 1];
    size_t ctl_have = early < sizeof ctl_buf ? early : sizeof ctl_buf;
    memcpy(ctl_buf, first + 5 + in_first, ctl_have);
    int status = 0, exited = 0;
    long long exit_at = 0;
    uint64_t total_out = 0;
    int over_limit = 0;

    for (;;) {
        if (exited && ((out_fd < 0 && err_fd < 0) || now_ms() - exit_at >= DRAIN_MS || over_limit))
            break;
        if (reported) {
            /* Everything the program wrote before its report is in the pipes now;
               one zero-time poll says which pipe still holds some. */
            int fds_r[2] = {out_fd, err_fd};
            char types_r[2] = {'O', 'E'};
            struct pollfd left[2] = {{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};
            int ready = poll(left, 2, 0);
            for (int k = 0; k < 2 && !over_limit && ready > 0; k++) {
                if (fds_r[k] < 0 || !(left[k].revents & POLLIN)) continue;
                for (;;) {
                    size_t before = pend_len;
                    ssize_t got = collect(fds_r[k], types_r[k]);
                    if (got <= 0) break;
                    total_out += (uint64_t)got;
                    if (output_limit && total_out > output_limit) { over_limit = 1; break; }
                    /* Less than asked for: the pipe was empty after it (the writer is done). */
                    if ((size_t)got < PEND_CAP - before - 5 && (size_t)got < CHUNK) break;
                }
            }
            break;
        }
        struct pollfd pfd[6];
        int n = 0, i_out = -1, i_err = -1, i_in = -1, i_ctl = -1, i_st = -1;
        long long grace_left = exited ? 0 : OUT_GRACE_MS - (now_ms() - go_at);
        int watch_out = grace_left <= 0;
        pfd[n].fd = sigpipe_fds[0]; pfd[n].events = POLLIN; n++;
        if (out_fd >= 0 && watch_out) { i_out = n; pfd[n].fd = out_fd; pfd[n].events = POLLIN; n++; }
        if (err_fd >= 0 && watch_out) { i_err = n; pfd[n].fd = err_fd; pfd[n].events = POLLIN; n++; }
        if (in_fd >= 0) { i_in = n; pfd[n].fd = in_fd; pfd[n].events = POLLOUT; n++; }
        if (ctl_fd >= 0) { i_ctl = n; pfd[n].fd = ctl_fd; pfd[n].events = POLLIN; n++; }
        if (status_fd >= 0 && !exited) { i_st = n; pfd[n].fd = status_fd; pfd[n].events = POLLIN; n++; }
        int timeout = watch_out ? -1 : (int)grace_left;
        if (exited) {
            long long left = DRAIN_MS - (now_ms() - exit_at);
            timeout = left > 0 ? (int)left : 0;
        }
        if (pend_len) {
            long long age = now_ms() - pend_since;
            if (age >= FLUSH_MS) {
                flush_pending();
            } else if (timeout < 0 || FLUSH_MS - age < timeout) {
                timeout = (int)(FLUSH_MS - age);
            }
        }
        int r = poll(pfd, (nfds_t)n, timeout);
        if (r < 0 && errno != EINTR) fail("poll failed");

        int reap = r < 0; /* EINTR: a signal; look */
        if (r > 0 && (pfd[0].revents & POLLIN)) {
            char drain[64];
            while (read(sigpipe_fds[0], drain, sizeof drain) > 0) {}
            reap = 1;
        }
        /* Reap everything on SIGCHLD: we are PID 1, orphans are ours. */
        while (reap) {
            int st;
            pid_t p = waitpid(-1, &st, WNOHANG);
            if (p <= 0) break;
            if (p == child && !exited) {
                exited = 1;
                status = st;
                exit_at = now_ms();
                if (!end_us) end_us = now_us();
            }
        }
        if (r <= 0) continue;

        int fds_idx[2] = {i_out, i_err};
        int *fds_ptr[2] = {&out_fd, &err_fd};
        char types[2] = {'O', 'E'};
        for (int k = 0; k < 2; k++) {
            int idx = fds_idx[k];
            if (idx < 0 || !(pfd[idx].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t got = collect(*fds_ptr[k], types[k]);
            if (got > 0) {
                total_out += (uint64_t)got;
                if (output_limit && total_out > output_limit && !over_limit) {
                    over_limit = 1;
                    kill(-child, SIGKILL);
                    for (int j = 0; j < 2; j++)
                        if (*fds_ptr[j] >= 0) { close(*fds_ptr[j]); *fds_ptr[j] = -1; }
                    break;
                }
            } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                close(*fds_ptr[k]);
                *fds_ptr[k] = -1;
            }
        }
        if (i_st >= 0 && (pfd[i_st].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t got = read(status_fd, status_msg + status_have, sizeof status_msg - status_have);
            if (got > 0) {
                status_have += (size_t)got;
                if (status_have >= 9) {
                    uint32_t tl = be32(status_msg + 5);
                    if (status_msg[0] != 'x' || tl > TAIL_CAP) {
                        status_have = 0; /* not a report of ours: the program wrote to fd 3 */
                    } else if (status_have >= 9 + (size_t)tl) {
                        reported = 1;
                        if (!end_us) end_us = now_us();
                        status = (int)(be32(status_msg + 1) & 0xff) << 8; /* as from waitpid */
                        tail_len = tl;
                        total_out += tl;
                    }
                }
            } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                close(status_fd);
                status_fd = -1;
            }
        }
        if (i_in >= 0 && (pfd[i_in].revents & (POLLOUT | POLLERR | POLLHUP))) {
            ssize_t w = write(in_fd, stdin_data + stdin_off, stdin_len - stdin_off);
            if (w > 0) stdin_off += (size_t)w;
            if ((w < 0 && errno != EAGAIN && errno != EINTR) || stdin_off >= stdin_len) {
                close(in_fd);
                in_fd = -1;
            }
        }
        if (i_ctl >= 0 && (pfd[i_ctl].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t got = read(ctl_fd, ctl_buf + ctl_have, sizeof ctl_buf - ctl_have);
            if (got <= 0) {
                if (got == 0 || errno != EINTR) {
                    /* The host hung up: nobody wants this run any more. */
                    kill(-child, SIGKILL);
                    ctl_fd = -1;
                }
            } else {
                ctl_have += (size_t)got;
                if (ctl_have == sizeof ctl_buf) {
                    if (ctl_buf[0] == 'K' && be32(ctl_buf + 1) == 1) kill(-child, ctl_buf[5]);
                    ctl_have = 0;
                }
            }
        }
    }

    /* The stdout tail that came with the exit report goes after everything the
       pipes held (whichever way the loop above ended). */
    if (reported && tail_len && !over_limit) queue_frame('O', status_msg + 9, tail_len);
    /* Output first, then the files, then the exit report. */
    if (out_max_files) send_out_files(work_fd, out_max_files, out_max_bytes);
    if (!end_us) end_us = now_us(); /* killed here (over the output limit) */
    long long took_us = end_us - go_us;
    uint32_t took = took_us < 0 ? 0 : took_us > 0xffffffffLL ? 0xffffffffu : (uint32_t)took_us;
    unsigned char xf[25];
    memcpy(xf, nonce, 16);
    uint32_t value;
    if (reported) {
        xf[16] = 'e';
        value = (uint32_t)WEXITSTATUS(status);
    } else if (!exited) {
        xf[16] = 's';
        value = SIGKILL;
    } else if (WIFSIGNALED(status)) {
        xf[16] = 's';
        value = (uint32_t)WTERMSIG(status);
    } else {
        xf[16] = 'e';
        value = (uint32_t)WEXITSTATUS(status);
    }
    xf[17] = value >> 24; xf[18] = value >> 16; xf[19] = value >> 8; xf[20] = value;
    xf[21] = took >> 24; xf[22] = took >> 16; xf[23] = took >> 8; xf[24] = took;
    /* The collected output and the exit frame: one write, usually. */
    queue_frame('X', xf, sizeof xf);
    flush_pending();
    /* Stop every leftover process now, but let the sandbox itself end only when
       the host hangs up (or after 3 s): its teardown costs ~100 CPU-ms, and the
       host would rather spend them after it has answered the request. */
    kill(-child, SIGKILL);
    if (ctl_fd >= 0) {
        struct pollfd hang = {ctl_fd, POLLIN, 0};
        long long until = now_ms() + 3000;
        for (;;) {
            long long left = until - now_ms();
            if (left <= 0 || poll(&hang, 1, (int)left) <= 0) break;
            char sink[256];
            ssize_t got = read(ctl_fd, sink, sizeof sink);
            if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN)) break;
        }
    }
    _exit(0);
}
