/*
 * commands.h: tokenlabd's subcommands, each in its own file. argv excludes
 * the program and subcommand names. Each returns the process exit code.
 */
#ifndef TLD_COMMANDS_H
#define TLD_COMMANDS_H

int cmd_run(int argc, char **argv);    /* cmd_run.c */
int cmd_synth(int argc, char **argv);  /* cmd_synth.c */
int cmd_serve(int argc, char **argv);  /* cmd_serve.c */
int cmd_routes(int argc, char **argv); /* cmd_routes.c: prints the HTTP route table */
int cmd_token(int argc, char **argv);  /* cmd_token.c: read-only API tokens */

#endif
