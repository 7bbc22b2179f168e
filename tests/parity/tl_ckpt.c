/*
 * tl_ckpt.c: a small command-line tool over the engine's checkpoints, used by
 * tests/parity/run_checkpoint_interop.py to exchange models with PyTorch.
 *
 *   tl-ckpt init --config MODEL.json --seed S --out F.safetensors
 *       MODEL.json: a JSON object of model fields (tl_config_from_json).
 *       Creates a model from seed S and saves it (no optimizer state).
 *   tl-ckpt info F.safetensors
 *       Reads the config (metadata, else inferred from the shapes), loads the
 *       file into a fresh model and prints one JSON line:
 *       {"config": {...}, "num_params": N, "tensors": T}
 *       (T = number of tensors in the file).
 *   tl-ckpt predict F.safetensors --in IN.safetensors --out OUT.safetensors
 *       IN holds `input` [B,3,H,W] (any float dtype). OUT gets F32
 *       logits_pred [B,K] (inference score), logits_cls [B,K], logits_aux [B,N,K].
 *
 * Errors go to stderr as "tl-ckpt: <message>" with exit status 1 (2 for bad
 * usage). Threads: TL_THREADS (default 2) for the engine's pool.
 */
#include "tokenlab/safetensors.h"
#include "tokenlab/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(void) {
    fprintf(stderr,
            "usage: tl-ckpt init --config MODEL.json --seed S --out F.safetensors\n"
            "       tl-ckpt info F.safetensors\n"
            "       tl-ckpt predict F.safetensors --in IN.safetensors --out OUT.safetensors\n");
    return 2;
}

static int fail(const char *msg) {
    fprintf(stderr, "tl-ckpt: %s\n", msg);
    return 1;
}

/* Reads a whole text file; NULL with a message on error. */
static char *read_text(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s", path);
        return NULL;
    }
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n < 0 || n > (64L << 20) || fseek(f, 0, SEEK_SET) != 0) {
        snprintf(err, errlen, "cannot read %s", path);
        fclose(f);
        return NULL;
    }
    buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        snprintf(err, errlen, "cannot read %s", path);
        free(buf);
        fclose(f);
        return NULL;
    }
    buf[n] = 0;
    fclose(f);
    return buf;
}

/* Options "--name value" from argv[from..]; unknown options are an error. */
typedef struct {
    const char *name;
    const char **value;
} opt;

static int parse_opts(int argc, char **argv, int from, const opt *opts, int nopts) {
    for (int i = from; i < argc; i += 2) {
        int k = 0;
        while (k < nopts && strcmp(argv[i], opts[k].name) != 0) k++;
        if (k == nopts) {
            fprintf(stderr, "tl-ckpt: unknown option %s\n", argv[i]);
            return -1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "tl-ckpt: option %s needs a value\n", argv[i]);
            return -1;
        }
        *opts[k].value = argv[i + 1];
    }
    for (int k = 0; k < nopts; k++)
        if (!*opts[k].value) {
            fprintf(stderr, "tl-ckpt: missing option %s\n", opts[k].name);
            return -1;
        }
    return 0;
}

/* A model holding the checkpoint at path (config from the file). */
static tl_model *load_model(const char *path, char *err, size_t errlen) {
    tl_config c;
    if (tl_checkpoint_config(path, &c, err, errlen) != 0) return NULL;
    tl_model *m = tl_model_new(&c, 0, err, errlen);
    if (!m) return NULL;
    if (tl_checkpoint_load(m, NULL, path, 0, NULL, err, errlen) != 0) {
        tl_model_free(m);
        return NULL;
    }
    return m;
}

static int cmd_init(int argc, char **argv) {
    const char *cfg_path = NULL, *seed_s = NULL, *out = NULL;
    const opt opts[] = {{"--config", &cfg_path}, {"--seed", &seed_s}, {"--out", &out}};
    if (parse_opts(argc, argv, 2, opts, 3) != 0) return usage();
    char err[TL_ERR_LEN];
    char *end = NULL;
    unsigned long long seed = strtoull(seed_s, &end, 10);
    if (!*seed_s || *end || seed_s[0] == '-') {
        snprintf(err, sizeof err, "--seed must be a non-negative integer, got '%s'", seed_s);
        return fail(err);
    }
    char *text = read_text(cfg_path, err, sizeof err);
    if (!text) return fail(err);
    tl_config c;
    char sub[TL_ERR_LEN];
    int rc = tl_config_from_json(text, &c, sub, sizeof sub);
    free(text);
    if (rc != 0) {
        snprintf(err, sizeof err, "%.200s: %.280s", cfg_path, sub);
        return fail(err);
    }
    tl_model *m = tl_model_new(&c, (uint64_t)seed, err, sizeof err);
    if (!m) return fail(err);
    rc = tl_checkpoint_save(m, NULL, out, 0, NULL, NULL, err, sizeof err);
    tl_model_free(m);
    return rc == 0 ? 0 : fail(err);
}

static int cmd_info(int argc, char **argv) {
    if (argc != 3) return usage();
    const char *path = argv[2];
    char err[TL_ERR_LEN];
    tl_model *m = load_model(path, err, sizeof err);
    if (!m) return fail(err);
    tl_st_file *f = tl_st_open(path, err, sizeof err);
    if (!f) {
        tl_model_free(m);
        return fail(err);
    }
    char cfg[2048];
    if (tl_config_to_json(tl_model_config(m), cfg, sizeof cfg) < 0) {
        tl_st_close(f);
        tl_model_free(m);
        return fail("config does not fit in the JSON buffer");
    }
    printf("{\"config\": %s, \"num_params\": %zu, \"tensors\": %d}\n", cfg, tl_model_num_params(m), tl_st_count(f));
    tl_st_close(f);
    tl_model_free(m);
    return fflush(stdout) == 0 ? 0 : fail("cannot write to stdout");
}

static int cmd_predict(int argc, char **argv) {
    if (argc < 3 || argv[2][0] == '-') return usage();
    const char *path = argv[2], *in_path = NULL, *out_path = NULL;
    const opt opts[] = {{"--in", &in_path}, {"--out", &out_path}};
    if (parse_opts(argc, argv, 3, opts, 2) != 0) return usage();
    char err[TL_ERR_LEN];
    int rc = 1;
    tl_model *m = NULL;
    tl_st_file *in = NULL;
    tl_ctx *ctx = NULL;
    tl_st_writer *w = NULL;
    float *images = NULL, *scores = NULL;

    m = load_model(path, err, sizeof err);
    if (!m) goto done;
    const tl_config *c = tl_model_config(m);
    in = tl_st_open(in_path, err, sizeof err);
    if (!in) goto done;
    const tl_st_tensor *ti = tl_st_get(in, "input");
    if (!ti) {
        snprintf(err, sizeof err, "%.300s: no tensor 'input'", in_path);
        goto done;
    }
    if (ti->ndim != 4 || ti->shape[0] < 1 || ti->shape[0] > 65536 || ti->shape[1] != 3 ||
        ti->shape[2] != c->img_size || ti->shape[3] != c->img_size) {
        snprintf(err, sizeof err, "%.300s: 'input' must be [B,3,%d,%d] with 1 <= B <= 65536", in_path, c->img_size,
                 c->img_size);
        goto done;
    }
    int B = (int)ti->shape[0], K = c->num_classes, N = tl_config_tokens(c);
    images = malloc(sizeof(float) * ti->numel);
    scores = malloc(sizeof(float) * (size_t)B * (size_t)K);
    if (!images || !scores) {
        snprintf(err, sizeof err, "out of memory");
        goto done;
    }
    if (tl_st_read_f32(ti, images) != 0) {
        snprintf(err, sizeof err, "%.300s: 'input' has dtype %s, expected a float dtype", in_path,
                 tl_st_dtype_name(ti->dtype));
        goto done;
    }
    const char *env = getenv("TL_THREADS");
    int nthreads = env ? atoi(env) : 2;
    if (nthreads < 1) nthreads = 1;
    ctx = tl_ctx_new(m, B, 0, nthreads, err, sizeof err);
    if (!ctx) goto done;
    if (tl_predict(ctx, images, B, scores) != 0) {
        snprintf(err, sizeof err, "tl_predict failed");
        goto done;
    }
    int64_t sh_bk[2] = {B, K}, sh_bnk[3] = {B, N, K};
    w = tl_st_writer_new();
    if (!w || tl_st_add(w, "logits_pred", TL_ST_F32, 2, sh_bk, scores) != 0 ||
        tl_st_add(w, "logits_cls", TL_ST_F32, 2, sh_bk, tl_logits_cls(ctx)) != 0 ||
        tl_st_add(w, "logits_aux", TL_ST_F32, 3, sh_bnk, tl_logits_aux(ctx)) != 0) {
        snprintf(err, sizeof err, "out of memory collecting the outputs");
        goto done;
    }
    if (tl_st_write(w, out_path, err, sizeof err) != 0) goto done;
    rc = 0;
done:
    tl_st_writer_free(w);
    tl_ctx_free(ctx);
    tl_st_close(in);
    tl_model_free(m);
    free(images);
    free(scores);
    return rc == 0 ? 0 : fail(err);
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    if (strcmp(argv[1], "init") == 0) return cmd_init(argc, argv);
    if (strcmp(argv[1], "info") == 0) return cmd_info(argc, argv);
    if (strcmp(argv[1], "predict") == 0) return cmd_predict(argc, argv);
    return usage();
}
