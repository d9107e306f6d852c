/*
 * dnat.h: the C ABI of dnat (src/capi.rs): run a deployable model (`dnat export`)
 * with a CIM macro doing its macro operations, from C or any language with a C FFI.
 *
 * Link with -ldnat (target/release/libdnat.so, built by `cargo build --release`).
 *
 * Conventions:
 *  - Handles (dnat_model, dnat_backend) are opaque, made and freed by the library.
 *  - Every call that can fail returns a dnat_status; on failure dnat_last_error()
 *    gives the message (per thread, valid until that thread's next call).
 *  - Pointers passed in are borrowed for the call only; nothing is kept.
 *  - No panic crosses the boundary: a bug in dnat returns DNAT_PANIC.
 *  - A model may be used from several threads (runs on it are serialised); a backend
 *    by one thread at a time. Callbacks run on the thread that called dnat_run.
 *
 * tests/capi.rs checks this header against src/capi.rs and builds examples/c/ with it.
 */
#ifndef DNAT_H
#define DNAT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dnat_status {
    DNAT_OK = 0,
    DNAT_ARGUMENT = 1, /* a NULL pointer, an impossible size, a string not UTF-8 */
    DNAT_IO = 2,       /* a file that could not be read */
    DNAT_FORMAT = 3,   /* a file that is not what its format promises */
    DNAT_INVALID = 4,  /* the model, the backend or the run refused */
    DNAT_PANIC = 5     /* a bug in dnat, stopped at the boundary */
} dnat_status;

typedef struct dnat_model dnat_model;
typedef struct dnat_backend dnat_backend;

/* A model's input and its macro (the contract a backend implements). */
typedef struct dnat_geometry {
    uint32_t classes;              /* logits per image */
    uint32_t channels;             /* input image: channels, height, width */
    uint32_t height;
    uint32_t width;
    float mean[3];                 /* x = (pixel/255 - mean[c]) / std[c] */
    float std[3];
    uint32_t arrays;               /* macro: arrays of rows x columns cells */
    uint32_t rows;
    uint32_t columns;
    uint32_t input_bits;
    uint32_t input_bits_per_cycle;
    uint32_t weight_bits;
    int32_t adc_kmin;              /* ADC codes adc_kmin..=adc_kmax */
    int32_t adc_kmax;
    float adc_step;                /* partial-sum units per ADC code */
    uint32_t macro_layers;         /* layers on the macro */
} dnat_geometry;

/* What a batch of macro operations is (docs/protocol.md, COMPUTE). */
typedef struct dnat_operation {
    uint32_t layer;
    uint32_t tile;
    uint32_t cycle;
    uint32_t first_channel;
    uint32_t columns;              /* columns to read: the array's first `columns` */
    uint32_t channels;
    uint64_t elements;
    uint64_t first_element;
    uint64_t pass;
} dnat_operation;

/* Loads array `array` with weights[row * columns + column] (rows x columns signed
 * codes). Returns 0 on success. */
typedef int32_t (*dnat_program_fn)(void *ctx, uint32_t array, const int8_t *weights);

/* Reads n operations on array `array`: inputs[r * n + i] is row r's input code of
 * operation i (rows x n); write codes[c * n + i], column c's ADC code, for the first
 * op->columns columns. Returns 0 on success. */
typedef int32_t (*dnat_compute_fn)(void *ctx, uint32_t array, const dnat_operation *op,
                                   uint32_t n, const uint16_t *inputs, int32_t *codes);

/* This thread's last error message, or NULL after a call that succeeded. */
const char *dnat_last_error(void);

/* The library's version, e.g. "0.1.0" (static storage). */
const char *dnat_version(void);

/* Opens the deployable model at `path` into *out; free it with dnat_model_free. */
dnat_status dnat_model_open(const char *path, dnat_model **out);

/* Frees a model; NULL is allowed. */
void dnat_model_free(dnat_model *model);

/* Fills *out with the model's geometry. */
dnat_status dnat_model_geometry(const dnat_model *model, dnat_geometry *out);

/* A built-in backend for the model's macro: "ideal", "em:MODEL[,chip=S][,noise=N]"
 * or "exec:CMD" (a macro host process; each reply awaited at most timeout_s seconds).
 * Free it with dnat_backend_free. */
dnat_status dnat_backend_builtin(const dnat_model *model, const char *description,
                                 double timeout_s, dnat_backend **out);

/* A backend whose macro operations are `program` and `compute`, called with `ctx`;
 * `name` names it in error messages. Free it with dnat_backend_free. */
dnat_status dnat_backend_callbacks(const dnat_model *model, dnat_program_fn program,
                                   dnat_compute_fn compute, void *ctx, const char *name,
                                   dnat_backend **out);

/* Frees a backend (an exec: host is stopped); NULL is allowed. */
void dnat_backend_free(dnat_backend *backend);

/* Runs n normalised images (images[n][channels * height * width], see dnat_geometry)
 * as pass `pass`, the backend doing every macro operation; writes
 * logits[n][classes]. */
dnat_status dnat_run(const dnat_model *model, dnat_backend *backend, const float *images,
                     size_t n, uint64_t pass, float *logits);

#ifdef __cplusplus
}
#endif

#endif /* DNAT_H */
