// swift-tools-version: 6.1
// A measurement, not part of Bulkhead: serves one export over NBD through
// either plain POSIX sockets + threads or SwiftNIO, with the same NBD state
// machines, so fio can compare the two transports. Kept out of the root
// package so CI never builds SwiftNIO. See docs/decisions/transport.md.
import PackageDescription

let package = Package(
    name: "transport-probe",
    platforms: [.macOS(.v15)],
    dependencies: [
        // Named so the product reference does not depend on the checkout folder name.
        .package(name: "Bulkhead", path: "../.."),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
    ],
    targets: [
        .executableTarget(
            name: "transport-probe",
            dependencies: [
                .product(name: "NBDProtocol", package: "Bulkhead"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")])
    ],
    swiftLanguageModes: [.v6]
)
