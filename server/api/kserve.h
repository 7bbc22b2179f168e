/*
 * kserve.h: the JSON side of the KServe / Triton "v2" inference protocol
 * (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/):
 * parsing an inference request into images and writing the response.
 *
 * kserve.c owns nothing beyond the buffers it returns. Pure functions; any
 * thread.
 *
 * Accepted requests: one input tensor, either
 *   UINT8 with shape [N,H,W,3] (RGB pixels of any size; the server applies
 *         the model's evaluation transform), or
 *   FP32 with shape [N,3,S,S] (already normalised with ImageNet mean/std,
 *         S the model's input side),
 * its "data" flat (row-major) or nested to the shape; an optional "id";
 * optional "outputs": [{"name": ..., "parameters": {"classification": k}}].
 * "parameters" at the request level are accepted and ignored except
 * "binary_data_output", which must be false when present.
 */
#ifndef TLD_KSERVE_H
#define TLD_KSERVE_H

#include <stddef.h>
#include <stdint.h>

typedef enum { TLD_KS_UINT8_NHWC = 0, TLD_KS_FP32_NCHW = 1 } tld_ks_layout;

typedef struct {
    char id[128];            /* request id, "" when absent */
    char input_name[64];
    tld_ks_layout layout;
    int n, h, w;             /* batch and image size (for FP32, h == w == S is checked by the caller) */
    uint8_t *u8;             /* (N,H,W,3) for UINT8, else NULL (malloc'd) */
    float *f32;              /* (N,3,H,W) for FP32, else NULL (malloc'd) */
    char output_name[64];    /* the requested output's name, "" when no outputs were named */
    int classification;      /* 0: raw scores; k > 0: top-k classification strings */
} tld_ks_request;

/* Parses a request. max_elems bounds N*H*W*3 (and N*3*H*W). On error returns -1 with the JSON pointer
 * of the offending field (e.g. "/inputs/0/shape") in pointer and the rule in err
 * ("must have 4 dimensions", "datatype must be UINT8 or FP32", "data has 12 elements, shape needs 24",
 * "value 300 out of range for UINT8", ...). */
int tld_kserve_parse(const char *json, size_t len, size_t max_elems, tld_ks_request *out, char *pointer,
                    size_t pointer_len, char *err, size_t errlen);
/* (Additions:) unknown and duplicate fields are refused in the request, input and output objects (not
 * inside "parameters"); input "name" and output "name" are required; input parameters with
 * "binary_data_size" and output parameters with "binary_data": true are refused (binary extension).
 * Before parsing, the text is refused (pointer "") when it holds more than about 4 * max_elems + 4096
 * JSON values, which bounds cJSON's tree (about 64 bytes per value) by max_elems. On error *out is
 * zeroed (nothing to free); on success free it with tld_kserve_request_free. */
void tld_kserve_request_free(tld_ks_request *r);

/* The response: {"model_name", "model_version": "1", "id"?, "outputs": [...]}.
 * classification == 0: output name (out_name or "scores"), FP32, shape [N,K], the scores.
 * classification == k: output BYTES, shape [N,k], strings "score:index:label" (Triton's format,
 * score with 6 decimals), best first, from probs (softmax of the scores, computed here).
 * labels may be NULL (then the label is the index). Returns a malloc'd NUL-terminated string or NULL. */
char *tld_kserve_response(const char *model, const char *id, int n, int K, const float *scores,
                         const char *const *labels, int classification, const char *out_name);
/* (Additions:) classification > K is clamped to K; the BYTES output's name is out_name or "scores" too.
 * FP32 scores are printed with the fewest digits (6..9) that read back as the same float; NaN/Inf as 0.
 * Ties in probability rank the lower index first. NULL on bad arguments (n < 0, K < 1) or no memory. */

#endif
