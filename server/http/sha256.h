/*
 * sha256.h: SHA-256 (FIPS 180-4) of a byte string, for the hashes of API
 * tokens (server/http/http.c looks a bearer token up by its hash;
 * `tokenlabd token add` stores only the hash). Pure functions: any thread.
 */
#ifndef TLD_SHA256_H
#define TLD_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define TLD_SHA256_BYTES 32

/* Writes the 32-byte digest of data[0..len) to out. */
void tld_sha256(const void *data, size_t len, uint8_t out[TLD_SHA256_BYTES]);

#endif
