// swift-tools-version: 6.1
import PackageDescription

let strict: [SwiftSetting] = [.enableUpcomingFeature("ExistentialAny")]

let package = Package(
    name: "Bulkhead",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "bulkhead-storaged", targets: ["bulkhead-storaged"]),
        .executable(name: "bulkhead", targets: ["bulkhead"]),
        .library(name: "NBDProtocol", targets: ["NBDProtocol"]),
        .library(name: "NBDServer", targets: ["NBDServer"]),
        .library(name: "NBDClient", targets: ["NBDClient"]),
        .library(name: "BlockDevice", targets: ["BlockDevice"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // The NBD wire format: constants, messages, handshake and transmission
        // state machines. Does no I/O and imports nothing but the standard library.
        .target(name: "NBDProtocol", swiftSettings: strict),
        // The `BlockDevice` abstraction every layer implements, and the
        // file/block-device backend.
        .target(name: "BlockDevice", swiftSettings: strict),
        // POSIX sockets: addresses, listeners, connected streams.
        .target(name: "Sockets", swiftSettings: strict),
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
                "NBDServer", "BlockDevice", "Sockets",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "bulkhead",
            dependencies: [
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
        .testTarget(name: "NBDProtocolTests", dependencies: ["NBDProtocol"]),
        .testTarget(name: "BlockDeviceTests", dependencies: ["BlockDevice"]),
        .testTarget(name: "NBDServerTests", dependencies: ["NBDServer", "NBDProtocol", "BlockDevice", "Sockets"]),
        .testTarget(name: "NBDClientTests", dependencies: ["NBDClient", "NBDServer", "NBDProtocol", "BlockDevice", "Sockets"]),
        .testTarget(name: "InteropTests", dependencies: ["Sockets"]),
    ],
    swiftLanguageModes: [.v6]
)
