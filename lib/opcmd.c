#include "opcmd.h"

#include <stdlib.h>

#include "log.h"
#include "metrics.h"
#include "opsock.h"

int opcmd_set_log_level(struct opsock_out *out, int argc, char **argv, void *ud)
{
    enum log_level lvl;

    if (argc != 3 || log_level_parse(argv[2], &lvl) < 0)
        return opsock_error(out, "usage: set log-level error|warning|notice|info|debug");
    log_set_level(lvl);
    log_notice("log_level", "level=%s by=operator", log_level_name(lvl));
    return 0;
}

int opcmd_show_metrics(struct opsock_out *out, struct metrics *m)
{
    size_t len;
    char *text = metrics_render(m, &len);

    if (!text)
        return opsock_error(out, "cannot render metrics");
    opsock_write(out, text, len);
    free(text);
    return 0;
}
