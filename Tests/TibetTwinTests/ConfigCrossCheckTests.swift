import Testing
@testable import TibetTwin

/// Feeds and listeners that would collide at start are refused when the config is read, at the
/// later key, naming the first (issue 17, item 7).
@Suite struct ConfigCrossCheckTests {
    private func issues(feeds: [String], interlock: String = "127.0.0.1:502", http: String = "127.0.0.1:9102") -> [String] {
        let yaml = """
            node: t
            interlock: {listen: "\(interlock)"}
            http: {listen: "\(http)"}
            twin:
              feeds:
            \(feeds.map { "    - \($0)" }.joined(separator: "\n"))

            """
        do {
            _ = try ApplianceConfig.parse(yaml: yaml, file: "etc/c.yaml")
            return []
        } catch {
            return error.issues.map(\.description)
        }
    }

    @Test func sameFileTwiceWrittenTwoWays() {
        #expect(issues(feeds: ["file: /run/twin.jsonl", "file: /run/./x/../twin.jsonl"]) == [
            "etc/c.yaml:7:13: twin.feeds[1].file: /run/twin.jsonl is also twin.feeds[0].file (first at etc/c.yaml:6:13): each feed needs its own file",
        ])
    }

    @Test func sameUnixSocketTwiceRelativeToTheConfig() {
        #expect(issues(feeds: ["unix: twin.sock", "unix: ./twin.sock"]) == [
            "etc/c.yaml:7:13: twin.feeds[1].unix: etc/twin.sock is also twin.feeds[0].unix (first at etc/c.yaml:6:13): each feed needs its own unix socket",
        ])
    }

    @Test func aFeedOnTheInterlockOrHTTPPort() {
        #expect(issues(feeds: ["tcp: 0.0.0.0:502"]) == [
            "etc/c.yaml:6:12: twin.feeds[0].tcp: 0.0.0.0:502 collides with interlock.listen 127.0.0.1:502 (first at etc/c.yaml:2:21): two listeners cannot share a port; give each its own",
        ])
        #expect(issues(feeds: ["tcp: 127.0.0.1:7502"], http: "[::]:7502").count == 1)
    }

    @Test func distinctListenersAndPortZeroPass() {
        #expect(issues(feeds: ["tcp: 127.0.0.1:7502", "tcp: 127.0.0.2:7502", "tcp: 127.0.0.1:0", "tcp: 127.0.0.1:0",
                               "tcp: \"[::1]:7503\"", "file: a.jsonl", "file: b.jsonl", "unix: a.sock"],
                       interlock: "0.0.0.0:502", http: "[::1]:502").isEmpty)
    }

    @Test func startupKeysAreLocated() throws {
        let config = try ApplianceConfig.parse(yaml: """
            node: t
            audit:
              key: k.key
            twin: {feeds: [{tcp: 127.0.0.1:7502}, {unix: /run/t.sock}]}

            """, file: "c.yaml")
        #expect(config.location(of: "audit.key").description == "c.yaml:3:8")
        #expect(config.location(of: "audit.dir").description == "c.yaml:3:3", "left out: where audit is")
        #expect(config.location(of: "twin.feeds[1].unix").description == "c.yaml:4:46")
        #expect(config.location(of: "http.listen").description == "c.yaml:1:1", "no http at all: line 1")
    }

    @Test func feedsAreCapped() {
        let many = (0..<33).map { "tcp: 127.0.0.1:\(7000 + $0)" }
        #expect(issues(feeds: many) == ["etc/c.yaml:6:5: twin.feeds: 33 feeds; at most 32 (one listener or file serves any number of twin clients or devices)"])
        #expect(issues(feeds: Array(many.prefix(32))).isEmpty)
    }
}
