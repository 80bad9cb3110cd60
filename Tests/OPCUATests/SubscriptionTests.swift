import Foundation
import Testing
import TestSupport
@testable import OPCUA

@Suite("OPC UA sequence numbers")
struct SequenceTrackerTests {
    @Test("in order: nothing missed, each data message acknowledged once")
    func inOrder() {
        var t = SequenceTracker()
        #expect(t.receive(1, keepAlive: true) == [])
        #expect(t.receive(1, keepAlive: false) == [])
        #expect(t.receive(2, keepAlive: false) == [])
        #expect(t.takeAcks() == [1, 2])
        #expect(t.takeAcks() == [])
        #expect(t.receive(3, keepAlive: true) == [])  // keep-alive: 3 is the next to come
        #expect(t.receive(3, keepAlive: false) == [])
    }

    @Test("a gap in data messages or before a keep-alive names the missed numbers")
    func gaps() {
        var t = SequenceTracker()
        _ = t.receive(4, keepAlive: false)
        #expect(t.receive(7, keepAlive: false) == [5, 6])
        #expect(t.receive(10, keepAlive: true) == [8, 9])
        #expect(t.receive(10, keepAlive: false) == [])
        #expect(t.receive(9, keepAlive: false) == [])  // a repeat from behind: ignored
        #expect(t.takeAcks() == [4, 7, 10])
    }

    @Test("sequence numbers wrap past UInt32.max to 1")
    func wrap() {
        var t = SequenceTracker()
        _ = t.receive(UInt32.max, keepAlive: false)
        #expect(t.receive(1, keepAlive: false) == [])
        #expect(t.receive(4, keepAlive: false) == [2, 3])
    }
}

/// Against a real asyncua server: the server changes values, the client sees the notifications.
@Suite("OPC UA subscriptions against asyncua", .serialized)
struct AsyncuaSubscriptionTests {
    /// Publishes until `done` holds for the changes seen so far (or 30 s pass); returns them.
    private static func collect(_ c: OPCUAClient, _ tracker: inout SequenceTracker, subscription: SubscriptionInfo,
                                until done: ([DataChange]) -> Bool) throws -> [DataChange] {
        var seen: [DataChange] = []
        let deadline = Date().addingTimeInterval(30)
        while !done(seen) && Date() < deadline {
            let acks = tracker.takeAcks().map { (subscription.id, $0) }
            let result = try c.publish(acknowledging: acks, timeoutMs: Int(subscription.keepAliveMs) + 5000)
            #expect(result.subscriptionId == subscription.id)
            _ = tracker.receive(result.message.sequenceNumber, keepAlive: result.message.isKeepAlive)
            seen += result.message.dataChanges
        }
        return seen
    }

    @Test("initial values, a change, the same value rewritten, a Bad status: each notified with its timestamps")
    func dataChanges() async throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        let endpoint = server.endpoint
        let outcome = try await onThread { () -> ([DataChange], [DataChange], [DataChange], [DataChange], [MonitoredItemResult]) in
            let c = try OPCUAClient(endpoint: endpoint)
            try c.connect()
            defer { c.disconnect() }
            let sub = try c.createSubscription(publishingIntervalMs: 50)
            let items = try c.createMonitoredItems(subscription: sub.id, [
                MonitoredItemRequest(.string("Crane01.PosX", namespace: 2), clientHandle: 1, samplingIntervalMs: 50),
                MonitoredItemRequest(.string("Crane01.Stale", namespace: 2), clientHandle: 2, samplingIntervalMs: 50),
                MonitoredItemRequest(.string("Nope", namespace: 2), clientHandle: 3, samplingIntervalMs: 50),
            ])
            var tracker = SequenceTracker()
            let initial = try Self.collect(c, &tracker, subscription: sub) { s in Set(s.map(\.clientHandle)).isSuperset(of: [1, 2]) }
            try server.command("set PosX double 20.5")
            let changed = try Self.collect(c, &tracker, subscription: sub) { s in s.contains { $0.clientHandle == 1 && $0.value.value == .double(20.5) } }
            try server.command("set PosX double 20.5")
            let rewritten = try Self.collect(c, &tracker, subscription: sub) { s in s.contains { $0.clientHandle == 1 } }
            try server.command("set PosX double 20.5 BadSensorFailure")
            let bad = try Self.collect(c, &tracker, subscription: sub) { s in s.contains { $0.clientHandle == 1 && $0.value.status.isBad } }
            return (initial, changed, rewritten, bad, items)
        }
        let (initial, changed, rewritten, bad, items) = outcome
        #expect(items[0].status == .good && items[1].status == .good)
        #expect(items[2].status == .badNodeIdUnknown)
        let posX = try #require(initial.first { $0.clientHandle == 1 })
        #expect(posX.value.value == .double(12.5) && posX.value.status == .good)
        #expect(posX.value.sourceTimestamp != nil && posX.value.serverTimestamp != nil)
        let stale = try #require(initial.first { $0.clientHandle == 2 })
        #expect(stale.value.status.name == "UncertainLastUsableValue")
        let change = try #require(changed.last { $0.clientHandle == 1 })
        #expect(change.value.value == .double(20.5) && change.value.status == .good)
        // The same value written again, with a new SourceTimestamp, is a notification of its own.
        let again = try #require(rewritten.last { $0.clientHandle == 1 })
        #expect(again.value.value == .double(20.5))
        let t1 = try #require(change.value.sourceTimestamp), t2 = try #require(again.value.sourceTimestamp)
        #expect(t2 > t1)
        let badChange = try #require(bad.last { $0.clientHandle == 1 })
        #expect(badChange.value.status.name == "BadSensorFailure")
    }

    @Test("keep-alives come while nothing changes; Republish returns an unacknowledged message, nil for one never sent")
    func keepAliveAndRepublish() async throws {
        let server = try OPCUAPeer.asyncua()
        defer { server.stop() }
        let endpoint = server.endpoint
        let (keepAlives, republished, original, notAvailable) = try await onThread { () -> (Int, NotificationMessage?, NotificationMessage?, NotificationMessage?) in
            let c = try OPCUAClient(endpoint: endpoint)
            try c.connect()
            defer { c.disconnect() }
            let sub = try c.createSubscription(publishingIntervalMs: 50, maxKeepAliveCount: 3)
            _ = try c.createMonitoredItems(subscription: sub.id, [MonitoredItemRequest(.string("Crane01.Mode", namespace: 2), clientHandle: 9, samplingIntervalMs: 50)])
            var first: NotificationMessage?
            var keepAlives = 0
            let deadline = Date().addingTimeInterval(30)
            while (first == nil || keepAlives < 2) && Date() < deadline {
                let r = try c.publish(acknowledging: [], timeoutMs: Int(sub.keepAliveMs) + 5000)
                if r.message.isKeepAlive { keepAlives += 1 } else if first == nil { first = r.message }
            }
            var again: NotificationMessage?
            if let first { again = try c.republish(subscription: sub.id, sequenceNumber: first.sequenceNumber) }
            let unknown = try c.republish(subscription: sub.id, sequenceNumber: 999_999)
            return (keepAlives, again, first, unknown)
        }
        #expect(keepAlives >= 2)
        let o = try #require(original)
        #expect(o.dataChanges.first?.value.value == .int32(1))
        #expect(republished?.sequenceNumber == o.sequenceNumber)
        #expect(republished?.dataChanges == o.dataChanges)
        #expect(notAvailable == nil)  // a message the server never sent is not available
    }
}
