import Foundation
import Testing
import TestSupport
@testable import OPCUA

/// `OPCUASubscriber` against a real asyncua server: values arrive, a dropped connection and a
/// server restart are reported as lost, and the subscription comes back by itself.
@Suite("OPC UA subscriber against asyncua", .serialized)
struct SubscriberTests {
    final class Recorder: @unchecked Sendable {
        let events = Locked<[OPCUASubscriber.Event]>([])
        func record(_ e: OPCUASubscriber.Event) { events.update { $0.append(e) } }
        var all: [OPCUASubscriber.Event] { events.get() }
        var subscribedCount: Int { all.filter { if case .subscribed = $0 { true } else { false } }.count }
        var lostErrors: [OPCUAError] { all.compactMap { if case .lost(let e, _) = $0 { e } else { nil } } }
        /// Values of node `index` seen after the `n`-th event.
        func values(of index: Int, after n: Int = 0) -> [DataValue] {
            all.dropFirst(n).flatMap { e -> [DataValue] in
                if case .values(let v) = e { return v.filter { $0.index == index }.map(\.value) }
                return []
            }
        }
    }

    @Test("values arrive; a dropped connection and a server restart are lost, then subscribed again")
    func reconnects() async throws {
        var server = try OPCUAPeer.asyncua()
        let port = server.port
        let nodes = try ["ns=2;s=Crane01.PosX", "nsu=urn:tibet-twin:test;s=Crane01.Mode", "ns=2;s=Nope"].map { try NodeIdText(parsing: $0) }
        var config = OPCUASubscriber.Configuration(endpoint: server.endpoint, nodes: nodes, samplingIntervalMs: 50, publishingIntervalMs: 50)
        config.backoffFirstMs = 50
        config.backoffCapMs = 400
        let recorder = Recorder()
        let subscriber = OPCUASubscriber(config) { recorder.record($0) }
        try subscriber.start()
        defer { subscriber.stop() }

        #expect(await eventually(within: 30) { recorder.values(of: 0).contains { $0.value == .double(12.5) } && !recorder.values(of: 1).isEmpty })
        let first = recorder.all.first { if case .subscribed = $0 { true } else { false } }
        #expect(first == .subscribed([.good, .good, .badNodeIdUnknown]))

        // The server drops every connection: lost, then subscribed again, values again.
        try server.command("drop")
        #expect(await eventually(within: 30) { !recorder.lostErrors.isEmpty && recorder.subscribedCount >= 2 })
        let mark = recorder.all.count
        try server.command("set PosX double 21.5")
        #expect(await eventually(within: 30) { recorder.values(of: 0, after: mark).contains { $0.value == .double(21.5) } })

        // The server goes away and comes back on the same port.
        server.stop()
        let lostBefore = recorder.lostErrors.count
        #expect(await eventually(within: 30) { recorder.lostErrors.count > lostBefore })
        server = try OPCUAPeer.asyncua(port: port)
        defer { server.stop() }
        let subscribedBefore = recorder.subscribedCount
        #expect(await eventually(within: 60) { recorder.subscribedCount > subscribedBefore })
        let mark2 = recorder.all.count
        try server.command("set PosX double 33.0 UncertainLastUsableValue")
        #expect(await eventually(within: 30) { recorder.values(of: 0, after: mark2).contains { $0.value == .double(33) && $0.status.name == "UncertainLastUsableValue" } })
    }
}
