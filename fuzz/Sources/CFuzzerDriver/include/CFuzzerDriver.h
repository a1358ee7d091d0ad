#ifndef BULKHEAD_CFUZZER_DRIVER_H
#define BULKHEAD_CFUZZER_DRIVER_H

#include <stddef.h>
#include <stdint.h>

/// libFuzzer's entry point for programs that have their own main (libFuzzer
/// since LLVM 11). SwiftPM names every executable's entry point itself, so
/// the fuzz targets start libFuzzer from main.swift through this.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
