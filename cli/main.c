/* stokectl: the command-line client of stoke's admin API. For now it runs
 * the autoscaler simulator and explains itself; the admin API commands
 * arrive with the admin API (issue #7). */
#include <stdio.h>
#include <string.h>

#include "simulate.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: stokectl <command> [options]\n"
               "\n"
               "Commands:\n"
               "  simulate -f SPEC TRACE.csv [--ready-delay DUR] [--tick DUR] [-v]\n"
               "                        run the autoscaler on a per-second concurrency trace\n"
               "  version               print the version\n"
               "\n"
               "Coming with the admin API:\n"
               "  apply -f FILE|DIR|-   create or update functions\n"
               "  get [NAME]            list functions\n"
               "  describe NAME         show a function's status\n"
               "  delete NAME           delete a function\n"
               "  logs NAME [-f]        show a function's logs\n"
               "  top                   per-function usage\n"
               "\n"
               "Until then, put specs in the controller's functions directory.\n");
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "simulate") == 0)
        return simulate_main(argc - 1, argv + 1);
    if (argc == 2 && strcmp(argv[1], "version") == 0) {
        printf("stokectl " STOKE_VERSION "\n");
        return 0;
    }
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
                      strcmp(argv[1], "help") == 0)) {
        usage(stdout);
        return 0;
    }
    usage(stderr);
    return 2;
}
