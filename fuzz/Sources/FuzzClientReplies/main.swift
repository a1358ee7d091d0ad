import CFuzzerDriver
#if canImport(Glibc)
import Glibc
#endif

// libFuzzer (or, in a build without -sanitize=fuzzer, a replay of the files
// named) runs `fuzzClientReplies` on every input; see its file.
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzClientReplies(data, size) })
