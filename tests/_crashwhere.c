/*
 * _crashwhere.c -- for tests/test_damage.py: say where a process crashed.
 *
 * cw_install(fd) installs a handler for SIGSEGV, SIGBUS, SIGABRT, SIGFPE and
 * SIGILL that writes one line to fd,
 *
 *     CRASHWHERE sig=<n> frames=<object>!<symbol>|<object>!<symbol>|...
 *
 * (the faulting instruction first, then the backtrace), and re-raises the
 * signal with the default action, so the process still dies of it and its
 * parent sees the signal.  The test uses the first frame outside libc to
 * attribute the crash to liblmdb or to lmdbcache's own code.
 *
 * Built by the test with:  gcc -shared -fPIC -O1 -o crashwhere.so _crashwhere.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

static int cw_fd = -1;
static char cw_stack[1 << 16];

static void *fault_pc(void *uctx)
{
    ucontext_t *uc = uctx;
#if defined(__x86_64__)
    return (void *)uc->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
    return (void *)uc->uc_mcontext.pc;
#else
    (void)uc;
    return NULL;
#endif
}

static void put_frame(char *buf, size_t cap, size_t *len, void *pc)
{
    Dl_info info;
    const char *obj = "?", *sym = "?";
    int n;

    if (pc != NULL && dladdr(pc, &info) != 0) {
        if (info.dli_fname != NULL)
            obj = info.dli_fname;
        if (info.dli_sname != NULL)
            sym = info.dli_sname;
    }
    if (*len >= cap)
        return;
    n = snprintf(buf + *len, cap - *len, "%s%s!%s", *len ? "|" : "", obj, sym);
    if (n > 0)
        *len += (size_t)n;
}

static void handler(int sig, siginfo_t *si, void *uctx)
{
    static char buf[8192];
    void *frames[48];
    size_t len = 0;
    int i, n;

    (void)si;
    n = backtrace(frames, 48);
    len = (size_t)snprintf(buf, sizeof(buf), "CRASHWHERE sig=%d frames=", sig);
    {
        size_t start = len;
        size_t flen = 0;
        char *fbuf = buf + start;
        put_frame(fbuf, sizeof(buf) - start - 2, &flen, fault_pc(uctx));
        for (i = 0; i < n; i++)
            put_frame(fbuf, sizeof(buf) - start - 2, &flen, frames[i]);
        len = start + flen;
    }
    buf[len++] = '\n';
    if (cw_fd >= 0) {
        ssize_t w = write(cw_fd, buf, len);
        (void)w;
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

int cw_install(int fd)
{
    struct sigaction sa;
    stack_t ss;
    void *warm[4];
    int sigs[] = {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL};
    size_t i;

    cw_fd = fd;
    backtrace(warm, 4); /* loads libgcc_s now, not inside the handler */
    ss.ss_sp = cw_stack;
    ss.ss_size = sizeof(cw_stack);
    ss.ss_flags = 0;
    if (sigaltstack(&ss, NULL) != 0)
        return -1;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        if (sigaction(sigs[i], &sa, NULL) != 0)
            return -1;
    return 0;
}
