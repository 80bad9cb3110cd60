import Testing
import TibetTwin

/// `publish:` (docs/config.md#publish): the permits to an MQTT broker, display only.
@Suite("Appliance config: publish")
struct PublishConfigTests {
    static let feeds = "twin: {feeds: [{tcp: 127.0.0.1:7502}]}\n"

    @Test func absentMeansOffAndAMinimalOneTakesTheDefaults() throws {
        #expect(try ApplianceConfig.parse(yaml: "node: g\n" + Self.feeds, file: "t.yaml").publish == nil)
        let c = try ApplianceConfig.parse(yaml: "node: guard-7\n" + Self.feeds
                                          + "publish: {broker: 127.0.0.1:1883, sparkplug: {group: Guards}, json: {}}\n", file: "t.yaml")
        let p = try #require(c.publish)
        #expect(p.sparkplug == .init(group: "Guards", node: "guard-7"), "the edge node is the appliance's node")
        #expect(p.json == .init(prefix: "tibet-twin", retain: true))
        #expect(p.connection.clientId == "tibet-twin-guard-7-publish", "not the feed's client id")
        #expect(p.connection.broker.description == "127.0.0.1:1883")
    }

    @Test func everyKeyIsRead() throws {
        let c = try ApplianceConfig.parse(yaml: """
            node: g
            \(Self.feeds)publish:
              broker: broker.plant.local:8883
              client_id: guard-pub
              protocol: "3.1.1"
              keepalive_s: 30
              username: tibet-guard
              reconnect_min_ms: 100
              reconnect_max_ms: 1000
              sparkplug: {group: Guards, node: edge-1}
              json: {prefix: plant/guards, retain: false}

            """, file: "etc/t.yaml")
        let p = try #require(c.publish)
        #expect(p.sparkplug == .init(group: "Guards", node: "edge-1"))
        #expect(p.json == .init(prefix: "plant/guards", retain: false))
        #expect(p.connection.clientId == "guard-pub" && p.connection.protocolVersion == .v311 && p.connection.keepaliveS == 30)
        #expect(p.connection.username == "tibet-guard" && p.connection.reconnectMinMs == 100 && p.connection.reconnectMaxMs == 1000)
    }

    @Test(arguments: [
        ("publish: {broker: 127.0.0.1:1883}\n", "publishes nothing"),
        ("publish: {broker: 127.0.0.1:1883, json: {prefix: a/+/b}}\n", "publish.json.prefix"),
        ("publish: {broker: 127.0.0.1:1883, sparkplug: {group: a/b}}\n", "publish.sparkplug.group"),
        ("publish: {broker: 127.0.0.1:1883, json: {}, topics: [a]}\n", "publish.topics"),
        ("publish: {json: {}}\n", "publish.broker"),
    ])
    func mistakesAreNamedByKey(tail: String, key: String) {
        let issues = configIssues("node: g\n" + Self.feeds + tail, file: "etc/t.yaml")
        #expect(issues.count == 1 && issues[0].contains(key), "\(issues)")
    }
}
