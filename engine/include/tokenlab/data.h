/*
 * data.h: the data layer's public headers in one include, for callers that
 * use several of them: image.h (JPEG decode and encode), dataset.h
 * (image-folder datasets) and augment.h (training and evaluation
 * transforms). Declares nothing itself.
 */
#ifndef TL_DATA_H
#define TL_DATA_H

#include "tokenlab/augment.h"
#include "tokenlab/dataset.h"
#include "tokenlab/image.h"

#endif
