/* cedra-agent's operator-socket commands (HAProxy style, lib/opsock.h). */
#ifndef CEDRA_AGENT_CLI_H
#define CEDRA_AGENT_CLI_H

#include <stddef.h>

struct opsock;
struct agent;

int agent_cli_register(struct opsock *s, struct agent *a, char *err, size_t errlen);

#endif
