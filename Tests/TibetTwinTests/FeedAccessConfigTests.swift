import Testing
@testable import TibetTwin

/// The access keys of tcp and unix feeds (docs/config.md `twin.feeds`): allow list, limits,
/// timeouts, TLS files.
@Suite("Appliance config: twin feed access")
struct FeedAccessConfigTests {
    @Test func defaultsAreLoopbackFourPerAddressFiveSecondsIdle() throws {
        let c = try ApplianceConfig.parse(yaml: "node: g\ntwin: {feeds: [{tcp: 0.0.0.0:7502}, {unix: t.sock}]}\n", file: "/etc/t.yaml")
        let access = ApplianceConfig.SocketFeedAccess()
        #expect(access.allow.map(\.description) == ["127.0.0.0/8", "::1/128"])
        #expect(access.maxClients == 32 && access.maxClientsPerAddress == 4)
        #expect(access.idleTimeoutMs == 5000 && access.lineTimeoutMs == 2000 && access.tls == nil)
        #expect(c.twin.feeds == [.tcp(listen: HostPort(host: "0.0.0.0", port: 7502), access: access),
                                 .unix(path: "/etc/t.sock", access: access)])
    }

    @Test func everyKeyIsRead() throws {
        let yaml = """
            node: g
            twin:
              feeds:
                - tcp: 0.0.0.0:7502
                  allow: [10.0.0.0/24, 10.0.1.7]
                  max_clients: 8
                  max_clients_per_address: 2
                  idle_timeout_ms: 0
                  line_timeout_ms: 500
                  tls: {cert: tls/server.pem, key: /etc/tibet-twin/server.key, client_ca: tls/ca.pem}
                - unix: /run/t.sock
                  idle_timeout_ms: 60000
            """
        let c = try ApplianceConfig.parse(yaml: yaml, file: "/etc/tibet-twin/tibet-twin.yaml")
        guard case .tcp(let listen, let a) = c.twin.feeds[0], case .unix(_, let u) = c.twin.feeds[1] else {
            Issue.record("expected a tcp and a unix feed, got \(c.twin.feeds)")
            return
        }
        #expect(listen == HostPort(host: "0.0.0.0", port: 7502))
        #expect(a.allow.map(\.description) == ["10.0.0.0/24", "10.0.1.7/32"])
        #expect(a.maxClients == 8 && a.maxClientsPerAddress == 2 && a.idleTimeoutMs == 0 && a.lineTimeoutMs == 500)
        let tls = try #require(a.tls)
        #expect(tls.cert.path == "/etc/tibet-twin/tls/server.pem")
        #expect(tls.key.path == "/etc/tibet-twin/server.key")
        #expect(tls.clientCA.path == "/etc/tibet-twin/tls/ca.pem")
        #expect(tls.cert.description == "/etc/tibet-twin/tibet-twin.yaml:10:19: twin.feeds[0].tls.cert")
        #expect(tls.clientCA.description == "/etc/tibet-twin/tibet-twin.yaml:10:79: twin.feeds[0].tls.client_ca")
        #expect(u.idleTimeoutMs == 60000 && u.maxClients == 32)
    }

    @Test(arguments: [
        ("node: g\ntwin: {feeds: [{unix: t.sock, allow: [10.0.0.0/8], tls: {}}]}\n",
         [#"etc/t.yaml:2:31: twin.feeds[0].allow: applies only to tcp feeds"#,
          #"etc/t.yaml:2:52: twin.feeds[0].tls: applies only to tcp feeds"#]),
        ("node: g\ntwin: {feeds: [{file: t.jsonl, idle_timeout_ms: 10}]}\n",
         [#"etc/t.yaml:2:32: twin.feeds[0].idle_timeout_ms: applies only to tcp and unix feeds"#]),
        ("node: g\ntwin: {feeds: [{tcp: 127.0.0.1:7502, allow: [], max_clients_per_address: 0, line_timeout_ms: 5}]}\n",
         [#"etc/t.yaml:2:45: twin.feeds[0].allow: is empty: the twin could never connect (list the twin's networks, e.g. [10.0.0.0/24])"#,
          #"etc/t.yaml:2:74: twin.feeds[0].max_clients_per_address: 0 is out of range (expected 1…512 connections)"#,
          #"etc/t.yaml:2:94: twin.feeds[0].line_timeout_ms: 5 is out of range (expected milliseconds 10…60000)"#]),
        ("node: g\ntwin: {feeds: [{tcp: 127.0.0.1:7502, allow: [10.0.0.5/24]}]}\n",
         [#"etc/t.yaml:2:46: twin.feeds[0].allow[0]: "10.0.0.5/24" has host bits set beyond /24 (did you mean 10.0.0.0/24?)"#]),
        ("node: g\ntwin: {feeds: [{tcp: 127.0.0.1:7502, tls: {cert: a.pem, key: a.key}}]}\n",
         [#"etc/t.yaml:2:43: twin.feeds[0].tls.client_ca: missing required key "client_ca" (the CA that signs the twin's client certificate, PEM: without it any client would do)"#]),
        ("node: g\ntwin: {feeds: [{tcp: 127.0.0.1:7502, idle_timout_ms: 10}]}\n",
         [#"etc/t.yaml:2:38: twin.feeds[0].idle_timout_ms: unknown key "idle_timout_ms" (did you mean "idle_timeout_ms"?)"#]),
    ] as [(String, [String])])
    func errorsNameFileLineColumnAndKey(yaml: String, expected: [String]) {
        #expect(configIssues(yaml, file: "etc/t.yaml") == expected)
    }
}
