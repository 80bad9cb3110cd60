import Testing
@testable import TibetTwin

/// A config with every section, in the shape of the example in docs/config.md.
let specConfig = """
    node: guard-01                      # this appliance's name, in every audit token
    maps: maps/                         # folder of register maps, one device per file
    interlock:
      listen: 0.0.0.0:502               # Modbus/TCP server for the interlock PLCs
      unit: 1                           # unit id answered (0 and 255 too: the Modbus/TCP 'this device')
      allow: [127.0.0.0/8, 10.0.0.0/24] # client CIDRs; anything else is refused at accept
      max_clients: 16
    twin:
      feeds:
        - file: /var/lib/tibet-twin/twin.jsonl   # followed like tail -F (rotation, truncation)
        - tcp: 127.0.0.1:7502
        - unix: /run/tibet-twin/twin.sock
    audit:
      dir: /var/lib/tibet-twin/audit
      key: /etc/tibet-twin/guard.key    # Ed25519 signing key (tibet-twin keygen)
      checkpoint_s: 60
    http:
      listen: 127.0.0.1:9102            # /metrics /status /healthz

    """

func configIssues(_ yaml: String, file: String = "etc/tibet-twin.yaml") -> [String] {
    do {
        _ = try ApplianceConfig.parse(yaml: yaml, file: file)
        return []
    } catch {
        return error.issues.map(\.description)
    }
}

@Suite("Appliance config")
struct ApplianceConfigTests {
    @Test func specExampleParses() throws {
        let c = try ApplianceConfig.parse(yaml: specConfig, file: "/etc/tibet-twin/tibet-twin.yaml")
        #expect(c.node == "guard-01")
        #expect(c.maps == ["/etc/tibet-twin/maps/"])
        #expect(c.interlock.listen == HostPort(host: "0.0.0.0", port: 502))
        #expect(c.interlock.unit == 1 && c.interlock.maxClients == 16)
        #expect(c.interlock.allow.map(\.description) == ["127.0.0.0/8", "10.0.0.0/24"])
        #expect(c.interlock.stopGraceMs == 2000 && c.interlock.idleTimeoutMs == 60000 && c.interlock.byteTimeoutMs == 500)
        #expect(c.twin.feeds == [.file(path: "/var/lib/tibet-twin/twin.jsonl", fromStart: false),
                                 .tcp(listen: HostPort(host: "127.0.0.1", port: 7502)),
                                 .unix(path: "/run/tibet-twin/twin.sock")])
        #expect(c.audit == ApplianceConfig.Audit(dir: "/var/lib/tibet-twin/audit", key: "/etc/tibet-twin/guard.key",
                                                 checkpointS: 60, segmentBytes: 64 << 20))
        #expect(c.http.listen == HostPort(host: "127.0.0.1", port: 9102))
        #expect(c.sourceFile == "/etc/tibet-twin/tibet-twin.yaml")
        #expect(c.keyLocations["twin"] == SourceLocation(file: "/etc/tibet-twin/tibet-twin.yaml", line: 9, column: 3))
    }

    /// The shipped example documents the defaults: parsing it gives the defaults plus its feed.
    @Test func shippedExampleParsesToTheDefaults() throws {
        let text = try String(contentsOf: packageRoot.appendingPathComponent("tibet-twin.example.yaml"), encoding: .utf8)
        let c = try ApplianceConfig.parse(yaml: text, file: "/etc/tibet-twin/tibet-twin.yaml")
        #expect(c.node == "guard-01" && c.maps == ["/etc/tibet-twin/maps/"])
        #expect(c.interlock == ApplianceConfig.Interlock())
        #expect(c.twin.feeds == [.tcp(listen: HostPort(host: "127.0.0.1", port: 7502))])
        #expect(c.audit == ApplianceConfig.Audit())
        #expect(c.http == ApplianceConfig.HTTP())
    }

    @Test func minimalConfigGetsApplianceDefaults() throws {
        let c = try ApplianceConfig.parse(yaml: "node: g\ntwin: {feeds: [{tcp: '127.0.0.1:7502'}]}\n", file: "tibet-twin.yaml")
        #expect(c.maps == ["maps/"])
        #expect(c.interlock == ApplianceConfig.Interlock())
        #expect(c.interlock.listen.description == "0.0.0.0:502" && c.interlock.unit == 1)
        #expect(c.interlock.allow.map(\.description) == ["127.0.0.0/8", "::1/128"])
        #expect(c.audit == ApplianceConfig.Audit())
        #expect(c.http.listen.description == "127.0.0.1:9102")
    }

    @Test func relativePathsAreRelativeToTheConfigFile() throws {
        let yaml = """
            node: g
            maps: [maps/, ../shared/cranes.yaml, /abs/maps]
            twin: {feeds: [{file: twin.jsonl, from_start: true}, {unix: run/twin.sock}]}
            audit: {dir: audit, key: keys/guard.key, checkpoint_s: 5, segment_bytes: 1048576}
            interlock: {listen: "[::]:1502", unit: 7, allow: [10.1.0.0/16, fd00::/8, 192.168.1.7], max_clients: 4, stop_grace_ms: 0, idle_timeout_ms: 0, byte_timeout_ms: 250}
            http: {listen: "localhost:0"}

            """
        let c = try ApplianceConfig.parse(yaml: yaml, file: "site/tibet-twin.yaml")
        #expect(c.maps == ["site/maps/", "site/../shared/cranes.yaml", "/abs/maps"])
        #expect(c.twin.feeds == [.file(path: "site/twin.jsonl", fromStart: true), .unix(path: "site/run/twin.sock")])
        #expect(c.audit == ApplianceConfig.Audit(dir: "site/audit", key: "site/keys/guard.key", checkpointS: 5, segmentBytes: 1 << 20))
        #expect(c.audit.retainMaxBytes == nil && c.audit.retainMaxAgeDays == nil)
        let retained = try ApplianceConfig.parse(
            yaml: "node: g\ntwin: {feeds: [{tcp: 127.0.0.1:7502}]}\naudit: {retain: {max_bytes: 1073741824, max_age_days: 90}}\n",
            file: "t.yaml")
        #expect(retained.audit.retainMaxBytes == 1 << 30 && retained.audit.retainMaxAgeDays == 90)
        let byAge = try ApplianceConfig.parse(
            yaml: "node: g\ntwin: {feeds: [{tcp: 127.0.0.1:7502}]}\naudit:\n  retain:\n    max_age_days: 30\n", file: "t.yaml")
        #expect(byAge.audit.retainMaxBytes == nil && byAge.audit.retainMaxAgeDays == 30)
        #expect(c.interlock == ApplianceConfig.Interlock(
            listen: HostPort(host: "::", port: 1502), unit: 7,
            allow: [CIDRBlock("10.1.0.0/16")!, CIDRBlock("fd00::/8")!, CIDRBlock("192.168.1.7/32")!],
            maxClients: 4, stopGraceMs: 0, idleTimeoutMs: 0, byteTimeoutMs: 250))
        #expect(c.interlock.listen.description == "[::]:1502")
        #expect(c.http.listen == HostPort(host: "localhost", port: 0))
    }

    @Test(arguments: [
        ("node: g\ntwin: {feeds: [{tcp: 127.0.0.1:7502}]}\nmax_clients: 3\n",
         [#"etc/tibet-twin.yaml:3:1: max_clients: unknown key "max_clients" (expected one of: node, maps, interlock, twin, audit, http, publish)"#]),
        ("node: g\ntwin: {feeds: [{tcp: 127.0.0.1:7502}]}\ninterlock: {alow: [10.0.0.0/8]}\n",
         [#"etc/tibet-twin.yaml:3:13: interlock.alow: unknown key "alow" (did you mean "allow"?)"#]),
        ("node: g\ntwin: {feeds: [{tcp: 127.0.0.1:7502}]}\ninterlock: {allow: [10.0.0.5/24, 10.0.0.0/33, 300.1.1.1, fe80::1/64]}\n",
         [#"etc/tibet-twin.yaml:3:21: interlock.allow[0]: "10.0.0.5/24" has host bits set beyond /24 (did you mean 10.0.0.0/24?)"#,
          #"etc/tibet-twin.yaml:3:34: interlock.allow[1]: "10.0.0.0/33": prefix length must be 0…32"#,
          #"etc/tibet-twin.yaml:3:47: interlock.allow[2]: "300.1.1.1" is not an IPv4 or IPv6 network (expected e.g. 10.0.0.0/24 or fd00::/64)"#,
          #"etc/tibet-twin.yaml:3:58: interlock.allow[3]: "fe80::1/64" has host bits set beyond /64 (did you mean fe80::/64?)"#]),
        ("node: g\ntwin: {feeds: [{tcp: 127.0.0.1:7502}]}\ninterlock: {allow: []}\n",
         [#"etc/tibet-twin.yaml:3:20: interlock.allow: is empty: no interlock PLC could connect (list the PLCs' networks, e.g. [10.0.0.0/24])"#]),
        ("node: g\ntwin: {feeds: [{tcp: 127.0.0.1:7502}]}\ninterlock: {listen: 0.0.0.0, unit: 0, max_clients: 2000}\n",
         [#"etc/tibet-twin.yaml:3:21: interlock.listen: invalid address "0.0.0.0" (expected host:port, e.g. 0.0.0.0:502, 127.0.0.1:9102 or [::1]:502)"#,
          #"etc/tibet-twin.yaml:3:36: interlock.unit: 0 is out of range (expected a unit id 1…247; 0 and 255 are always answered)"#,
          #"etc/tibet-twin.yaml:3:52: interlock.max_clients: 2000 is out of range (expected 1…512 connections (descriptors stay below 1024))"#]),
        ("node: g\ntwin: {feeds: []}\n",
         [#"etc/tibet-twin.yaml:2:15: twin.feeds: needs at least one feed: without a twin, nothing is ever permitted"#]),
        ("node: g\ntwin: {feeds: [{tcp: 127.0.0.1:7502, from_start: true}, {file: a, tcp: b}, {}, {file: x, from_start: 1}]}\n",
         [#"etc/tibet-twin.yaml:2:38: twin.feeds[0].from_start: applies only to file feeds"#,
          #"etc/tibet-twin.yaml:2:57: twin.feeds[1]: has file and tcp: one source per entry"#,
          #"etc/tibet-twin.yaml:2:76: twin.feeds[2]: needs one of file, tcp, unix, mqtt, opcua"#,
          #"etc/tibet-twin.yaml:2:102: twin.feeds[3].from_start: expected true or false, got "1""#]),
        ("twin: {feeds: [{tcp: 127.0.0.1:7502}]}\naudit: {checkpoint_s: 0, segment_bytes: 10}\nhttp: {listen: 9102}\n",
         [#"etc/tibet-twin.yaml:1:1: node: missing required key "node" (this appliance's name, in every audit token)"#,
          #"etc/tibet-twin.yaml:2:23: audit.checkpoint_s: 0 is out of range (expected seconds 1…86400)"#,
          #"etc/tibet-twin.yaml:2:41: audit.segment_bytes: 10 is out of range (expected bytes 65536…1099511627776)"#,
          #"etc/tibet-twin.yaml:3:16: http.listen: invalid address "9102" (expected host:port, e.g. 0.0.0.0:502, 127.0.0.1:9102 or [::1]:502)"#]),
        ("node: g\ntwin: {feeds: [{tcp: 127.0.0.1:7502}]}\naudit: {retain: {max_bytes: 1GiB, max_age_days: 0, keep: 3}}\n",
         [#"etc/tibet-twin.yaml:3:29: audit.retain.max_bytes: expected bytes 1048576…1125899906842624, got "1GiB""#,
          #"etc/tibet-twin.yaml:3:49: audit.retain.max_age_days: 0 is out of range (expected days 1…36500)"#,
          #"etc/tibet-twin.yaml:3:52: audit.retain.keep: unknown key "keep" (expected one of: max_bytes, max_age_days)"#]),
        ("node: g\ntwin: {feeds: [{tcp: 127.0.0.1:7502}]}\naudit: {retain: 90}\n",
         [#"etc/tibet-twin.yaml:3:17: audit.retain: expected a mapping (max_bytes, max_age_days), got "90""#]),
        ("node: g\n", [#"etc/tibet-twin.yaml:1:1: twin: missing required key "twin" (where twin feed lines come from: {feeds: [{tcp: 127.0.0.1:7502}]})"#]),
        ("node: [g\n", [#"etc/tibet-twin.yaml:2:1: YAML syntax error: did not find expected ',' or ']' (while parsing a flow sequence at 1:7)"#]),
        ("", ["etc/tibet-twin.yaml:1:1: empty config file (expected a mapping with node, maps, interlock, twin, audit, http)"]),
    ] as [(String, [String])])
    func errorsNameFileLineColumnAndKey(yaml: String, expected: [String]) {
        #expect(configIssues(yaml) == expected)
    }
}

@Suite("Addresses and CIDR blocks")
struct NetworkTextTests {
    @Test(arguments: [
        ("127.0.0.0/8", [127, 0, 0, 1] as [UInt8], true), ("127.0.0.0/8", [128, 0, 0, 1], false),
        ("10.0.0.0/24", [10, 0, 0, 255], true), ("10.0.0.0/24", [10, 0, 1, 0], false),
        ("0.0.0.0/0", [8, 8, 8, 8], true), ("192.168.1.7", [192, 168, 1, 7], true), ("192.168.1.7", [192, 168, 1, 8], false),
        ("10.0.0.0/24", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 10, 0, 0, 9], true),  // IPv4-mapped IPv6
        ("10.0.0.0/24", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 9], false),
        ("::1/128", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], true), ("::1/128", [127, 0, 0, 1], false),
        ("fd00::/8", [0xFD, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], true),
        ("fd00::/8", [0xFE, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], false),
        ("10.0.0.0/23", [10, 0, 1, 200], true), ("10.0.0.0/23", [10, 0, 2, 0], false),
    ] as [(String, [UInt8], Bool)])
    func contains(cidr: String, address: [UInt8], expected: Bool) throws {
        let block = try #require(CIDRBlock(cidr))
        #expect(block.contains(address) == expected)
    }

    @Test func parsesIPv6Forms() {
        #expect(IPAddress.parse("::") == [UInt8](repeating: 0, count: 16))
        #expect(IPAddress.parse("2001:db8::8a2e:370:7334") == [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0x8a, 0x2e, 0x03, 0x70, 0x73, 0x34])
        #expect(IPAddress.parse("::ffff:10.0.0.1") == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 10, 0, 0, 1])
        #expect(IPAddress.parse("1:2:3:4:5:6:7:8")?.count == 16)
        for bad in ["1:2:3:4:5:6:7", "1::2::3", "1:2:3:4:5:6:7:8:9", "12345::", "::g", "10.0.0", "10.0.0.01", "1.2.3.4.5", "", "::1.2.3"] {
            #expect(IPAddress.parse(bad) == nil, "\(bad)")
        }
    }

    @Test(arguments: [("::/0", "::/0"), ("::1", "::1/128"), ("2001:db8:0:0:1:0:0:0/128", "2001:db8:0:0:1::/128"), ("2001:db8:0:0:1:0:0:1/128", "2001:db8::1:0:0:1/128"),
                      ("fd00::/8", "fd00::/8"), ("1:0:2:0:3:0:4:0/128", "1:0:2:0:3:0:4:0/128"), ("10.0.0.0/8", "10.0.0.0/8")])
    func cidrTextIsCanonical(text: String, expected: String) throws {
        #expect(try #require(CIDRBlock(text)).description == expected)
    }

    @Test func hostPortForms() {
        #expect(HostPort("0.0.0.0:502") == HostPort(host: "0.0.0.0", port: 502))
        #expect(HostPort("[::1]:502") == HostPort(host: "::1", port: 502))
        #expect(HostPort("plc-7.site.local:1502") == HostPort(host: "plc-7.site.local", port: 1502))
        for bad in ["::1:502", "0.0.0.0", ":502", "host:", "host:65536", "host:-1", "[::1]502", "[zz]:502", "a b:1", "10.0.0.300:502"] {
            #expect(HostPort(bad) == nil, "\(bad)")
        }
    }
}
