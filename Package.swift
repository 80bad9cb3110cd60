// swift-tools-version: 6.1
import PackageDescription

// Linux only: the interlock server and the system-call layer are built on epoll, eventfd and
// other Linux calls, and the appliance runs under systemd. No other platform is claimed.
//
// Versions are pinned exactly: the machines resolve packages from a local mirror that holds
// only listed versions, and `from:` may pick a newer patch than the one we tested.
let package = Package(
    name: "tibet-twin",
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
        .package(url: "https://github.com/apple/swift-nio-ssl", exact: "2.37.6"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", exact: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", exact: "2.4.1"),
        .package(url: "https://github.com/x-sheep/swift-property-based", exact: "2.0.1"),
        .package(url: "https://github.com/apple/swift-protobuf", exact: "1.39.0"),
        .package(url: "https://github.com/apple/swift-certificates", exact: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", exact: "1.7.4"),
    ],
    targets: [
        // The only door to libmodbus. shim.h re-exports what Swift cannot import.
        .systemLibrary(
            name: "CModbus",
            pkgConfig: "libmodbus",
            providers: [.apt(["libmodbus-dev"])]
        ),
        // The only door to libmosquitto (MQTT 3.1.1 and 5, TLS).
        .systemLibrary(
            name: "CMosquitto",
            pkgConfig: "libmosquitto",
            providers: [.apt(["libmosquitto-dev"])]
        ),
        // Linux calls Glibc does not give Swift (epoll, eventfd, accept4, pthread_setname_np).
        .systemLibrary(name: "CLinux", path: "Sources/CLinux"),
        // The system-call layer: errno names, calls retried after EINTR, threads, the monotonic
        // condition, wait queue and rate limit every part uses. No protocol, no guard logic.
        .target(name: "Platform", dependencies: ["CLinux"]),
        // Swift over libmodbus: client, server-side reply helpers, typed errors. No guard logic.
        .target(
            name: "Modbus",
            dependencies: ["CModbus", "CLinux", "Platform"]
        ),
        // Our OPC UA client: binary encoding with strict bounds, UA-TCP, secure channel, session,
        // services, security policy Basic256Sha256 (RSA, AES-CBC, X.509 from swift-crypto and
        // swift-certificates). Blocking, one thread per client. No guard logic.
        // OPC UA's NodeIds, GUIDs and endpoint URL syntax as plain values: what the core needs to
        // check a binding, without the client. Re-exported by OPCUA.
        .target(name: "OPCUATypes"),
        .target(
            name: "OPCUA",
            dependencies: [
                "OPCUATypes",
                "Platform",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        // Swift over libmosquitto: a client on its own network thread, reconnect with a capped
        // backoff, typed errors. No guard logic.
        .target(
            name: "MQTT",
            dependencies: ["CMosquitto", "Platform"]
        ),
        // Sparkplug B: the payload schema (proto/, generated Swift committed: `make sparkplug-proto`),
        // topics, and a host application's view of edge nodes (births, aliases, seq). No guard logic.
        .target(
            name: "SparkplugB",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")],
            exclude: ["proto"]
        ),
        // The pure core: maps, decoding, states, the decision rule, profiles, tokens.
        // No sockets, no files it is not handed, no clocks it does not get handed.
        .target(
            name: "TibetTwin",
            dependencies: [
                // The NodeId and endpoint syntax of OPC UA bindings and feeds (pure values).
                "OPCUATypes",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // The running system, a folder per subsystem: Poller, TwinFeeds, Guard, Interlock, Audit,
        // Operator (HTTP API and status), Config, Runtime (the wiring of `run`). Not a product:
        // its API is `package`.
        .target(
            name: "Appliance",
            dependencies: [
                "TibetTwin", "Modbus", "MQTT", "SparkplugB", "OPCUA", "Platform",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // Commissioning tools, not the appliance: the PLC simulator (`simulate`) and the crane
        // demo (`demo`). The command line links them; `run` does not depend on them.
        .target(
            name: "Commissioning",
            dependencies: [
                "TibetTwin", "Modbus", "MQTT", "Platform", "Appliance",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The command line, thin: parse, call, print.
        .executableTarget(
            name: "tibet-twin",
            dependencies: [
                "TibetTwin", "Appliance", "Commissioning", "Modbus", "OPCUA", "Platform",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // `make bench`: figures beside their baselines, in the same run.
        .executableTarget(
            name: "tibet-twin-bench",
            dependencies: [
                "TibetTwin", "Appliance", "Commissioning", "Modbus", "MQTT", "SparkplugB", "OPCUA", "Platform", "CLinux",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "benchmarks/Sources"
        ),
        // One hot path at a time, synchronously, for callgrind (docs/benchmarks.md).
        .executableTarget(
            name: "tibet-twin-profile",
            dependencies: ["TibetTwin", "Appliance"],
            path: "benchmarks/Profile"
        ),
        // `make fuzz`: libFuzzer over the map/config reader, the twin line parser, the Modbus
        // request framer and the OPC UA decoder (built with -sanitize=fuzzer -DFUZZING); without
        // those flags, a tool that replays the committed corpus through the same invariants (a
        // test runs it).
        .executableTarget(
            name: "tibet-twin-fuzz",
            dependencies: [
                "TibetTwin", "Modbus", "OPCUA",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "fuzz/Sources"
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
        // What the test targets share: package paths, the pymodbus PLC, the OPC UA peers (asyncua
        // and a hostile server), waits, socket helpers.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "ModbusTests", dependencies: ["Modbus", "CLinux", "Platform", "TestSupport"]),
        .testTarget(name: "OPCUATests", dependencies: ["OPCUA", "Platform", "TestSupport"]),
        .testTarget(name: "MQTTTests", dependencies: ["MQTT", "SparkplugB", "Platform", "TestSupport"]),
        .testTarget(
            name: "ApplianceTests",
            dependencies: [
                "Appliance", "Commissioning", "TibetTwin", "Modbus", "MQTT", "OPCUA", "Platform", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "InMemoryLogging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["TibetTwin", "SparkplugB", "TestSupport", .product(name: "Crypto", package: "swift-crypto")]
        ),
    ]
)
