/* stokectl's commands and what they share: the global options, usage
 * errors, and option parsing. Each command is `int cmd_X(struct globals *,
 * int argc, char **argv)` with argv[0] the command's name, and returns the
 * exit status: 0 success, 1 failure, 2 usage. */
#ifndef STOKECTL_COMMANDS_H
#define STOKECTL_COMMANDS_H

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>

#include "client.h"

#define EXIT_USAGE 2

struct globals {
    const char *server;     /* --server, else STOKE_SERVER, else the default */
    const char *token_file; /* --token-file, else STOKE_TOKEN_FILE, else NULL */
};

/* getopt_long values of the options every command takes. */
enum {
    OPT_SERVER = 0x100,
    OPT_TOKEN_FILE,
    OPT_HELP = 'h',
};

/* The long options every command accepts, to end a command's table with:
 * --server, --token-file, --help. */
#define COMMON_LONGOPTS                                                                            \
    {"server", required_argument, NULL, OPT_SERVER},                                               \
        {"token-file", required_argument, NULL, OPT_TOKEN_FILE},                                   \
        {"help", no_argument, NULL, OPT_HELP},                                                     \
    {                                                                                              \
        NULL, 0, NULL, 0                                                                           \
    }

/* Handles an option of COMMON_LONGOPTS or a getopt error for command `cmd`
 * (getopt_long called with a leading ':' in its optstring). Returns -1 when
 * `opt` was handled and parsing goes on, else the exit status to return
 * (0 after --help, 2 after a bad option). */
int common_option(struct globals *g, const char *cmd, int opt, char **argv);

/* Parses the options of a command that has only COMMON_LONGOPTS. Returns
 * -1 with optind at the first operand, or the exit status to return. */
int parse_common_options(struct globals *g, const char *cmd, int argc, char **argv);

/* The index of the first NAME operand from optind: past a kubectl-style
 * "function", "functions" or "fn". */
int first_name_arg(int argc, char **argv);

/* Prints "stokectl CMD: message" and the hint to --help on stderr; returns
 * EXIT_USAGE. */
int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints the help of `cmd` (NULL: the overview) to `f`. Returns false when
 * there is no such command. */
bool print_help(const char *cmd, FILE *f);

/* Connects `c` to the server the globals name. Returns 0, or 1 (printed). */
int connect_client(const struct globals *g, struct client *c);

/* Accepts "NAME" or "function/NAME" (as apply prints it) and checks that NAME
 * is a function name; returns NAME (within `arg`), or NULL after printing why. */
const char *function_name_arg(const char *cmd, const char *arg);

int cmd_apply(struct globals *g, int argc, char **argv);
int cmd_get(struct globals *g, int argc, char **argv);
int cmd_describe(struct globals *g, int argc, char **argv);
int cmd_delete(struct globals *g, int argc, char **argv);
int cmd_logs(struct globals *g, int argc, char **argv);
int cmd_top(struct globals *g, int argc, char **argv);
int cmd_version(struct globals *g, int argc, char **argv);
int cmd_invoke(struct globals *g, int argc, char **argv);
int cmd_calls(struct globals *g, int argc, char **argv);
int cmd_dlq(struct globals *g, int argc, char **argv);

#endif
