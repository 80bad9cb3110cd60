import Platform

#if canImport(Glibc)
import Glibc
#endif

/// A non-blocking listening socket on `host:port` (dual stack for `::`), below `descriptorLimit`;
/// returns the descriptor and the port it got. Errors name the call and `host:port`.
func openListeningSocket(host: String, port: Int, descriptorLimit: Int32) throws(ModbusServerError) -> (fd: Int32, port: Int) {
    let where_ = "\(host):\(port)"
    guard let addr = NetAddress(host: host, port: port) else {
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
