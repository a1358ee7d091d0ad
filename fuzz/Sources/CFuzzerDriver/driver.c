#include "CFuzzerDriver.h"
#include <stdio.h>
#include <stdlib.h>

// Without -sanitize=fuzzer there is no libFuzzer to link: this weak stand-in
// runs the callback once on each file named on the command line, so a plain
// build replays a corpus or a crash file.
__attribute__((weak)) int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *, size_t)) {
    for (int index = 1; index < *argc; index++) {
        const char *path = (*argv)[index];
        if (path[0] == '-') continue;
        FILE *file = fopen(path, "rb");
        if (!file) {
            fprintf(stderr, "cannot open %s\n", path);
            return 1;
        }
        fseek(file, 0, SEEK_END);
        long size = ftell(file);
        fseek(file, 0, SEEK_SET);
        uint8_t *data = malloc(size > 0 ? (size_t)size : 1);
        size_t got = fread(data, 1, (size_t)size, file);
        fclose(file);
        callback(data, got);
        free(data);
    }
    return 0;
}
