// swift-tools-version: 6.1
// libFuzzer targets for Bulkhead's parsers of untrusted input. Built apart
// from the root package, with the fuzzer and address sanitizer:
//   swift build -c release --package-path fuzz -Xswiftc -sanitize=fuzzer,address \
//       --product fuzz-server-requests
// Built without the sanitizer flags, each target replays the files named on
// its command line instead (a corpus, a crash).
// See docs/reliability.md and scripts/reliability.
import Foundation
import PackageDescription

// A path dependency is known by its directory's name, whatever the
// checkout is called.
let root = Context.packageDirectory + "/.."
let rootIdentity = URL(fileURLWithPath: Context.packageDirectory).deletingLastPathComponent().lastPathComponent.lowercased()

let package = Package(
    name: "BulkheadFuzz",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "fuzz-server-requests", targets: ["FuzzServerRequests"]),
        .executable(name: "fuzz-client-replies", targets: ["FuzzClientReplies"]),
        .executable(name: "fuzz-pool-format", targets: ["FuzzPoolFormat"]),
        .executable(name: "make-seeds", targets: ["MakeSeeds"]),
    ],
    dependencies: [.package(path: root)],
    targets: [
        // What the fuzzers and the seed maker share: the export served, the
        // requests a client has in flight, how an input is cut into reads.
        .target(name: "FuzzFixtures", dependencies: [.product(name: "NBDProtocol", package: rootIdentity)]),
        // Starts libFuzzer from main.swift (SwiftPM names executables' entry points itself).
        .target(name: "CFuzzerDriver"),
        // A hostile consumer: handshake, request decoding and validation.
        .executableTarget(
            name: "FuzzServerRequests",
            dependencies: ["FuzzFixtures", "CFuzzerDriver", .product(name: "NBDProtocol", package: rootIdentity)]),
        // A hostile storage domain: the client handshake and reply decoding.
        .executableTarget(
            name: "FuzzClientReplies",
            dependencies: ["FuzzFixtures", "CFuzzerDriver", .product(name: "NBDProtocol", package: rootIdentity)]),
        // Pool metadata as read back from untrusted storage.
        .executableTarget(
            name: "FuzzPoolFormat",
            dependencies: ["CFuzzerDriver", .product(name: "PoolFormat", package: rootIdentity)]),
        // Writes the seed corpora (run without the sanitizers).
        .executableTarget(
            name: "MakeSeeds",
            dependencies: [
                "FuzzFixtures", .product(name: "NBDProtocol", package: rootIdentity),
                .product(name: "PoolFormat", package: rootIdentity),
            ]),
    ],
    swiftLanguageModes: [.v6]
)
