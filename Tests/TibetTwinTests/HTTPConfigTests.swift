import Testing
@testable import TibetTwin

/// The `http:` section: request deadline, per-address connections, reset token and rate.
@Suite("Appliance config: http")
struct HTTPConfigTests {
    static let base = "node: g\ntwin: {feeds: [{tcp: 127.0.0.1:7502}]}\n"

    @Test func defaultsAndEveryKey() throws {
        let d = try ApplianceConfig.parse(yaml: Self.base, file: "t.yaml").http
        #expect(d.requestTimeoutMs == 2000 && d.maxConnectionsPerClient == 8 && d.resetsPerSecond == 5)
        #expect(d.resetTokenFile == nil)
        let yaml = Self.base + """
            http:
              listen: 0.0.0.0:9102
              request_timeout_ms: 500
              max_connections_per_client: 4
              reset_token_file: secrets/reset.token
              resets_per_s: 20

            """
        let c = try ApplianceConfig.parse(yaml: yaml, file: "site/tibet-twin.yaml").http
        #expect(c.listen == HostPort(host: "0.0.0.0", port: 9102))
        #expect(c.requestTimeoutMs == 500 && c.maxConnectionsPerClient == 4 && c.resetsPerSecond == 20)
        #expect(c.resetTokenFile == "site/secrets/reset.token")
        #expect(c.resetTokenFileLocation == SourceLocation(file: "site/tibet-twin.yaml", line: 7, column: 21))
    }

    /// Reset must not be open to the network: a non-loopback listener without a token is a
    /// start-up error at `http.listen`'s line and column.
    @Test(arguments: ["0.0.0.0:9102", "\"[::]:9102\"", "10.0.0.5:9102", "guard-01.plant:9102"])
    func nonLoopbackWithoutTokenIsRefused(listen: String) {
        let issues = configIssues(Self.base + "http:\n  listen: \(listen)\n", file: "etc/tibet-twin.yaml")
        #expect(issues.count == 1)
        #expect(issues.first?.hasPrefix("etc/tibet-twin.yaml:4:11: http.listen: ") == true, "\(issues)")
        #expect(issues.first?.contains("http.reset_token_file is not set") == true, "\(issues)")
    }

    @Test(arguments: ["127.0.0.1:9102", "127.1.2.3:0", "\"[::1]:9102\"", "localhost:9102", "LOCALHOST:1"])
    func loopbackNeedsNoToken(listen: String) {
        #expect(configIssues(Self.base + "http: {listen: \(listen)}\n").isEmpty)
    }

    @Test func badValuesAreNamed() {
        let issues = configIssues(Self.base + "http: {request_timeout_ms: 5, max_connections_per_client: 99, resets_per_s: 0, token: x}\n")
        #expect(issues.count == 4, "\(issues)")
        #expect(issues.contains { $0.contains("http.request_timeout_ms") })
        #expect(issues.contains { $0.contains("http.max_connections_per_client") })
        #expect(issues.contains { $0.contains("http.resets_per_s") })
        #expect(issues.contains { $0.contains("unknown key \"token\"") })
    }

    @Test func theTokenLocationIsNotPartOfTheSetting() {
        var a = ApplianceConfig.HTTP(resetTokenFile: "/t")
        var b = a
        a.resetTokenFileLocation = SourceLocation(file: "x", line: 1, column: 1)
        b.resetTokenFileLocation = SourceLocation(file: "x", line: 9, column: 1)
        #expect(a == b, "moving the line does not make a reload report http as changed")
    }
}
