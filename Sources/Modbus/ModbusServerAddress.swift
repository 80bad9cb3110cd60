#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 socket address built from a literal or, failing that, a host name.
struct SocketAddress {
    private var storage = sockaddr_storage()
    let family: Int32
    let length: socklen_t

    init?(host: String, port: Int) {
        guard (0...65535).contains(port) else { return nil }
        var h = host
        if h.hasPrefix("[") && h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        guard let bytes = SocketAddress.literal(h) ?? SocketAddress.resolve(h) else { return nil }
        self.init(bytes: bytes, port: UInt16(port))
    }

    /// The address of 4 (IPv4) or 16 (IPv6) bytes in network order.
    init(bytes: [UInt8], port: UInt16) {
        var s = sockaddr_storage()
        func fill<A, Inner>(_ address: inout A, _ inner: WritableKeyPath<A, Inner>) {
            bytes.withUnsafeBytes { src in withUnsafeMutableBytes(of: &address[keyPath: inner]) { $0.copyMemory(from: src) } }
            withUnsafeMutableBytes(of: &s) { $0.storeBytes(of: address, as: A.self) }
        }
        if bytes.count == 4 {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            fill(&sin, \.sin_addr)
            family = AF_INET
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
        } else {
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            fill(&sin6, \.sin6_addr)
            family = AF_INET6
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        }
        storage = s
    }

    /// The bytes of an IPv4 or IPv6 literal, or nil.
    static func literal(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: v6) { Array($0) } }
        return nil
    }

    /// A host name's first address (IPv4 preferred), 4 or 16 bytes; nil if it does not resolve.
    /// Blocks for the resolver: called once, when the server is created.
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

    mutating func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        let len = length
        return withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, len) }
        }
    }
}

/// A non-blocking listening socket on `host:port` (dual stack for `::`), below `descriptorLimit`;
/// returns the descriptor and the port it got. Errors name the call and `host:port`.
func openListeningSocket(host: String, port: Int, descriptorLimit: Int32) throws(ModbusServerError) -> (fd: Int32, port: Int) {
    let where_ = "\(host):\(port)"
    guard var addr = SocketAddress(host: host, port: port) else {
        throw ModbusServerError(kind: .badAddress, function: "inet_pton", errno: EINVAL, address: where_)
    }
    let fd = socket(addr.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    if fd < 0 { throw ModbusServerError(kind: .listen, function: "socket", errno: errno, address: where_) }
    func fail(_ kind: ModbusServerError.Kind, _ function: String, _ e: Int32) -> ModbusServerError {
        close(fd)
        return ModbusServerError(kind: kind, function: function, errno: e, address: where_)
    }
    if fd >= descriptorLimit { throw fail(.descriptorLimit, "socket", EMFILE) }
    var yes: Int32 = 1
    _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
    if addr.family == AF_INET6 {
        var no: Int32 = 0  // dual stack: `::` also takes IPv4 clients
        _ = setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &no, socklen_t(MemoryLayout<Int32>.size))
    }
    if addr.withSockaddr({ bind(fd, $0, $1) }) != 0 { throw fail(.listen, "bind", errno) }
    if listen(fd, 128) != 0 { throw fail(.listen, "listen", errno) }
    var bound = sockaddr_storage()
    var blen = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let rc = withUnsafeMutablePointer(to: &bound) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &blen) }
    }
    if rc != 0 { throw fail(.listen, "getsockname", errno) }
    return (fd, Int(PeerAddress(bound)?.port ?? 0))
}
