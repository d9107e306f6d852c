/*
 * run_model.c: a deployable model run from C through dnat's C ABI (include/dnat.h),
 * once with a built-in backend and once with a macro given as two C callbacks (an
 * ideal macro written here, where a board's driver calls would go).
 *
 *   cc -O2 -I include -o run_model examples/c/run_model.c -L target/release -ldnat -lm
 *   LD_LIBRARY_PATH=target/release ./run_model model.dnatd test_batch.bin 100 [BACKEND]
 *
 * test_batch.bin is in the CIFAR binary layout (a label byte and 3072 pixel bytes per
 * image). Prints the accuracy through each backend and whether their logits agree; the
 * test suite (tests/capi.rs) runs it.
 */
#include "dnat.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An ideal macro: the arrays' codes, and each column's code round(P / step), clamped. */
typedef struct {
    dnat_geometry g;
    int8_t *weights; /* arrays x rows x columns */
} ideal_macro;

static int32_t program(void *ctx, uint32_t array, const int8_t *weights) {
    ideal_macro *m = ctx;
    size_t cells = (size_t)m->g.rows * m->g.columns;
    if (array >= m->g.arrays) return 1;
    memcpy(m->weights + array * cells, weights, cells);
    return 0;
}

static int32_t compute(void *ctx, uint32_t array, const dnat_operation *op, uint32_t n,
                       const uint16_t *inputs, int32_t *codes) {
    ideal_macro *m = ctx;
    const int8_t *w = m->weights + (size_t)array * m->g.rows * m->g.columns;
    for (uint32_t c = 0; c < op->columns; c++) {
        for (uint32_t i = 0; i < n; i++) {
            int32_t p = 0;
            for (uint32_t r = 0; r < m->g.rows; r++)
                p += (int32_t)w[r * m->g.columns + c] * inputs[(size_t)r * n + i];
            /* As dnat converts: the sum times 1/step in single precision, rounded half
             * to even (the default rounding mode), clamped to the ADC's range. */
            float k = rintf((float)p * (1.0f / m->g.adc_step));
            if (k < m->g.adc_kmin) k = (float)m->g.adc_kmin;
            if (k > m->g.adc_kmax) k = (float)m->g.adc_kmax;
            codes[(size_t)c * n + i] = (int32_t)k;
        }
    }
    return 0;
}

static int fail(const char *what) {
    fprintf(stderr, "%s: %s\n", what, dnat_last_error());
    return 1;
}

/* Accuracy of n images through `backend`; the logits are left in `logits`. */
static int evaluate(dnat_model *model, dnat_backend *backend, const float *x,
                    const unsigned char *labels, size_t n, size_t classes, float *logits,
                    double *accuracy) {
    if (dnat_run(model, backend, x, n, 0, logits) != DNAT_OK) return fail("dnat_run");
    size_t correct = 0;
    for (size_t i = 0; i < n; i++) {
        size_t best = 0;
        for (size_t c = 1; c < classes; c++)
            if (logits[i * classes + c] > logits[i * classes + best]) best = c;
        correct += best == labels[i];
    }
    *accuracy = 100.0 * (double)correct / (double)n;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL TEST_BATCH N [BACKEND]\n", argv[0]);
        return 2;
    }
    const char *backend_name = argc > 4 ? argv[4] : "ideal";
    size_t n = (size_t)strtoul(argv[3], NULL, 10);
    dnat_model *model = NULL;
    if (dnat_model_open(argv[1], &model) != DNAT_OK) return fail("dnat_model_open");
    dnat_geometry g;
    if (dnat_model_geometry(model, &g) != DNAT_OK) return fail("dnat_model_geometry");
    printf("dnat %s: %u classes, input %ux%ux%u, macro %u arrays of %u x %u, %u layers on it\n",
           dnat_version(), g.classes, g.channels, g.height, g.width, g.arrays, g.rows,
           g.columns, g.macro_layers);

    size_t per = (size_t)g.channels * g.height * g.width;
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        perror(argv[2]);
        return 1;
    }
    float *x = malloc(n * per * sizeof *x);
    unsigned char *labels = malloc(n), *record = malloc(1 + per);
    float *a = malloc(n * g.classes * sizeof *a), *b = malloc(n * g.classes * sizeof *b);
    if (!x || !labels || !record || !a || !b) return 1;
    for (size_t i = 0; i < n; i++) {
        if (fread(record, 1, 1 + per, f) != 1 + per) {
            fprintf(stderr, "%s: fewer than %zu images\n", argv[2], n);
            return 1;
        }
        labels[i] = record[0];
        for (size_t j = 0; j < per; j++) {
            size_t c = j / ((size_t)g.height * g.width);
            x[i * per + j] = ((float)record[1 + j] / 255.0f - g.mean[c]) / g.std[c];
        }
    }
    fclose(f);

    dnat_backend *builtin = NULL, *callbacks = NULL;
    if (dnat_backend_builtin(model, backend_name, 60.0, &builtin) != DNAT_OK)
        return fail("dnat_backend_builtin");
    ideal_macro m = {g, calloc((size_t)g.arrays * g.rows * g.columns, 1)};
    if (!m.weights) return 1;
    if (dnat_backend_callbacks(model, program, compute, &m, "ideal macro in C", &callbacks) !=
        DNAT_OK)
        return fail("dnat_backend_callbacks");
    double acc_a, acc_b;
    if (evaluate(model, builtin, x, labels, n, g.classes, a, &acc_a)) return 1;
    if (evaluate(model, callbacks, x, labels, n, g.classes, b, &acc_b)) return 1;
    int same = memcmp(a, b, n * g.classes * sizeof *a) == 0;
    printf("%s: %.2f %%; callbacks: %.2f %%; logits %s\n", backend_name, acc_a, acc_b,
           same ? "identical" : "differ");

    dnat_backend_free(builtin);
    dnat_backend_free(callbacks);
    dnat_model_free(model);
    free(m.weights);
    free(x);
    free(labels);
    free(record);
    free(a);
    free(b);
    return 0;
}
