/*
 * macro_host.c -- the reference macro host of dnat's `exec:` backend.
 *
 * A macro host owns a CIM macro and does its macro operations for dnat, answering the
 * binary protocol of docs/protocol.md (the contract: read it first) on stdin/stdout.
 * This one simulates the nominal chip of a D-MAC-EM counts file: exact partial sums,
 * the ADC's conversion, then each readout drawn from the file's counts.  It is also
 * the skeleton for a real board: keep the protocol half as it is and replace the
 * bodies of board_open, program_array and compute_ops (the BOARD section) with calls
 * to your board's driver; the SIMULATED CHIP section (and its threads) then goes.
 *
 * Build:  cc -std=c99 -O3 -march=native -pthread -o macro_host examples/c/macro_host.c -lm
 *         (C99 with POSIX threads, libc and libm only; without POSIX threads it builds
 *         single-threaded)
 * Run:    dnat deploy eval --model M --backend 'exec:./macro_host model.txt'
 * Usage:  macro_host COUNTS_FILE [--seed N]      (N, default 1000, seeds the read noise)
 * Exit:   0 after BYE or at end of input; 2 bad arguments, counts file or environment;
 *         3 a broken message stream (or no memory); 7 the exit fault below.
 *
 * DNAT_HOST_THREADS: the simulation's worker threads, 1..64 (default: the online CPUs,
 * at most 8).  The codes do not depend on it.
 *
 * The ADC conversion is dnat's, in single precision.  Build without -ffast-math and in
 * an ISO mode (-std=c99, not gnu99), or add -ffp-contract=off, so that on an FMA target
 * P*scale + offset is not fused and the ideal codes are dnat's to the bit.  The draws
 * are this host's own (keyed like dnat's, not dnat's sequence): one seed and operation
 * give one code, however dnat cuts the operations into requests and however many
 * threads do them.  A draw is 64 random bits read through Walker's alias method, in
 * O(1): ideal code k reads j with probability (F(j) - F(j-1)) / 2^64, where F(j) =
 * floor(2^64 x (k's counts up to j) / (k's total)) -- the counts' ratio to within
 * 2^-64, exactly (see build_rows).
 *
 * DNAT_HOST_FAULT: switches for dnat's test suite (a real host has none).
 *   exit:K    on receiving the K-th COMPUTE (1-based), exit with status 7, no reply
 *   stall:K   on the K-th COMPUTE, sleep forever without replying
 *   count:K   answer the K-th COMPUTE with n-1 operations (and a body of that size)
 *   code:K    answer the K-th COMPUTE with an ADC code outside adc_kmin..adc_kmax as
 *             codes[0]: adc_kmax+1, or adc_kmin-1 where adc_kmax+1 does not fit the
 *             reply's i16 codes; an ADC that spans all of i16 leaves no such code, and
 *             the fault answers ERROR instead
 *   error:K   answer the K-th COMPUTE with ERROR "injected fault"
 *   version   answer HELLO with protocol version 2
 */
#ifdef __linux__
#define _GNU_SOURCE /* POSIX (threads, sysconf, pause) and Linux's F_SETPIPE_SZ */
#include <fcntl.h>
#else
#define _POSIX_C_SOURCE 200112L /* threads, sysconf(), and pause() for the stall fault */
#endif
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(_POSIX_THREADS) && _POSIX_THREADS > 0
#include <pthread.h>
#define HAVE_THREADS 1
#endif
#ifdef _WIN32
#include <fcntl.h>
#include <io.h>
#endif

#define PROTOCOL_VERSION 1u
#define MAX_BODY (1ul << 30)
#define MAX_CELLS (1ul << 26) /* rows x columns x arrays this host holds */
#define MAX_CODE (1l << 24)   /* codes exact in f32, as dnat keeps them */
enum { T_ERROR = 0, T_HELLO = 1, T_PROGRAM = 2, T_COMPUTE = 3, T_BYE = 4 };

struct geometry {
    uint32_t arrays, rows, columns, input_bits, bits_per_cycle, weight_bits;
    int32_t kmin, kmax;
    float step;
};
struct compute_req {
    uint32_t array, n, layer, tile, cycle, first_channel, columns, channels;
    uint64_t elements, first_element, pass;
};
/* The codes travel as narrow as the geometry allows (docs/protocol.md): the inputs as
 * u8 when input_bits_per_cycle <= 8, else u16; the ADC codes as i16 when adc_kmin..
 * adc_kmax fits, else i32.  Of each pair exactly one pointer is set. */
struct inputs { const uint8_t *u8; const uint16_t *u16; }; /* x[r * n + i] */
struct codes { int16_t *i16; int32_t *i32; };              /* codes[c * n + i] */

/* An ideal code's readouts, as Walker's alias table: 2^(64 - sshift) slots from `slot`,
 * each as likely; a slot reads code[0] (its own) for the draws whose low sshift bits
 * lie below `below`, else code[1] (its alias).  The codes read `shift` higher when the
 * row is borrowed from the nearest measured code (fill: nearest). */
struct slot { uint64_t below; int32_t code[2]; };
struct row { uint32_t slot, sshift; int32_t shift; };
struct model {
    char name[256];
    int32_t kmin, kmax, jmin, jmax;
    struct row *rows; /* one per ideal code kmin..kmax */
    struct slot *slots;
    uint32_t ncolumns; /* `column:` lines: the measured ADC columns' gain and offset */
    float *gain, *offset;
};

static struct geometry G;
static struct model M;
static const char *counts_path;
static uint64_t seed = 1000;

static void die(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("macro_host: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(status);
}

static void *xrealloc(void *p, size_t n) {
    if (!(p = realloc(p, n ? n : 1))) die(3, "out of memory (%lu bytes)", (unsigned long)n);
    return p;
}

/* ======================================================== THE SIMULATED CHIP ===
 * This host's stand-in for a chip, which the BOARD section calls: exact partial sums,
 * dnat's ADC conversion, then each readout drawn from the counts file's.  The worker
 * threads are the simulation's own: a host that drives a board drops this section
 * whole, with the counts file's. */

#define BLOCK 256 /* operations a worker takes at a time (fewer for 4096+ rows): in L1 */
#define MAX_THREADS 64

/* SplitMix64's finaliser: bijective, full avalanche. */
static uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* Counter-based: operation `op`'s draw is mix64(key ^ mix64(op)) with key a chain of
 * mixes of (seed, layer, pass), as dnat's rng::key -- a pure function of the four, so
 * request sizes, their order and the threads do not matter.  The key is made once per
 * request. */
static uint64_t draw_key(uint64_t layer, uint64_t pass) {
    return mix64(mix64(mix64(0x6A09E667F3BCC909ull ^ seed) ^ layer) ^ pass);
}
static uint64_t draw_bits(uint64_t key, uint64_t op) { return mix64(key ^ mix64(op)); }

/* Ideal codes k[i] become readouts, from 64-bit draws u[i]: a draw's top bits pick a
 * slot, the others one of its two codes -- O(1), and without a branch to mispredict.
 * (The model's fields in locals: the stores to k could alias them.) */
static void sample(int32_t *restrict k, const uint64_t *restrict u, uint32_t m) {
    const struct row *rows = M.rows;
    const struct slot *slots = M.slots;
    const int32_t kmin = M.kmin, jmin = M.jmin, jmax = M.jmax;
    uint32_t i;
    for (i = 0; i < m; i++) {
        const struct row *r = &rows[k[i] - kmin];
        const struct slot *s = slots + r->slot + (uint32_t)(u[i] >> r->sshift);
        const uint64_t low = u[i] & ((UINT64_C(1) << r->sshift) - 1);
        const int32_t j = s->code[low >= s->below] + r->shift;
        k[i] = j < jmin ? jmin : j > jmax ? jmax : j;
    }
}

/* A worker's scratch: a block's inputs with each operation's rows side by side (x8 or
 * x16, as the wire), their partial sums then codes, and their draws. */
struct scratch { uint8_t *x8; uint16_t *x16; int32_t *p; uint64_t *u; };
struct job {
    const struct compute_req *q;
    const struct inputs *x;
    const struct codes *out;
    uint64_t key;
    uint32_t from, to; /* blocks of block_ops operations */
    struct scratch *s;
};
static int8_t *sim_weights; /* arrays x columns x rows: column c's weights side by side */
static uint32_t *sim_rows;  /* per array: the rows up to the last with a weight not 0 */
static uint32_t threads = 1, block_ops = BLOCK;
static struct scratch scratch[MAX_THREADS];

/* Dot products over the rows, in the forms GCC vectorises (VNNI where there is one). */
static int32_t dot_u8(const uint8_t *restrict x, const int8_t *restrict w, uint32_t rows) {
    int32_t s = 0;
    uint32_t r;
    for (r = 0; r < rows; r++) s += x[r] * w[r];
    return s;
}
static int32_t dot_u16(const uint16_t *restrict x, const int8_t *restrict w, uint32_t rows) {
    int32_t s = 0;
    uint32_t r;
    for (r = 0; r < rows; r++) s += (int32_t)x[r] * w[r];
    return s;
}

/* Operations i0 .. i0 + block_ops (or n) of a request, every column. */
static void sim_block(const struct job *job, uint32_t i0) {
    const struct compute_req *q = job->q;
    const struct scratch *s = job->s;
    const uint32_t n = q->n, m = n - i0 < block_ops ? n - i0 : block_ops;
    const uint32_t rows = sim_rows[q->array]; /* the rows past them add 0 */
    const int8_t *w = sim_weights + (size_t)q->array * G.columns * G.rows;
    const uint64_t cycles = G.input_bits / G.bits_per_cycle;
    const float kmin = (float)G.kmin, kmax = (float)G.kmax;
    int32_t *p = s->p;
    uint32_t r, c, i;
    for (r = 0; r < rows; r++) { /* transposed: operation i's rows side by side */
        if (job->x->u8) {
            const uint8_t *xr = job->x->u8 + (size_t)r * n + i0;
            for (i = 0; i < m; i++) s->x8[(size_t)i * rows + r] = xr[i];
        } else {
            const uint16_t *xr = job->x->u16 + (size_t)r * n + i0;
            for (i = 0; i < m; i++) s->x16[(size_t)i * rows + r] = xr[i];
        }
    }
    for (c = 0; c < q->columns; c++) {
        const int8_t *wc = w + (size_t)c * G.rows;
        const uint32_t adc = q->array * G.columns + c;
        const float gain = adc < M.ncolumns ? M.gain[adc] : 1.0f;
        const float offset = adc < M.ncolumns ? M.offset[adc] : 0.0f;
        /* dnat's conversion: the scale first, then one multiply and one add, rounded
         * half to even; the column's gain and offset act before the rounding. */
        const float scale = (1.0f / G.step) * gain;
        const uint64_t op0 = ((q->tile * cycles + q->cycle) * q->channels + q->first_channel + c)
                                 * q->elements + q->first_element + i0;
        if (job->x->u8)
            for (i = 0; i < m; i++) p[i] = dot_u8(s->x8 + (size_t)i * rows, wc, rows);
        else
            for (i = 0; i < m; i++) p[i] = dot_u16(s->x16 + (size_t)i * rows, wc, rows);
        for (i = 0; i < m; i++) {
            float v = rintf((float)p[i] * scale + offset);
            v = v >= kmin ? v : kmin; /* NaN too: a degenerate scale reads kmin */
            p[i] = (int32_t)(v <= kmax ? v : kmax);
        }
        for (i = 0; i < m; i++) s->u[i] = draw_bits(job->key, op0 + i);
        sample(p, s->u, m);
        if (job->out->i16) { /* the codes lie within the ADC's, which fit i16 here */
            int16_t *o = job->out->i16 + (size_t)c * n + i0;
            for (i = 0; i < m; i++) o[i] = (int16_t)p[i];
        } else {
            memcpy(job->out->i32 + (size_t)c * n + i0, p, sizeof *p * m);
        }
    }
}

static void *sim_worker(void *arg) {
    const struct job *job = arg;
    uint32_t b;
    for (b = job->from; b < job->to; b++) sim_block(job, b * block_ops);
    return NULL;
}

/* DNAT_HOST_THREADS, read at start-up. */
static void sim_threads(void) {
    const char *v = getenv("DNAT_HOST_THREADS");
    char *end;
    long t = 2;
    if (v && *v) {
        errno = 0;
        t = strtol(v, &end, 10);
        if (*end || errno || t < 1 || t > MAX_THREADS)
            die(2, "DNAT_HOST_THREADS='%s' is not a number 1..%d", v, MAX_THREADS);
    } else {
#ifdef _SC_NPROCESSORS_ONLN
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        t = online < 1 ? 2 : online > 8 ? 8 : online;
#endif
    }
#ifdef HAVE_THREADS
    threads = (uint32_t)t;
#endif
}

static const char *sim_open(void) {
    size_t x;
    uint32_t t;
    block_ops = G.rows > (1u << 20) / BLOCK ? (1u << 20) / G.rows + 1 : BLOCK; /* about 1 MB */
    x = (size_t)block_ops * G.rows;
    sim_weights = xrealloc(NULL, (size_t)G.arrays * G.rows * G.columns);
    sim_rows = xrealloc(NULL, sizeof *sim_rows * G.arrays);
    for (t = 0; t < threads; t++) {
        struct scratch *s = &scratch[t];
        if (G.bits_per_cycle <= 8) s->x8 = xrealloc(NULL, x);
        else s->x16 = xrealloc(NULL, sizeof *s->x16 * x);
        s->p = xrealloc(NULL, sizeof *s->p * BLOCK);
        s->u = xrealloc(NULL, sizeof *s->u * BLOCK);
    }
    return NULL;
}

/* Keeps weights w[r * columns + c] transposed, a column's rows side by side, and how
 * many rows hold them (a layer with fewer leaves the rest 0). */
static void sim_program(uint32_t array, const int8_t *w) {
    int8_t *to = sim_weights + (size_t)array * G.columns * G.rows;
    uint32_t r, c;
    sim_rows[array] = 0;
    for (r = 0; r < G.rows; r++)
        for (c = 0; c < G.columns; c++) {
            to[(size_t)c * G.rows + r] = w[(size_t)r * G.columns + c];
            if (w[(size_t)r * G.columns + c]) sim_rows[array] = r + 1;
        }
}

/* Splits the request's operations, in blocks, among the worker threads. */
static const char *sim_compute(const struct compute_req *q, const struct inputs *x,
                               const struct codes *out) {
    struct job jobs[MAX_THREADS];
    const uint32_t blocks = q->n / block_ops + (q->n % block_ops > 0);
    const uint32_t t = blocks < threads ? blocks : threads;
    const uint64_t key = draw_key(q->layer, q->pass);
    uint32_t k;
#ifdef HAVE_THREADS
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS];
#endif
    for (k = 0; k < t; k++) {
        jobs[k].q = q;
        jobs[k].x = x;
        jobs[k].out = out;
        jobs[k].key = key;
        jobs[k].from = (uint32_t)((uint64_t)blocks * k / t);
        jobs[k].to = (uint32_t)((uint64_t)blocks * (k + 1) / t);
        jobs[k].s = &scratch[k];
    }
#ifdef HAVE_THREADS
    for (k = 1; k < t; k++) started[k] = !pthread_create(&tid[k], NULL, sim_worker, &jobs[k]);
    if (t) sim_worker(&jobs[0]);
    for (k = 1; k < t; k++) /* a thread that could not start: its share here */
        if (started[k]) pthread_join(tid[k], NULL);
        else sim_worker(&jobs[k]);
#else
    for (k = 0; k < t; k++) sim_worker(&jobs[k]);
#endif
    return NULL;
}

/* ======================================================================= BOARD ===
 * The board-specific part.  A real host replaces these bodies with its driver's
 * calls; the protocol part has checked every argument against the geometry.  Here
 * they call the simulated chip above. */

/* At HELLO, once the geometry G is known: open the board and check it is that macro.
 * Returns NULL, or why not (the ERROR reply). */
static const char *board_open(void) { return sim_open(); }

/* Loads array `array` with weight codes w[r * columns + c]. */
static const char *program_array(uint32_t array, const int8_t *w) {
    sim_program(array, w);
    return NULL;
}

/* Drives row r with input code x[r * n + i] in operation i and reads the first
 * q->columns columns: column c's ADC code of operation i into codes[c * n + i].  (x
 * and codes are the wire's: x.u8 or x.u16, codes.i16 or codes.i32.) */
static const char *compute_ops(const struct compute_req *q, const struct inputs *x,
                               const struct codes *codes) {
    return sim_compute(q, x, codes);
}

/* ============================================================ THE COUNTS FILE === */

struct entry { int32_t k, j; double count; };
static unsigned long line; /* of the counts file, for its errors */

#define BAD(...) (fprintf(stderr, "macro_host: %s:%lu: ", counts_path, line), \
                  fprintf(stderr, __VA_ARGS__), fputc('\n', stderr), exit(2))

static int cmp_entry(const void *a, const void *b) {
    const struct entry *x = a, *y = b;
    if (x->k != y->k) return x->k < y->k ? -1 : 1;
    return x->j < y->j ? -1 : x->j > y->j;
}
static int is_space(int ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n'; }
static char *trim(char *s) {
    char *e = s + strlen(s);
    while (is_space(*s)) s++;
    while (e > s && is_space(e[-1])) *--e = 0;
    return s;
}
/* Cuts a trailing '# comment' off a value (not off `name` or `description`). */
static char *uncomment(char *s) {
    char *h = strchr(s, '#');
    if (h) *h = 0;
    return trim(s);
}
/* Splits s in place at spaces, tabs and commas; the token count, or max + 1 for more. */
static int split(char *s, char **tok, int max) {
    int n = 0;
    for (;;) {
        while (*s == ' ' || *s == '\t' || *s == ',') *s++ = 0;
        if (!*s) return n;
        if (n == max) return max + 1;
        tok[n++] = s;
        while (*s && *s != ' ' && *s != '\t' && *s != ',') s++;
    }
}
static int parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    *out = strtol(s, &end, 10);
    return *s && !*end && !errno && *out >= lo && *out <= hi;
}
static int parse_double(const char *s, double *out) {
    char *end;
    *out = strtod(s, &end);
    return *s && !*end && isfinite(*out);
}
/* One line of any length into *buf; 0 at the end of the file. */
static int read_line(FILE *f, char **buf, size_t *cap) {
    size_t len = 0;
    if (!*buf) *buf = xrealloc(NULL, *cap = 256);
    while (fgets(*buf + len, (int)(*cap - len), f)) {
        len += strlen(*buf + len);
        if (len + 1 < *cap || (*buf)[len - 1] == '\n') return 1; /* (a NUL ends it too) */
        *buf = xrealloc(*buf, *cap *= 2);
    }
    return len > 0;
}
static void parse_range(char *v, const char *key, int32_t *lo, int32_t *hi) {
    char *t[2];
    long a, b;
    if (split(uncomment(v), t, 2) != 2 || !parse_long(t[0], 1 - MAX_CODE, MAX_CODE - 1, &a)
        || !parse_long(t[1], 1 - MAX_CODE, MAX_CODE - 1, &b) || a > b)
        BAD("%s: expected two integers, the first and last code, within +-(2^24 - 1)", key);
    *lo = (int32_t)a;
    *hi = (int32_t)b;
}
static void parse_column(char *v) {
    char *t[3];
    long index;
    double g, o;
    if (split(uncomment(v), t, 3) != 3 || !parse_long(t[0], 0, (long)MAX_CELLS, &index)
        || (uint32_t)index != M.ncolumns || !parse_double(t[1], &g) || !parse_double(t[2], &o)
        || !(g > 0) || !isfinite((float)g) || !isfinite((float)o))
        BAD("column: expected 'INDEX GAIN OFFSET' with INDEX %u next and GAIN > 0", M.ncolumns);
    M.gain = xrealloc(M.gain, sizeof *M.gain * (M.ncolumns + 1));
    M.offset = xrealloc(M.offset, sizeof *M.offset * (M.ncolumns + 1));
    M.gain[M.ncolumns] = (float)g;
    M.offset[M.ncolumns++] = (float)o;
}
/* The line "ideal measured count" (any separators), which ends the header. */
static int is_table_head(char *l) {
    char copy[64], *t[3];
    if (strlen(l) >= sizeof copy) return 0;
    strcpy(copy, l);
    return split(copy, t, 3) == 3 && !strcmp(t[0], "ideal") && !strcmp(t[1], "measured")
           && !strcmp(t[2], "count");
}

/* floor(2^64 r / t) for 0 < r < t, exactly: the doubles' 53-bit mantissas mr, mt
 * (r = mr 2^(er-53), t = mt 2^(et-53)) divided bit by bit. */
static uint64_t share64(double r, double t) {
    int er, et, d;
    const uint64_t mr = (uint64_t)ldexp(frexp(r, &er), 53);
    const uint64_t mt = (uint64_t)ldexp(frexp(t, &et), 53);
    uint64_t q, rem;
    d = 64 + er - et; /* 2^64 r / t = (mr / mt) 2^d, and d <= 64 as r < t */
    if (d < 0) return d <= -53 ? 0 : (mr >> -d) / mt;
    q = mr / mt;
    rem = mr % mt;
    for (; d > 0; d--) { /* rem < mt < 2^53: no overflow */
        rem <<= 1;
        q <<= 1;
        if (rem >= mt) {
            rem -= mt;
            q |= 1;
        }
    }
    return q;
}

/* log2 of the alias slots for `len` readouts: at least as many, and at least 2. */
static uint32_t slot_bits(size_t len) {
    uint32_t b = 1;
    while (b < 31 && ((size_t)1 << b) < len) b++;
    return b;
}
/* Row r's alias table at M.slots + *at, from its `len` readouts' codes and shares w
 * (counts of the 2^64 draws; unused for one readout), by Vose's construction in
 * integers: each slot holds cap = 2^64 / slots draws, and a slot left short of cap is
 * topped up from a readout with more than cap to place.  As the shares sum to exactly
 * slots x cap, every readout ends with exactly its share.  Uses w (2^bits entries,
 * overwritten) and small, large (as many) as scratch. */
static void make_alias(struct row *r, const int32_t *code, uint64_t *w, size_t len, size_t *at,
                       uint32_t *small, uint32_t *large) {
    const uint32_t bits = slot_bits(len), n = 1u << bits;
    const uint64_t cap = UINT64_C(1) << (64 - bits);
    struct slot *s = M.slots + *at;
    uint32_t j, ns = 0, nl = 0;
    r->slot = (uint32_t)*at;
    r->sshift = 64 - bits;
    *at += n;
    for (j = 0; j < n; j++) { /* the slots past the readouts: shares of 0 */
        s[j].code[0] = s[j].code[1] = code[j < len ? j : 0];
        s[j].below = cap;
        if (len > 1 && j >= len) w[j] = 0;
    }
    if (len == 1) return;
    for (j = 0; j < n; j++) {
        if (w[j] < cap) small[ns++] = j;
        else large[nl++] = j;
    }
    while (ns && nl) {
        const uint32_t a = small[--ns], l = large[nl - 1];
        s[a].below = w[a];
        s[a].code[1] = s[l].code[0];
        w[l] -= cap - w[a];
        if (w[l] < cap) {
            nl--;
            small[ns++] = l;
        }
    }
    /* The rest hold exactly cap each (their `below` stays cap): none is small. */
}

/* Builds each measured row's alias table from the sorted entries, then fills the others.
 * Ideal code k's readout j takes w(j) = F(j) - F(j-1) of the 2^64 draws, where F(j) =
 * floor(2^64 x (k's counts up to j) / (k's total)): its counts' share to within 2^-64.
 * F is exact from the counts' sums in double (which are exact while the counts are
 * integers totalling below 2^53); a readout whose share rounds to no draw at all is
 * left out. */
static void build_rows(struct entry *e, size_t ne, int fill) {
    const size_t nk = (size_t)(M.kmax - M.kmin) + 1;
    size_t i, o = 0, at = 0, slots = 0, most = 1, missing = 0;
    char which[80] = "";
    long prev = -1, next = -1, *before = xrealloc(NULL, sizeof *before * nk);
    size_t *first = xrealloc(NULL, sizeof *first * nk), *len = xrealloc(NULL, sizeof *len * nk);
    int32_t *code = xrealloc(NULL, sizeof *code * ne);
    uint64_t *w = xrealloc(NULL, sizeof *w * ne), *share;
    uint32_t *small, *large;
    M.rows = xrealloc(NULL, sizeof *M.rows * nk);
    memset(M.rows, 0, sizeof *M.rows * nk);
    memset(len, 0, sizeof *len * nk);
    for (i = 0; i < ne;) {
        const size_t k = (size_t)(e[i].k - M.kmin);
        size_t s = i;
        double total = 0, run = 0;
        uint64_t below = 0; /* F of the readout before */
        int whole = 0;      /* F has reached 2^64 */
        for (; i < ne && e[i].k == e[s].k; i++) total += e[i].count;
        if (!isfinite(total))
            die(2, "%s: the counts of ideal code %d sum to infinity: scale them down",
                counts_path, e[s].k);
        first[k] = o;
        for (; s < i && !whole; s++) {
            run += e[s].count; /* in total's order: the last sum is total's */
            if (s + 1 < i && e[s + 1].j == e[s].j) continue; /* a pair seen again only adds */
            if (run < total) {
                const uint64_t f = share64(run, total);
                if (f == below) continue;
                w[o] = f - below;
                below = f;
            } else {
                w[o] = 0 - below; /* 2^64 - below; unused for a lone readout */
                whole = 1;
            }
            code[o++] = e[s].j;
            len[k]++;
        }
    }
    for (i = 0; i < nk; i++) {
        if (len[i]) {
            prev = (long)i;
            slots += (size_t)1 << slot_bits(len[i]);
            most = len[i] > most ? len[i] : most;
        } else if (missing++ < 5) {
            sprintf(which + strlen(which), "%s%ld", missing > 1 ? ", " : "", M.kmin + (long)i);
        }
        before[i] = prev;
    }
    if (missing && fill == 'r')
        die(2, "%s: %lu ideal codes have no counts (%s%s) and the fill policy is 'reject'",
            counts_path, (unsigned long)missing, which, missing > 5 ? ", ..." : "");
    M.slots = xrealloc(NULL, sizeof *M.slots * (slots + (fill == 'i' ? 2 * missing : 0)));
    most = (size_t)1 << slot_bits(most);
    share = xrealloc(NULL, sizeof *share * most);
    small = xrealloc(NULL, sizeof *small * most);
    large = xrealloc(NULL, sizeof *large * most);
    for (i = 0; i < nk; i++)
        if (len[i]) {
            memcpy(share, w + first[i], sizeof *w * len[i]);
            make_alias(&M.rows[i], code + first[i], share, len[i], &at, small, large);
        }
    for (i = nk; i-- > 0;) { /* rows below i are untouched yet: len > 0 means measured */
        if (len[i]) { next = (long)i; continue; }
        if (fill == 'i') { /* reads k itself, as near as the measured codes go */
            const int32_t k = M.kmin + (int32_t)i;
            const int32_t j = k < M.jmin ? M.jmin : k > M.jmax ? M.jmax : k;
            make_alias(&M.rows[i], &j, share, 1, &at, small, large);
        } else { /* the nearest measured row's errors, the lower code on a tie */
            long src = before[i] < 0 || (next >= 0 && next - (long)i < (long)i - before[i])
                           ? next : before[i];
            M.rows[i] = M.rows[src];
            M.rows[i].shift = (int32_t)((long)i - src);
        }
    }
    free(before);
    free(first);
    free(len);
    free(code);
    free(w);
    free(share);
    free(small);
    free(large);
}

static void load_model(void) {
    FILE *f = fopen(counts_path, "r");
    char *buf = NULL, *l, *v, *t[3];
    size_t cap = 0, ne = 0, ecap = 0;
    unsigned long seen_format = 0, seen_k = 0, seen_j = 0;
    int fill = 'n', table = 0;
    struct entry *e = NULL;
    long k, j;
    double count;
    strcpy(M.name, "unnamed model");
    if (!f) die(2, "cannot open counts file %s: %s", counts_path, strerror(errno));
    while (read_line(f, &buf, &cap)) {
        line++;
        l = trim(buf);
        if (!*l || *l == '#') continue;
        if (table) { /* ideal measured count */
            if (split(uncomment(l), t, 3) != 3) BAD("expected 'ideal measured count' (3 numbers)");
            if (!parse_long(t[0], M.kmin, M.kmax, &k))
                BAD("ideal code '%s' is not an integer within ideal_codes %d..%d", t[0], M.kmin,
                    M.kmax);
            if (!parse_long(t[1], M.jmin, M.jmax, &j))
                BAD("measured code '%s' is not an integer within measured_codes %d..%d", t[1],
                    M.jmin, M.jmax);
            if (!parse_double(t[2], &count) || count < 0)
                BAD("count '%s' is not a finite number >= 0", t[2]);
            if (count == 0) continue; /* a row of zeros is an unmeasured row */
            if (ne == ecap) e = xrealloc(e, sizeof *e * (ecap = ecap ? 2 * ecap : 4096));
            e[ne].k = (int32_t)k;
            e[ne].j = (int32_t)j;
            e[ne++].count = count;
        } else if (is_table_head(l)) {
            if (!seen_format) BAD("the header has no 'format:' line");
            if (!seen_k) BAD("the header has no 'ideal_codes:' line");
            if (!seen_j) BAD("the header has no 'measured_codes:' line");
            table = 1;
        } else if (!(v = strchr(l, ':'))) {
            BAD("expected 'key: value' or the 'ideal measured count' line, got '%s'", l);
        } else {
            *v++ = 0;
            l = trim(l);
            v = trim(v);
            if (!strcmp(l, "format")) {
                if (strcmp(uncomment(v), "dnat-dmacem-text 1"))
                    BAD("format '%s' is not 'dnat-dmacem-text 1'", v);
                seen_format = line;
            } else if (!strcmp(l, "name")) {
                strncpy(M.name, v, sizeof M.name - 1);
            } else if (!strcmp(l, "ideal_codes") || !strcmp(l, "measured_codes")) {
                unsigned long *seen = l[0] == 'i' ? &seen_k : &seen_j;
                if (*seen) BAD("a second '%s:' line (the first is line %lu)", l, *seen);
                parse_range(v, l, l[0] == 'i' ? &M.kmin : &M.jmin, l[0] == 'i' ? &M.kmax : &M.jmax);
                *seen = line;
            } else if (!strcmp(l, "fill")) {
                v = uncomment(v);
                if (strcmp(v, "nearest") && strcmp(v, "identity") && strcmp(v, "reject"))
                    BAD("fill '%s' is not nearest, identity or reject", v);
                fill = v[0];
            } else if (!strcmp(l, "column")) {
                parse_column(v);
            } /* other keys (synthetic, description, fixed_pattern...): not needed here */
        }
    }
    if (ferror(f)) die(2, "%s: cannot read: %s", counts_path, strerror(errno));
    fclose(f);
    free(buf);
    if (!table)
        die(2, "%s: no 'ideal measured count' line: truncated, or not a D-MAC-EM counts table",
            counts_path);
    if (!ne) die(2, "%s: the model has no counts at all", counts_path);
    qsort(e, ne, sizeof *e, cmp_entry);
    build_rows(e, ne, fill);
    free(e);
}

/* =============================================================== THE PROTOCOL === */

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const unsigned char *p) {
    return get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}
static int32_t get_i32(const unsigned char *p) {
    uint32_t u = get_u32(p); /* two's complement without implementation-defined casts */
    return u < 0x80000000u ? (int32_t)u : -(int32_t)(0xFFFFFFFFu - u) - 1;
}
static float get_f32(const unsigned char *p) {
    uint32_t u = get_u32(p);
    float f;
    memcpy(&f, &u, sizeof f); /* f32 is IEEE single wherever dnat runs */
    return f;
}
static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}
/* The bulk codes stay in the wire's bytes, used in place: a big-endian host reverses
 * each code's bytes (in place, either way); a little-endian one has nothing to do. */
static void wire_order(unsigned char *p, size_t count, unsigned width) {
    const uint16_t one = 1;
    unsigned char low;
    size_t k;
    unsigned a, b;
    memcpy(&low, &one, 1);
    if (width == 1 || low) return;
    for (k = 0; k < count; k++, p += width)
        for (a = 0, b = width - 1; a < b; a++, b--) {
            unsigned char t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
}

static void reply(uint32_t tag, const void *body, size_t len) {
    unsigned char head[8];
    put_u32(head, tag);
    put_u32(head + 4, (uint32_t)len);
    if (fwrite(head, 1, 8, stdout) != 8 || (len && fwrite(body, 1, len, stdout) != len)
        || fflush(stdout))
        die(3, "cannot write to stdout: %s", strerror(errno));
}
/* A request's handler returns NULL after its reply, or the message for an ERROR one. */
static const char *fail(const char *fmt, ...) {
    static char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return msg;
}

static enum { F_NONE, F_EXIT, F_STALL, F_COUNT, F_CODE, F_ERROR, F_VERSION } fault;
static unsigned long fault_at, computes;
static unsigned char *programmed; /* per array; NULL until a good HELLO */
static unsigned in_width, out_width; /* bytes of an input code, of an ADC code, on the wire */

static const char *check_geometry(void) {
    const uint64_t wmax = G.weight_bits == 1 ? 1 : 1u << (G.weight_bits - 1);
    if (!G.arrays || !G.rows || !G.columns || (uint64_t)G.arrays * G.rows * G.columns > MAX_CELLS)
        return fail("hello: %u arrays of %u rows x %u columns: this host holds 1..2^26 cells",
                    G.arrays, G.rows, G.columns);
    if (G.weight_bits < 1 || G.weight_bits > 8 || G.input_bits < 1 || G.input_bits > 16
        || G.bits_per_cycle < 1 || G.bits_per_cycle > 16 || G.input_bits % G.bits_per_cycle)
        return fail("hello: %u-bit weights, %u-bit inputs at %u bits per cycle: this host takes "
                    "1..8-bit weights and 1..16-bit inputs at a divisor of them per cycle",
                    G.weight_bits, G.input_bits, G.bits_per_cycle);
    if (!(G.step > 0) || !isfinite(G.step) || G.kmin > G.kmax)
        return fail("hello: ADC codes %d..%d with step %g are not a range", G.kmin, G.kmax,
                    (double)G.step);
    if (M.kmin > G.kmin || M.kmax < G.kmax || M.jmin < G.kmin || M.jmax > G.kmax)
        return fail("hello: the model '%s' has ideal codes %d..%d and measured codes %d..%d; the "
                    "macro's ADC codes %d..%d must lie within the ideal codes and the measured "
                    "ones within the ADC codes", M.name, M.kmin, M.kmax, M.jmin, M.jmax, G.kmin,
                    G.kmax);
    if (G.rows * wmax * ((1u << G.bits_per_cycle) - 1) > INT32_MAX) /* int32 sums here */
        return fail("hello: partial sums of %u rows would overflow int32", G.rows);
    return NULL;
}

static const char *hello(const unsigned char *b, size_t len) {
    unsigned char out[16 + 1024];
    const char *bad;
    size_t nl;
    if (len < 12) return fail("hello: a %lu-byte body", (unsigned long)len);
    if (memcmp(b, "DNATHOST", 8)) return fail("hello: the magic is not DNATHOST");
    /* Another version's dnat gets our version and stops: its body is not read. */
    if (get_u32(b + 8) == PROTOCOL_VERSION && fault != F_VERSION) {
        if (programmed) return fail("hello: a second HELLO");
        if (len < 52 || len != 52 + (uint64_t)get_u32(b + 48))
            return fail("hello: a %lu-byte body is not version 1's", (unsigned long)len);
        G.arrays = get_u32(b + 12);
        G.rows = get_u32(b + 16);
        G.columns = get_u32(b + 20);
        G.input_bits = get_u32(b + 24);
        G.bits_per_cycle = get_u32(b + 28);
        G.weight_bits = get_u32(b + 32);
        G.kmin = get_i32(b + 36);
        G.kmax = get_i32(b + 40);
        G.step = get_f32(b + 44);
        if ((bad = check_geometry())) return bad;
        in_width = G.bits_per_cycle <= 8 ? 1 : 2;
        out_width = G.kmin >= -32768 && G.kmax <= 32767 ? 2 : 4;
        if ((bad = board_open())) return fail("hello: %s", bad);
        programmed = xrealloc(NULL, G.arrays);
        memset(programmed, 0, G.arrays);
    }
    nl = (size_t)snprintf((char *)out + 16, sizeof out - 16, "reference host: %s from %s, "
                          "seed %llu", M.name, counts_path, (unsigned long long)seed);
    nl = nl < sizeof out - 16 ? nl : sizeof out - 17;
    memcpy(out, "DNATHOST", 8);
    put_u32(out + 8, fault == F_VERSION ? 2 : PROTOCOL_VERSION);
    put_u32(out + 12, (uint32_t)nl);
    reply(T_HELLO, out, 16 + nl);
    return NULL;
}

static const char *program(const unsigned char *b, size_t len) {
    const int lo = G.weight_bits == 1 ? -1 : -(1 << (G.weight_bits - 1));
    const int hi = G.weight_bits == 1 ? 1 : (1 << (G.weight_bits - 1)) - 1;
    const size_t cells = (size_t)G.rows * G.columns;
    size_t i;
    uint32_t array;
    const char *bad;
    if (len != 4 + cells)
        return fail("program: a %lu-byte body, not 4 + %u x %u", (unsigned long)len, G.rows,
                    G.columns);
    if ((array = get_u32(b)) >= G.arrays) return fail("program: array %u of %u", array, G.arrays);
    for (i = 0; i < cells; i++) {
        int w = b[4 + i] < 128 ? b[4 + i] : b[4 + i] - 256;
        if (w < lo || w > hi)
            return fail("program: weight %d (row %lu, column %lu) is not a %u-bit code", w,
                        (unsigned long)(i / G.columns), (unsigned long)(i % G.columns),
                        G.weight_bits);
    }
    /* i8 and u8 share a representation: the bytes are the weights. */
    if ((bad = program_array(array, (const int8_t *)(b + 4)))) return fail("program: %s", bad);
    programmed[array] = 1;
    reply(T_PROGRAM, NULL, 0);
    return NULL;
}

/* Runs a valid COMPUTE on its inputs' bytes `in`, and replies. */
static const char *answer(const struct compute_req *q, unsigned char *in) {
    static unsigned char *out; /* reused: a fresh 8 MB each time costs page faults */
    static size_t out_cap;
    const uint32_t max = (1u << G.bits_per_cycle) - 1;
    const size_t nin = (size_t)G.rows * q->n;
    size_t k, total = (size_t)q->columns * q->n;
    struct inputs x = {NULL, NULL};
    struct codes codes = {NULL, NULL};
    uint32_t n_out = q->n, top = 0;
    const char *bad;
    wire_order(in, nin, in_width); /* malloc'd + 56 is aligned for u16 */
    if (in_width == 1) x.u8 = in;
    else x.u16 = (const uint16_t *)(void *)in;
    if (max < (in_width == 1 ? 0xFFu : 0xFFFFu)) { /* a cycle of fewer bits than the wire's */
        if (x.u8) for (k = 0; k < nin; k++) top = x.u8[k] > top ? x.u8[k] : top;
        else for (k = 0; k < nin; k++) top = x.u16[k] > top ? x.u16[k] : top;
        for (k = 0; top > max; k++) {
            const uint32_t v = x.u8 ? x.u8[k] : x.u16[k];
            if (v > max)
                return fail("compute: input code %u (row %lu, operation %lu) is beyond the %u-bit "
                            "cycle's %u", v, (unsigned long)(k / q->n), (unsigned long)(k % q->n),
                            G.bits_per_cycle, max);
        }
    }
    if (8 + out_width * (total + q->columns) > out_cap) /* + a column for the count fault */
        out = xrealloc(out, out_cap = 8 + out_width * (total + q->columns));
    if (out_width == 2) codes.i16 = (int16_t *)(void *)(out + 8);
    else codes.i32 = (int32_t *)(void *)(out + 8);
    if ((bad = compute_ops(q, &x, &codes))) return fail("compute: %s", bad);
    if (computes == fault_at && fault == F_CODE && total) { /* a code outside the ADC's */
        if (codes.i32) codes.i32[0] = G.kmax + 1;
        else if (G.kmax < 32767) codes.i16[0] = (int16_t)(G.kmax + 1);
        else if (G.kmin > -32768) codes.i16[0] = (int16_t)(G.kmin - 1);
        else return fail("compute: code fault: no i16 code lies outside %d..%d", G.kmin, G.kmax);
    }
    if (computes == fault_at && fault == F_COUNT) { /* each column's first n-1 codes */
        n_out = q->n ? q->n - 1 : 1;
        for (k = 0; k < (size_t)q->columns * n_out; k++) {
            const size_t from = k / n_out * q->n + k % n_out; /* <= k: in place */
            if (codes.i16) codes.i16[k] = n_out < q->n ? codes.i16[from] : (int16_t)G.kmin;
            else codes.i32[k] = n_out < q->n ? codes.i32[from] : G.kmin;
        }
        total = (size_t)q->columns * n_out;
    }
    wire_order(out + 8, total, out_width);
    put_u32(out, n_out);
    put_u32(out + 4, q->columns);
    reply(T_COMPUTE, out, 8 + out_width * total);
    return NULL;
}

static const char *compute(unsigned char *b, size_t len) {
    struct compute_req q;
    if (++computes == fault_at && fault == F_EXIT) exit(7);
    if (computes == fault_at && fault == F_STALL) for (;;) pause();
    if (computes == fault_at && fault == F_ERROR) return "injected fault";
    if (len < 56) return fail("compute: a %lu-byte body", (unsigned long)len);
    q.array = get_u32(b);
    q.n = get_u32(b + 4);
    q.layer = get_u32(b + 8);
    q.tile = get_u32(b + 12);
    q.cycle = get_u32(b + 16);
    q.first_channel = get_u32(b + 20);
    q.columns = get_u32(b + 24);
    q.channels = get_u32(b + 28);
    q.elements = get_u64(b + 32);
    q.first_element = get_u64(b + 40);
    q.pass = get_u64(b + 48);
    if (len != 56 + in_width * (uint64_t)G.rows * q.n)
        return fail("compute: a %lu-byte body, not 56 + %u x %u rows x %u operations",
                    (unsigned long)len, in_width, G.rows, q.n);
    if (q.array >= G.arrays) return fail("compute: array %u of %u", q.array, G.arrays);
    if (!programmed[q.array]) return fail("compute: array %u was never programmed", q.array);
    if (q.columns < 1 || q.columns > G.columns)
        return fail("compute: %u columns of %u", q.columns, G.columns);
    if (8 + out_width * (uint64_t)q.columns * q.n > MAX_BODY)
        return fail("compute: %u operations x %u columns: a reply beyond 2^30 bytes", q.n,
                    q.columns);
    return answer(&q, b + 56);
}

static void parse_fault(void) {
    static const char *kinds[] = {"exit:", "stall:", "count:", "code:", "error:"};
    const char *f = getenv("DNAT_HOST_FAULT");
    long k;
    int i;
    if (!f || !*f) return;
    if (!strcmp(f, "version")) { fault = F_VERSION; return; }
    for (i = 0; i < 5; i++)
        if (!strncmp(f, kinds[i], strlen(kinds[i]))
            && parse_long(f + strlen(kinds[i]), 1, 1l << 30, &k)) {
            fault = (int)F_EXIT + i;
            fault_at = (unsigned long)k;
            return;
        }
    die(2, "DNAT_HOST_FAULT='%s' is not exit:K, stall:K, count:K, code:K, error:K (K >= 1) "
        "or version", f);
}

static void parse_args(int argc, char **argv) {
    const char *usage = "usage: macro_host COUNTS_FILE [--seed N]";
    int i;
    for (i = 1; i < argc; i++) {
        const char *s = NULL;
        char *end;
        if (!strcmp(argv[i], "--seed")) {
            if (++i == argc) die(2, "--seed needs a number\n%s", usage);
            s = argv[i];
        } else if (!strncmp(argv[i], "--seed=", 7)) {
            s = argv[i] + 7;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            die(2, "unknown option '%s'\n%s", argv[i], usage);
        } else if (counts_path) {
            die(2, "one counts file, not '%s' and '%s'\n%s", counts_path, argv[i], usage);
        } else {
            counts_path = argv[i];
        }
        if (!s) continue;
        errno = 0;
        seed = strtoull(s, &end, 10);
        if (!*s || *end || *s == '-' || errno) die(2, "--seed '%s' is not a number 0..2^64-1", s);
    }
    if (!counts_path) die(2, "%s", usage);
}

int main(int argc, char **argv) {
    unsigned char head[8], *body = NULL;
    size_t cap = 0, got;
    const char *bad;
    parse_args(argc, argv);
    parse_fault();
    sim_threads();
    load_model();
#ifdef _WIN32
    _setmode(_fileno(stdin), _O_BINARY);
    _setmode(_fileno(stdout), _O_BINARY);
#endif
    /* Requests run to megabytes: big buffers save system calls, and on Linux 1 MB pipes
     * (not 64 kB) halve the time a request and its reply take to pass (best effort). */
    setvbuf(stdin, NULL, _IOFBF, 1 << 20);
    setvbuf(stdout, NULL, _IOFBF, 1 << 20);
#ifdef F_SETPIPE_SZ
    (void)fcntl(0, F_SETPIPE_SZ, 1 << 20);
    (void)fcntl(1, F_SETPIPE_SZ, 1 << 20);
#endif
    for (;;) {
        uint32_t tag, len;
        if ((got = fread(head, 1, 8, stdin)) == 0 && feof(stdin)) return 0; /* dnat is done */
        if (got < 8) die(3, "a message header cut short (%lu of 8 bytes)", (unsigned long)got);
        tag = get_u32(head);
        len = get_u32(head + 4);
        if (len > MAX_BODY) die(3, "a message (tag %u) of %lu bytes, beyond 2^30", tag,
                                (unsigned long)len);
        if (len > cap) body = xrealloc(body, cap = len);
        if (len && (got = fread(body, 1, len, stdin)) != len)
            die(3, "a message (tag %u) cut short: %lu of %lu bytes", tag, (unsigned long)got,
                (unsigned long)len);
        if ((tag == T_PROGRAM || tag == T_COMPUTE) && !programmed)
            bad = fail("%s before a good HELLO", tag == T_PROGRAM ? "PROGRAM" : "COMPUTE");
        else if (tag == T_HELLO) bad = hello(body, len);
        else if (tag == T_PROGRAM) bad = program(body, len);
        else if (tag == T_COMPUTE) bad = compute(body, len);
        else if (tag == T_BYE) { reply(T_BYE, NULL, 0); return 0; }
        else bad = fail("unknown request tag %u", tag);
        if (bad) reply(T_ERROR, bad, strlen(bad));
        if (tag > T_BYE || tag == T_ERROR) die(3, "%s", bad); /* the stream makes no sense */
    }
}
