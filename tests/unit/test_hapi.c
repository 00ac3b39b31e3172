/* agent/hapi.c: strict parsers on answers captured from HAProxy 2.6.12;
 * lib/hapi_client.c: the client against a fake stats socket (order,
 * timeouts, bounds, aborts); both: the whole reconcile path against a REAL
 * haproxy started by this test: two backends of 4 server-template slots, two
 * origins served by another haproxy, HTTP traffic checked through the front,
 * drain under load, promotion, a bad answer, restart and reload detection.
 *
 * Processes are started with fork/exec in master-worker mode (-Ws) and
 * NOTIFY_SOCKET pointing at a datagram socket of ours: "READY=1" says the
 * listeners and the stats socket are up (no sleeps); they are stopped by pid
 * and reaped through a pidfd. The real-HAProxy group is skipped when no
 * haproxy binary is found (CEDRA_HAPROXY_BIN overrides). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hapi.h"
#include "log.h"
#include "pool.h"
#include "reconcile.h"
#include "util.h"

/* ---- answers captured from HAProxy 2.6.12-1+deb12u4 ------------------------ */

static const char real_state[] =
    "1\n"
    "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iw"
    "eight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_"
    "check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord s"
    "rv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n"
    "3 storefront_stable 1 stable1 127.0.0.1 2 4 1 1 8 6 3 4 6 0 0 0 - 19001 - 0 0 - - 0\n"
    "3 storefront_stable 2 stable2 0.0.0.0 0 12 1 1 6 8 2 0 6 0 0 0 - 0 - 0 0 - - 0\n"
    "3 storefront_stable 3 stable3 0.0.0.0 0 5 1 1 8 1 0 0 14 0 0 0 - 0 - 0 0 - - 0\n"
    "3 storefront_stable 4 stable4 0.0.0.0 0 5 1 1 8 1 0 0 14 0 0 0 - 0 - 0 0 - - 0\n"
    "\n";

static const char real_stat[] =
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,"
    "wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttl"
    "e,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_"
    "1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_to"
    "t,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,"
    "ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_ris"
    "e,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_"
    "rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache"
    "_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_"
    "conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,a"
    "gg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_"
    "rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors"
    ",h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,"
    "h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connection"
    "s,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spli"
    "ced_bytes_in,h1_spliced_bytes_out,\n"
    "storefront_stable,stable1,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP 1/3,1,1,0,0,0,0,0,,1,3,1,,0,,2,0"
    ",,0,INI,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Initializing,,2,3,2,,,,127.0.0.1:1900"
    "1,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,0,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n"
    "storefront_stable,stable2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DRAIN 1/3,1,1,0,0,0,0,0,,1,3,2,,0,,"
    "2,0,,0,INI,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Initializing,,2,3,2,,,,0.0.0.0:0,,"
    "http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,0,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n"
    "storefront_stable,stable3,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,0,0,0,0,,1,3,3,,0,,2,0,"
    ",0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,0.0.0.0:0,,http,,,,,,,,0,0,0,,,0,"
    ",0,0,0,0,0,0,0,0,0,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n"
    "storefront_stable,stable4,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,0,0,0,0,,1,3,4,,0,,2,0,"
    ",0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,0.0.0.0:0,,http,,,,,,,,0,0,0,,,0,"
    ",0,0,0,0,0,0,0,0,0,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n"
    "\n";

static const char real_info[] = "Name: HAProxy\n"
                                "Version: 2.6.12-1+deb12u4\n"
                                "Release_date: 2026/10/17\n"
                                "Nbthread: 2\n"
                                "Nbproc: 1\n"
                                "Process_num: 1\n"
                                "Pid: 20925\n"
                                "Uptime: 0d 0h00m08s\n"
                                "Uptime_sec: 8\n"
                                "Memmax_MB: 0\n"
                                "PoolAlloc_MB: 0\n"
                                "PoolUsed_MB: 0\n"
                                "PoolFailed: 0\n"
                                "Ulimit-n: 20000\n"
                                "Maxsock: 20000\n"
                                "Maxconn: 9982\n"
                                "Hard_maxconn: 9982\n"
                                "CurrConns: 0\n"
                                "CumConns: 17\n"
                                "CumReq: 9\n"
                                "MaxSslConns: 0\n"
                                "CurrSslConns: 0\n"
                                "CumSslConns: 0\n"
                                "Maxpipes: 0\n"
                                "PipesUsed: 0\n"
                                "PipesFree: 0\n"
                                "ConnRate: 0\n"
                                "ConnRateLimit: 0\n"
                                "MaxConnRate: 0\n"
                                "SessRate: 0\n"
                                "SessRateLimit: 0\n"
                                "MaxSessRate: 0\n"
                                "SslRate: 0\n"
                                "SslRateLimit: 0\n"
                                "MaxSslRate: 0\n"
                                "SslFrontendKeyRate: 0\n"
                                "SslFrontendMaxKeyRate: 0\n"
                                "SslFrontendSessionReuse_pct: 0\n"
                                "SslBackendKeyRate: 0\n"
                                "SslBackendMaxKeyRate: 0\n"
                                "SslCacheLookups: 0\n"
                                "SslCacheMisses: 0\n"
                                "CompressBpsIn: 0\n"
                                "CompressBpsOut: 0\n"
                                "CompressBpsRateLim: 0\n"
                                "Tasks: 22\n"
                                "Run_queue: 0\n"
                                "Idle_pct: 100\n"
                                "node: vm\n"
                                "Stopping: 0\n"
                                "Jobs: 3\n"
                                "Unstoppable Jobs: 0\n"
                                "Listeners: 2\n"
                                "ActivePeers: 0\n"
                                "ConnectedPeers: 0\n"
                                "DroppedLogs: 0\n"
                                "BusyPolling: 0\n"
                                "FailedResolutions: 0\n"
                                "TotalBytesOut: 12393\n"
                                "TotalSplicdedBytesOut: 0\n"
                                "BytesOutRate: 672\n"
                                "DebugCommandsIssued: 0\n"
                                "CumRecvLogs: 0\n"
                                "Build info: 2.6.12-1+deb12u4\n"
                                "Memmax_bytes: 0\n"
                                "PoolAlloc_bytes: 141920\n"
                                "PoolUsed_bytes: 141920\n"
                                "Start_time_sec: 1795480526\n"
                                "Tainted: 0\n"
                                "\n";

/* ---- small helpers --------------------------------------------------------- */

static bool run_until(struct ev_loop *loop, bool (*pred)(void *), void *arg, double timeout);

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
}

/* Runs the loop until pred holds or timeout passes. A 2 ms tick only wakes
 * the loop to re-check pred: the loop keeps serving every other watcher. */
static bool run_until(struct ev_loop *loop, bool (*pred)(void *), void *arg, double timeout)
{
    double end = now_mono() + timeout;
    ev_timer tick;

    ev_timer_init(&tick, tick_cb, 0.002, 0.002);
    ev_timer_start(loop, &tick);
    while (!pred(arg) && now_mono() < end)
        ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &tick);
    return pred(arg);
}

static char tmpdir[64];

static void path_in_tmp(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", tmpdir, name);
}

static int make_tmpdir(void)
{
    if (tmpdir[0])
        return 0;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/cedra-hapi-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static void rm_tmpdir(void)
{
    char cmd[128];

    if (!tmpdir[0] || getenv("CEDRA_KEEP_TMP"))
        return;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    tmpdir[0] = '\0';
}

/* ---- parsers ---------------------------------------------------------------- */

static void test_parse_servers_state_real(void **state)
{
    struct hapi_server s[8];
    char err[256] = "";
    int n = hapi_parse_servers_state(real_state, strlen(real_state), s, 8, err, sizeof(err));

    if (n < 0)
        fail_msg("%s", err);
    assert_int_equal(n, 4);
    assert_int_equal(s[0].be_id, 3);
    assert_string_equal(s[0].be_name, "storefront_stable");
    assert_int_equal(s[0].srv_id, 1);
    assert_string_equal(s[0].srv_name, "stable1");
    assert_string_equal(s[0].addr, "127.0.0.1");
    assert_int_equal(s[0].port, 19001);
    assert_int_equal(s[0].op_state, 2);
    /* ready template slot: only the configuration marker is left */
    assert_int_equal(s[0].admin, HAPI_ADMF_CMAINT);
    assert_int_equal(hapi_admin_decode(s[0].admin), SLOT_READY);
    assert_int_equal(s[1].admin, HAPI_ADMF_CMAINT | HAPI_ADMF_FDRAIN);
    assert_int_equal(hapi_admin_decode(s[1].admin), SLOT_DRAIN);
    assert_int_equal(s[2].admin, HAPI_ADMF_CMAINT | HAPI_ADMF_FMAINT);
    assert_int_equal(hapi_admin_decode(s[2].admin), SLOT_MAINT);
    assert_string_equal(s[3].addr, "0.0.0.0");
    assert_int_equal(s[3].port, 0);
    assert_int_equal(s[3].uweight, 1);
    assert_int_equal(hapi_admin_decode(HAPI_ADMF_RMAINT), SLOT_MAINT);
    assert_int_equal(hapi_admin_decode(HAPI_ADMF_IDRAIN), SLOT_DRAIN);
    assert_int_equal(hapi_admin_decode(HAPI_ADMF_HMAINT), SLOT_READY);
    /* max too small is an error, not a truncation */
    assert_int_equal(
        hapi_parse_servers_state(real_state, strlen(real_state), s, 3, err, sizeof(err)), -1);
}

#define HDR                                                                                        \
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "        \
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health "   \
    "srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord "  \
    "srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port"
#define ROW "3 b 1 s1 10.0.0.1 2 4 10 1 0 6 3 4 6 0 0 0 - 3000 - 0 0 - - 0"

static void test_parse_servers_state_strict(void **state)
{
    static const char *const bad[] = {
        "Can't find backend.\n\n", /* unknown backend */
        "",                        /* nothing */
        "2\n# be_id\n\n",          /* other format version */
        HDR "\n" ROW "\n",         /* no final empty line (truncated) */
        HDR "\n" ROW,              /* cut in the middle */
        HDR "\n" ROW "\n\n\n",     /* empty line inside */
        HDR "\n"
            "3 b 1 s1 10.0.0.1 2 4 10 1 0 6 3 4 6 0 0 0 - 3000 - 0 0 - -\n\n", /* 24 */
        HDR "\n"
            "3 b 1 s1 10.0.0.1 x 4 10 1 0 6 3 4 6 0 0 0 - 3000 - 0 0 - - 0\n\n",
        HDR "\n"
            "3 b 1 s1 10.0.0.1 4 4 10 1 0 6 3 4 6 0 0 0 - 3000 - 0 0 - - 0\n\n", /* op 4 */
        HDR "\n"
            "3 b 1 s1 10.0.0.1 2 4 257 1 0 6 3 4 6 0 0 0 - 3000 - 0 0 - - 0\n\n",
        HDR "\n"
            "3 b 1 s1 10.0.0.1 2 4 10 1 0 6 3 4 6 0 0 0 - 65536 - 0 0 - - 0\n\n",
        HDR "\n"
            "3 b 1 s1  10.0.0.1 2 4 10 1 0 6 3 4 6 0 0 0 - 3000 - 0 0 - - 0\n\n",
        HDR "\n"
            "3 b 1 s1 10.0.0.1 2 -4 10 1 0 6 3 4 6 0 0 0 - 3000 - 0 0 - - 0\n\n",
        HDR "\n" ROW " \n\n",            /* trailing space */
        "1\n# be_name be_id srv_id\n\n", /* columns in another order */
        "1\nbe_id be_name\n\n",          /* header without '#' */
        "Permission denied\n\n",
    };
    struct hapi_server s[4];
    char err[256];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        if (hapi_parse_servers_state(bad[i], strlen(bad[i]), s, 4, err, sizeof(err)) != -1)
            fail_msg("case %zu accepted", i);
        assert_true(err[0] != '\0');
    }
    {
        static const char nul[] = HDR "\n3 b 1 s\0 10.0.0.1\n\n";

        assert_int_equal(hapi_parse_servers_state(nul, sizeof(nul) - 1, s, 4, err, sizeof(err)),
                         -1);
    }
    /* What the format allows: comments, no servers, appended columns. */
    {
        static const char ok1[] = HDR "\n# a comment\n" ROW "\n\n";
        static const char ok2[] = HDR "\n\n";
        static const char ok3[] = HDR " srv_future\n" ROW " 7\n\n";

        assert_int_equal(hapi_parse_servers_state(ok1, strlen(ok1), s, 4, err, sizeof(err)), 1);
        assert_int_equal(hapi_parse_servers_state(ok2, strlen(ok2), s, 4, err, sizeof(err)), 0);
        assert_int_equal(hapi_parse_servers_state(ok3, strlen(ok3), s, 4, err, sizeof(err)), 1);
        assert_string_equal(s[0].srv_name, "s1");
    }
}

static void test_parse_stat(void **state)
{
    struct hapi_stat st[8];
    char err[256] = "";
    int n = hapi_parse_stat(real_stat, strlen(real_stat), st, 8, err, sizeof(err));

    if (n < 0)
        fail_msg("%s", err);
    assert_int_equal(n, 4);
    assert_string_equal(st[0].pxname, "storefront_stable");
    assert_string_equal(st[0].svname, "stable1");
    assert_int_equal(st[0].scur, 0);
    assert_int_equal(st[0].qcur, 0);
    assert_string_equal(st[1].status, "DRAIN 1/3");
    assert_string_equal(st[3].status, "MAINT");

    {
        static const char quoted[] = "# pxname,svname,qcur,scur,status,check_desc,\n"
                                     "b,s1,2,7,UP,\"a, \"\"quoted\"\" desc\",\n\n";

        assert_int_equal(hapi_parse_stat(quoted, strlen(quoted), st, 8, err, sizeof(err)), 1);
        assert_int_equal(st[0].qcur, 2);
        assert_int_equal(st[0].scur, 7);
    }
    {
        static const char *const bad[] = {
            "No such proxy.\n\n",
            "# pxname,svname,qcur,scur,status,\nb,s1,0,0,UP,\n",  /* truncated */
            "# pxname,svname,qcur,scur,status,\nb,s1,0,0,UP\n\n", /* field missing */
            "# pxname,svname,qcur,scur,status,\nb,s1,0,,UP,\n\n", /* empty scur */
            "# pxname,svname,qcur,scur,status,\nb,s1,0,x,UP,\n\n",
            "# pxname,svname,qcur,status,\nb,s1,0,UP,\n\n",             /* no scur column */
            "# svname,pxname,qcur,scur,status,\ns1,b,0,0,UP,\n\n",      /* reordered */
            "# pxname,svname,qcur,scur,status,\nb,BACKEND,0,0,UP,\n\n", /* not a server */
            "# pxname,svname,qcur,scur,status,\nb,s1,0,0,\"UP,\n\n",    /* open quote */
            "# pxname,svname,qcur,scur,status,\nb,s1,0,0,U\"P,\n\n",    /* stray quote */
        };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            if (hapi_parse_stat(bad[i], strlen(bad[i]), st, 8, err, sizeof(err)) != -1)
                fail_msg("case %zu accepted", i);
        }
    }
}

static void test_parse_info(void **state)
{
    struct hapi_info a, b;
    char err[256] = "";

    if (hapi_parse_info(real_info, strlen(real_info), &a, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    assert_true(a.pid > 0);
    assert_true(a.start_time_sec > 0);
    assert_string_equal(a.version, "2.6.12-1+deb12u4");
    {
        static const char *const bad[] = {
            "Name: HAProxy\nUptime_sec: 4\n\n", /* no Pid */
            "Pid: 12\n\n",                      /* no Uptime_sec */
            "Pid: 12\nUptime_sec: 4\n",         /* truncated */
            "Pid: 12x\nUptime_sec: 4\n\n",
            "Pid: 12\nPid: 13\nUptime_sec: 4\n\n", /* repeated */
            "Pid: 12\nUptime_sec: 4\ngarbage\n\n", /* not Key: value */
            "Pid: 12\nUptime_sec: -4\n\n",
            "Unknown command.\n\n",
        };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            if (hapi_parse_info(bad[i], strlen(bad[i]), &b, err, sizeof(err)) != -1)
                fail_msg("case %zu accepted", i);
        }
    }
    {
        static const char ok[] = "Pid: 12\nUptime_sec: 4\nnode: \n\n";

        assert_int_equal(hapi_parse_info(ok, strlen(ok), &b, err, sizeof(err)), 0);
        assert_int_equal(b.start_time_sec, 0);
    }
}

static void test_info_restarted(void **state)
{
    struct hapi_info a = {.pid = 100, .uptime_sec = 50, .start_time_sec = 1000};
    struct hapi_info b = a;

    b.uptime_sec = 60;
    assert_false(hapi_info_restarted(&a, 10.0, &b, 20.0));
    b.uptime_sec = 61; /* rounding */
    assert_false(hapi_info_restarted(&a, 10.0, &b, 20.5));
    b.uptime_sec = 49; /* went backwards */
    assert_true(hapi_info_restarted(&a, 10.0, &b, 10.5));
    b = a;
    b.pid = 101; /* reload (master-worker): new worker */
    b.uptime_sec = 55;
    assert_true(hapi_info_restarted(&a, 10.0, &b, 15.0));
    b = a;
    b.start_time_sec = 1001;
    assert_true(hapi_info_restarted(&a, 10.0, &b, 10.0));
    b = a; /* same pid (container), uptime grew but far less than time passed */
    b.start_time_sec = 0;
    b.uptime_sec = 53;
    assert_true(hapi_info_restarted(&a, 10.0, &b, 40.0));
}

static void test_check_set_reply(void **state)
{
    static const char *const addr_ok[] = {
        "IP changed from '0.0.0.0' to '127.0.0.1', port changed from '+0' to '19001' by 'stats "
        "socket command'\n\n",
        "no need to change the addr, port changed from '19002' to '19001' by 'stats socket "
        "command'\n\n",
        "IP changed from '127.0.0.2' to '::1', no need to change the port by 'stats socket "
        "command'\n\n",
        "no need to change the addr, no need to change the port by 'stats socket command'\n\n",
        "no need to change the addr by 'stats socket command'\n\n",
        "IP changed from '127.0.0.1' to '127.0.0.2' by 'stats socket command'\n\n",
    };
    static const char *const addr_bad[] = {
        "Invalid addr 'foo' by 'stats socket command'\n\n",
        "No such server.\n\n",
        "No such backend.\n\n",
        "\n",
        "IP changed from '0.0.0.0' to '127.0.0.1' by 'stats socket command'\n", /* truncated */
        "IP changed from '0.0.0.0' to '127.0.0.1' by 'stats socket command'\nmore\n\n",
        "IP changed from '0.0.0.0 to '127.0.0.1' by 'stats socket command'\n\n",
        "IP changed from '0.0.0.0' to '127.0.0.1' by 'somebody else'\n\n",
        "Permission denied\n\n",
    };
    static const char *const silent_bad[] = {
        "No such server.\n\n",
        "Absolute weight can only be between 0 and 256 inclusive.\n\n",
        "Empty weight string empty or preceded by garbage\n", /* 2.6.12: no empty line */
        "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n\n",
        "",
        "\n\n",
    };
    char err[256];

    for (size_t i = 0; i < sizeof(addr_ok) / sizeof(addr_ok[0]); i++) {
        if (hapi_check_set_reply(HAPI_SET_ADDR, addr_ok[i], strlen(addr_ok[i]), err, sizeof(err)) !=
            0)
            fail_msg("addr case %zu rejected: %s", i, err);
    }
    for (size_t i = 0; i < sizeof(addr_bad) / sizeof(addr_bad[0]); i++) {
        if (hapi_check_set_reply(HAPI_SET_ADDR, addr_bad[i], strlen(addr_bad[i]), err,
                                 sizeof(err)) != -1)
            fail_msg("addr case %zu accepted", i);
    }
    assert_int_equal(hapi_check_set_reply(HAPI_SET_SILENT, "\n", 1, err, sizeof(err)), 0);
    for (size_t i = 0; i < sizeof(silent_bad) / sizeof(silent_bad[0]); i++) {
        if (hapi_check_set_reply(HAPI_SET_SILENT, silent_bad[i], strlen(silent_bad[i]), err,
                                 sizeof(err)) != -1)
            fail_msg("silent case %zu accepted", i);
    }
}

static void test_observe_backend(void **state)
{
    struct hapi_server rows[8];
    struct hapi_stat st[8];
    struct slot_state slots[8];
    size_t n = 0;
    char err[256] = "";
    int nr = hapi_parse_servers_state(real_state, strlen(real_state), rows, 8, err, sizeof(err));
    int ns = hapi_parse_stat(real_stat, strlen(real_stat), st, 8, err, sizeof(err));

    assert_int_equal(nr, 4);
    assert_int_equal(ns, 4);
    memset(slots, 0, sizeof(slots));
    assert_int_equal(hapi_observe_backend(slots, &n, 8, POOL_STABLE, rows, (size_t)nr, st,
                                          (size_t)ns, 5.0, err, sizeof(err)),
                     0);
    assert_int_equal(n, 4);
    assert_string_equal(slots[0].name, "stable1");
    assert_int_equal(slots[0].admin, SLOT_READY);
    assert_int_equal(slots[0].port, 19001);
    assert_true(slots[0].idle_known && slots[0].idle);
    assert_int_equal(slots[1].admin, SLOT_DRAIN);
    assert_true(slots[1].drain_since == 5.0);
    assert_int_equal(slots[2].admin, SLOT_MAINT);
    /* bookkeeping survives the next observation; a smaller template drops slots */
    strcpy(slots[0].owner, "a");
    assert_int_equal(
        hapi_observe_backend(slots, &n, 8, POOL_STABLE, rows, 2, NULL, 0, 6.0, err, sizeof(err)),
        0);
    assert_int_equal(n, 2);
    assert_string_equal(slots[0].owner, "a");
    assert_false(slots[0].idle_known);
    assert_true(slots[1].drain_since == 5.0);
    /* the table bound holds */
    assert_int_equal(
        hapi_observe_backend(slots, &n, 3, POOL_CANARY, rows, 2, NULL, 0, 6.0, err, sizeof(err)),
        -1);
}

/* ---- client against a fake stats socket -------------------------------------- */

enum fake_mode { FAKE_ECHO, FAKE_SILENT, FAKE_BIG, FAKE_CLOSE };

struct fake_conn {
    int fd;
    ev_io io;
    char line[256];
    size_t len;
    struct fake *fk;
};

struct fake {
    struct ev_loop *loop;
    int lfd;
    ev_io accept_io;
    enum fake_mode mode;
    struct fake_conn conns[16];
    int nconns;
    int accepted;
    char path[128];
};

static void fake_reply(struct fake_conn *c)
{
    char out[512];
    size_t n = 0;

    if (c->fk->mode == FAKE_ECHO) {
        n = (size_t)snprintf(out, sizeof(out), "got %.*s\n\n", (int)c->len, c->line);
        if (write(c->fd, out, n) != (ssize_t)n)
            fail_msg("fake write");
    } else if (c->fk->mode == FAKE_BIG) {
        memset(out, 'x', sizeof(out));
        for (int i = 0; i < 8; i++)
            if (write(c->fd, out, sizeof(out)) != (ssize_t)sizeof(out))
                fail_msg("fake write");
    }
    if (c->fk->mode != FAKE_SILENT) {
        ev_io_stop(c->fk->loop, &c->io);
        close(c->fd);
        c->fd = -1;
    }
}

static void fake_conn_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct fake_conn *c = w->data;
    ssize_t n = read(c->fd, c->line + c->len, sizeof(c->line) - c->len - 1);

    if (n <= 0) {
        ev_io_stop(loop, w);
        close(c->fd);
        c->fd = -1;
        return;
    }
    c->len += (size_t)n;
    if (memchr(c->line, '\n', c->len)) {
        c->len = (size_t)((char *)memchr(c->line, '\n', c->len) - c->line);
        fake_reply(c);
    }
}

static void fake_accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct fake *fk = w->data;
    int fd = accept(fk->lfd, NULL, NULL);
    struct fake_conn *c;

    if (fd < 0)
        return;
    fk->accepted++;
    if (fk->mode == FAKE_CLOSE || fk->nconns >= 16) {
        close(fd);
        return;
    }
    c = &fk->conns[fk->nconns++];
    memset(c, 0, sizeof(*c));
    c->fd = fd;
    c->fk = fk;
    ev_io_init(&c->io, fake_conn_cb, fd, EV_READ);
    c->io.data = c;
    ev_io_start(loop, &c->io);
}

static void fake_start(struct fake *fk, struct ev_loop *loop, enum fake_mode mode)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};

    memset(fk, 0, sizeof(*fk));
    fk->loop = loop;
    fk->mode = mode;
    assert_int_equal(make_tmpdir(), 0);
    path_in_tmp(fk->path, sizeof(fk->path), "fake.sock");
    unlink(fk->path);
    str_copy(sa.sun_path, fk->path, sizeof(sa.sun_path));
    fk->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    assert_true(fk->lfd >= 0);
    assert_int_equal(bind(fk->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fk->lfd, 16), 0);
    ev_io_init(&fk->accept_io, fake_accept_cb, fk->lfd, EV_READ);
    fk->accept_io.data = fk;
    ev_io_start(loop, &fk->accept_io);
}

static void fake_stop(struct fake *fk)
{
    ev_io_stop(fk->loop, &fk->accept_io);
    for (int i = 0; i < fk->nconns; i++) {
        if (fk->conns[i].fd >= 0) {
            ev_io_stop(fk->loop, &fk->conns[i].io);
            close(fk->conns[i].fd);
        }
    }
    close(fk->lfd);
    unlink(fk->path);
}

struct answers {
    int n;
    int status[8];
    char text[8][64];
    struct hapi *free_in_cb; /* hapi_free() from the first callback */
    const char *chain;       /* command submitted from the first callback */
};

static void collect_cb(struct hapi *h, int status, const char *ans, size_t len, void *priv)
{
    struct answers *a = priv;
    int i = a->n++;

    assert_true(i < 8);
    a->status[i] = status;
    if (status == HAPI_OK) {
        assert_int_equal(ans[len], '\0');
        snprintf(a->text[i], sizeof(a->text[i]), "%s", ans);
    } else {
        assert_null(ans);
    }
    if (i == 0 && a->chain)
        assert_int_equal(hapi_command(h, a->chain, collect_cb, a), 0);
    if (i == 0 && a->free_in_cb)
        hapi_free(a->free_in_cb);
}

static bool answers_at_least(void *arg)
{
    struct answers *a = ((void **)arg)[0];
    int want = *(int *)((void **)arg)[1];

    return a->n >= want;
}

static bool wait_answers(struct ev_loop *loop, struct answers *a, int want, double timeout)
{
    void *arg[2] = {a, &want};

    return run_until(loop, answers_at_least, arg, timeout);
}

static void test_client_order_and_chain(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct fake fk;
    struct answers a = {.chain = "fourth"};
    struct hapi *h;
    struct hapi_counters ctr;

    fake_start(&fk, loop, FAKE_ECHO);
    h = hapi_new(loop, fk.path, 2.0);
    assert_non_null(h);
    assert_int_equal(hapi_command(h, "first", collect_cb, &a), 0);
    assert_int_equal(hapi_command(h, "second", collect_cb, &a), 0);
    assert_int_equal(hapi_command(h, "third", collect_cb, &a), 0);
    assert_int_equal(a.n, 0); /* never called back from hapi_command() */
    assert_int_equal(hapi_queued(h), 3);
    assert_true(wait_answers(loop, &a, 4, 5.0));
    assert_string_equal(a.text[0], "got first\n\n");
    assert_string_equal(a.text[1], "got second\n\n");
    assert_string_equal(a.text[2], "got third\n\n");
    assert_string_equal(a.text[3], "got fourth\n\n");
    assert_int_equal(fk.accepted, 4); /* one connection per command */
    assert_int_equal(hapi_queued(h), 0);
    hapi_get_counters(h, &ctr);
    assert_int_equal(ctr.commands, 4);
    assert_int_equal(ctr.failures, 0);

    /* Refused synchronously, without callback. */
    assert_int_equal(hapi_command(h, "", collect_cb, &a), -1);
    assert_int_equal(hapi_command(h, "show info;show stat", collect_cb, &a), -1);
    assert_int_equal(hapi_command(h, "show info\nshow stat", collect_cb, &a), -1);
    assert_int_equal(hapi_command(h, "set map a\\b", collect_cb, &a), -1);
    {
        char big[HAPI_CMD_MAX + 2];

        memset(big, 'a', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        assert_int_equal(hapi_command(h, big, collect_cb, &a), -1);
    }
    hapi_set_limits(h, 0, 2);
    assert_int_equal(hapi_command(h, "q1", collect_cb, &a), 0);
    assert_int_equal(hapi_command(h, "q2", collect_cb, &a), 0);
    assert_int_equal(hapi_command(h, "q3", collect_cb, &a), -1);
    assert_true(wait_answers(loop, &a, 6, 5.0));
    assert_int_equal(a.status[5], HAPI_OK);
    hapi_free(h);
    fake_stop(&fk);
    ev_loop_destroy(loop);
}

static void test_client_errors(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct fake fk;
    struct answers a = {0};
    struct hapi *h;
    char missing[128];
    double t0;

    assert_int_equal(make_tmpdir(), 0);
    path_in_tmp(missing, sizeof(missing), "nobody.sock");
    assert_null(hapi_new(loop, missing, 0));
    {
        char longp[200];

        memset(longp, 'a', sizeof(longp) - 1);
        longp[sizeof(longp) - 1] = '\0';
        assert_null(hapi_new(loop, longp, 1.0));
    }
    h = hapi_new(loop, missing, 1.0);
    assert_int_equal(hapi_command(h, "show info", collect_cb, &a), 0);
    assert_int_equal(a.n, 0);
    assert_true(wait_answers(loop, &a, 1, 2.0));
    assert_int_equal(a.status[0], HAPI_ECONNECT);
    hapi_free(h);

    /* No answer: the deadline covers the whole command. */
    fake_start(&fk, loop, FAKE_SILENT);
    h = hapi_new(loop, fk.path, 0.2);
    a.n = 0;
    t0 = now_mono();
    assert_int_equal(hapi_command(h, "show info", collect_cb, &a), 0);
    assert_true(wait_answers(loop, &a, 1, 3.0));
    assert_int_equal(a.status[0], HAPI_ETIMEOUT);
    assert_true(now_mono() - t0 >= 0.19 && now_mono() - t0 < 1.5);
    hapi_free(h);
    fake_stop(&fk);

    /* Bounded answer. */
    fake_start(&fk, loop, FAKE_BIG);
    h = hapi_new(loop, fk.path, 2.0);
    hapi_set_limits(h, 1000, 0);
    a.n = 0;
    assert_int_equal(hapi_command(h, "show stat", collect_cb, &a), 0);
    assert_true(wait_answers(loop, &a, 1, 3.0));
    assert_int_equal(a.status[0], HAPI_ETOOBIG);
    hapi_set_limits(h, 4096, 0); /* exactly the 4096 bytes sent */
    assert_int_equal(hapi_command(h, "show stat", collect_cb, &a), 0);
    assert_true(wait_answers(loop, &a, 2, 3.0));
    assert_int_equal(a.status[1], HAPI_OK);
    hapi_free(h);
    fake_stop(&fk);

    /* Closed without a byte. */
    fake_start(&fk, loop, FAKE_CLOSE);
    h = hapi_new(loop, fk.path, 2.0);
    a.n = 0;
    assert_int_equal(hapi_command(h, "show info", collect_cb, &a), 0);
    assert_true(wait_answers(loop, &a, 1, 3.0));
    assert_true(a.status[0] == HAPI_EEMPTY || a.status[0] == HAPI_EIO);
    {
        struct hapi_counters ctr;

        hapi_get_counters(h, &ctr);
        assert_int_equal(ctr.failures, 1);
    }
    hapi_free(h);
    fake_stop(&fk);
    ev_loop_destroy(loop);
}

/* hapi_free() from a callback: the rest is aborted, nothing leaks or is
 * touched after the free (ASan watches). */
static void test_client_free_in_callback(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct fake fk;
    struct answers a = {0};
    struct hapi *h;

    fake_start(&fk, loop, FAKE_ECHO);
    h = hapi_new(loop, fk.path, 2.0);
    a.free_in_cb = h;
    assert_int_equal(hapi_command(h, "one", collect_cb, &a), 0);
    assert_int_equal(hapi_command(h, "two", collect_cb, &a), 0);
    assert_int_equal(hapi_command(h, "three", collect_cb, &a), 0);
    assert_true(wait_answers(loop, &a, 3, 3.0));
    assert_int_equal(a.status[0], HAPI_OK);
    assert_int_equal(a.status[1], HAPI_EABORT);
    assert_int_equal(a.status[2], HAPI_EABORT);

    /* hapi_free() with a command running and one queued. */
    h = hapi_new(loop, fk.path, 2.0);
    memset(&a, 0, sizeof(a));
    assert_int_equal(hapi_command(h, "one", collect_cb, &a), 0);
    assert_int_equal(hapi_command(h, "two", collect_cb, &a), 0);
    ev_run(loop, EVRUN_NOWAIT); /* "one" is connected */
    hapi_free(h);
    assert_int_equal(a.n, 2);
    assert_int_equal(a.status[0], HAPI_EABORT);
    assert_int_equal(a.status[1], HAPI_EABORT);
    fake_stop(&fk);
    ev_loop_destroy(loop);
}

/* ---- real HAProxy: processes ------------------------------------------------ */

struct hproc {
    pid_t pid;     /* the master (-Ws): our child */
    int notify_fd; /* NOTIFY_SOCKET datagrams from the master */
    char cfg[128];
    char notify[128];
    char log[128];
};

static const char *haproxy_bin(void)
{
    const char *b = getenv("CEDRA_HAPROXY_BIN");

    return b && *b ? b : "haproxy";
}

static bool haproxy_available(void)
{
    char cmd[256];

    snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", haproxy_bin());
    return system(cmd) == 0;
}

static uint16_t free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    uint16_t port;

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* Waits for a datagram holding "READY=1" (HAProxy's sd_notify). */
static bool wait_ready(struct hproc *p, double timeout)
{
    double end = now_mono() + timeout;
    char buf[512];

    while (now_mono() < end) {
        struct pollfd pfd = {.fd = p->notify_fd, .events = POLLIN};
        int ms = (int)((end - now_mono()) * 1000) + 1;
        ssize_t n;

        if (poll(&pfd, 1, ms) <= 0)
            continue;
        n = recv(p->notify_fd, buf, sizeof(buf) - 1, 0);
        if (n <= 0)
            continue;
        buf[n] = '\0';
        if (strstr(buf, "READY=1"))
            return true;
    }
    return false;
}

static void drain_notify(struct hproc *p)
{
    char buf[512];

    while (recv(p->notify_fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
        ;
}

static void proc_start(struct hproc *p)
{
    pid_t pid;

    drain_notify(p);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND, 0600);

        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        setenv("NOTIFY_SOCKET", p->notify, 1);
        execlp(haproxy_bin(), haproxy_bin(), "-Ws", "-f", p->cfg, (char *)NULL);
        _exit(127);
    }
    p->pid = pid;
    if (!wait_ready(p, 10.0)) {
        char cmd[256];

        snprintf(cmd, sizeof(cmd), "tail -20 %s >&2", p->log);
        if (system(cmd) != 0)
            fprintf(stderr, "(no log)\n");
        fail_msg("haproxy -f %s did not become ready", p->cfg);
    }
}

static void proc_init(struct hproc *p, const char *name)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};

    memset(p, 0, sizeof(*p));
    snprintf(p->cfg, sizeof(p->cfg), "%s/%s.cfg", tmpdir, name);
    snprintf(p->notify, sizeof(p->notify), "%s/%s.notify", tmpdir, name);
    snprintf(p->log, sizeof(p->log), "%s/%s.log", tmpdir, name);
    str_copy(sa.sun_path, p->notify, sizeof(sa.sun_path));
    p->notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(p->notify_fd >= 0);
    assert_int_equal(bind(p->notify_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
}

/* SIGTERM the master, reap it (pidfd: no polling, bounded), SIGKILL if slow. */
static void proc_stop(struct hproc *p)
{
    int pfd;

    if (p->pid <= 0)
        return;
    pfd = (int)syscall(SYS_pidfd_open, p->pid, 0);
    kill(p->pid, SIGTERM);
    if (pfd >= 0) {
        struct pollfd pl = {.fd = pfd, .events = POLLIN};

        if (poll(&pl, 1, 5000) <= 0)
            kill(p->pid, SIGKILL);
        close(pfd);
    }
    waitpid(p->pid, NULL, 0);
    p->pid = 0;
}

static void proc_reload(struct hproc *p)
{
    drain_notify(p);
    assert_int_equal(kill(p->pid, SIGUSR2), 0);
    assert_true(wait_ready(p, 10.0));
}

static void write_file(const char *path, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void write_file(const char *path, const char *fmt, ...)
{
    FILE *f = fopen(path, "w");
    va_list ap;

    assert_non_null(f);
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fclose(f);
}

/* ---- real HAProxy: HTTP load through the front ------------------------------- */

#define NORIGINS 4
#define LOAD_MAXCONN 8

struct load;

struct hconn {
    struct load *ld;
    int fd;
    ev_io io;
    bool connecting;
    size_t woff;
    char buf[4096];
    size_t blen;
};

struct load {
    struct ev_loop *loop;
    uint16_t port;
    char req[128];
    size_t reqlen;
    int nconn;
    struct hconn c[LOAD_MAXCONN];
    unsigned limit;   /* requests to send in all (0: until stopped) */
    unsigned started; /* requests sent */
    unsigned ok, fail;
    unsigned by_origin[NORIGINS + 1]; /* o1..o4, anything else */
    bool stopping;
    int open;
    char err[160];
};

static void hconn_open(struct hconn *c);

static void hconn_close(struct hconn *c)
{
    if (c->fd >= 0) {
        ev_io_stop(c->ld->loop, &c->io);
        close(c->fd);
        c->fd = -1;
        c->ld->open--;
    }
}

static bool load_more(struct load *ld)
{
    return !ld->stopping && (!ld->limit || ld->started < ld->limit);
}

static void hconn_send(struct hconn *c)
{
    c->woff = 0;
    c->blen = 0;
    c->ld->started++;
    ev_io_stop(c->ld->loop, &c->io);
    ev_io_set(&c->io, c->fd, EV_WRITE);
    ev_io_start(c->ld->loop, &c->io);
}

static void hconn_fail(struct hconn *c, const char *why)
{
    struct load *ld = c->ld;

    ld->fail++;
    snprintf(ld->err, sizeof(ld->err), "%s", why);
    hconn_close(c);
    if (load_more(ld))
        hconn_open(c);
}

/* One complete response in c->buf? Returns 1 done, 0 need more, -1 bad. */
static int hconn_parse(struct hconn *c, bool *close_after)
{
    char *hend, *cl;
    size_t hlen, clen;
    const char *body;

    c->buf[c->blen] = '\0';
    hend = strstr(c->buf, "\r\n\r\n");
    if (!hend)
        return c->blen >= sizeof(c->buf) - 1 ? -1 : 0;
    hlen = (size_t)(hend - c->buf) + 4;
    *hend = '\0';
    for (char *p = c->buf; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    cl = strstr(c->buf, "\r\ncontent-length:");
    *close_after = strstr(c->buf, "\r\nconnection: close") != NULL;
    if (!cl)
        return -1;
    clen = strtoul(cl + 17, NULL, 10);
    *hend = '\r';
    if (c->blen < hlen + clen)
        return 0;
    if (strncmp(c->buf, "http/1.1 200 ", 13) != 0) {
        snprintf(c->ld->err, sizeof(c->ld->err), "status %.12s", c->buf + 9);
        return -1;
    }
    body = c->buf + hlen;
    for (int o = 0; o < NORIGINS; o++) {
        if (clen == 2 && body[0] == 'o' && body[1] == '1' + o) {
            c->ld->by_origin[o]++;
            return 1;
        }
    }
    c->ld->by_origin[NORIGINS]++;
    return 1;
}

static void hconn_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct hconn *c = w->data;
    struct load *ld = c->ld;

    if (revents & EV_WRITE) {
        ssize_t n;

        if (c->connecting) {
            int soerr = 0;
            socklen_t sl = sizeof(soerr);

            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            if (soerr) {
                hconn_fail(c, "connect");
                return;
            }
            c->connecting = false;
        }
        n = send(c->fd, ld->req + c->woff, ld->reqlen - c->woff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN)
                hconn_fail(c, "send");
            return;
        }
        c->woff += (size_t)n;
        if (c->woff == ld->reqlen) {
            ev_io_stop(loop, &c->io);
            ev_io_set(&c->io, c->fd, EV_READ);
            ev_io_start(loop, &c->io);
        }
        return;
    }
    for (;;) {
        ssize_t n = read(c->fd, c->buf + c->blen, sizeof(c->buf) - 1 - c->blen);
        bool close_after = false;
        int r;

        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            hconn_fail(c, n == 0 ? "closed mid-response" : "read");
            return;
        }
        c->blen += (size_t)n;
        r = hconn_parse(c, &close_after);
        if (r == 0)
            continue;
        if (r < 0) {
            hconn_fail(c, ld->err[0] ? ld->err : "bad response");
            return;
        }
        ld->ok++;
        if (!load_more(ld)) {
            hconn_close(c);
            return;
        }
        if (close_after) {
            hconn_close(c);
            hconn_open(c);
            return;
        }
        hconn_send(c);
        return;
    }
}

static void hconn_open(struct hconn *c)
{
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons(c->ld->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};

    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    c->ld->open++;
    c->connecting = true;
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
        c->connecting = false;
    else if (errno != EINPROGRESS) {
        hconn_fail(c, "connect");
        return;
    }
    ev_io_init(&c->io, hconn_cb, c->fd, EV_WRITE);
    c->io.data = c;
    hconn_send(c);
}

static void load_start(struct load *ld, struct ev_loop *loop, uint16_t port, const char *path,
                       int nconn, unsigned limit)
{
    memset(ld, 0, sizeof(*ld));
    ld->loop = loop;
    ld->port = port;
    ld->nconn = nconn;
    ld->limit = limit;
    ld->reqlen = (size_t)snprintf(ld->req, sizeof(ld->req),
                                  "GET %s HTTP/1.1\r\nHost: edge.test\r\n\r\n", path);
    for (int i = 0; i < nconn; i++) {
        ld->c[i].ld = ld;
        ld->c[i].fd = -1;
        if (load_more(ld))
            hconn_open(&ld->c[i]);
    }
}

static bool load_idle(void *arg)
{
    return ((struct load *)arg)->open == 0;
}

static bool load_has_ok(void *arg)
{
    struct load *ld = ((void **)arg)[0];
    unsigned want = *(unsigned *)((void **)arg)[1];

    return ld->ok + ld->fail >= want;
}

/* Stops the load: running requests complete, no new one is sent. */
static void load_stop(struct load *ld)
{
    ld->stopping = true;
    assert_true(run_until(ld->loop, load_idle, ld, 10.0));
}

/* n sequential requests on one keep-alive connection; counts by origin. */
static void http_burst(struct ev_loop *loop, uint16_t port, const char *path, unsigned n,
                       struct load *ld)
{
    load_start(ld, loop, port, path, 1, n);
    assert_true(run_until(loop, load_idle, ld, 10.0));
    if (ld->fail)
        fail_msg("%u of %u requests to %s failed: %s", ld->fail, n, path, ld->err);
    assert_int_equal(ld->ok, n);
}

/* ---- real HAProxy: the reconcile loop ----------------------------------------
 * What cedra-agent's HAProxy side does each round, written out with the
 * same API: show info (restart?), show servers state + show stat per
 * backend -> slots, plan, apply. */

#define MAXSLOTS 16

struct driver {
    struct ev_loop *loop;
    struct hapi *h;
    struct slot_state slots[MAXSLOTS];
    size_t nslots;
    struct reconcile_cfg cfg;
    struct hapi_info info;
    double info_at;
    bool have_info;
    unsigned restarts;
    struct plan last;   /* the last plan applied (copy of counts and ops) */
    size_t busy_drains; /* rounds that saw a draining slot not yet idle */
};

struct sync_cmd {
    bool done;
    int status;
    char *ans;
    size_t len;
};

static void sync_cb(struct hapi *h, int status, const char *ans, size_t len, void *priv)
{
    struct sync_cmd *sc = priv;

    sc->done = true;
    sc->status = status;
    if (status == HAPI_OK) {
        sc->ans = malloc(len + 1);
        memcpy(sc->ans, ans, len + 1);
        sc->len = len;
    }
}

static bool sync_done(void *arg)
{
    return ((struct sync_cmd *)arg)->done;
}

/* One command, waited for on the loop (the load keeps running). */
static char *cmd(struct driver *d, const char *c, size_t *len)
{
    struct sync_cmd sc = {0};

    assert_int_equal(hapi_command(d->h, c, sync_cb, &sc), 0);
    assert_true(run_until(d->loop, sync_done, &sc, 5.0));
    if (sc.status != HAPI_OK)
        fail_msg("%s: %s", c, hapi_strerror(sc.status));
    if (len)
        *len = sc.len;
    return sc.ans;
}

struct plan_wait {
    bool done;
    int status;
    size_t done_ops;
    char err[256];
};

static void plan_cb(struct hapi *h, int status, size_t done, const char *err, void *priv)
{
    struct plan_wait *pw = priv;

    pw->done = true;
    pw->status = status;
    pw->done_ops = done;
    snprintf(pw->err, sizeof(pw->err), "%s", err ? err : "");
}

static bool plan_done(void *arg)
{
    return ((struct plan_wait *)arg)->done;
}

static int apply(struct driver *d, const struct plan *p, struct plan_wait *pw)
{
    int rc;

    memset(pw, 0, sizeof(*pw));
    rc = hapi_apply_plan(d->h, p, d->slots, d->nslots, plan_cb, pw);
    if (rc == 1)
        return HAPI_OK;
    assert_int_equal(rc, 0);
    assert_true(run_until(d->loop, plan_done, pw, 10.0));
    return pw->status;
}

static void observe(struct driver *d)
{
    char err[256];
    size_t len;
    char *ans = cmd(d, "show info", &len);
    struct hapi_info info;
    double at = now_mono();

    if (hapi_parse_info(ans, len, &info, err, sizeof(err)) < 0)
        fail_msg("show info: %s", err);
    free(ans);
    if (d->have_info && hapi_info_restarted(&d->info, d->info_at, &info, at)) {
        d->restarts++;
        log_notice("haproxy_restarted", "old_pid=%" PRIu64 " pid=%" PRIu64, d->info.pid, info.pid);
    }
    d->info = info;
    d->info_at = at;
    d->have_info = true;
    for (int k = 0; k < POOL_KINDS; k++) {
        struct hapi_server rows[MAXSLOTS];
        struct hapi_stat st[MAXSLOTS];
        char c[200];
        int nr, ns;

        snprintf(c, sizeof(c), "show servers state %s", d->cfg.backend[k]);
        ans = cmd(d, c, &len);
        nr = hapi_parse_servers_state(ans, len, rows, MAXSLOTS, err, sizeof(err));
        if (nr < 0)
            fail_msg("%s: %s", c, err);
        free(ans);
        snprintf(c, sizeof(c), "show stat %s 4 -1", d->cfg.backend[k]);
        ans = cmd(d, c, &len);
        ns = hapi_parse_stat(ans, len, st, MAXSLOTS, err, sizeof(err));
        if (ns < 0)
            fail_msg("%s: %s", c, err);
        free(ans);
        for (int i = 0; i < nr; i++)
            assert_string_equal(rows[i].be_name, d->cfg.backend[k]);
        for (int i = 0; i < ns; i++)
            assert_string_equal(st[i].pxname, d->cfg.backend[k]);
        if (hapi_observe_backend(d->slots, &d->nslots, MAXSLOTS, (enum pool_kind)k, rows,
                                 (size_t)nr, st, (size_t)ns, now_mono(), err, sizeof(err)) < 0)
            fail_msg("observe: %s", err);
    }
}

/* One round; returns the number of ops applied. */
static size_t round_once(struct driver *d, const struct pool_set *want)
{
    struct plan p;
    struct plan_wait pw;
    char err[256];
    size_t n;

    observe(d);
    for (size_t s = 0; s < d->nslots; s++)
        if (d->slots[s].admin == SLOT_DRAIN && d->slots[s].idle_known && !d->slots[s].idle)
            d->busy_drains++;
    d->cfg.now = now_mono();
    if (reconcile_plan(want, d->slots, d->nslots, &d->cfg, &p, err, sizeof(err)) < 0)
        fail_msg("plan: %s", err);
    if (apply(d, &p, &pw) != HAPI_OK)
        fail_msg("plan failed at op %zu (%s): %s", pw.done_ops, p.op[pw.done_ops].cmd, pw.err);
    n = p.n;
    plan_free(&d->last);
    d->last = p;
    hapi_report_success(d->h);
    return n;
}

struct converge_arg {
    struct driver *d;
    const struct pool_set *want;
};

/* Rounds until nothing is left to do (drains finished), a round every 20 ms
 * at most, as the agent's timer would run them while something drains. */
static double converge(struct driver *d, const struct pool_set *want, double timeout)
{
    double t0 = now_mono(), end = t0 + timeout;

    for (;;) {
        size_t n = round_once(d, want);

        if (n == 0 && d->last.draining == 0)
            return now_mono() - t0;
        if (now_mono() > end)
            fail_msg("no convergence in %.1fs (%zu draining)", timeout, d->last.draining);
        {
            /* Between rounds the loop runs on (load, other watchers): this
             * is the agent's round interval, not a synchronisation. */
            struct sync_cmd pause = {0};

            run_until(d->loop, sync_done, &pause, 0.02);
        }
    }
}

/* ---- real HAProxy: the scenario ----------------------------------------------- */

struct real {
    struct ev_loop *loop;
    struct hproc origins, edge;
    uint16_t oport[NORIGINS], fe_port;
    char sock[128];
    struct driver d;
    struct instance inst[8];
    struct pool_set want;
};

static struct real *R;

static void set_want(size_t n, ...)
{
    va_list ap;

    va_start(ap, n);
    for (size_t i = 0; i < n; i++) {
        struct instance *in = &R->inst[i];
        int origin = va_arg(ap, int);

        memset(in, 0, sizeof(*in));
        snprintf(in->id, sizeof(in->id), "%s", va_arg(ap, const char *));
        snprintf(in->addr, sizeof(in->addr), "127.0.0.1");
        in->port = R->oport[origin - 1];
        in->weight = (unsigned)va_arg(ap, int);
        in->kind = (enum pool_kind)va_arg(ap, int);
    }
    va_end(ap);
    R->want.inst = R->inst;
    R->want.n = n;
}

static int real_setup(void **state)
{
    char origins_cfg[4096];
    size_t off = 0;

    if (!haproxy_available()) {
        fprintf(stderr, "haproxy not found: real HAProxy tests skipped\n");
        return 0;
    }
    if (make_tmpdir() < 0)
        return -1;
    R = calloc(1, sizeof(*R));
    R->loop = ev_loop_new(EVFLAG_AUTO);
    for (int i = 0; i < NORIGINS; i++)
        R->oport[i] = free_port();
    R->fe_port = free_port();
    path_in_tmp(R->sock, sizeof(R->sock), "admin.sock");

    proc_init(&R->origins, "origins");
    off += (size_t)snprintf(origins_cfg + off, sizeof(origins_cfg) - off,
                            "global\n    log stderr format raw local0 err\n"
                            "defaults\n    mode http\n    timeout connect 2s\n"
                            "    timeout client 10s\n    timeout server 10s\n"
                            "    timeout tarpit 100ms\n");
    for (int i = 0; i < NORIGINS; i++) {
        /* ".../slow" answers after 100 ms (tarpit with a 200 status), so
         * that requests are in flight while a server drains. */
        off += (size_t)snprintf(
            origins_cfg + off, sizeof(origins_cfg) - off,
            "frontend o%d\n    bind 127.0.0.1:%u\n"
            "    http-request tarpit deny_status 200 content-type text/plain string o%d if "
            "{ path_end /slow }\n"
            "    http-request return status 200 content-type text/plain string o%d\n",
            i + 1, R->oport[i], i + 1, i + 1);
    }
    write_file(R->origins.cfg, "%s", origins_cfg);
    proc_start(&R->origins);

    proc_init(&R->edge, "edge");
    /* The slots as proposed for haproxy/haproxy.cfg; the canary backend is
     * used only while it has a usable server, else stable serves. */
    write_file(R->edge.cfg,
               "global\n"
               "    stats socket %s mode 600 level admin\n"
               "    stats timeout 30s\n"
               "    hard-stop-after 5s\n"
               "    log stderr format raw local0 err\n"
               "defaults\n"
               "    mode http\n"
               "    timeout connect 2s\n"
               "    timeout client 10s\n"
               "    timeout server 10s\n"
               "    timeout queue 2s\n"
               "frontend fe\n"
               "    bind 127.0.0.1:%u\n"
               "    use_backend storefront_canary if { path_beg /c/ } "
               "{ nbsrv(storefront_canary) gt 0 }\n"
               "    default_backend storefront_stable\n"
               "backend storefront_stable\n"
               "    balance roundrobin\n"
               "    server-template stable 1-4 0.0.0.0:0 check inter 1s disabled\n"
               "backend storefront_canary\n"
               "    balance roundrobin\n"
               "    server-template canary 1-4 0.0.0.0:0 check inter 1s disabled\n",
               R->sock, R->fe_port);
    proc_start(&R->edge);

    R->d.loop = R->loop;
    R->d.h = hapi_new(R->loop, R->sock, 2.0);
    R->d.cfg.backend[POOL_STABLE] = "storefront_stable";
    R->d.cfg.backend[POOL_CANARY] = "storefront_canary";
    R->d.cfg.drain_grace = 10.0;
    R->d.cfg.drain_min = 0.0;
    plan_init(&R->d.last);
    pool_set_init(&R->want);
    return 0;
}

static int real_teardown(void **state)
{
    if (!R) {
        rm_tmpdir();
        return 0;
    }
    hapi_free(R->d.h);
    plan_free(&R->d.last);
    proc_stop(&R->edge);
    proc_stop(&R->origins);
    close(R->edge.notify_fd);
    close(R->origins.notify_fd);
    ev_loop_destroy(R->loop);
    free(R);
    R = NULL;
    rm_tmpdir();
    return 0;
}

#define REQUIRE_REAL()                                                                             \
    do {                                                                                           \
        if (!R)                                                                                    \
            skip();                                                                                \
    } while (0)

/* Finds the "show servers state" row of a slot. */
static struct hapi_server row_of(const char *backend, const char *name)
{
    struct hapi_server rows[MAXSLOTS];
    char c[200], err[256];
    size_t len;
    char *ans;
    int n;

    snprintf(c, sizeof(c), "show servers state %s", backend);
    ans = cmd(&R->d, c, &len);
    n = hapi_parse_servers_state(ans, len, rows, MAXSLOTS, err, sizeof(err));
    free(ans);
    if (n < 0)
        fail_msg("%s", err);
    for (int i = 0; i < n; i++)
        if (strcmp(rows[i].srv_name, name) == 0)
            return rows[i];
    fail_msg("no server %s/%s", backend, name);
    return rows[0];
}

static void expect_slot(const char *backend, const char *name, int origin, unsigned weight,
                        enum slot_admin admin)
{
    struct hapi_server r = row_of(backend, name);

    if (hapi_admin_decode(r.admin) != admin)
        fail_msg("%s/%s: admin 0x%x, want %d", backend, name, r.admin, (int)admin);
    if (origin) {
        assert_string_equal(r.addr, "127.0.0.1");
        assert_int_equal(r.port, R->oport[origin - 1]);
        assert_int_equal(r.uweight, weight);
    }
}

static void test_real_initial_sync(void **state)
{
    struct load ld;

    REQUIRE_REAL();
    /* a(o1), b(o2) stable; c(o3) canary. Pool order: by (kind, id). */
    set_want(3, 1, "a", 100, POOL_STABLE, 2, "b", 100, POOL_STABLE, 3, "c", 100, POOL_CANARY);
    converge(&R->d, &R->want, 5.0);
    assert_int_equal(R->d.last.n, 0);
    expect_slot("storefront_stable", "stable1", 1, 100, SLOT_READY);
    expect_slot("storefront_stable", "stable2", 2, 100, SLOT_READY);
    expect_slot("storefront_stable", "stable3", 0, 0, SLOT_MAINT);
    expect_slot("storefront_canary", "canary1", 3, 100, SLOT_READY);
    expect_slot("storefront_canary", "canary2", 0, 0, SLOT_MAINT);
    /* DESIGN 3.4: a ready template slot still shows 0x04 and serves. */
    assert_int_equal(row_of("storefront_stable", "stable1").admin, HAPI_ADMF_CMAINT);
    assert_int_equal(row_of("storefront_stable", "stable3").admin,
                     HAPI_ADMF_CMAINT | HAPI_ADMF_FMAINT);

    http_burst(R->loop, R->fe_port, "/", 40, &ld);
    assert_int_equal(ld.by_origin[0] + ld.by_origin[1], 40);
    assert_true(ld.by_origin[0] >= 10 && ld.by_origin[1] >= 10);
    http_burst(R->loop, R->fe_port, "/c/x", 20, &ld);
    assert_int_equal(ld.by_origin[2], 20);
}

static void test_real_scale_up_and_weights(void **state)
{
    struct load ld;

    REQUIRE_REAL();
    set_want(4, 1, "a", 100, POOL_STABLE, 2, "b", 0, POOL_STABLE, 4, "d", 100, POOL_STABLE, 3, "c",
             100, POOL_CANARY);
    converge(&R->d, &R->want, 5.0);
    expect_slot("storefront_stable", "stable2", 2, 0, SLOT_READY);
    expect_slot("storefront_stable", "stable3", 4, 100, SLOT_READY);
    http_burst(R->loop, R->fe_port, "/", 40, &ld);
    assert_int_equal(ld.by_origin[1], 0); /* weight 0: no new traffic */
    assert_int_equal(ld.by_origin[0] + ld.by_origin[3], 40);
    assert_true(ld.by_origin[3] >= 10);

    set_want(4, 1, "a", 100, POOL_STABLE, 2, "b", 100, POOL_STABLE, 4, "d", 100, POOL_STABLE, 3,
             "c", 100, POOL_CANARY);
    converge(&R->d, &R->want, 5.0);
    expect_slot("storefront_stable", "stable2", 2, 100, SLOT_READY);
    http_burst(R->loop, R->fe_port, "/", 30, &ld);
    assert_true(ld.by_origin[1] >= 5);
}

/* Scale down under load: a(o1) leaves. Its slot drains while requests of
 * 100 ms are in flight, goes to maint only once idle, and not one request
 * fails. */
static void test_real_drain_under_load(void **state)
{
    struct load ld;
    unsigned want = 60;
    void *arg[2] = {&ld, &want};
    unsigned o1_at_maint;
    size_t busy0 = R ? R->d.busy_drains : 0;

    REQUIRE_REAL();
    load_start(&ld, R->loop, R->fe_port, "/slow", 6, 0);
    assert_true(run_until(R->loop, load_has_ok, arg, 10.0));
    assert_int_equal(ld.fail, 0);
    assert_true(ld.by_origin[0] > 0);

    set_want(3, 2, "b", 100, POOL_STABLE, 4, "d", 100, POOL_STABLE, 3, "c", 100, POOL_CANARY);
    converge(&R->d, &R->want, 15.0);
    o1_at_maint = ld.by_origin[0];
    expect_slot("storefront_stable", "stable1", 0, 0, SLOT_MAINT);
    /* The drain really waited for in-flight requests (scur > 0 seen). */
    assert_true(R->d.busy_drains > busy0);

    want = ld.ok + ld.fail + 60;
    assert_true(run_until(R->loop, load_has_ok, arg, 10.0));
    load_stop(&ld);
    if (ld.fail)
        fail_msg("%u requests failed during the drain: %s", ld.fail, ld.err);
    assert_int_equal(ld.by_origin[0], o1_at_maint); /* nothing for o1 after maint */
    assert_int_equal(ld.by_origin[NORIGINS], 0);
    assert_true(ld.by_origin[1] > 0 && ld.by_origin[3] > 0);
}

/* Promotion under load on both pools: c(o3) flips to stable. Its stable
 * slot is ready before its canary slot drains; canary users fall back to
 * stable once the canary backend has no usable server; no request fails. */
static void test_real_promotion_under_load(void **state)
{
    struct load ls, lc;
    unsigned want = 30;
    void *arg[2] = {&lc, &want};

    REQUIRE_REAL();
    load_start(&ls, R->loop, R->fe_port, "/slow", 3, 0);
    load_start(&lc, R->loop, R->fe_port, "/c/slow", 3, 0);
    assert_true(run_until(R->loop, load_has_ok, arg, 10.0));
    assert_int_equal(lc.by_origin[2], lc.ok);

    set_want(3, 2, "b", 100, POOL_STABLE, 3, "c", 100, POOL_STABLE, 4, "d", 100, POOL_STABLE);
    converge(&R->d, &R->want, 15.0);
    want = lc.ok + lc.fail + 30;
    assert_true(run_until(R->loop, load_has_ok, arg, 10.0));
    load_stop(&ls);
    load_stop(&lc);
    if (ls.fail || lc.fail)
        fail_msg("failed: stable %u (%s), canary %u (%s)", ls.fail, ls.err, lc.fail, lc.err);
    /* o3 now serves from the stable slot freed by a's drain (stable1). */
    expect_slot("storefront_stable", "stable1", 3, 100, SLOT_READY);
    expect_slot("storefront_canary", "canary1", 0, 0, SLOT_MAINT);
    {
        struct load ld;

        http_burst(R->loop, R->fe_port, "/c/x", 30, &ld);
        assert_int_equal(ld.by_origin[1] + ld.by_origin[2] + ld.by_origin[3], 30);
        assert_true(ld.by_origin[2] >= 5);
    }
}

/* An answer that is not the expected one stops the plan at that command:
 * the drain planned after it never runs. */
static void test_real_bad_answer_stops_plan(void **state)
{
    struct plan p;
    struct plan_wait pw;
    struct hapi_counters before, after;

    REQUIRE_REAL();
    plan_init(&p);
    p.op = calloc(2, sizeof(*p.op));
    p.n = 2;
    p.op[0].action = PLAN_READY;
    snprintf(p.op[0].cmd, sizeof(p.op[0].cmd), "set server storefront_stable/stable9 state ready");
    p.op[1].action = PLAN_DRAIN;
    p.op[1].slot = 0;
    snprintf(p.op[1].cmd, sizeof(p.op[1].cmd), "set server storefront_stable/stable1 state drain");
    hapi_get_counters(R->d.h, &before);
    assert_int_equal(apply(&R->d, &p, &pw), HAPI_EANSWER);
    assert_int_equal(pw.done_ops, 0);
    assert_non_null(strstr(pw.err, "No such server."));
    /* The same failure again: counted, logged once. */
    assert_int_equal(apply(&R->d, &p, &pw), HAPI_EANSWER);
    hapi_get_counters(R->d.h, &after);
    assert_int_equal(after.bad_answers - before.bad_answers, 2);
    expect_slot("storefront_stable", "stable1", 3, 100, SLOT_READY);
    plan_free(&p);
}

static void check_serving(void)
{
    struct load ld;

    http_burst(R->loop, R->fe_port, "/", 30, &ld);
    assert_int_equal(ld.by_origin[1] + ld.by_origin[2] + ld.by_origin[3], 30);
    assert_true(ld.by_origin[1] > 0 && ld.by_origin[2] > 0 && ld.by_origin[3] > 0);
}

/* HAProxy restarted: a new process with the configured (empty) slots. The
 * next round sees another pid and re-applies every slot. */
static void test_real_restart(void **state)
{
    unsigned r0;
    uint64_t old_pid;
    double t0, took;

    REQUIRE_REAL();
    r0 = R->d.restarts;
    old_pid = R->d.info.pid;
    proc_stop(&R->edge);
    proc_start(&R->edge);
    t0 = now_mono();
    converge(&R->d, &R->want, 5.0);
    took = now_mono() - t0;
    assert_int_equal(R->d.restarts, r0 + 1);
    assert_true(R->d.info.pid != old_pid);
    print_message("restart: slots restored %.1f ms after READY\n", took * 1000);
    assert_true(took < 2.0);
    /* Fresh slots are filled in pool order (b, c, d). */
    expect_slot("storefront_stable", "stable1", 2, 100, SLOT_READY);
    expect_slot("storefront_stable", "stable2", 3, 100, SLOT_READY);
    expect_slot("storefront_stable", "stable3", 4, 100, SLOT_READY);
    expect_slot("storefront_canary", "canary1", 0, 0, SLOT_MAINT);
    check_serving();
}

/* Reload (master-worker, SIGUSR2): a new worker, fresh slots, the pid
 * changes (the uptime does not go back: measured on 2.6.12). */
static void test_real_reload(void **state)
{
    unsigned r0;

    REQUIRE_REAL();
    r0 = R->d.restarts;
    proc_reload(&R->edge);
    converge(&R->d, &R->want, 5.0);
    assert_int_equal(R->d.restarts, r0 + 1);
    expect_slot("storefront_stable", "stable3", 4, 100, SLOT_READY);
    check_serving();
    /* Steady state: a round with nothing to do sends no command. */
    assert_int_equal(round_once(&R->d, &R->want), 0);
    assert_int_equal(R->d.restarts, r0 + 1);
}

int main(void)
{
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(test_parse_servers_state_real),
        cmocka_unit_test(test_parse_servers_state_strict),
        cmocka_unit_test(test_parse_stat),
        cmocka_unit_test(test_parse_info),
        cmocka_unit_test(test_info_restarted),
        cmocka_unit_test(test_check_set_reply),
        cmocka_unit_test(test_observe_backend),
        cmocka_unit_test(test_client_order_and_chain),
        cmocka_unit_test(test_client_errors),
        cmocka_unit_test(test_client_free_in_callback),
    };
    /* In order: each step starts from the previous one's state. */
    const struct CMUnitTest real[] = {
        cmocka_unit_test(test_real_initial_sync),
        cmocka_unit_test(test_real_scale_up_and_weights),
        cmocka_unit_test(test_real_drain_under_load),
        cmocka_unit_test(test_real_promotion_under_load),
        cmocka_unit_test(test_real_bad_answer_stops_plan),
        cmocka_unit_test(test_real_restart),
        cmocka_unit_test(test_real_reload),
    };
    int rc;

    signal(SIGPIPE, SIG_IGN);
    log_init("test_hapi", false);
    if (getenv("CEDRA_TEST_LOG_LEVEL")) {
        enum log_level lvl;

        if (log_level_parse(getenv("CEDRA_TEST_LOG_LEVEL"), &lvl) == 0)
            log_set_level(lvl);
    } else {
        log_set_level(LOG_LVL_WARNING);
    }
    rc = cmocka_run_group_tests_name("hapi", pure, NULL, NULL);
    rm_tmpdir();
    rc |= cmocka_run_group_tests_name("hapi_real_haproxy", real, real_setup, real_teardown);
    return rc;
}
