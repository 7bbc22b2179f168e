/*
 * dataset.h: image-folder datasets (engine/data/dataset.c): the
 * class-per-folder layout <root>/<class>/<file>.jpg|jpeg|JPEG, classes in
 * sorted folder order; optional classes.tsv with "folder<TAB>readable
 * name[<TAB>...]" lines, first line a header if its first field is not a
 * folder name; a header naming an "imagenet_index" column gives each class its
 * ImageNet-1k index.
 *
 * A dataset is read-only after tl_dataset_open and may be shared by loader
 * threads.
 */
#ifndef TL_DATASET_H
#define TL_DATASET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tl_dataset tl_dataset;

/* Scans root (see above); NULL with a message when it cannot be read, is not a folder, holds no
 * class folder, or classes.tsv is malformed. */
tl_dataset *tl_dataset_open(const char *root, char *err, size_t errlen);
/* The same, confined to the canonical folder `confine` (the daemon's data root; NULL: not confined): a
 * class folder or image that is a symbolic link resolving outside it is skipped, as if absent, and
 * counted (tl_dataset_outside). The root itself must already lie inside (the spec parsers check it). */
tl_dataset *tl_dataset_open_confined(const char *root, const char *confine, char *err, size_t errlen);
/* Class folders and images skipped because they lead outside the confining folder. */
int64_t tl_dataset_outside(const tl_dataset *d);
void tl_dataset_free(tl_dataset *d);                                /* NULL is fine */
const char *tl_dataset_root(const tl_dataset *d);                   /* as given to tl_dataset_open */
int tl_dataset_count(const tl_dataset *d);                          /* images, in class then path order */
int tl_dataset_num_classes(const tl_dataset *d);
const char *tl_dataset_class_folder(const tl_dataset *d, int c);   /* e.g. "n01440764" */
const char *tl_dataset_class_name(const tl_dataset *d, int c);     /* classes.tsv name, else the folder */
/* The class's ImageNet-1k index from classes.tsv's "imagenet_index" column (named in its header), or -1
 * when the file, the column or a valid value for this class is absent. */
int tl_dataset_class_imagenet_index(const tl_dataset *d, int c);
/* The number of class folders tl_dataset_open would find in root (its non-hidden sub-folders), without
 * listing images: cheap enough for spec checks. -1 with a message when root cannot be read or holds none. */
int tl_dataset_count_classes(const char *root, char *err, size_t errlen);
const char *tl_dataset_relpath(const tl_dataset *d, int i);        /* "n01440764/x.JPEG" */
int tl_dataset_label(const tl_dataset *d, int i);                  /* class index of image i */
/* root + "/" + relpath into buf; -1 if it does not fit. */
int tl_dataset_path(const tl_dataset *d, int i, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
