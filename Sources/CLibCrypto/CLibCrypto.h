// OpenSSL's libcrypto, for AES-256-GCM through EVP with a cipher context
// kept per key (Keys/GCMContext.swift): swift-crypto's AES.GCM expands the
// key and builds a context on every call, several times the cost of the
// cipher itself on a 4 KiB block.
#ifndef BULKHEAD_CLIBCRYPTO_H
#define BULKHEAD_CLIBCRYPTO_H

#include <openssl/evp.h>
#include <openssl/crypto.h>

#endif
