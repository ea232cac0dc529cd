/* Preloaded (LD_PRELOAD) into every process the GPU kit starts: on a fatal signal it writes the native stack to
 * stderr, then lets the signal end the process as it would have. Python's faulthandler shows only the Python
 * frames ("in llama_model_load_from_file"); this shows which library and function inside it crashed.
 *
 * Python processes started with faulthandler on install its handler after this one, and it calls this one once it
 * has written the Python frames, so both stacks land in the log. bench/gpu/native_trace.py builds this file with
 * the machine's C compiler and turns the frames into function names.
 */
#define _GNU_SOURCE
#include <execinfo.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

static const int FATAL[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};

static void say(const char *text) {
    ssize_t ignored = write(STDERR_FILENO, text, strlen(text));
    (void)ignored;
}

static void say_hex(uintptr_t value) {
    char digits[2 + 2 * sizeof value + 1];
    int at = sizeof digits - 1;
    digits[at] = '\0';
    do {
        digits[--at] = "0123456789abcdef"[value & 0xf];
        value >>= 4;
    } while (value && at > 2);
    digits[--at] = 'x';
    digits[--at] = '0';
    say(digits + at);
}

static void on_fatal(int signum, siginfo_t *info, void *context) {
    (void)context;
    void *frames[96];
    say("\n=== native stack (bench/gpu/native_trace.c): signal ");
    say_hex((uintptr_t)signum);
    say(", address ");
    say_hex((uintptr_t)info->si_addr);
    say(" ===\n");
    int n = backtrace(frames, sizeof frames / sizeof frames[0]);
    backtrace_symbols_fd(frames, n, STDERR_FILENO);
    say("=== end of native stack ===\n");
    signal(signum, SIG_DFL);
    raise(signum);
}

__attribute__((constructor)) static void install(void) {
    /* The first backtrace() loads libgcc_s, which is no job for a signal handler: do it now. */
    void *warm[1];
    backtrace(warm, 1);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_fatal;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    for (size_t i = 0; i < sizeof FATAL / sizeof FATAL[0]; i++) {
        sigaction(FATAL[i], &action, NULL);
    }
}
