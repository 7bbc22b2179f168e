/*
 * datasets.h: GET /api/v1/datasets, the image-folder datasets under the
 * daemon's data root (what a job spec's data.train and data.val may name).
 *
 * The data root is scanned TLD_DATASETS_DEPTH folders deep (so that both
 * "synth/train" under a data folder and "data/synth/train" under a project
 * root are found). A folder is a dataset when tl_dataset_open (engine/include/tokenlab/data.h)
 * accepts it: class sub-folders holding JPEG images (a class folder without
 * images but with sub-folders makes it a folder of datasets instead);
 * datasets are not descended into. Hidden folders, node_modules and symbolic links leading out
 * of the root are skipped; at most TLD_DATASETS_MAX_DIRS folders are visited
 * and TLD_DATASETS_MAX results returned. The answer is
 *   {"datasets": [{"path", "classes", "images", "has_label_maps", "label_maps"}], "truncated"}
 * with paths relative to the data root, sorted; label_maps is the sibling
 * "<path>.tllm" file when it exists (what synth writes), else null. A scan is
 * cached for TLD_DATASETS_CACHE_MS (under a mutex) so that page loads do not
 * rescan large trees.
 */
#ifndef TLD_DATASETS_H
#define TLD_DATASETS_H


#define TLD_DATASETS_DEPTH 3
#define TLD_DATASETS_MAX_DIRS 4096
#define TLD_DATASETS_MAX 256
#define TLD_DATASETS_CACHE_MS 5000

/* Sets the data root GET /api/v1/datasets (tld_h_datasets, in the route table) scans; data_root is copied.
 * Call once before the HTTP server starts. Returns 0, or -1 when data_root is NULL or too long. */
int tld_datasets_init(const char *data_root);

#endif
