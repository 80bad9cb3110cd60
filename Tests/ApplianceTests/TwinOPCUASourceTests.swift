import Foundation
import OPCUA
import Synchronization
import Testing
@testable import Appliance
import TibetTwin
import TestSupport

/// Crane01 of scripts/asyncua_server.py bound as `crane-01`'s twin.
private let craneBinding = OPCUABinding(
    status: .init(node: "ns=2;s=Crane01.Mode", values: [1: "operational", 2: "fault"]),
    values: ["position_x": "ns=2;s=Crane01.PosX", "load_kg": "nsu=urn:tibet-twin:test;s=Crane01.Load"],
    samplingMs: 50)

/// Runs `body` with a started OPC UA twin source on `server`, stopping it afterwards.
private func withOPCUA(_ server: OPCUAPeer, binding: OPCUABinding = craneBinding,
                       _ body: (TwinOPCUASource, Collector, FeedEvents) async throws -> Void) async throws {
    let c = Collector()
    let events = FeedEvents()
    let source = TwinOPCUASource(settings: .init(endpoint: server.endpoint, publishingMs: 50, reconnectMinMs: 50, reconnectMaxMs: 500,
                                                 bindings: ["crane-01": binding]),
                                 pipeline: c.feed, logger: Twin.quiet, events: { e in events.withLock { $0.append(e) } })
    try await source.start()
    do {
        #expect(await eventually(within: 20) { source.isSubscribed }, "subscribed")
        try await body(source, c, events)
    } catch {
        await source.stop()
        throw error
    }
    await source.stop()
}

@Suite("Twin feed over OPC UA (real asyncua server)", .serialized)
struct TwinOPCUASourceTests {
    @Test func theTwinsTsIsTheOldestSourceTimestampOfItsBoundNodes() async throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        // Load was written a minute ago (before the server started, as far as its clock says).
        try server.command("setat Load float 2500 60000")
        try await withOPCUA(server) { _, c, _ in
            let before = SystemTimeSource().now().wallNs
            try server.command("set PosX double 13.5")
            try server.command("set Mode int32 1")
            #expect(await eventually(within: 20) { c.all.last?.values["position_x"] == 13.5 && c.all.last?.status == "operational" },
                    "\(c.all.last.map { "\($0)" } ?? "no state")")
            let s = try #require(c.all.last)
            // PosX and Mode are fresh; the state is as old as Load.
            #expect(s.tsNs < before - 55_000_000_000 && s.tsNs > before - 70_000_000_000, "ts \(s.tsNs) vs \(before)")
            #expect(s.values["load_kg"] == 2500)
            #expect(s.quality?.timestamp == .source)
            #expect(s.quality?.values["load_kg"] == TwinQuality.Value(.good))
        }
    }

    /// A twin fault arrives on the subscriber's thread: it runs at the drop path's priority.
    @Test func theSubscribersThreadRunsAtTheSafetyPriority() async throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        try await withOPCUA(server) { _, c, _ in
            try server.command("set PosX double 13.5")
            #expect(await eventually(within: 20) { c.all.last?.values["position_x"] == 13.5 })
            try SafetyPriorityTests.expectSafetyPriority(ofThreadNamed: "twin-opcua")
        }
    }

    @Test func aNodeWithoutSourceTimestampFallsBackToItsServerTimestampAndSaysSo() async throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        try await withOPCUA(server) { _, c, _ in
            try server.command("setserver PosX double 13")
            #expect(await eventually(within: 20) { c.all.last?.values["position_x"] == 13 })
            #expect(c.all.last?.quality?.timestamp == .server)
        }
    }

    @Test func uncertainValueIsLeftOutOfTheStateWithItsReason() async throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        try await withOPCUA(server) { _, c, _ in
            try server.command("set Load float 2500 UncertainLastUsableValue")
            #expect(await eventually(within: 20) { c.all.last?.quality?.values["load_kg"]?.level == .uncertain })
            let s = try #require(c.all.last)
            #expect(s.values["load_kg"] == nil, "missing for the rule")
            #expect(s.quality?.values["load_kg"]?.reason == "UncertainLastUsableValue")
            try server.command("set Mode int32 7")
            #expect(await eventually(within: 20) { c.all.last?.quality?.values["status"]?.level == .bad })
            #expect(c.all.last?.status == "", "a code status.values does not name is no status")
        }
    }

    @Test func unknownNodeIsReportedAsNotMonitoredAndItsValueMissing() async throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        var b = craneBinding
        b.values["position_x"] = "ns=2;s=Crane01.NoSuchNode"
        try await withOPCUA(server, binding: b) { source, c, _ in
            try server.command("set Load float 2500")
            #expect(await eventually(within: 20) { c.all.last?.values["load_kg"] == 2500 })
            #expect(c.all.last?.values["position_x"] == nil)
            #expect(c.all.last?.quality?.values["position_x"] == TwinQuality.Value(.bad, reason: "not monitored: BadNodeIdUnknown"))
            #expect(source.counters.accepted > 0)
        }
    }

    @Test func serverGoneWithdrawsEveryBoundDeviceAndReportsTheCauseOnce() async throws {
        let server = try OPCUAPeer.asyncua()
        let withdrawn = Mutex<[String]>([])
        let feed = TwinFeedPipeline(parser: Twin.parser(), withdraw: { d in withdrawn.withLock { $0.append(d) } }) { _ in }
        let events = FeedEvents()
        let source = TwinOPCUASource(settings: .init(endpoint: server.endpoint, reconnectMinMs: 50, reconnectMaxMs: 200,
                                                     bindings: ["crane-01": craneBinding]),
                                     pipeline: feed, logger: Twin.quiet, events: { e in events.withLock { $0.append(e) } })
        try await source.start()
        #expect(await eventually(within: 20) { source.isSubscribed })
        server.stop()
        #expect(await eventually(within: 20) { withdrawn.withLock { $0.contains("crane-01") } })
        try await Task.sleep(for: .milliseconds(600))  // several reconnect attempts
        await source.stop()
        let lost = events.withLock { $0 }.filter { $0.kind == .lost }
        #expect(lost.count == 1, "one outage, reported once: \(lost)")
        #expect(lost.first.map { [.connectionLost, .serverUnreachable, .sessionLost].contains($0.cause) } == true, "\(lost)")
    }
}

/// The view's rules without a server (pure logic).
@Suite("OPC UA twin view")
struct OPCUATwinViewTests {
    func dv(_ v: Variant, _ status: StatusCode = .good, sourceMs: Int64) -> DataValue {
        DataValue(value: v, status: status, sourceTimestamp: UADateTime(unixNanoseconds: sourceMs * 1_000_000))
    }

    @Test func heartbeatThatStandsStillLongerThanMaxStallIsStalledAndResumesWhenItMoves() {
        var b = craneBinding
        b.heartbeat = .init(node: "ns=2;s=Crane01.Beat", maxStallMs: 300)
        var v = OPCUATwinView(bindings: ["crane-01": b])
        let beat = v.nodes.firstIndex(of: "ns=2;s=Crane01.Beat")!
        v.subscribed(Array(repeating: .good, count: v.nodes.count), nowNs: 0)
        _ = v.update([.init(index: beat, value: dv(.uint32(1), sourceMs: 0))], nowNs: 0)
        #expect(v.checkHeartbeats(nowNs: 200_000_000).stalled.isEmpty)
        // The same value with a new timestamp is not a beat.
        _ = v.update([.init(index: beat, value: dv(.uint32(1), sourceMs: 250))], nowNs: 250_000_000)
        let r = v.checkHeartbeats(nowNs: 400_000_000)
        #expect(r.stalled.map(\.device) == ["crane-01"])
        #expect(r.stalled.first?.detail.contains("heartbeat ns=2;s=Crane01.Beat has not changed for 400 ms (max_stall_ms 300)") == true)
        #expect(v.checkHeartbeats(nowNs: 500_000_000).stalled.isEmpty, "reported once")
        _ = v.update([.init(index: beat, value: dv(.uint32(2), sourceMs: 600))], nowNs: 600_000_000)
        #expect(v.checkHeartbeats(nowNs: 650_000_000).resumed == ["crane-01"])
    }

    @Test func nodesSharedByTwoMapsAreSubscribedOnceAtTheFasterSampling() {
        var fast = craneBinding
        fast.samplingMs = 20
        let v = OPCUATwinView(bindings: ["a": craneBinding, "b": fast])
        #expect(v.nodes.count == 3)
        #expect(v.samplingMs.allSatisfy { $0 == 20 })
    }
}
