import Dispatch
import Foundation
import Testing
@testable import Appliance
import TibetTwin
#if canImport(Glibc)
import Glibc
import TestSupport
#endif

/// A reload's validation is bounded (issue 17): one that overruns is abandoned with the running
/// set kept, a second one is refused while the first still runs, and a cancelled reload (SIGTERM)
/// returns at once. The hung validation is a loader that blocks until the test lets it go: the
/// real ones (alias bombs, FIFOs) are refused before they can hang.
@Suite(.serialized) struct RuntimeReloadBoundTests {
    /// An appliance started in-process from files in a temp dir (PLC on a closed port: the
    /// device blocks, which does not matter here).
    private static func start() async throws -> (ApplianceRuntime, String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tibet-reload-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir + "/maps", withIntermediateDirectories: true)
        try KeyFiles.generate(out: dir + "/guard.key")
        try """
            device: crane-01
            profile: port
            plc: {host: 127.0.0.1, port: \(closedPort()), poll_ms: 50, timeout_ms: 100}
            status: {address: 0, values: {0: operational}}
            registers:
              - {name: position_x, address: 100, type: float32, tolerance: 0.5}
            intents:
              move_left: {coil: 0}

            """.write(toFile: dir + "/maps/crane-01.yaml", atomically: true, encoding: .utf8)
        try """
            node: reload-test
            maps: maps/
            interlock: {listen: 127.0.0.1:0, allow: [127.0.0.0/8], stop_grace_ms: 100}
            twin: {feeds: [{tcp: 127.0.0.1:0}]}
            audit: {dir: audit, key: guard.key}
            http: {listen: 127.0.0.1:0}

            """.write(toFile: dir + "/tibet-twin.yaml", atomically: true, encoding: .utf8)
        return (try await ApplianceRuntime.start(configPath: dir + "/tibet-twin.yaml"), dir)
    }

    private static func stop(_ runtime: ApplianceRuntime, _ run: Task<Void, any Error>, _ dir: String) async throws {
        // shutdown() does nothing before run() has made its group.
        #expect(await eventually(within: 10) { runtime.group.withLock { $0 } != nil })
        await runtime.shutdown()
        try await run.value
        try? FileManager.default.removeItem(atPath: dir)
    }

    @Test func anOverrunningValidationIsAbandonedAndTheRunningSetKept() async throws {
        let (runtime, dir) = try await Self.start()
        let run = Task { try await runtime.run(handleSignals: false) }
        let before = runtime.loaded.configSHA256
        let release = DispatchSemaphore(value: 0)
        let started = ContinuousClock.now
        let outcome = await runtime.reload(limit: .milliseconds(300)) { path throws(StartupError) in
            release.wait()
            return try LoadedConfig.load(configPath: path)
        }
        #expect(ContinuousClock.now - started < .seconds(10), "liveness bound: the limit is 0.3 s")
        #expect(outcome == .refused(["\(dir)/tibet-twin.yaml: reload abandoned: reading and validating the config and maps took longer than 0.3 s"]))
        #expect(runtime.loaded.configSHA256 == before)
        // The abandoned validation still hangs: no second one is started.
        let again = await runtime.reload()
        #expect(again == .refused(["\(dir)/tibet-twin.yaml: reload refused: the validation of an earlier reload overran its time limit and is still running"]))
        // Once it is over, reloads work again.
        release.signal()
        var applied = false
        for _ in 0..<100 where !applied {
            if case .applied = await runtime.reload() { applied = true } else { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(applied)
        try await Self.stop(runtime, run, dir)
    }

    @Test func aCancelledReloadReturnsAtOnce() async throws {
        let (runtime, dir) = try await Self.start()
        let run = Task { try await runtime.run(handleSignals: false) }
        let release = DispatchSemaphore(value: 0)
        let reload = Task {
            await runtime.reload(limit: .seconds(600)) { path throws(StartupError) in
                release.wait()
                return try LoadedConfig.load(configPath: path)
            }
        }
        try await Task.sleep(for: .milliseconds(200))
        reload.cancel()
        let outcome = await reload.value
        #expect(outcome == .refused(["\(dir)/tibet-twin.yaml: reload abandoned: the appliance is stopping"]))
        release.signal()
        try await Self.stop(runtime, run, dir)
    }
}
