// swift-tools-version: 6.1
import PackageDescription

// Versions are pinned exactly: the machines resolve packages from a local mirror that holds
// only listed versions, and `from:` may pick a newer patch than the one we tested.
let package = Package(
    name: "tibet-twin",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "TibetTwin", targets: ["TibetTwin"]),
        .executable(name: "tibet-twin", targets: ["tibet-twin"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", exact: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", exact: "3.12.3"),
        .package(url: "https://github.com/jpsim/Yams", exact: "6.2.2"),
        .package(url: "https://github.com/apple/swift-nio", exact: "2.101.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", exact: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", exact: "2.4.1"),
        .package(url: "https://github.com/apple/swift-metrics", exact: "2.13.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", exact: "2.0.1"),
    ],
    targets: [
        // The only door to libmodbus. shim.h re-exports what Swift cannot import.
        .systemLibrary(
            name: "CModbus",
            pkgConfig: "libmodbus",
            providers: [.apt(["libmodbus-dev"])]
        ),
        // Linux calls Glibc does not give Swift (epoll, eventfd, accept4, pthread_setname_np).
        .systemLibrary(name: "CLinux", path: "Sources/CLinux"),
        // Swift over libmodbus: client, server-side reply helpers, typed errors. No guard logic.
        .target(
            name: "Modbus",
            dependencies: ["CModbus", "CLinux"]
        ),
        // The pure core: maps, decoding, states, the decision rule, profiles, tokens.
        // No sockets, no files it is not handed, no clocks it does not get handed.
        .target(
            name: "TibetTwin",
            dependencies: [
                .product(name: "Yams", package: "Yams"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // The running system: poller, feeds, interlock server, audit store, HTTP, wiring.
        .target(
            name: "Appliance",
            dependencies: [
                "TibetTwin", "Modbus",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        // The command line, thin: parse, call, print.
        .executableTarget(
            name: "tibet-twin",
            dependencies: [
                "TibetTwin", "Appliance", "Modbus",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // `make bench`: figures beside their baselines, in the same run.
        .executableTarget(
            name: "tibet-twin-bench",
            dependencies: [
                "TibetTwin", "Appliance", "Modbus", "CLinux",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "benchmarks/Sources"
        ),
        .testTarget(
            name: "TibetTwinTests",
            dependencies: [
                "TibetTwin",
                .product(name: "PropertyBased", package: "swift-property-based"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(name: "ModbusTests", dependencies: ["Modbus", "CLinux"]),
        .testTarget(
            name: "ApplianceTests",
            dependencies: [
                "Appliance", "TibetTwin", "Modbus",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "InMemoryLogging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["TibetTwin", .product(name: "Crypto", package: "swift-crypto")]
        ),
    ]
)
