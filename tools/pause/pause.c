/*
 * The sandbox ("pause") process of every pod on the local cluster: it holds the pod's
 * namespaces open and does nothing else. Built statically by ../build.sh, so its image needs
 * no base layer and no registry.
 *
 * As pid 1 of the pod's pid namespace (shareProcessNamespace) it must reap orphaned
 * children, and it has to exit on SIGINT/SIGTERM itself: the kernel delivers no default
 * action to a namespace's init.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    struct sigaction stop = {.sa_handler = on_stop};
    struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP};
    int i;

    for (i = 1; i < argc; i++) {
        if (argv[i][0] == '-' && argv[i][1] == 'v') {
            puts("trialsync pause " PAUSE_VERSION);
            return 0;
        }
    }
    if (getpid() != 1) {
        fprintf(stderr, "pause: warning: not pid 1, orphans are not reaped here\n");
    }
    if (sigaction(SIGINT, &stop, NULL) != 0 || sigaction(SIGTERM, &stop, NULL) != 0 ||
        sigaction(SIGCHLD, &child, NULL) != 0) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
}
