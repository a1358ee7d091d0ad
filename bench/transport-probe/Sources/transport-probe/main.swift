#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// transport-probe MODE --socket PATH [--file PATH] [--size BYTES] [--workers N] [--pool N] [--read-size BYTES] [--lock pthread|mutex]
//   MODE posix: POSIX sockets + `--workers` threads per connection (default 4),
//               locks are pthread mutexes or, with `--lock mutex`, Synchronization.Mutex.
//   MODE nio:   SwiftNIO, one event loop per core; with `--pool N` every
//               request runs on an N-thread NIOThreadPool, else inline.
//   The export is 1 GiB of memory, or `--file` read with pread/pwrite.

let usage = "usage: transport-probe posix|nio --socket PATH [--file PATH] [--size BYTES] [--workers N] [--pool N] [--read-size BYTES] [--lock pthread|mutex]"
var arguments = Array(CommandLine.arguments.dropFirst())
guard let mode = arguments.first, mode == "posix" || mode == "nio" else { fatalError(usage) }
var options: [String: String] = [:]
var index = 1
while index + 1 < arguments.count {
    guard arguments[index].hasPrefix("--") else { fatalError(usage) }
    options[String(arguments[index].dropFirst(2))] = arguments[index + 1]
    index += 2
}
guard index == arguments.count, let socketPath = options["socket"] else { fatalError(usage) }
let size = UInt64(options["size"] ?? "") ?? 1 << 30
let readSize = Int(options["read-size"] ?? "") ?? 256 * 1024
let export = options["file"].map { Export(filePath: $0, size: size) } ?? Export(memorySize: size)

if mode == "posix" {
    runPosixServer(
        socketPath: socketPath, export: export, workers: Int(options["workers"] ?? "") ?? 4, readSize: readSize,
        standardMutex: options["lock"] == "mutex")
} else {
    try runNIOServer(socketPath: socketPath, export: export, poolThreads: options["pool"].flatMap { Int($0) }, readSize: readSize)
}
