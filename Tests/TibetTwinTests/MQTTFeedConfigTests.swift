import Testing
@testable import TibetTwin

/// The `mqtt` twin feed's keys (docs/mqtt.md).
@Suite("Appliance config: mqtt twin feed")
struct MQTTFeedConfigTests {
    @Test func defaultsAndTheClientIdFromTheNode() throws {
        let c = try ApplianceConfig.parse(yaml: "node: guard-7\ntwin: {feeds: [{mqtt: {broker: 127.0.0.1:1883, topics: [plant/twin/+]}}]}\n",
                                          file: "/etc/t.yaml")
        guard case .mqtt(let m) = c.twin.feeds[0] else {
            Issue.record("expected an mqtt feed, got \(c.twin.feeds)")
            return
        }
        #expect(m.broker == HostPort(host: "127.0.0.1", port: 1883))
        #expect(m.topics == ["plant/twin/+"])
        #expect(m.clientId == "tibet-twin-guard-7")
        #expect(m.protocolVersion == .v5 && m.qos == 1 && m.cleanSession && m.keepaliveS == 10)
        #expect(m.maxMessageBytes == 65_536 && !m.topicNamesDevice && m.tls == nil && m.username == nil)
        #expect(c.twin.feeds[0].description == "mqtt:127.0.0.1:1883")
    }

    @Test func everyKeyIsRead() throws {
        let yaml = """
            node: g
            twin:
              feeds:
                - mqtt:
                    broker: broker.plant:8883
                    topics: [plant/twin/+, "site/#"]
                    client_id: guard-a
                    protocol: "3.1.1"
                    keepalive_s: 30
                    qos: 0
                    clean_session: false
                    username: tibet
                    password_file: secrets/mqtt.pw
                    tls: {ca: tls/ca.pem, cert: tls/guard.pem, key: tls/guard.key}
                    max_message_bytes: 4096
                    topic_names_device: true
                    reconnect_min_ms: 100
                    reconnect_max_ms: 10000
            """
        let c = try ApplianceConfig.parse(yaml: yaml, file: "/etc/tibet-twin/tibet-twin.yaml")
        guard case .mqtt(let m) = c.twin.feeds[0] else {
            Issue.record("expected an mqtt feed")
            return
        }
        #expect(m.broker == HostPort(host: "broker.plant", port: 8883))
        #expect(m.topics == ["plant/twin/+", "site/#"])
        #expect(m.clientId == "guard-a" && m.protocolVersion == .v311 && m.keepaliveS == 30 && m.qos == 0 && !m.cleanSession)
        #expect(m.username == "tibet" && m.passwordFile?.path == "/etc/tibet-twin/secrets/mqtt.pw")
        #expect(m.tls?.ca.path == "/etc/tibet-twin/tls/ca.pem" && m.tls?.key?.path == "/etc/tibet-twin/tls/guard.key")
        #expect(m.maxMessageBytes == 4096 && m.topicNamesDevice && m.reconnectMinMs == 100 && m.reconnectMaxMs == 10000)
    }

    @Test(arguments: [
        ("node: g\ntwin: {feeds: [{mqtt: {topics: [a]}}]}\n",
         [#"etc/t.yaml:2:23: twin.feeds[0].mqtt.broker: missing required key "broker" (the broker's host:port, e.g. 127.0.0.1:1883)"#]),
        ("node: g\ntwin: {feeds: [{mqtt: {broker: 127.0.0.1:1883, topics: [a/#/b, x+]}}]}\n",
         [#"etc/t.yaml:2:57: twin.feeds[0].mqtt.topics[0]: invalid topic filter "a/#/b": # must be a whole level and the last one"#,
          #"etc/t.yaml:2:64: twin.feeds[0].mqtt.topics[1]: invalid topic filter "x+": + must be a whole level"#]),
        ("node: g\ntwin: {feeds: [{mqtt: {broker: 127.0.0.1:1883, topics: [a], qos: 2, protocol: 3}}]}\n",
         [#"etc/t.yaml:2:66: twin.feeds[0].mqtt.qos: 2 is out of range (expected 0 or 1 (QoS 2 is not used: a twin line is a state, not an event))"#,
          #"etc/t.yaml:2:79: twin.feeds[0].mqtt.protocol: unknown MQTT protocol version "3" (expected one of: 3.1.1, 5)"#]),
        ("node: g\ntwin: {feeds: [{mqtt: {broker: 127.0.0.1:1883, topics: [a], password_file: p}, allow: [10.0.0.0/8]}]}\n",
         [#"etc/t.yaml:2:61: twin.feeds[0].mqtt.password_file: needs username too"#,
          #"etc/t.yaml:2:80: twin.feeds[0].allow: applies only to tcp and unix feeds"#]),
    ] as [(String, [String])])
    func errorsNameFileLineColumnAndKey(yaml: String, expected: [String]) {
        #expect(configIssues(yaml, file: "etc/t.yaml") == expected)
    }
}
