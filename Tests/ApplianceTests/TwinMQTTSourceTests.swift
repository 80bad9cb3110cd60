import Foundation
import MQTT
import Synchronization
import Testing
@testable import Appliance
import TibetTwin
import TestSupport

/// Runs `body` with a started MQTT twin source subscribed to `plant/twin/+` of `broker`,
/// stopping it afterwards (also when `body` throws).
func withMQTT(_ broker: MosquittoBroker, tls: MQTTOptions.TLS? = nil, maxMessageBytes: Int = 65_536, topicNamesDevice: Bool = false,
              waitForSubscription: Bool = true,
              _ body: (TwinMQTTSource, Collector, FeedEvents) async throws -> Void) async throws {
    let c = Collector()
    let events = FeedEvents()
    let options = MQTTOptions(host: "127.0.0.1", port: broker.port, clientId: "tibet-test-\(UUID().uuidString.prefix(6))",
                              tls: tls, subscriptions: ["plant/twin/+"], reconnectMinMs: 50, reconnectMaxMs: 500)
    let source = TwinMQTTSource(settings: .init(options: options, maxMessageBytes: maxMessageBytes, topicNamesDevice: topicNamesDevice),
                                pipeline: c.feed, logger: Twin.quiet, events: { e in events.withLock { $0.append(e) } })
    try await source.start()
    do {
        if waitForSubscription {
            #expect(await eventually(within: 20) { source.isSubscribed }, "subscribed\n\(broker.log)")
        }
        try await body(source, c, events)
    } catch {
        await source.stop()
        throw error
    }
    await source.stop()
}

/// The feed events a source reported, in order.
final class FeedEvents: Sendable {
    private let list = Mutex<[TwinFeedEvent]>([])
    func withLock<R>(_ body: (inout [TwinFeedEvent]) -> R) -> R { list.withLock { body(&$0) } }
}

@Suite("Twin feed over MQTT (real mosquitto)", .serialized)
struct TwinMQTTSourceTests {
    @Test func twinLinesFromMosquittoPubAndPahoGoThroughTheSamePipeline() async throws {
        let broker = try MosquittoBroker()
        try await withMQTT(broker) { source, c, _ in
            #expect(try broker.publish(["-t", "plant/twin/crane-01", "-m", Twin.line("crane-01", seq: 1), "-q", "1"]) == 0)
            #expect(try PahoPublish.run(broker, [.init(topic: "plant/twin/crane-01", payload: Twin.line("crane-01", seq: 2)),
                                                  .init(topic: "plant/twin/crane-02", payload: Twin.signedLine("crane-02", seq: 1))]) == 0)
            #expect(await eventually(within: 20) { c.count == 3 })
            #expect(c.seqs("crane-01") == [1, 2])
            #expect(c.seqs("crane-02") == [1], "a signed line verifies as on any feed")
            // A replay is a replay, whichever transport it came by.
            try broker.publish(["-t", "plant/twin/crane-01", "-m", Twin.line("crane-01", seq: 2), "-q", "1"])
            #expect(await eventually(within: 20) { source.counters.dropped[.replay] == 1 })
            #expect(source.counters.accepted == 3)
            #expect(source.name == "mqtt:127.0.0.1:\(broker.port)")
        }
    }

    /// A twin fault arrives on the feed's network thread: it runs at the drop path's priority.
    @Test func theFeedsNetworkThreadRunsAtTheSafetyPriority() async throws {
        let broker = try MosquittoBroker()
        try await withMQTT(broker) { source, c, _ in
            try broker.publish(["-t", "plant/twin/crane-01", "-m", Twin.line("crane-01", seq: 1), "-q", "1"])
            #expect(await eventually(within: 20) { c.count == 1 })
            try SafetyPriorityTests.expectSafetyPriority(ofThreadNamed: "mqtt-\(broker.port)")
        }
    }

    @Test func garbagePayloadIsCountedAndDropped() async throws {
        let broker = try MosquittoBroker()
        try await withMQTT(broker) { source, c, _ in
            try broker.publish(["-t", "plant/twin/crane-01", "-m", "this is not a twin line", "-q", "1"])
            try broker.publish(["-t", "plant/twin/crane-01", "-m", "{\"device\":\"crane-01\"}", "-q", "1"])
            try broker.publish(["-t", "plant/twin/crane-01", "-m", Twin.line("crane-01", seq: 7), "-q", "1"])
            #expect(await eventually(within: 20) { source.counters.lines == 3 })
            #expect(source.counters.dropped[.notJSON] == 1)
            #expect(source.counters.dropped[.missingField] == 1)
            #expect(c.seqs("crane-01") == [7], "only the good line reached the guard")
        }
    }

    @Test func hugeMessageOverTheLimitIsDropped() async throws {
        let broker = try MosquittoBroker()
        try await withMQTT(broker, maxMessageBytes: 4096) { source, c, _ in
            let huge = Data(repeating: UInt8(ascii: "x"), count: 1 << 20)
            #expect(try broker.publish(["-t", "plant/twin/crane-01", "-s", "-q", "1"], stdin: huge) == 0)
            try broker.publish(["-t", "plant/twin/crane-01", "-m", Twin.line("crane-01", seq: 1), "-q", "1"])
            #expect(await eventually(within: 20) { source.counters.lines == 2 })
            #expect(source.counters.dropped[.tooLong] == 1)
            #expect(source.counters.bytes > 1 << 20)
            #expect(c.seqs("crane-01") == [1])
        }
    }

    @Test func aTopicThatNamesAnotherDeviceIsDropped() async throws {
        let broker = try MosquittoBroker()
        try await withMQTT(broker, topicNamesDevice: true) { source, c, _ in
            try broker.publish(["-t", "plant/twin/hoist-77", "-m", Twin.line("crane-01", seq: 1), "-q", "1"])
            try broker.publish(["-t", "plant/twin/crane-01", "-m", Twin.line("crane-01", seq: 2), "-q", "1"])
            #expect(await eventually(within: 20) { source.counters.lines == 2 })
            #expect(source.counters.dropped[.topicMismatch] == 1)
            #expect(c.seqs("crane-01") == [2])
        }
    }

    @Test func floodOfHundredThousandMessagesIsHandledWithoutACrash() async throws {
        let broker = try MosquittoBroker()
        try await withMQTT(broker) { source, c, _ in
            let n = 100_000
            var text = ""
            text.reserveCapacity(n * 160)
            for i in 1...n {
                // A bad line every 10th: the flood mixes work for the parser and the drop path.
                text += i % 10 == 0 ? "garbage \(i)\n" : Twin.line("crane-01", seq: i) + "\n"
            }
            // mosquitto_pub -l: one message per stdin line; it ends by itself at end of input. QoS 0:
            // with -l and QoS 1, mosquitto_pub 2.0.11 drops what is still queued at end of input.
            let input = Data(text.utf8)
            let rc = try broker.publish(["-t", "plant/twin/crane-01", "-l", "-q", "0"], stdin: input)
            #expect(rc == 0)
            #expect(await eventually(within: 180) { source.counters.lines == UInt64(n) }, "\(source.counters.lines) of \(n)")
            #expect(source.counters.accepted == UInt64(n - n / 10))
            #expect(source.counters.dropped[.notJSON] == UInt64(n / 10))
            #expect(c.seqs("crane-01").last == UInt64(n - 1))
            #expect(source.isSubscribed, "still connected after the flood")
        }
    }

    @Test func tlsWithTheRightCAIsAcceptedAndWithTheWrongCARefused() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let broker = try MosquittoBroker(tls: .init(ca: pki.caCert, cert: pki.serverCert, key: pki.serverKey))
        try await withMQTT(broker, tls: .init(caFile: pki.caCert)) { _, c, _ in
            try broker.publish(["-t", "plant/twin/crane-01", "-m", Twin.line("crane-01", seq: 1), "-q", "1"])
            #expect(await eventually(within: 20) { c.seqs("crane-01") == [1] }, "over TLS")
        }
        #expect(try broker.publish(["-t", "plant/twin/crane-01", "-m", "x", "-q", "1"]) == 0, "mosquitto_pub over TLS")
        // A CA that did not sign the broker's certificate: the handshake fails, nothing is read.
        let otherCA = pki.dir + "/other-ca.pem"
        try await withMQTT(broker, tls: .init(caFile: otherCA), waitForSubscription: false) { source, c, events in
            #expect(await eventually(within: 20) { events.withLock { $0.contains { $0.kind == .lost } } })
            let lost = try #require(events.withLock { $0.first })
            #expect(lost.cause == .tls, "\(lost)")
            #expect(lost.detail.contains("mqtt broker 127.0.0.1:\(broker.port)"), "\(lost.detail)")
            try broker.publish(["-t", "plant/twin/crane-01", "-m", Twin.line("crane-01", seq: 2), "-q", "1"])
            try await Task.sleep(for: .milliseconds(300))
            #expect(!source.isSubscribed)
            #expect(c.count == 0)
            #expect(events.withLock { $0.filter { $0.kind == .lost }.count } == 1, "one report per outage, not one per retry")
        }
    }

    @Test func brokerRefusingCredentialsIsReportedAsRefused() async throws {
        let broker = try MosquittoBroker(users: ["twin": "secret-1"])
        try await withMQTT(broker, waitForSubscription: false) { source, _, events in
            #expect(await eventually(within: 20) { !events.withLock { $0.isEmpty } })
            let lost = try #require(events.withLock { $0.first })
            #expect(lost.kind == .lost)
            #expect(lost.cause == .refused, "\(lost)")
            #expect(!source.isSubscribed)
        }
    }

    @Test func passwordFileReadableByEveryoneIsRefusedAtStart() throws {
        let dir = Twin.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "pw\n".write(toFile: dir + "/pw", atomically: true, encoding: .utf8)
        chmod(dir + "/pw", 0o644)
        let file = ApplianceConfig.ConfiguredPath(path: dir + "/pw", keyPath: "twin.feeds[0].mqtt.password_file",
                                                  location: SourceLocation(file: "t.yaml", line: 4, column: 5))
        let feed = ApplianceConfig.MQTTFeed(broker: HostPort(host: "127.0.0.1", port: 1883), topics: ["a"], username: "u", passwordFile: file)
        #expect(throws: TwinFeedConfigError.self) { try TwinMQTTSource.Settings(feed) }
        chmod(dir + "/pw", 0o600)
        let settings = try TwinMQTTSource.Settings(feed)
        #expect(settings.options.password == "pw")
    }
}
