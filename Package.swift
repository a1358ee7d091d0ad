// swift-tools-version: 6.1
import PackageDescription

let strict: [SwiftSetting] = [.enableUpcomingFeature("ExistentialAny")]

let package = Package(
    name: "Bulkhead",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "bulkhead-storaged", targets: ["bulkhead-storaged"]),
        .executable(name: "bulkhead-cryptd", targets: ["bulkhead-cryptd"]),
        .executable(name: "bulkhead", targets: ["bulkhead"]),
        .library(name: "NBDProtocol", targets: ["NBDProtocol"]),
        .library(name: "NBDServer", targets: ["NBDServer"]),
        .library(name: "NBDClient", targets: ["NBDClient"]),
        .library(name: "BlockDevice", targets: ["BlockDevice"]),
        .library(name: "PoolFormat", targets: ["PoolFormat"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
    ],
    targets: [
        // The NBD wire format: constants, messages, handshake and transmission
        // state machines. Does no I/O and imports nothing but the standard library.
        .target(name: "NBDProtocol", swiftSettings: strict),
        // The `BlockDevice` abstraction every layer implements, and the
        // file/block-device backend.
        .target(name: "BlockDevice", dependencies: ["CSystemShims"], swiftSettings: strict),
        // POSIX sockets: addresses, listeners, connected streams.
        .target(name: "Sockets", dependencies: ["CSystemShims"], swiftSettings: strict),
        // The version string shared by every executable.
        .target(name: "BulkheadVersion", swiftSettings: strict),
        // The pool's on-disk structures (docs/format.md): layouts, encoding
        // and validation, no I/O and no cryptography.
        .target(name: "PoolFormat", swiftSettings: strict),
        // Key material: locked secret memory, key derivation, block sealing
        // (AES-256-GCM), passphrase KDF, recovery keys, keyslot wrapping.
        // C shims for Linux calls Swift cannot make directly (prctl, getrandom, fstatfs, preadv2).
        .target(name: "CSystemShims"),
        .target(
            name: "Keys",
            dependencies: [
                "PoolFormat", "CSystemShims", "Threads",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
            ],
            swiftSettings: strict),
        // The crypt domain's pool engine (docs/format.md): sealed copy-on-write
        // trees, the metadata log, commits, checkpoints, trust anchors, and
        // volumes as block devices over the untrusted storage device.
        .target(
            name: "CryptPool",
            dependencies: [
                "PoolFormat", "Keys", "BlockDevice", "Threads",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // Per-block CPU cost of the pool engine on a memory device (bench/perblock).
        .executableTarget(name: "perblock-bench", dependencies: ["CryptPool", "Keys", "BlockDevice"], path: "bench/perblock", swiftSettings: strict),
        // What the daemons and the CLI share: signals, one-line errors,
        // secret input, storage locations.
        .target(
            name: "DaemonSupport",
            dependencies: [
                "Keys", "BlockDevice", "NBDClient", "Sockets",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
        // tpm2-tss (ESYS, the TCTI loader, response codes, marshalling) as
        // a system library.
        .systemLibrary(
            name: "CTSS2",
            pkgConfig: "tss2-esys",
            providers: [.apt(["libtss2-dev"])]),
        // TPM 2.0 through tpm2-tss: contexts, PCRs, salted sessions, sealing
        // to PCR policies, offline policy computation, NV counters.
        .target(
            name: "TPM",
            dependencies: [
                "CTSS2", "Keys", "PoolFormat",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict),
        // posix_spawn with a clean signal mask and descriptor table, and
        // reaping: the toolstack's domains and the tests' real processes.
        .target(name: "ProcessSpawn", swiftSettings: strict),
        // System threads and a mutex-with-condition for the blocking request paths.
        .target(name: "Threads", swiftSettings: strict),
        .target(
            name: "NBDServer",
            dependencies: [
                "NBDProtocol", "BlockDevice", "Sockets", "Threads",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .target(
            name: "NBDClient",
            dependencies: [
                "NBDProtocol", "BlockDevice", "Sockets", "Threads",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "bulkhead-storaged",
            dependencies: [
                "NBDServer", "BlockDevice", "Sockets", "BulkheadVersion", "DaemonSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "bulkhead-cryptd",
            dependencies: [
                "CryptPool", "Keys", "CSystemShims", "NBDServer", "BlockDevice", "Sockets", "DaemonSupport", "BulkheadVersion", "TPM", "Threads", "PoolFormat",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "bulkhead",
            dependencies: [
                "BulkheadVersion", "CryptPool", "Keys", "PoolFormat", "BlockDevice", "DaemonSupport",
                "Toolstack", "LaunchMeasurement", "TPM", "Sockets",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
        // The pure part of the boot toolstack (issue 6): the boot manifest,
        // what is measured and in which canonical form, the event log format,
        // the seccomp allowlists as data, PCR prediction. No I/O.
        .target(
            name: "LaunchMeasurement",
            dependencies: [.product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict),
        // libseccomp, to compile the allowlists into BPF for bwrap --seccomp.
        .systemLibrary(
            name: "CSeccomp",
            pkgConfig: "libseccomp",
            providers: [.apt(["libseccomp-dev"])]),
        // The boot toolstack's I/O (issue 6): measured launch into the TPM,
        // bubblewrap sandboxes with seccomp, supervision, status, root attach.
        .target(
            name: "Toolstack",
            dependencies: [
                "LaunchMeasurement", "TPM", "CSeccomp", "Sockets", "NBDProtocol", "ProcessSpawn",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict),
        // For tests that start real processes: a short private /tmp folder,
        // child processes.
        .target(name: "TestScratch", dependencies: ["ProcessSpawn"], path: "Tests/TestScratch", swiftSettings: strict),
        // What several test targets share: a seeded random generator,
        // temporary directories, polling, a locked value and test devices
        // laid over others.
        .target(name: "TestSupport", dependencies: ["BlockDevice"], path: "Tests/TestSupport", swiftSettings: strict),
        .testTarget(name: "NBDProtocolTests", dependencies: ["NBDProtocol", "TestSupport"]),
        .testTarget(name: "PoolFormatTests", dependencies: ["PoolFormat"]),
        .testTarget(
            name: "KeysTests",
            dependencies: ["Keys", "PoolFormat", .product(name: "Crypto", package: "swift-crypto")]),
        .testTarget(
            name: "CryptPoolTests",
            dependencies: ["CryptPool", "Keys", "PoolFormat", "BlockDevice", "Threads", "TestSupport", .product(name: "Crypto", package: "swift-crypto")]),
        .testTarget(name: "BlockDeviceTests", dependencies: ["BlockDevice", "TestSupport"]),
        .testTarget(name: "NBDServerTests", dependencies: ["NBDServer", "NBDProtocol", "BlockDevice", "Sockets", "TestSupport", "CSystemShims"]),
        .testTarget(name: "NBDClientTests", dependencies: ["NBDClient", "NBDServer", "NBDProtocol", "BlockDevice", "Sockets", "TestSupport"]),
        .testTarget(name: "InteropTests", dependencies: ["Sockets", "TestScratch"]),
        // The whole chain as real processes: storage domain, crypt domain, clients.
        .testTarget(name: "ChainTests", dependencies: ["NBDProtocol", "Sockets", "TestScratch", "TestSupport"]),
        // The TPM layer against a real swtpm started by the tests, and the TPM
        // keyslots, counter anchor and control socket through the real executables.
        .testTarget(name: "TPMTests", dependencies: ["TPM", "Keys", "Sockets", "Threads", "CryptPool", "BlockDevice", "PoolFormat", "ProcessSpawn", "TestSupport"]),
        // A hostile storage domain, crash-point replay (issue 4).
        .testTarget(
            name: "AdversarialTests",
            dependencies: ["CryptPool", "Keys", "PoolFormat", "BlockDevice", "NBDServer", "NBDClient", "NBDProtocol", "Sockets", "Threads", "TestSupport"]),
        // The boot toolstack (issue 6) with real processes: bwrap, swtpm,
        // the domains, nbdfuse, fio.
        .testTarget(name: "ToolstackTests", dependencies: ["Toolstack", "LaunchMeasurement", "TPM", "Sockets", "TestSupport"]),
        // A qemu guest booting through the Bulkhead initramfs (issue 8; packaging/).
        .testTarget(name: "VMTests", dependencies: ["CryptPool", "Keys", "PoolFormat", "BlockDevice", "ProcessSpawn"]),
    ],
    swiftLanguageModes: [.v6]
)
