#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 address with a port: the one IP socket-address type of the system layer (NIO has its own `SocketAddress` for its channels). The
/// Modbus server names its clients with it (`PeerAddress`), binds its listeners from it, and
/// the tools connect with it. (The core's `HostPort`/`IPAddress` are the config file's text
/// forms; they are parsed there without any system call.)
public struct NetAddress: Sendable, Hashable, CustomStringConvertible {
    /// 4 bytes (IPv4) or 16 bytes (IPv6), network order.
    public var bytes: [UInt8]
    public var port: UInt16

    /// An address from its bytes; an IPv4-mapped IPv6 address is stored as IPv4.
    public init(bytes: [UInt8], port: UInt16) {
        if bytes.count == 16, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF {
            self.bytes = Array(bytes[12...])
        } else {
            self.bytes = bytes
        }
        self.port = port
    }

    /// An IPv4 or IPv6 literal (brackets allowed) or, failing that, a host name's first address
    /// (IPv4 preferred). Nil for a port outside 0...65535 or a name that does not resolve.
    /// A name blocks for the resolver: call it where blocking is allowed.
    public init?(host: String, port: Int) {
        guard (0...65535).contains(port) else { return nil }
        var h = host
        if h.hasPrefix("[") && h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        guard let bytes = NetAddress.literal(h) ?? NetAddress.resolve(h) else { return nil }
        self.init(bytes: bytes, port: UInt16(port))
    }

    /// Reads the address out of a `sockaddr_storage` filled by `accept`/`getpeername`/`getsockname`.
    public init?(_ storage: sockaddr_storage) {
        var s = storage
        switch Int32(s.ss_family) {
        case AF_INET:
            let sin = withUnsafeBytes(of: &s) { $0.load(as: sockaddr_in.self) }
            self.init(bytes: withUnsafeBytes(of: sin.sin_addr) { Array($0) }, port: UInt16(bigEndian: sin.sin_port))
        case AF_INET6:
            let sin6 = withUnsafeBytes(of: &s) { $0.load(as: sockaddr_in6.self) }
            self.init(bytes: withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }, port: UInt16(bigEndian: sin6.sin6_port))
        default:
            return nil
        }
    }

    /// `AF_INET` or `AF_INET6`.
    public var family: Int32 { bytes.count == 4 ? AF_INET : AF_INET6 }

    /// The address without the port: `10.0.0.5` or `fd00::5`.
    public var host: String {
        if bytes.count == 4 { return bytes.map(String.init).joined(separator: ".") }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        var raw = bytes
        let ok = raw.withUnsafeMutableBytes { b in
            text.withUnsafeMutableBufferPointer { inet_ntop(AF_INET6, b.baseAddress, $0.baseAddress, socklen_t($0.count)) != nil }
        }
        if !ok { return bytes.map { String($0, radix: 16) }.joined(separator: ":") }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// `10.0.0.5:50212` or `[fd00::5]:50212`.
    public var description: String {
        bytes.count == 4 ? "\(host):\(port)" : "[\(host)]:\(port)"
    }

    /// Calls `body` with the address as a `sockaddr` and its length (for bind, connect, sendto).
    public func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) rethrows -> R {
        var s = sockaddr_storage()
        let length: socklen_t
        func fill<A, Inner>(_ address: inout A, _ inner: WritableKeyPath<A, Inner>) {
            bytes.withUnsafeBytes { src in withUnsafeMutableBytes(of: &address[keyPath: inner]) { $0.copyMemory(from: src) } }
            withUnsafeMutableBytes(of: &s) { $0.storeBytes(of: address, as: A.self) }
        }
        if bytes.count == 4 {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            fill(&sin, \.sin_addr)
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
        } else {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            fill(&sin6, \.sin6_addr)
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        }
        return try withUnsafePointer(to: &s) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, length) }
        }
    }

    /// The bytes of an IPv4 or IPv6 literal, or nil.
    public static func literal(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: v6) { Array($0) } }
        return nil
    }

    /// Why `name` does not resolve, as the resolver says it (`EAI_NONAME`, `EAI_AGAIN` …), or
    /// nil when it resolves (or is an IP literal). Blocks for the resolver.
    public static func resolveFailure(_ name: String) -> String? {
        var h = name
        if h.hasPrefix("[") && h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        if literal(h) != nil { return nil }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(h, nil, &hints, &list)
        if rc == 0 {
            freeaddrinfo(list)
            return nil
        }
        switch rc {
        case EAI_NONAME: return "EAI_NONAME"
        case EAI_AGAIN: return "EAI_AGAIN"
        case EAI_FAIL: return "EAI_FAIL"
        case EAI_FAMILY: return "EAI_FAMILY"
        case EAI_MEMORY: return "EAI_MEMORY"
        case EAI_SYSTEM: return "EAI_SYSTEM (\(Errno.current))"
        default: return "getaddrinfo error \(rc)"
        }
    }

    /// A host name's first address (IPv4 preferred), 4 or 16 bytes; nil if it does not resolve.
    static func resolve(_ name: String) -> [UInt8]? {
        // Only what can be a host name goes to the resolver.
        guard !name.isEmpty, name.utf8.count <= 253,
              name.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "." || $0 == "-") })
        else { return nil }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_ADDRCONFIG
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(name, nil, &hints, &list) == 0, let first = list else { return nil }
        defer { freeaddrinfo(list) }
        var v6: [UInt8]?
        var p: UnsafeMutablePointer<addrinfo>? = first
        while let ai = p {
            if let sa = ai.pointee.ai_addr {
                if ai.pointee.ai_family == AF_INET {
                    let sin = UnsafeRawPointer(sa).load(as: sockaddr_in.self)
                    return withUnsafeBytes(of: sin.sin_addr) { Array($0) }
                }
                if ai.pointee.ai_family == AF_INET6, v6 == nil {
                    let sin6 = UnsafeRawPointer(sa).load(as: sockaddr_in6.self)
                    v6 = withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }
                }
            }
            p = ai.pointee.ai_next
        }
        return v6
    }
}
