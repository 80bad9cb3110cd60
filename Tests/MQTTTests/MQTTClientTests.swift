import Foundation
import MQTT
import Synchronization
import Testing
import TestSupport

/// What a client's callbacks saw, in order.
final class Recorder: Sendable {
    let events = Mutex<[MQTTEvent]>([])
    let messages = Mutex<[(topic: String, payload: String, retained: Bool)]>([])

    func client(_ options: MQTTOptions) throws -> MQTTClient {
        try MQTTClient(options: options, onEvent: { e in self.events.withLock { $0.append(e) } },
                       onMessage: { m in
                           let text = String(decoding: m.payload, as: UTF8.self)
                           self.messages.withLock { $0.append((m.topic, text, m.retained)) }
                       })
    }

    var subscribed: Bool { events.withLock { $0.contains { if case .subscribed = $0 { true } else { false } } } }
    var payloads: [String] { messages.withLock { $0.map(\.payload) } }

    var failures: [MQTTError] {
        events.withLock { $0.compactMap { if case .connectFailed(let e) = $0 { e } else { nil } } }
    }
}

@Suite("MQTT client over libmosquitto, against a real mosquitto", .serialized)
struct MQTTClientTests {
    @Test(arguments: [MQTTOptions.ProtocolVersion.v311, .v5])
    func subscribesAndReceivesWhatMosquittoPubPublishes(version: MQTTOptions.ProtocolVersion) async throws {
        let broker = try MosquittoBroker()
        let r = Recorder()
        let client = try r.client(MQTTOptions(host: "127.0.0.1", port: broker.port, clientId: "t-sub", protocolVersion: version,
                                              subscriptions: ["plant/twin/+"]))
        try client.start()
        defer { client.stop() }
        #expect(await eventually(within: 20) { r.subscribed }, "\(r.events.withLock { $0 })")
        #expect(client.isConnected)
        try broker.publish(["-t", "plant/twin/crane-01", "-m", "hello", "-q", "1"])
        try broker.publish(["-t", "plant/other", "-m", "not for us", "-q", "1"])
        #expect(await eventually(within: 20) { r.payloads == ["hello"] })
        // Our own publish comes back through the broker.
        try client.publish(topic: "plant/twin/self", payload: Array("mine".utf8), qos: 1)
        #expect(await eventually(within: 20) { r.payloads == ["hello", "mine"] })
    }

    @Test func brokerRefusingCredentialsIsAClearError() async throws {
        let broker = try MosquittoBroker(users: ["twin": "right-password"])
        let r = Recorder()
        let client = try r.client(MQTTOptions(host: "127.0.0.1", port: broker.port, clientId: "t-auth", username: "twin",
                                              password: "wrong", subscriptions: ["a/#"], reconnectMinMs: 50, reconnectMaxMs: 100))
        try client.start()
        defer { client.stop() }
        #expect(await eventually(within: 20) { !r.failures.isEmpty })
        let e = try #require(r.failures.first)
        #expect(e.kind == .refused)
        #expect(e.reason != nil)
        #expect(e.description.contains("mqtt broker 127.0.0.1:\(broker.port)"), "\(e)")
        #expect(e.description.contains("CONNACK refused"), "\(e)")
        #expect(!client.isConnected)
        #expect(!r.subscribed)
    }

    @Test func unreachableBrokerIsRetriedWithACappedBackoffAndFoundWhenItComes() async throws {
        let port = closedPort()
        let r = Recorder()
        let client = try r.client(MQTTOptions(host: "127.0.0.1", port: port, clientId: "t-retry", subscriptions: ["x"],
                                              reconnectMinMs: 20, reconnectMaxMs: 80))
        try client.start()
        defer { client.stop() }
        #expect(await eventually(within: 20) { r.failures.count >= 3 }, "it keeps trying")
        let e = try #require(r.failures.first)
        #expect(e.kind == .connect)
        #expect(e.description.contains("ECONNREFUSED"), "\(e)")
        let broker = try MosquittoBroker(port: port)
        #expect(await eventually(within: 20) { r.subscribed }, "found once the broker is there\n\(broker.log)")
    }

    @Test func connectionLostWhenTheBrokerDiesAndBackAfterItRestarts() async throws {
        let broker = try MosquittoBroker()
        let r = Recorder()
        let client = try r.client(MQTTOptions(host: "127.0.0.1", port: broker.port, clientId: "t-restart", subscriptions: ["t"],
                                              reconnectMinMs: 20, reconnectMaxMs: 200))
        try client.start()
        defer { client.stop() }
        #expect(await eventually(within: 20) { r.subscribed })
        broker.stop()
        #expect(await eventually(within: 20) {
            r.events.withLock { $0.contains { if case .connectionLost = $0 { true } else { false } } }
        })
        #expect(await eventually(within: 20) { !client.isConnected })
        try broker.start()
        #expect(await eventually(within: 20) {
            r.events.withLock { $0.filter { if case .subscribed = $0 { true } else { false } }.count } == 2
        }, "subscribed again after the reconnect")
        try broker.publish(["-t", "t", "-m", "after", "-q", "1"])
        #expect(await eventually(within: 20) { r.payloads == ["after"] })
    }

    @Test func retainedMessagesAreMarkedRetained() async throws {
        let broker = try MosquittoBroker()
        try broker.publish(["-t", "s/1", "-m", "old state", "-r", "-q", "1"])
        let r = Recorder()
        let client = try r.client(MQTTOptions(host: "127.0.0.1", port: broker.port, clientId: "t-ret", subscriptions: ["s/#"]))
        try client.start()
        defer { client.stop() }
        #expect(await eventually(within: 20) { r.messages.withLock { $0.count } == 1 })
        #expect(r.messages.withLock { $0.first?.retained } == true)
    }
}
