/* replay — offline evaluation of the router on logged per-prompt outcomes
 * (DESIGN.md §5): `banditd replay --data FILE.jsonl [options]`. */
#ifndef BANDITD_REPLAY_H
#define BANDITD_REPLAY_H

/* Entry point of the `replay` subcommand; argv[0] is "replay".
 * Returns the process exit status (0 ok, 2 usage error, 1 failure). */
int replay_main(int argc, char **argv);

#endif
