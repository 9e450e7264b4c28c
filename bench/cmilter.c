/*
 * cmilter - minimal libmilter milter used as a benchmark peer.
 *
 * Behaves like "milter-test-client --no-report-request": it accepts
 * every action the MTA offers, asks for every protocol step and every
 * reply (no SMFIP_NO* / SMFIP_NR_* bits), answers SMFIS_CONTINUE to
 * every callback and prints nothing per session.
 *
 * Usage: cmilter -p inet:PORT@127.0.0.1 | -p unix:/path [-q]
 * Runs until SIGTERM / SIGINT (handled by libmilter).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libmilter/mfapi.h>

static sfsistat
cm_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1,
             unsigned long f2, unsigned long f3,
             unsigned long *pf0, unsigned long *pf1,
             unsigned long *pf2, unsigned long *pf3)
{
    (void)ctx; (void)f2; (void)f3;
    *pf0 = f0;                  /* echo every offered action */
    *pf1 = f1 & SMFIP_SKIP;     /* drop every no-* / no-reply-* / rcpt-rej / leadspc step */
    *pf2 = 0;
    *pf3 = 0;
    return SMFIS_CONTINUE;
}

static sfsistat
cm_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr)
{
    (void)ctx; (void)host; (void)addr;
    return SMFIS_CONTINUE;
}

static sfsistat
cm_argv(SMFICTX *ctx, char **argv)
{
    (void)ctx; (void)argv;
    return SMFIS_CONTINUE;
}

static sfsistat
cm_str(SMFICTX *ctx, char *s)
{
    (void)ctx; (void)s;
    return SMFIS_CONTINUE;
}

static sfsistat
cm_const_str(SMFICTX *ctx, const char *s)
{
    (void)ctx; (void)s;
    return SMFIS_CONTINUE;
}

static sfsistat
cm_header(SMFICTX *ctx, char *name, char *value)
{
    (void)ctx; (void)name; (void)value;
    return SMFIS_CONTINUE;
}

static sfsistat
cm_body(SMFICTX *ctx, unsigned char *chunk, size_t len)
{
    (void)ctx; (void)chunk; (void)len;
    return SMFIS_CONTINUE;
}

static sfsistat
cm_ctx(SMFICTX *ctx)
{
    (void)ctx;
    return SMFIS_CONTINUE;
}

static struct smfiDesc cm_desc = {
    "cmilter",                  /* xxfi_name */
    SMFI_VERSION,               /* xxfi_version */
    SMFIF_ADDHDRS | SMFIF_CHGBODY | SMFIF_ADDRCPT | SMFIF_DELRCPT |
    SMFIF_CHGHDRS | SMFIF_QUARANTINE | SMFIF_CHGFROM |
    SMFIF_ADDRCPT_PAR | SMFIF_SETSYMLIST, /* xxfi_flags */
    cm_connect,                 /* xxfi_connect */
    cm_str,                     /* xxfi_helo */
    cm_argv,                    /* xxfi_envfrom */
    cm_argv,                    /* xxfi_envrcpt */
    cm_header,                  /* xxfi_header */
    cm_ctx,                     /* xxfi_eoh */
    cm_body,                    /* xxfi_body */
    cm_ctx,                     /* xxfi_eom */
    cm_ctx,                     /* xxfi_abort */
    cm_ctx,                     /* xxfi_close */
    cm_const_str,               /* xxfi_unknown */
    cm_ctx,                     /* xxfi_data */
    cm_negotiate                /* xxfi_negotiate */
};

static void
usage(const char *prog)
{
    fprintf(stderr, "usage: %s -p inet:PORT@HOST|unix:/path [-q]\n", prog);
    exit(2);
}

int
main(int argc, char **argv)
{
    const char *spec = NULL;
    int c;

    while ((c = getopt(argc, argv, "p:qh")) != -1) {
        switch (c) {
        case 'p':
            spec = optarg;
            break;
        case 'q':
            break;              /* accepted and ignored */
        default:
            usage(argv[0]);
        }
    }
    if (spec == NULL || optind != argc)
        usage(argv[0]);

    if (smfi_setconn((char *)spec) == MI_FAILURE) {
        fprintf(stderr, "%s: smfi_setconn(%s) failed\n", argv[0], spec);
        return 1;
    }
    if (smfi_register(cm_desc) == MI_FAILURE) {
        fprintf(stderr, "%s: smfi_register failed\n", argv[0]);
        return 1;
    }
    /* remove a stale unix socket left by a previous run */
    if (smfi_opensocket(1) == MI_FAILURE) {
        fprintf(stderr, "%s: cannot listen on %s\n", argv[0], spec);
        return 1;
    }
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
