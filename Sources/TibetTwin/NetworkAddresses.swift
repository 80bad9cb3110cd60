// Addresses as the config file writes them: host:port, IP literals, CIDR blocks for allow lists.

/// A `host:port` pair as written in a config (`0.0.0.0:502`, `[::1]:502`, `localhost:9102`).
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    /// The host without brackets: an IPv4 or IPv6 literal or a host name.
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port`; IPv6 literals need brackets. Port 0 is allowed (the OS picks one:
    /// tests use it); hosts must be valid literals or names.
    public init?(_ text: String) {
        let host: Substring, portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
            guard IPAddress.parse(String(host))?.count == 16 else { return nil }
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            guard isValidHost(String(host)) else { return nil }
        }
        guard !host.isEmpty, !portText.isEmpty, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
              portText.count <= 5, let port = Int(portText), port <= 65535 else { return nil }
        self.host = String(host)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// IPv4 and IPv6 address text ↔ bytes.
public enum IPAddress {
    /// 4 bytes for IPv4 (`10.0.0.1`), 16 for IPv6 (`::1`, `fe80::1`, `::ffff:10.0.0.1`); nil if invalid.
    public static func parse(_ text: String) -> [UInt8]? {
        if !text.contains(":") { return parseIPv4(Substring(text)) }
        return parseIPv6(text)
    }

    /// The text form: dotted quad, or RFC 5952 IPv6 (lowercase, longest zero run as `::`).
    public static func format(_ bytes: [UInt8]) -> String {
        if bytes.count == 4 { return bytes.map(String.init).joined(separator: ".") }
        let groups = stride(from: 0, to: bytes.count, by: 2).map { UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]) }
        var best = (start: -1, length: 0), i = 0
        while i < groups.count {
            if groups[i] == 0 {
                var j = i
                while j < groups.count, groups[j] == 0 { j += 1 }
                if j - i > best.length { best = (i, j - i) }
                i = j
            } else { i += 1 }
        }
        let hex = groups.map { String($0, radix: 16) }
        guard best.length >= 2 else { return hex.joined(separator: ":") }
        let head = hex[..<best.start].joined(separator: ":")
        let tail = hex[(best.start + best.length)...].joined(separator: ":")
        return head + "::" + tail
    }

    static func parseIPv4(_ text: Substring) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard !p.isEmpty, p.count <= 3, p.allSatisfy({ $0.isASCII && $0.isNumber }),
                  !(p.count > 1 && p.first == "0"), let v = Int(p), v <= 255 else { return nil }
            out.append(UInt8(v))
        }
        return out
    }

    static func parseIPv6(_ text: String) -> [UInt8]? {
        var head: [UInt16] = [], tail: [UInt16] = []
        var sawGap = false
        let halves = split(text, on: "::")
        guard halves.count <= 2 else { return nil }
        sawGap = halves.count == 2
        func groups(_ s: String, allowIPv4: Bool) -> [UInt16]? {
            if s.isEmpty { return [] }
            var out: [UInt16] = []
            let parts = s.split(separator: ":", omittingEmptySubsequences: false)
            for (i, p) in parts.enumerated() {
                if i == parts.count - 1, allowIPv4, p.contains(".") {
                    guard let v4 = parseIPv4(p) else { return nil }
                    out.append(UInt16(v4[0]) << 8 | UInt16(v4[1]))
                    out.append(UInt16(v4[2]) << 8 | UInt16(v4[3]))
                    continue
                }
                guard !p.isEmpty, p.count <= 4, p.allSatisfy(\.isHexDigit), let v = UInt16(p, radix: 16) else { return nil }
                out.append(v)
            }
            return out
        }
        guard let h = groups(halves[0], allowIPv4: !sawGap) else { return nil }
        head = h
        if sawGap {
            guard let t = groups(halves[1], allowIPv4: true) else { return nil }
            tail = t
            guard head.count + tail.count <= 7 else { return nil }
        } else {
            guard head.count == 8 else { return nil }
        }
        let all = head + [UInt16](repeating: 0, count: 8 - head.count - tail.count) + tail
        return all.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
    }
}

/// Splits on a multi-character separator (Foundation-free).
func split(_ text: String, on sep: String) -> [String] {
        var out: [String] = []
        var rest = Substring(text)
        while let r = rest.firstRange(of: sep) {
            out.append(String(rest[..<r.lowerBound]))
            rest = rest[r.upperBound...]
        }
        out.append(String(rest))
        return out
}

/// A network in CIDR notation (`10.0.0.0/24`, `::1/128`); a bare address is a single host.
public struct CIDRBlock: Sendable, Hashable, CustomStringConvertible {
    /// The network address: 4 bytes (IPv4) or 16 (IPv6), host bits zero.
    public var network: [UInt8]
    public var prefixLength: Int

    /// Parses CIDR text; nil if invalid or if host bits are set beyond the prefix.
    public init?(_ text: String) {
        guard case .success(let c) = CIDRBlock.parse(text) else { return nil }
        self = c
    }

    init(network: [UInt8], prefixLength: Int) {
        self.network = network
        self.prefixLength = prefixLength
    }

    /// Parses CIDR text, or says what is wrong with it.
    public static func parse(_ text: String) -> Result<CIDRBlock, CIDRError> {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let addr = IPAddress.parse(String(parts[0])) else {
            return .failure(CIDRError(message: "\"\(text)\" is not an IPv4 or IPv6 network (expected e.g. 10.0.0.0/24 or fd00::/64)"))
        }
        let bits = addr.count * 8
        var prefix = bits
        if parts.count == 2 {
            guard !parts[1].isEmpty, parts[1].count <= 3, parts[1].allSatisfy({ $0.isASCII && $0.isNumber }),
                  let p = Int(parts[1]), p <= bits else {
                return .failure(CIDRError(message: "\"\(text)\": prefix length must be 0…\(bits)"))
            }
            prefix = p
        }
        let masked = mask(addr, prefix)
        if masked != addr {
            let net = CIDRBlock(network: masked, prefixLength: prefix)
            return .failure(CIDRError(message: "\"\(text)\" has host bits set beyond /\(prefix) (did you mean \(net)?)"))
        }
        return .success(CIDRBlock(network: addr, prefixLength: prefix))
    }

    static func mask(_ addr: [UInt8], _ prefix: Int) -> [UInt8] {
        addr.enumerated().map { i, b in
            let keep = max(0, min(8, prefix - 8 * i))
            return keep == 0 ? 0 : b & UInt8(truncatingIfNeeded: 0xFF << (8 - keep))
        }
    }

    /// Whether `address` (4 or 16 bytes) lies in this network. An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`, what a dual-stack socket reports) matches IPv4 networks.
    public func contains(_ address: [UInt8]) -> Bool {
        var a = address
        if network.count == 4, a.count == 16, a[0..<10].allSatisfy({ $0 == 0 }), a[10] == 0xFF, a[11] == 0xFF {
            a = Array(a[12...])
        }
        guard a.count == network.count else { return false }
        return CIDRBlock.mask(a, prefixLength) == network
    }

    public var description: String {
        let addr: String
        if network.count == 4 {
            addr = network.map(String.init).joined(separator: ".")
        } else {
            addr = IPAddress.format(network)
        }
        return "\(addr)/\(prefixLength)"
    }
}

/// What is wrong with a CIDR text.
public struct CIDRError: Error, Sendable, Hashable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
