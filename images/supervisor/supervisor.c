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
 *   'R' run:    nonce[16] | u32 output_limit | u32 code_len | code | stdin
 *   'S' streamed run: the same; the host reads output as it comes, so the
 *               loader is told to flush the program's stdout at each line
 *   'K' signal: u8 signo   (sent to the program's whole process group)
 *
 * supervisor -> host (fd 1, the attached stdout)
 *   'Y' ready:  empty
 *   'O' stdout chunk, 'E' stderr chunk
 *   'X' exit:   nonce[16] | u8 kind ('e' exited, 's' killed by signal) | u32 value
 *   'F' failure: message (a fault of ours, not of the program)
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
 *   bit set for a streamed run, which the loader strips): it is the
 *   loader's signal to go, and the Python loader compiles these bytes instead
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
 * usage: supervisor CODE_PATH LOADER [ARGS...]
 */
#define _GNU_SOURCE
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
#define MAX_RUN_FRAME (16u << 20) /* code + stdin, the API caps far below */
#define DRAIN_MS 30               /* leftover children may hold the pipes */
#define CHUNK 65536
#define FLUSH_MS 10               /* oldest unsent output waits at most this */
#define OUT_GRACE_MS 5            /* output pipes are left alone this long after the go */
#define PEND_CAP (2 * CHUNK)      /* output collected before it must be sent */
#define WARM_BYTES 16384          /* of each buffer, touched while idle */
#define TAIL_CAP CHUNK            /* stdout that may come with the exit report */

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

int main(int argc, char **argv) {
    if (argc < 3) fail("usage: supervisor CODE_PATH LOADER [ARGS...]");
    /* Not dumpable: the program (same uid) cannot read our memory (the nonce)
       through /proc/1/mem or attach to us with ptrace. */
    prctl(PR_SET_DUMPABLE, 0);
    const char *code_path = argv[1];

    if (mkdir(WORKDIR, 0700) < 0 && errno != EEXIST) fail("cannot create " WORKDIR);
    if (chdir(WORKDIR) < 0) fail("cannot enter " WORKDIR);

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
    if ((first[0] != 'R' && first[0] != 'S') || len < 24 || len > MAX_RUN_FRAME)
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
    if (code_len > len - 24) fail("bad code length");
    const unsigned char *code = frame + 24;
    const unsigned char *stdin_data = code + code_len;
    size_t stdin_len = len - 24 - code_len, stdin_off = 0;

    /* One syscall: the file was opened while idle; it is never closed (we exit soon). */
    write_all(cfd, code, code_len);

    /* The code (the loader's go), then the program's stdin, then EOF.  The code
       pipe stays open: closing it is one more syscall on the hot path. */
    uint32_t cword = code_len | streamed;
    unsigned char clen[4] = {cword >> 24, cword >> 16, cword >> 8, cword};
    struct iovec civ[2] = {{clen, 4}, {(void *)code, code_len}};
    ssize_t cw = writev(code_p[1], civ, 2);
    if (cw < 0) fail("loader is gone");
    if ((size_t)cw < 4) fail("short write to the loader");
    if ((size_t)cw - 4 < code_len) {
        /* Larger than the pipe: the loader is reading; finish blocking. */
        write_all(code_p[1], code + (cw - 4), code_len - ((size_t)cw - 4));
    }
    long long go_at = now_ms();
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
    unsigned char xf[21];
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
